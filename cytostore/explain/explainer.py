"""What a pixel explanation needs from a store: the head, its backbone, the cells.

:class:`Explainer` loads a saved head and the model named in it (the frozen
backbone that made the embeddings), picks the cells to explain (the one cell of a
cell head; a patient's ``cells`` top-attention cells for a MIL head), reads each
cell's original image and preprocesses it exactly as at embedding time
(:meth:`Preprocessing.apply` on the file, at the cell's catalogued µm/px), and
builds the :class:`~cytostore.explain.attribution.CellModel` of each cell.

For a MIL head the other cells of the bag keep their stored embeddings: the
patient's output is differentiated with respect to one cell's pixels at a time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cytostore.embedder.backbones import build_backbone
from cytostore.embedder.device import resolve_precision
from cytostore.embedder.encoder import Encoder
from cytostore.embedder.preprocess import Preprocessing
from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    UnknownCellError,
)
from cytostore.explain.attribution import CellModel
from cytostore.heads._data import (
    load_cells,
    load_patient_cells,
    open_store,
)
from cytostore.heads.registry import load_head
from cytostore.store import Store

__all__ = ["Explainer", "ExplainedCell"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainedCell:
    """One cell to explain.

    Attributes:
        cell_id: The catalog's id.
        path: Its image file.
        image: uint8 (H, W, 3) original image.
        um_per_px: Its catalogued pixel size (``None``: unknown).
        crop: uint8 (c, c, 3): the image preprocessed as at embedding time.
        vector: float32 (dim,) its stored embedding.
        attention: Its attention in the patient's bag (``None`` for a cell head).
        index: Its row in the bag (MIL) or 0.
    """

    cell_id: int
    path: str
    image: npt.NDArray[np.uint8]
    um_per_px: float | None
    crop: npt.NDArray[np.uint8]
    vector: npt.NDArray[np.float32]
    attention: float | None
    index: int


class Explainer:
    """A saved head, the backbone of its model, and the cells to explain.

    Args:
        store: The store (or its folder).
        head: Name of a saved head: a linear or MLP cell head (with ``cell``) or
            an attention-MIL head (with ``patient``).
        cell: Cell id to explain.
        patient: Patient to explain, ``ID`` or ``DATASET/ID``.
        cells: Top-attention cells of the patient to explain.
        target: Class whose output is explained (default: the predicted one).
        device: Torch device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        precision: Autocast of the backbone: ``auto`` (what ``embed`` picks on
            this device, so the stored vectors are reproduced when they were
            embedded here), ``fp32``, ``bf16`` or ``fp16`` (CUDA).

    Attributes:
        store, head, meta, estimator, classes (list of str), encoder (the model's
        :class:`Encoder`, fused for inference), preprocessing, cells (list of
        :class:`ExplainedCell`), probabilities (the head's posterior from the
        stored vectors), predicted (its class index), target (the explained
        class index), patient (``DATASET/ID`` or ``None``), bag (float32
        (n_cells, dim) stored embeddings of the patient, or ``None``).

    Raises:
        InvalidArgumentError: Neither or both of ``cell`` and ``patient``, a head
            of the wrong kind for them (or a kNN head: not differentiable),
            ``cells`` < 1, or a ``target`` that is not one of the head's classes.
        UnknownHeadError: If the head does not exist.
        UnknownCellError: If the cell has no vector of the head's model.
        UnknownPatientError: If the patient has no embedded cells.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        head: str,
        *,
        cell: int | None = None,
        patient: str | None = None,
        cells: int = 3,
        target: str | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> None:
        if (cell is None) == (patient is None):
            raise InvalidArgumentError("give exactly one of --cell or --patient")
        if cells < 1:
            raise InvalidArgumentError(f"--cells must be >= 1, got {cells}")
        self.store = open_store(store)
        self.head = head
        self.estimator, self.meta = load_head(self.store, head)
        kind = self.meta["kind"]
        if kind == "knn":
            raise InvalidArgumentError(
                f"head {head!r} is a kNN head, which has no gradient: explain "
                "pixels with a linear, MLP or MIL head ('cytostore probe --kind "
                "linear')"
            )
        is_mil = kind == "abmil"
        if cell is not None and is_mil:
            raise InvalidArgumentError(
                f"head {head!r} is a MIL head (patients): use --patient, or a cell head"
            )
        if patient is not None and not is_mil:
            raise InvalidArgumentError(
                f"head {head!r} classifies cells: use --cell, or a MIL head for "
                "--patient"
            )
        self.classes = [str(c) for c in self.estimator.classes_.tolist()]
        es = self.store.embedding_set(self.meta.get("model"))
        self.model_name = str(es.model)
        self.normalize = es.metric == "cosine"
        self.encoder = Encoder.load(
            self.store, self.model_name, device=device, precision="fp32"
        )
        self.preprocessing: Preprocessing = self.encoder.preprocessing
        self.device = self.encoder.device
        self.precision = resolve_precision(precision, self.device)
        self.head_module: nn.Module = self.estimator.logits_module()
        self.head_module.to(self.device)
        self.patient: str | None = None
        self.bag: npt.NDArray[np.float32] | None = None
        if cell is not None:
            self._select_cell(int(cell))
        else:
            self._select_patient(str(patient), cells)
        self.predicted = int(np.argmax(self.probabilities))
        self.target = self.predicted if target is None else self._class_index(target)

    # ------------------------------------------------------------ selection
    def _class_index(self, label: str) -> int:
        if str(label) not in self.classes:
            raise InvalidArgumentError(
                f"--class {label!r} is not a class of head {self.head!r}: choose one "
                f"of {', '.join(self.classes)}"
            )
        return self.classes.index(str(label))

    def _select_cell(self, cell: int) -> None:
        try:
            found = load_cells(
                self.store, self.meta.get("model"), f"cell_id = {cell}", []
            )
        except EmptySelectionError:
            raise UnknownCellError(
                f"no cell {cell} with a vector of model {self.model_name!r}: check "
                "the id ('cytostore sql STORE \"SELECT cell_id FROM cells\"'), or "
                "embed it with 'cytostore embed'"
            ) from None
        vector = np.asarray(found.X[0], np.float32)
        self.probabilities = self.estimator.predict_proba(vector[None])[0]
        self.cells = [self._cell(cell, vector, None, 0)]

    def _select_patient(self, patient: str, top: int) -> None:
        bag = self.meta["bag"]
        found, dataset, pid = load_patient_cells(
            self.store, self.meta.get("model"), bag, patient, []
        )
        self.patient = f"{dataset}/{pid}"
        X = np.ascontiguousarray(found.X, dtype=np.float32)
        self.bag = X
        self.probabilities = self.estimator.predict_proba([X])[0]
        attention = self.estimator.attention([X])[0]
        order = np.argsort(-attention, kind="stable")[:top]
        self.cells = [
            self._cell(int(found.ids[i]), X[i], float(attention[i]), int(i))
            for i in order
        ]

    def _cell(
        self,
        cell_id: int,
        vector: npt.NDArray[np.float32],
        attention: float | None,
        index: int,
    ) -> ExplainedCell:
        from cytostore.data.images import load_rgb_image

        path = self.store.cell_paths([cell_id])[0]
        um = self.store.cell_meta([cell_id], ["um_per_px"]).rows[0][0]
        um_per_px = None if um is None or not np.isfinite(um) else float(um)
        pil = load_rgb_image(path)
        # exactly what the cache (and so embed) does with the file
        crop = self.preprocessing.apply(pil, um_per_px)
        return ExplainedCell(
            cell_id=cell_id,
            path=str(path),
            image=np.asarray(pil, dtype=np.uint8),
            um_per_px=um_per_px,
            crop=crop,
            vector=np.asarray(vector, np.float32),
            attention=attention,
            index=index,
        )

    # -------------------------------------------------------------- models
    def random_backbone(self, seed: int = 0) -> nn.Module:
        """Return the model's backbone re-initialised at random, on device.

        The model-randomisation check [0] explains with it in place of the trained
        backbone, the head unchanged. Its init seed is ``seed`` plus one plus the
        model card's seed, so it never repeats a random-init model's own weights.

        [0] Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018,
        https://arxiv.org/abs/1810.03292
        """
        card = self.encoder.card
        name = card.backbone if card is not None else "tiny"
        own = int(card.seed) if card is not None and card.seed is not None else 0
        module, _ = build_backbone(
            name, crop_px=self.preprocessing.crop_px, seed=seed + 1 + own
        )
        return module.eval().to(self.device).to(memory_format=torch.channels_last)

    def model(
        self, cell: ExplainedCell, backbone: nn.Module | None = None
    ) -> CellModel:
        """Return the pixels-to-logits function of ``cell``.

        Args:
            cell: One of :attr:`cells`.
            backbone: Another backbone (e.g. :meth:`random_backbone`); ``None``:
                the model's trained one.
        """
        bag = None
        if self.bag is not None:
            bag = torch.from_numpy(self.bag).to(self.device)
        return CellModel(
            backbone if backbone is not None else self.encoder.backbone,
            self.preprocessing,
            self.head_module,
            bag=bag,
            index=cell.index,
            precision=self.precision,
            normalize=self.normalize,
        ).to(self.device)

    def sigma_px(self, sigma_um: float) -> float:
        """Return ``sigma_um`` µm in pixels of the preprocessed crop."""
        return float(sigma_um) / self.preprocessing.um_per_px

    def describe(self) -> dict[str, Any]:
        """Return the head, model, prediction and target as JSON-ready values."""
        return {
            "head": self.head,
            "kind": self.meta["kind"],
            "model": self.model_name,
            "patient": self.patient,
            "prediction": {
                "label": self.classes[self.predicted],
                "probability": float(self.probabilities[self.predicted]),
                "probabilities": {
                    c: float(p)
                    for c, p in zip(self.classes, self.probabilities, strict=True)
                },
            },
            "target": self.classes[self.target],
        }
