"""The model registry: weights and cards under ``STORE/models/``, rows in ``models``.

A model is registered by writing ``STORE/models/<name>/backbone.pt`` (the backbone's
state dict, torchvision format, written atomically), then its ``card.json``, then one
row of the catalog table ``models`` in one transaction. The catalog row makes it
visible: a crash before it leaves files that the next registration overwrites.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cytostore.embedder.backbones import build_backbone
from cytostore.embedder.card import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    package_versions,
    sha256_file,
)
from cytostore.embedder.preprocess import Preprocessing
from cytostore.errors import InvalidArgumentError, UnknownModelError
from cytostore.store import (
    Store,
    delete_model_row,
    fault_point,
    record_file,
    write_model_row,
)

__all__ = [
    "MODELS_DIR",
    "register_model",
    "register_random_model",
    "load_card",
    "list_models",
    "model_dir",
    "delete_model",
]

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def model_dir(store: Store, name: str) -> Path:
    """Return ``STORE/models/<name>`` (whether or not it exists).

    Raises:
        InvalidArgumentError: If ``name`` is not a valid model name.
    """
    if not _NAME.match(name) or name in (".", ".."):
        raise InvalidArgumentError(
            f"invalid model name {name!r}: use up to 64 letters, digits, '_', '-' "
            "or '.', starting with a letter or digit"
        )
    return store.root / MODELS_DIR / name


def _names(store: Store) -> list[str]:
    return [r[0] for r in store.sql("SELECT name FROM models ORDER BY name").rows]


def register_model(
    store: Store,
    name: str,
    backbone_module: nn.Module,
    card_fields: dict[str, Any],
    *,
    overwrite: bool = False,
) -> ModelCard:
    """Save a backbone's weights and card in the store and list it in ``models``.

    Args:
        store: The store.
        name: Model name (letters, digits, ``_ - .``).
        backbone_module: The backbone (as built by
            :func:`~cytostore.embedder.build_backbone`, possibly trained); its
            ``state_dict`` is saved on the CPU.
        card_fields: Fields of :class:`ModelCard`: ``method``, ``backbone`` and
            ``preprocessing`` (a :class:`Preprocessing` or its dict) are required;
            ``dim`` is measured when absent; ``data``, ``epochs``, ``wall_s``,
            ``final_loss``, ``knn_monitor``, ``seed``, ``init`` are optional; any other
            key is kept under ``extra``. ``name``, ``versions``, ``sha256`` and
            ``created`` are filled in here.
        overwrite: Replace a registered model of the same name.

    Returns:
        The card as written.

    Raises:
        InvalidArgumentError: If the name is invalid or taken (without
            ``overwrite``), or a required card field is missing.
    """
    folder = model_dir(store, name)
    if name in _names(store) and not overwrite:
        raise InvalidArgumentError(
            f"a model named {name!r} exists: choose another name, or overwrite it "
            "(--overwrite)"
        )
    fields = dict(card_fields)
    for key in ("method", "backbone", "preprocessing"):
        if key not in fields:
            raise InvalidArgumentError(
                f"register_model needs card_fields[{key!r}]: give the training "
                "method, backbone name and Preprocessing"
            )
    prep = fields["preprocessing"]
    if not isinstance(prep, Preprocessing):
        prep = Preprocessing.from_dict(prep)
    if fields.get("dim") is None:
        fields["dim"] = _measure_dim(backbone_module, prep.crop_px)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    state = {k: v.detach().cpu() for k, v in backbone_module.state_dict().items()}
    torch.save(state, tmp)
    os.replace(tmp, weights)
    fault_point("register.after_weights")  # new weights beside the old card
    created = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    fields.update(
        name=name,
        preprocessing=prep,
        versions=package_versions(),
        sha256=sha256_file(weights),
        created=created.isoformat(),
    )
    card = ModelCard.from_dict(fields)
    doc = card.write(folder).read_text()
    fault_point("register.after_card")  # files written, no catalog row yet
    write_model_row(
        store,
        name=name,
        method=card.method,
        backbone=card.backbone,
        dim=card.dim,
        path=f"{MODELS_DIR}/{name}",
        sha256=card.sha256,
        card=doc,
        created_at=created.replace(tzinfo=None),
    )
    for file, kind in ((WEIGHTS_FILE, "weights"), (CARD_FILE, "card")):
        record_file(store, f"{MODELS_DIR}/{name}/{file}", kind, name)
    logger.info(
        "registered model %s (%s, %s, dim %d)",
        name,
        card.method,
        card.backbone,
        card.dim,
    )
    return card


def register_random_model(
    store: Store,
    name: str,
    backbone: str = "tiny",
    crop_px: int = 128,
    seed: int = 0,
    *,
    preprocessing: Preprocessing | None = None,
    init: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Register a seeded random-init backbone (``method="none"``): the baseline.

    Args:
        store: The store.
        name: Model name.
        backbone: Backbone name.
        crop_px: Input size; the preprocessing is
            ``Preprocessing.for_input(crop_px)`` unless ``preprocessing`` is given.
        seed: Seed of the random init (the same seed gives the same weights).
        preprocessing: Use this preprocessing instead (its ``crop_px`` wins).
        init: Start from these torchvision-format weights instead of random ones
            (recorded in the card as ``init``).
        overwrite: Replace a registered model of the same name.

    Returns:
        The card as written.

    Raises:
        InvalidArgumentError: If the backbone or name is invalid or the name taken.

    Examples:
        >>> import tempfile
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> card = register_random_model(store, "random-tiny", crop_px=64)
        >>> card.method, card.dim, card.preprocessing.crop_px
        ('none', 128, 64)
    """
    prep = preprocessing or Preprocessing.for_input(crop_px)
    module, dim = build_backbone(backbone, init, crop_px=prep.crop_px, seed=seed)
    fields: dict[str, Any] = {
        "method": "none",
        "backbone": backbone,
        "dim": dim,
        "preprocessing": prep,
        "epochs": 0,
        "seed": seed,
    }
    if init is not None:
        fields["init"] = str(init)
    return register_model(store, name, module, fields, overwrite=overwrite)


def load_card(store: Store, name: str) -> ModelCard:
    """Return the card of a registered model.

    Raises:
        UnknownModelError: If no model of that name is registered (the message lists
            the registered ones).
        StoreCorruptError: If its card file is missing or unreadable.
    """
    names = _names(store)
    if name not in names:
        raise UnknownModelError.for_name(
            "model",
            name,
            names,
            "list them with 'cytostore models STORE', or register one with "
            "'cytostore pretrain'",
            where=str(store.root),
        )
    return ModelCard.read(model_dir(store, name))


def list_models(store: Store) -> list[dict[str, Any]]:
    """Return every registered model: its ``models`` row and its card.

    Returns:
        One dict per model, by name: ``name``, ``method``, ``backbone``, ``dim``,
        ``path`` (relative to the store), ``sha256``, ``created_at`` and ``card``
        (the card as a dict).
    """
    rows = store.sql(
        "SELECT name, method, backbone, dim, path, sha256, card, created_at "
        "FROM models ORDER BY name"
    ).dicts()
    for row in rows:
        row["card"] = json.loads(row["card"]) if row["card"] else {}
    return rows


def delete_model(store: Store, name: str) -> None:
    """Remove a model's row and folder.

    Raises:
        UnknownModelError: If no model of that name is registered.
    """
    load_card(store, name)
    delete_model_row(store, name)
    shutil.rmtree(model_dir(store, name), ignore_errors=True)


def _measure_dim(module: nn.Module, crop_px: int) -> int:
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            out = module(torch.zeros(1, 3, crop_px, crop_px, device=device))
    finally:
        module.train(was_training)
    return int(out.shape[-1])
