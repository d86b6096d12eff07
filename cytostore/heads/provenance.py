"""Where a head's predictions come from, and how far new cells lie from its training.

A saved cell-level head records the cells it was trained on (``train_ids.npy`` in its
folder, sorted int64 cell ids) and, in ``head.json``'s ``training``, the datasets
they come from and the calibration of its **out-of-distribution score**:

- the score of a cell is its similarity to the nearest training cell of the head,
  itself excluded (the store's search over the head's embedding set, restricted to
  the training cells: cosine similarity for ``cosine`` sets, minus the squared L2
  distance for ``l2`` sets, so higher is always closer);
- the threshold is the :data:`OOD_PERCENTILE`-th percentile of the same score over
  (a seeded sample of :data:`CALIBRATION_CELLS`) training cells, each compared with
  the *other* training cells (leave-one-out): about 1 % of training cells fall
  below it. It is computed from training cells only, when the head is saved;
- a cell is *out of distribution* when its dataset is not one the head was trained
  on, or its score is below the threshold.

``probe`` collects its held-out predictions with :class:`OutOfFold` (fold by fold,
or :meth:`OutOfFold.from_cv`) and hands :meth:`OutOfFold.finish`'s
:class:`Provenance` to ``save_head(..., provenance=...)``, which writes the ids next
to the head and the ``predictions`` rows in the transaction that registers it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import StoreCorruptError
from cytostore.store import Store, resolve_inside, write_predictions

__all__ = [
    "CALIBRATION_CELLS",
    "OOD_PERCENTILE",
    "WARN_FRACTION",
    "OutOfFold",
    "Provenance",
    "Scores",
    "Training",
    "describe_training",
    "load_training",
    "probabilities_json",
    "score_cells",
]

#: Percentile of the training cells' leave-one-out score used as the threshold.
OOD_PERCENTILE = 1.0
#: Training cells (a seeded sample) the threshold is calibrated on.
CALIBRATION_CELLS = 2000
#: ``predict`` warns when more than this fraction of the cells score below the
#: threshold (five times the rate of the training cells themselves), or when any
#: cell comes from a dataset the head was not trained on.
WARN_FRACTION = 0.05
_IDS_FILE = "train_ids.npy"
_CHUNK = 16384
_SCORE = (
    "similarity to the nearest training cell, itself excluded (cosine; minus the "
    "squared L2 distance for l2 sets)"
)


def probabilities_json(classes: list[str], proba: npt.NDArray[Any]) -> list[str]:
    """Return one JSON document ``{class: probability}`` per row of ``proba``."""
    return [
        json.dumps({c: round(float(p), 6) for c, p in zip(classes, row, strict=True)})
        for row in proba
    ]


@dataclass
class Training:
    """What a saved head was trained on.

    Attributes:
        ids: Sorted int64 ids of its training cells.
        datasets: ``{dataset: training cells}``.
        threshold: Scores below it are out of distribution (``None``: fewer than two
            training cells, no threshold).
        percentile: The percentile of the training scores the threshold is.
    """

    ids: npt.NDArray[np.int64]
    datasets: dict[str, int]
    threshold: float | None
    percentile: float = OOD_PERCENTILE


@dataclass
class Scores:
    """Provenance of a batch of cells with respect to one head, row-aligned.

    Attributes:
        in_training: bool (n,): the cell is one of the head's training cells.
        similarity: float64 (n,): the out-of-distribution score (NaN: no other
            training cell to compare with).
        unseen_dataset: bool (n,): the cell's dataset is not one it was trained on.
        below_threshold: bool (n,): the score is below the head's threshold.
        datasets: object (n,): each cell's dataset.
    """

    in_training: npt.NDArray[np.bool_]
    similarity: npt.NDArray[np.float64]
    unseen_dataset: npt.NDArray[np.bool_]
    below_threshold: npt.NDArray[np.bool_]
    datasets: npt.NDArray[Any]

    @property
    def out_of_distribution(self) -> npt.NDArray[np.bool_]:
        """Return bool (n,): an unseen dataset or a score below the threshold."""
        return self.unseen_dataset | self.below_threshold

    def similarity_or_none(self) -> list[float | None]:
        """Return the scores as a list with ``None`` for NaN (NULL in SQL)."""
        return [None if np.isnan(s) else float(s) for s in self.similarity.tolist()]


def _nearest_scores(
    searcher: Any, X: npt.ArrayLike, ids: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Return each row's score against the searcher's cells, its own id excluded."""
    X = np.asarray(X)
    out = np.full(ids.size, np.nan)
    for lo in range(0, ids.size, _CHUNK):
        hi = min(lo + _CHUNK, ids.size)
        dist, nn = searcher.knn(searcher.prepare(X[lo:hi]), 1, ids[lo:hi])
        s = dist[:, 0].astype(np.float64)
        if not searcher.larger_is_closer:
            s = -s
        s[nn[:, 0] < 0] = np.nan
        out[lo:hi] = s
    return out


def _datasets_of(store: Store, ids: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    rows = store.cell_meta(ids, ["cell_id", "dataset"]).rows
    by_id = {int(r[0]): r[1] for r in rows}
    out = np.empty(ids.size, dtype=object)
    out[:] = [by_id.get(int(i)) for i in ids.tolist()]
    return out


def _training_searcher(store: Store, model: str | int | None, ids: Any) -> Any:
    return store.searcher(model).restricted(ids, "the head's training cells")


def describe_training(
    store: Store,
    model: str | int | None,
    train_ids: npt.ArrayLike,
    *,
    percentile: float = OOD_PERCENTILE,
    n_calibration: int = CALIBRATION_CELLS,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the ``training`` record of a head: its datasets and OOD threshold.

    The threshold is the ``percentile``-th percentile of the leave-one-out score
    (see the module docstring) of a seeded sample of ``n_calibration`` training
    cells against all the others; nothing but training cells is looked at.

    Args:
        store: The store.
        model: Model name or set id whose vectors the head was trained on.
        train_ids: The head's training cell ids.
        percentile: Percentile of the training scores taken as the threshold.
        n_calibration: Training cells sampled for the calibration.
        seed: Seed of the sample.

    Returns:
        ``{"n_cells", "datasets", "ids_file", "ood": {"score", "metric",
        "percentile", "threshold", "n_calibration", "seed"}}`` (JSON-able).

    Raises:
        EmptySelectionError: If no training cell has a vector in the set.
    """
    ids = np.unique(np.asarray(train_ids, dtype=np.int64))
    datasets = Counter(str(d) for d in _datasets_of(store, ids).tolist())
    searcher = _training_searcher(store, model, ids)
    sample = ids
    if ids.size > n_calibration:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(ids, n_calibration, replace=False))
    scores = _nearest_scores(searcher, searcher.vector_of(sample), sample)
    scores = scores[~np.isnan(scores)]
    threshold = float(np.percentile(scores, percentile)) if scores.size else None
    return {
        "n_cells": int(ids.size),
        "datasets": dict(sorted(datasets.items())),
        "ids_file": _IDS_FILE,
        "ood": {
            "score": _SCORE,
            "metric": searcher.es.metric,
            "percentile": percentile,
            "threshold": threshold,
            "n_calibration": int(sample.size),
            "seed": seed,
        },
    }


def score_cells(
    store: Store,
    model: str | int | None,
    training: Training,
    ids: npt.NDArray[np.int64],
    X: npt.ArrayLike,
) -> Scores:
    """Return the provenance of cells (rows of ``X``) with respect to a head.

    Args:
        store: The store.
        model: Model name or set id of the head's embeddings.
        training: The head's :class:`Training`.
        ids: int64 (n,) the cells' ids.
        X: (n, dim) their vectors in that set.

    Returns:
        The :class:`Scores`.
    """
    ids = np.asarray(ids, dtype=np.int64)
    searcher = _training_searcher(store, model, training.ids)
    similarity = _nearest_scores(searcher, X, ids)
    datasets = _datasets_of(store, ids)
    unseen = np.asarray([str(d) not in training.datasets for d in datasets], bool)
    below = np.zeros(ids.size, dtype=bool)
    if training.threshold is not None:
        below = ~np.isnan(similarity) & (similarity < training.threshold)
    return Scores(
        in_training=np.isin(ids, training.ids),
        similarity=similarity,
        unseen_dataset=unseen,
        below_threshold=below,
        datasets=datasets,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_training(store: Store, name: str, meta: dict[str, Any]) -> Training | None:
    """Return what head ``name`` was trained on, or ``None`` if it did not record it.

    Heads saved before cytostore recorded their training cells (and MIL heads)
    have no ``training`` record: their predictions get NULL provenance.

    Args:
        store: The store.
        name: The head's name.
        meta: Its metadata, as :func:`~cytostore.heads.registry.load_head` returns.

    Returns:
        The :class:`Training`, or ``None``.

    Raises:
        StoreCorruptError: If ``train_ids.npy`` is missing, outside the store,
            altered, or not a 1-D int64 array.
    """
    info = meta.get("training")
    if not isinstance(info, dict):
        return None
    rows = store.sql("SELECT path FROM heads WHERE name = ?", [name]).rows
    fix = f"retrain head {name!r} with the command in its head.json 'cli'"
    if not rows:
        return None
    folder = resolve_inside(store.root, str(rows[0][0]), what=f"head {name!r} folder")
    if not folder.is_dir() and folder.with_name(f".{folder.name}.old").is_dir():
        folder = folder.with_name(f".{folder.name}.old")  # a save crashed mid-rename
    rel = (folder / _IDS_FILE).relative_to(store.root.resolve())
    path = resolve_inside(store.root, rel, what=f"head {name!r} training ids")
    try:
        if _sha256(path) != info.get("ids_sha256"):
            raise StoreCorruptError(
                f"head {name!r}: {path} differs from the sha256 in head.json "
                f"(altered or replaced): {fix}"
            )
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreCorruptError(
            f"head {name!r}: {path} is unreadable ({type(exc).__name__}): {fix}"
        ) from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype != np.int64:
        raise StoreCorruptError(
            f"head {name!r}: {path} is not a 1-D int64 array of cell ids: {fix}"
        )
    ood = info.get("ood")
    ood = ood if isinstance(ood, dict) else {}
    threshold = ood.get("threshold")
    datasets = info.get("datasets")
    datasets = datasets if isinstance(datasets, dict) else {}
    return Training(
        ids=np.sort(ids),
        datasets={str(k): int(v) for k, v in datasets.items()},
        threshold=None if threshold is None else float(threshold),
        percentile=float(ood.get("percentile", OOD_PERCENTILE)),
    )


@dataclass
class Provenance:
    """A head's training cells, ``training`` record and predictions, for saving.

    ``save_head`` calls :meth:`save` on the head's temporary folder and
    :meth:`write_rows` inside the transaction that registers the head.

    Attributes:
        train_ids: Sorted int64 ids of the cells the saved head was fit on.
        training: The ``training`` record (:func:`describe_training`).
        columns: ``write_predictions`` columns of its predictions (may be empty).
    """

    train_ids: npt.NDArray[np.int64]
    training: dict[str, Any]
    columns: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> dict[str, Any]:
        """Write ``train_ids.npy`` into ``folder`` (fsynced).

        Returns:
            The ``training`` record with the file's ``ids_sha256``, for head.json.

        Raises:
            OSError: If the file cannot be written.
        """
        path = folder / _IDS_FILE
        with open(path, "wb") as f:
            np.save(f, np.asarray(self.train_ids, dtype="<i8"), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        return self.training | {"ids_sha256": _sha256(path)}

    def write_rows(self, store: Store, head: str) -> int:
        """Replace every ``predictions`` row of ``head`` with these (one transaction).

        Returns:
            The number of rows written.
        """
        cols = self.columns or {
            k: [] for k in ("cell_id", "label", "probability", "probabilities")
        }
        return write_predictions(store, head=head, replace_head=True, **cols)


class OutOfFold:
    """Collects a cross-validation's held-out predictions, fold by fold.

    Args:
        cell_ids: int64 (n,) the ids of the rows the folds index.

    Examples:
        >>> import numpy as np
        >>> oof = OutOfFold(np.array([10, 11, 12]))
        >>> oof.add(0, np.array([2]), np.array([[0.25, 0.75]]), ["a", "b"])
        >>> oof.fold_of.tolist()
        [-1, -1, 0]
    """

    def __init__(self, cell_ids: npt.ArrayLike) -> None:
        self.cell_ids = np.asarray(cell_ids, dtype=np.int64)
        self.fold_of = np.full(self.cell_ids.size, -1, dtype=np.int64)
        n = self.cell_ids.size
        self._label = np.empty(n, dtype=object)
        self._probability = np.full(n, np.nan)
        self._json = np.empty(n, dtype=object)

    @classmethod
    def from_cv(cls, cell_ids: npt.ArrayLike, cv: Any) -> OutOfFold:
        """Return a collector filled from a cross-validation's pooled outputs.

        Args:
            cell_ids: int64 (n,) the ids of the rows the folds index.
            cv: An object with ``rows``, ``fold_of``, ``proba`` and ``classes``
                (``cytostore.heads.evaluate.CVResult``).

        Returns:
            The :class:`OutOfFold` holding every tested row's prediction.
        """
        oof = cls(cell_ids)
        fold_of = np.asarray(cv.fold_of)
        for f in np.unique(fold_of).tolist():
            take = fold_of == f
            oof.add(int(f), np.asarray(cv.rows)[take], cv.proba[take], cv.classes)
        return oof

    def add(
        self,
        fold: int,
        rows: npt.NDArray[np.integer[Any]],
        proba: npt.NDArray[Any],
        classes: Any,
        labels: npt.ArrayLike | None = None,
    ) -> None:
        """Record the predictions of fold ``fold``'s model for its held-out ``rows``.

        Args:
            fold: The fold's 0-based number.
            rows: Row indices (into ``cell_ids``) the fold tested.
            proba: (len(rows), n_classes) class probabilities.
            classes: The fold model's ``classes_``.
            labels: The predicted labels (``None``: the most probable class).
        """
        names = [str(c) for c in np.asarray(classes).tolist()]
        proba = np.asarray(proba, dtype=np.float64)
        if labels is None:
            labels = [names[j] for j in proba.argmax(1)]
        self.fold_of[rows] = fold
        self._label[rows] = [str(v) for v in np.asarray(labels).tolist()]
        self._probability[rows] = proba.max(1)
        self._json[rows] = probabilities_json(names, proba)

    def finish(
        self,
        store: Store,
        model: str | int | None,
        head: Any,
        X: npt.ArrayLike,
        train_rows: npt.NDArray[np.integer[Any]],
        *,
        seed: int = 0,
    ) -> Provenance:
        """Return the saved head's :class:`Provenance`, its predictions included.

        Rows a fold held out keep that fold's prediction (``fold`` set); training
        rows no fold held out are predicted by the saved ``head`` (``fold`` NULL).
        ``in_training`` says whether the saved head was fit on the cell.

        Args:
            store: The store.
            model: Model name or set id of the features.
            head: The saved (fitted) head.
            X: (n, dim) the rows' vectors, aligned with ``cell_ids``.
            train_rows: Row indices the saved head was fit on.
            seed: Seed of the threshold's calibration sample.

        Returns:
            The :class:`Provenance` to pass to ``save_head``.
        """
        X = np.asarray(X)
        in_train = np.zeros(self.cell_ids.size, dtype=bool)
        in_train[np.asarray(train_rows)] = True
        fill = np.nonzero(in_train & (self.fold_of < 0))[0]
        if fill.size:
            proba = head.predict_proba(np.asarray(X[fill], dtype=np.float32))
            names = [str(c) for c in np.asarray(head.classes_).tolist()]
            self._label[fill] = [names[j] for j in proba.argmax(1)]
            self._probability[fill] = np.asarray(proba).max(1)
            self._json[fill] = probabilities_json(names, proba)
        rows = np.nonzero(in_train | (self.fold_of >= 0))[0]
        train_ids = np.unique(self.cell_ids[in_train])
        training = describe_training(store, model, train_ids, seed=seed)
        ood = training["ood"]
        scores = score_cells(
            store,
            model,
            Training(train_ids, training["datasets"], ood["threshold"]),
            self.cell_ids[rows],
            X[rows],
        )
        fold = self.fold_of[rows]
        columns = {
            "cell_id": self.cell_ids[rows],
            "label": self._label[rows].tolist(),
            "probability": self._probability[rows].tolist(),
            "probabilities": self._json[rows].tolist(),
            "in_training": in_train[rows].tolist(),
            "fold": [None if f < 0 else int(f) for f in fold.tolist()],
            "train_similarity": scores.similarity_or_none(),
            "out_of_distribution": scores.out_of_distribution.tolist(),
        }
        return Provenance(train_ids, training, columns)
