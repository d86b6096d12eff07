"""The model card: what a registered model is, how it was made, and how to feed it.

``STORE/models/<name>/card.json`` sits beside the backbone weights
(``backbone.pt``) and records everything needed to reproduce the model's inputs
(the :class:`~cytostore.embedder.Preprocessing`) and to judge it (method, data,
epochs, loss, kNN monitor, package versions, the weights' sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cytostore._json import jsonable
from cytostore.embedder.preprocess import Preprocessing
from cytostore.errors import InvalidArgumentError, StoreCorruptError

__all__ = ["ModelCard", "CARD_FILE", "WEIGHTS_FILE", "package_versions", "sha256_file"]

CARD_FILE = "card.json"
WEIGHTS_FILE = "backbone.pt"
_VERSIONED = (
    "torch",
    "torchvision",
    "lightly",
    "pytorch_lightning",
    "numpy",
    "cytostore",
)


@dataclass(frozen=True)
class ModelCard:
    """Everything recorded about one model.

    Attributes:
        name: Registered name (folder ``STORE/models/<name>/``).
        method: SSL method (``simclr``, ``dino``, ...), ``none`` for a random init,
            or ``imported`` for weights brought from a file (``import-model``).
        backbone: Backbone name from :data:`~cytostore.embedder.BACKBONES`, or an
            imported architecture (``dinobloom-s``, ``dinov2-vitb14``,
            ``timm:<model>``, ``torchvision:<model>``).
        dim: Width of the feature vector.
        preprocessing: The preprocessing every input goes through.
        data: Cells per dataset the model was trained on (``{}`` for ``none``).
        epochs: Training epochs (0 for ``none``).
        wall_s: Training wall time in seconds.
        final_loss: Training loss of the last epoch (``None``: not trained).
        knn_monitor: kNN-accuracy monitor of training, e.g.
            ``{"accuracy": 0.81, "k": 20, "label": "label", "history": [...]}``
            (``None``: not monitored).
        versions: Package versions at registration (``torch``, ``torchvision``,
            ``lightly``, ``pytorch_lightning``, ``numpy``, ``cytostore``).
        sha256: Hex digest of ``backbone.pt``.
        created: ISO-8601 UTC time of registration.
        seed: Random seed of the init / training.
        init: The ``--init`` weights the backbone started from (``None``: random).
        extra: Anything else the trainer records (hyperparameters, loss history);
            an imported model's provenance is ``extra["provenance"]``.
    """

    name: str
    method: str
    backbone: str
    dim: int
    preprocessing: Preprocessing
    data: dict[str, int] = field(default_factory=dict)
    epochs: int = 0
    wall_s: float = 0.0
    final_loss: float | None = None
    knn_monitor: dict[str, Any] | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    sha256: str = ""
    created: str = ""
    seed: int | None = None
    init: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def knn_accuracy(self) -> float | None:
        """The final kNN accuracy of the monitor, if any."""
        if not self.knn_monitor:
            return None
        value = self.knn_monitor.get("accuracy")
        return None if value is None else float(value)

    @property
    def provenance(self) -> dict[str, Any] | None:
        """Where an imported model's weights came from (``None``: not imported).

        Keys: ``arch``, ``family``, ``builder``, ``file``, ``file_sha256``,
        ``license``, ``input_px``, ``normalisation``, ``pooling``, ``dim``,
        ``scale`` (µm/px policy), ``dropped_keys``, ``imported``, ``versions``.
        """
        value = self.extra.get("provenance")
        return dict(value) if isinstance(value, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """Return the card as a JSON-ready dict (``preprocessing`` as a dict)."""
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        doc["preprocessing"] = self.preprocessing.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelCard:
        """Rebuild a card from :meth:`to_dict` output; unknown keys go to ``extra``.

        Raises:
            InvalidArgumentError: If a required field is missing.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            k
            for k in ("name", "method", "backbone", "dim", "preprocessing")
            if k not in doc
        ]
        if missing:
            raise InvalidArgumentError(
                f"a model card needs {missing}: give them in card_fields"
            )
        kwargs = {k: v for k, v in doc.items() if k in names}
        extra = dict(kwargs.pop("extra", None) or {})
        extra.update({k: v for k, v in doc.items() if k not in names})
        prep = kwargs.pop("preprocessing")
        if not isinstance(prep, Preprocessing):
            prep = Preprocessing.from_dict(prep)
        return cls(preprocessing=prep, extra=extra, **kwargs)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``card.json`` into ``folder`` atomically.

        Returns:
            The path written.
        """
        path = Path(folder) / CARD_FILE
        tmp = path.with_name(CARD_FILE + ".tmp")
        tmp.write_text(json.dumps(jsonable(self.to_dict()), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> ModelCard:
        """Read ``card.json`` from ``folder``.

        Raises:
            StoreCorruptError: If the file is missing or not a card.
        """
        path = Path(folder) / CARD_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise StoreCorruptError(
                f"cannot read model card {str(path)!r} ({exc}): re-register the "
                "model (pretrain again, or register_model)"
            ) from None


def package_versions() -> dict[str, str | None]:
    """Return the installed versions of the packages a card records."""
    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
