"""``pretrain``: self-supervised pretraining of a backbone on a store's cells.

One call selects cells (``where``), caches them once at the model's preprocessing,
holds out a few hundred labelled cells for the kNN monitor, trains with a lightly
method on PyTorch Lightning (domain-balanced batches, batched on-device
augmentations), and registers the backbone with its model card and loss/kNN curves
(``STORE/models/NAME/``). Options left unset come from the recipe for the device
(:mod:`cytostore.embedder.recipes`, ``docs/recipes.md``): the 15-minute CPU recipe
without a CUDA GPU, the GPU recipe with one.

Under DDP (``devices``/``num_nodes`` > 1; see ``docs/scale.md``) every process runs
this function; only global rank 0 writes the weights, card, curves and catalog row,
and the other processes wait for it and return the card it registered.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from cytostore._json import jsonable
from cytostore.embedder.augment import AugmentConfig
from cytostore.embedder.backbones import BACKBONES, build_backbone, is_known_backbone
from cytostore.embedder.cache import build_cache
from cytostore.embedder.card import ModelCard
from cytostore.embedder.device import resolve_device, tune_allocator
from cytostore.embedder.foundation import (
    pretrain_preprocessing,
    vit_recipe_defaults,
)
from cytostore.embedder.preprocess import DEFAULT_FOV_UM
from cytostore.embedder.recipes import CPU_RECIPE, fill_recipe, recipe_for
from cytostore.embedder.registry import (
    model_dir,
    register_model,
    register_random_model,
)
from cytostore.embedder.sampling import BALANCES
from cytostore.errors import EmptySelectionError, InvalidArgumentError
from cytostore.store import Store, fault_point

if TYPE_CHECKING:  # Lightning and lightly load in pretrain(): embed never needs them
    import pytorch_lightning as pl

    from cytostore.embedder.monitor import TrainingHistory

__all__ = [
    "pretrain",
    "process_rank",
    "PRETRAIN_METHODS",
    "DEFAULT_METHOD",
    "DEFAULT_BACKBONE",
    "DEFAULT_CROP_PX",
    "DEFAULT_BATCH_SIZE",
    "default_augment",
    "CURVES_FILE",
]

logger = logging.getLogger(__name__)

#: Methods ``pretrain`` accepts: the lightly methods and ``none`` (random init).
#: (The lightly methods of ``cytostore.embedder.methods.METHODS``, named here so that
#: importing the embedder does not load lightly; a test checks they agree.)
PRETRAIN_METHODS = ("simclr", "byol", "dino", "vicreg", "barlowtwins", "moco", "none")
#: The CPU recipe's settings (see docs/recipes.md for the measurements behind it);
#: ``pretrain`` takes its defaults from :func:`~cytostore.embedder.recipes.recipe_for`.
DEFAULT_METHOD = CPU_RECIPE.method
DEFAULT_BACKBONE = CPU_RECIPE.backbone
DEFAULT_CROP_PX = CPU_RECIPE.crop_px
DEFAULT_BATCH_SIZE = CPU_RECIPE.batch_size
#: Loss and kNN curves, written beside the card.
CURVES_FILE = "curves.png"
_MIN_MONITOR = 20


def default_augment(crop_px: int) -> tuple[AugmentConfig, AugmentConfig]:
    """Return the default (global, local) view augmentations for ``crop_px`` inputs."""
    return (
        AugmentConfig(out_px=crop_px, scale=(0.3, 1.0)),
        AugmentConfig(out_px=max(16, crop_px // 2), scale=(0.08, 0.3), blur_p=0.2),
    )


def pretrain(
    store: Store | str | os.PathLike[str],
    name: str,
    *,
    method: str | None = None,
    backbone: str | None = None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    batch_size: int | None = None,
    where: str | None = None,
    balance: str = "dataset",
    init: str | os.PathLike[str] | None = None,
    crop_px: int | None = None,
    fov_um: float = DEFAULT_FOV_UM,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    devices: int | None = None,
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    monitor_cells: int = 512,
    label_column: str = "label",
    workers: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
    progress: Callable[[int, int], None] | None = None,
    progress_bar: bool = False,
) -> ModelCard:
    """Pretrain a backbone without labels on a store's cells and register it.

    Every option left as ``None`` takes the value of the recipe for the training
    device (:func:`~cytostore.embedder.recipes.recipe_for`): without a CUDA GPU the
    CPU recipe (``simclr``, ``tiny``, 96 px, batch 128, 15 minutes), on a CUDA GPU
    the GPU recipe (``dino``, ``resnet50``, 128 px, batch 256, 100 epochs). The
    card's ``extra["recipe"]`` records which one and the settings used.

    Args:
        store: The store (or its folder).
        name: Name to register the model under (``STORE/models/NAME/``).
        method: ``simclr``, ``byol``, ``dino``, ``vicreg``, ``barlowtwins``, ``moco``,
            or ``none`` (register the seeded random init: the baseline).
            ``None``: the recipe's.
        backbone: ``tiny``, ``resnet18``, ``resnet34``, ``resnet50`` or ``vit_s16``
            (``None``: the recipe's).
        epochs: Total epochs (an epoch draws as many cells as are selected).
            ``None`` with ``max_minutes``: as many as fit; both ``None``: the
            recipe's budget (CPU: 15 minutes; GPU: 100 epochs).
        max_minutes: Time budget of the whole call in minutes (cache, training,
            registration); training stops cleanly when it is spent. On
            ``resume`` the training time of the earlier run counts too.
        batch_size: Cells per batch and device; shrunk (with a warning) when
            fewer cells are selected (``None``: the recipe's).
        where: SQL filter over ``cell_meta`` selecting the training cells.
        balance: ``dataset``: each dataset equally likely in every batch; ``none``:
            cells as they come.
        init: Local torchvision-format weights to start from (``None``: random).
        crop_px: Input size in pixels; the crop covers ``fov_um`` µm (images of
            unknown µm/px are resized whole). ``None``: the recipe's.
        fov_um: Field of view of the input in µm.
        lr: Peak AdamW learning rate (``None``: the method's default, scaled by
            the global batch: ``batch_size x processes / 256``).
        seed: Seed of the init, batch draws and augmentations.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        devices: Number of devices for DDP (``None``: the one ``device`` names).
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        num_nodes: Nodes for multi-node DDP.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        resume: Continue the interrupted (or finished) run of ``name``.
        overwrite: Replace a registered model of the same name.
        monitor_cells: Labelled cells held out of training for the kNN monitor (at
            most a fifth of the labelled cells; 0 disables the monitor).
        label_column: ``cell_meta`` column holding the monitor's labels.
        workers: Processes decoding images into the cache (``None``: automatic).
        callbacks: Extra Lightning callbacks.
        progress: Called with ``(done, total)``: cells cached, then thousandths of
            the training run.
        progress_bar: Show Lightning's own progress bar.

    Returns:
        The registered model's card (method, backbone, preprocessing, data, epochs,
        wall_s, final_loss, knn_monitor, versions, sha256, ...; ``extra`` holds
        ``world_size`` and ``cells_per_epoch``, summed over processes). Under DDP
        every process returns the card that global rank 0 registered.

    Raises:
        InvalidArgumentError: If an argument is invalid (unknown method, backbone
            or balance; non-positive epochs or minutes; a taken name).
        InvalidWhereError: If ``where`` does not parse.
        EmptySelectionError: If ``where`` selects no cells, or fewer than 2 readable.
        ConfigMismatchError: If ``resume`` meets a run of another configuration.
        TrainingDivergedError: If the loss becomes NaN (last checkpoint kept).
        DistributedRunError: Under DDP, if another process failed (its error is
            quoted).
    """
    from cytostore.embedder.methods import build_method
    from cytostore.embedder.monitor import TrainingHistory, write_curves
    from cytostore.embedder.train import (
        TrainConfig,
        launch_rank,
        on_global_zero,
        train_ssl,
        unwrap_backbone,
    )

    started = time.monotonic()
    recipe = recipe_for(resolve_device(device))
    if backbone is not None:  # DinoBloom/DINOv2/timm archs: the ViT recipe
        method, crop_px = vit_recipe_defaults(backbone, method, crop_px)
    settings = fill_recipe(
        recipe,
        method=method,
        backbone=backbone,
        crop_px=crop_px,
        batch_size=batch_size,
        epochs=epochs,
        max_minutes=max_minutes,
    )
    method, backbone = settings.method, settings.backbone
    crop_px, batch_size = settings.crop_px, settings.batch_size
    epochs, max_minutes = settings.epochs, settings.max_minutes
    _validate(method, backbone, balance, epochs, max_minutes, batch_size)
    tune_allocator()  # reuse freed activation memory (glibc), see its docs
    store = store if isinstance(store, Store) else Store.open(store)
    folder = model_dir(store, name)
    registered = name in {r[0] for r in store.sql("SELECT name FROM models").rows}
    if registered and not (overwrite or resume):
        raise InvalidArgumentError(
            f"a model named {name!r} exists: choose another --name, continue its "
            "run with --resume, or replace it with --overwrite"
        )
    prep = pretrain_preprocessing(backbone, crop_px, fov_um)
    rank = launch_rank(devices or 1)
    if rank != 0:
        progress = None  # one progress bar: rank 0's
    if overwrite and not resume and rank == 0:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    if method == "none":
        if _world(devices, num_nodes) > 1:
            raise InvalidArgumentError(
                "--method none registers a random init and trains nothing: run it "
                "as one process, without --devices/--num-nodes"
            )
        return register_random_model(
            store,
            name,
            backbone,
            seed=seed,
            preprocessing=prep,
            init=init,
            overwrite=overwrite,
        )

    ids = store.where_ids(where)
    cache = build_cache(store, prep, ids, workers=workers, progress=progress)
    present = ids[cache.contains(ids)]
    if len(present) < len(ids):
        logger.warning(
            "%d of %d selected cells could not be read and are left out (see the "
            "skipped table)",
            len(ids) - len(present),
            len(ids),
        )
    if len(present) < 2:
        raise EmptySelectionError(
            f"only {len(present)} readable cell(s) selected: self-supervised "
            "training needs at least 2; widen --where or ingest more cells"
        )
    meta = store.cell_meta(present, ["dataset", label_column])
    datasets = np.asarray([r[0] for r in meta.rows])
    labels = np.asarray([r[1] for r in meta.rows], dtype=object)
    monitor_idx = _monitor_split(labels, monitor_cells, seed)
    train_mask = np.ones(len(present), dtype=bool)
    train_mask[monitor_idx] = False
    train_rows = cache.index_of(present[train_mask])
    batch = _fit_batch(batch_size, int(train_mask.sum()))

    global_aug, local_aug = default_augment(crop_px)
    config = TrainConfig(
        method=method,
        batch_size=batch,
        lr=lr,
        balance=balance,
        seed=seed,
        augment=global_aug,
        local_augment=local_aug if method == "dino" else None,
    )
    run_config = {
        **config.to_dict(),
        "backbone": backbone,
        "preprocessing": prep.to_dict(),
        "where": where,
        "init": str(init) if init is not None else None,
        "monitor_cells": monitor_cells,
        "label_column": label_column,
    }
    module, dim = build_backbone(backbone, init, crop_px=crop_px, seed=seed)
    with torch.random.fork_rng(devices=[]):  # the heads' init follows --seed too
        torch.manual_seed(seed)
        ssl = build_method(
            method, module, dim, gather_distributed=_world(devices, num_nodes) > 1
        )
    monitor_u8 = cache.rows(present[monitor_idx]) if len(monitor_idx) else None
    history = TrainingHistory(
        monitor_u8,
        [str(v) for v in labels[monitor_idx]],
        prep.mean,
        prep.std,
        k=20,
        curves_path=folder / CURVES_FILE,
        datasets=[str(v) for v in datasets[monitor_idx]],
    )
    max_s = None
    if max_minutes is not None:
        reserve_s = 2.0 + 0.02 * max_minutes * 60
        max_s = max(1.0, max_minutes * 60 - (time.monotonic() - started) - reserve_s)
    result = train_ssl(
        ssl,
        cache.array,
        datasets[train_mask],
        config,
        prep.mean,
        prep.std,
        folder,
        rows=train_rows,
        epochs=epochs,
        max_s=max_s,
        resume=resume,
        run_config=run_config,
        history=history,
        device=device,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=precision,
        callbacks=callbacks,
        progress=progress,
        progress_bar=progress_bar,
    )
    data = dict(sorted(Counter(datasets[train_mask].tolist()).items()))
    knn_hist = [e["knn"] for e in result.epochs]
    fields = {
        "method": method,
        "backbone": backbone,
        "dim": dim,
        "preprocessing": prep,
        "data": data,
        "epochs": len(result.epochs),
        "wall_s": round(result.wall_s, 2),
        "final_loss": None if math.isnan(result.final_loss) else result.final_loss,
        "knn_monitor": _knn_card(history, knn_hist, label_column, len(monitor_idx)),
        "seed": seed,
        "init": str(init) if init is not None else None,
        "config": run_config,
        "steps": result.steps,
        "stopped_by": result.stopped_by,
        "loss_history": [round(e["loss"], 5) for e in result.epochs],
        "skipped_cells": int(len(ids) - len(present)),
        "curves": f"models/{name}/{CURVES_FILE}",
        "recipe": settings.to_dict(),
        "world_size": result.world_size,
        "cells_per_epoch": result.cells_per_epoch,
        "lr": result.lr,
        "sync_batchnorm": result.sync_batchnorm,
    }

    def register() -> dict[str, Any]:  # on global rank 0 only
        write_curves(
            result.epochs, folder / CURVES_FILE, title=f"{name}: {method}/{backbone}"
        )
        fault_point("pretrain.before_register")  # trained and checkpointed only
        card = register_model(store, name, unwrap_backbone(ssl), fields, overwrite=True)
        return dict(jsonable(card.to_dict()))

    return ModelCard.from_dict(on_global_zero(register))


def _validate(
    method: str,
    backbone: str,
    balance: str,
    epochs: int | None,
    max_minutes: float | None,
    batch_size: int,
) -> None:
    if method not in PRETRAIN_METHODS:
        raise InvalidArgumentError(
            f"unknown method {method!r}: choose one of {', '.join(PRETRAIN_METHODS)}"
        )
    if not is_known_backbone(backbone):
        raise InvalidArgumentError(
            f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}, "
            "dinobloom-s|b|l|g, dinov2-vits14|..., timm:NAME or torchvision:NAME"
        )
    if balance not in BALANCES:
        raise InvalidArgumentError(
            f"unknown balance {balance!r}: choose one of {', '.join(BALANCES)}"
        )
    if epochs is not None and epochs < 1:
        raise InvalidArgumentError(f"--epochs must be >= 1, got {epochs}")
    if max_minutes is not None and not max_minutes > 0:
        raise InvalidArgumentError(f"--max-minutes must be > 0, got {max_minutes}")
    if batch_size < 2:
        raise InvalidArgumentError(
            f"--batch-size must be >= 2 (views are contrasted in a batch), "
            f"got {batch_size}"
        )


def _monitor_split(
    labels: npt.NDArray[Any], monitor_cells: int, seed: int
) -> npt.NDArray[np.int64]:
    """Pick held-out labelled cells for the kNN monitor (at most a fifth of them)."""
    labelled = np.flatnonzero(np.asarray([v is not None and v == v for v in labels]))
    n = min(monitor_cells, len(labelled) // 5)
    if n < _MIN_MONITOR or len({labels[i] for i in labelled}) < 2:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(labelled, size=n, replace=False)).astype(np.int64)


def _fit_batch(batch_size: int, n_train: int) -> int:
    if n_train < 2:
        raise EmptySelectionError(
            f"only {n_train} cell(s) left to train on: self-supervised training "
            "needs at least 2; widen --where or ingest more cells"
        )
    if n_train < batch_size:
        logger.warning(
            "only %d cells to train on: batch size shrunk from %d to %d",
            n_train,
            batch_size,
            n_train,
        )
        return n_train
    return batch_size


def _world(devices: int | None, num_nodes: int) -> int:
    return (devices or 1) * num_nodes


def _knn_card(
    history: TrainingHistory, knn_hist: list[float | None], label: str, cells: int
) -> dict[str, Any] | None:
    if not history.has_monitor:
        return None
    final = next((v for v in reversed(knn_hist) if v is not None), None)
    card: dict[str, Any] = {
        "accuracy": final,
        "k": history.k,
        "label": label,
        "cells": cells,
        "history": knn_hist,
    }
    mixing = [e.get("mixing") for e in history.epochs]
    if any(m is not None for m in mixing):
        # The store's neighbourhood mixing score of the monitor cells (0 = datasets
        # mixed as by chance, 1 = separated): the last epoch's, and its history.
        card["mixing"] = next(m for m in reversed(mixing) if m is not None)
        card["mixing_history"] = [None if m is None else m["dataset"] for m in mixing]
    return card


def process_rank() -> int:
    """Return this process's global rank under DDP (0 without it).

    Imports Lightning on call, like :func:`pretrain`, so the command line can ask
    after a run without importing the training module itself.
    """
    from cytostore.embedder.train import global_rank

    return global_rank()


def curves_path(store: Store, name: str) -> Path:
    """Return ``STORE/models/NAME/curves.png``."""
    return model_dir(store, name) / CURVES_FILE
