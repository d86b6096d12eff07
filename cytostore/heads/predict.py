"""``predict``: apply a saved head to cells (or, for MIL heads, to new patients).

Cell predictions carry their provenance (see :mod:`cytostore.heads.provenance`):
whether the head was fit on the cell, and how far the cell lies from the head's
training cells. :func:`domain_shift_warning` turns a report into the warning the
CLI prints when the cells lie outside the head's training data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import EmptySelectionError
from cytostore.heads._data import Cells, load_cells, open_store
from cytostore.heads.mil import make_bags
from cytostore.heads.provenance import (
    WARN_FRACTION,
    Training,
    load_training,
    probabilities_json,
    score_cells,
)
from cytostore.heads.registry import load_head
from cytostore.store import Store, write_patient_predictions, write_predictions

__all__ = ["predict", "domain_shift_warning"]

logger = logging.getLogger(__name__)

_CHUNK = 65536


def predict(
    store: Store | str | os.PathLike[str],
    head: str,
    *,
    where: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Apply a saved head and write its predictions into the catalog.

    A cell-level head writes ``predictions(cell_id, head, label, probability,
    probabilities, in_training, fold, train_similarity, out_of_distribution)`` for
    every selected embedded cell: ``in_training`` says whether the head was fit on
    the cell, ``fold`` is NULL (the saved head predicted it), and the last two are
    the out-of-distribution score and flag of :mod:`cytostore.heads.provenance`.
    Cells that already hold an out-of-fold prediction of this head (``fold`` set,
    written by ``probe``) keep it. A MIL head groups the selected cells into bags
    and writes ``patient_predictions`` (``fold`` NULL) for patients it was *not*
    trained on; its out-of-fold predictions for its training patients stay as
    they are.

    Args:
        store: The store (or its folder).
        head: Name of a saved head.
        where: SQL filter over ``cell_meta`` (``None``: every embedded cell).
        progress: ``progress(done, total)`` over cells (or bags).

    Returns:
        ``{"head", "kind", "table", "n_predicted", "label_counts", ...}``. A
        cell-level head (``n_predicted``: the selected cells) adds ``n_written``
        (rows written), ``n_in_training``, ``kept_out_of_fold`` (selected cells
        whose out-of-fold row was kept) and ``out_of_distribution``: ``None`` for a head
        that did not record its training cells, else ``{"n", "n_cells",
        "unseen_datasets", "below_threshold", "threshold", "percentile",
        "trained_on", "warn"}`` over the selected cells (see
        :func:`domain_shift_warning`). ``label_counts`` counts the labels the
        selected cells hold afterwards (kept out-of-fold ones included). MIL adds
        ``skipped_trained_patients``.

    Raises:
        UnknownHeadError: If no head of that name exists.
        EmptySelectionError: If ``where`` selects no embedded cell (or no new patient).
        StoreCorruptError: If the head's files are missing or altered.
    """
    st = open_store(store)
    estimator, meta = load_head(st, head)
    classes = [str(c) for c in estimator.classes_.tolist()]
    if meta["kind"] == "abmil":
        return _predict_bags(st, head, estimator, meta, classes, where, progress)
    model = meta.get("model")
    training = load_training(st, head, meta)
    cells = load_cells(st, model, where, [])
    return _predict_cells(st, head, meta, estimator, classes, training, cells, progress)


def _predict_cells(
    st: Store,
    head: str,
    meta: dict[str, Any],
    estimator: Any,
    classes: list[str],
    training: Training | None,
    cells: Cells,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    n = len(cells)
    labels = np.empty(n, dtype=object)
    probability = np.zeros(n)
    documents = np.empty(n, dtype=object)
    similarity = np.full(n, np.nan)
    in_training = np.zeros(n, dtype=bool)
    unseen = np.zeros(n, dtype=bool)
    below = np.zeros(n, dtype=bool)
    datasets = np.empty(n, dtype=object)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        X = np.asarray(cells.X[part], np.float32)
        p = estimator.predict_proba(X)
        labels[part] = [classes[j] for j in p.argmax(1)]
        probability[part] = p.max(1)
        documents[part] = probabilities_json(classes, p)
        if training is not None:
            sc = score_cells(st, meta.get("model"), training, cells.ids[part], X)
            similarity[part], in_training[part] = sc.similarity, sc.in_training
            unseen[part], below[part] = sc.unseen_dataset, sc.below_threshold
            datasets[part] = sc.datasets
        if progress is not None:
            progress(part.stop, n)
    kept = _out_of_fold_labels(st, head)
    rows = np.nonzero(~np.isin(cells.ids, np.fromiter(kept, np.int64, len(kept))))[0]
    known = training is not None
    write_predictions(
        st,
        head=head,
        cell_id=cells.ids[rows],
        label=labels[rows].tolist(),
        probability=probability[rows],
        probabilities=documents[rows].tolist(),
        in_training=in_training[rows].tolist() if known else None,
        train_similarity=_nan_to_none(similarity[rows]) if known else None,
        out_of_distribution=(unseen | below)[rows].tolist() if known else None,
    )
    final = [kept.get(int(i), lab) for i, lab in zip(cells.ids, labels, strict=True)]
    values, counts = np.unique(np.asarray(final, dtype=str), return_counts=True)
    shift = None
    if training is not None:
        shift = _shift_report(training, datasets, unseen, below)
    return {
        "head": head,
        "kind": meta["kind"],
        "table": "predictions",
        "n_predicted": n,
        "n_written": int(rows.size),
        "n_in_training": int(in_training.sum()) if known else None,
        "kept_out_of_fold": int(n - rows.size),
        "out_of_distribution": shift,
        "label_counts": dict(zip(values.tolist(), counts.tolist(), strict=True)),
    }


def _nan_to_none(values: npt.NDArray[np.float64]) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values.tolist()]


def _out_of_fold_labels(st: Store, head: str) -> dict[int, str]:
    rows = st.sql(
        "SELECT cell_id, label FROM predictions WHERE head = ? AND fold IS NOT NULL",
        [head],
    ).rows
    return {int(r[0]): str(r[1]) for r in rows}


def _shift_report(
    training: Training,
    datasets: npt.NDArray[Any],
    unseen: npt.NDArray[np.bool_],
    below: npt.NDArray[np.bool_],
) -> dict[str, Any]:
    n_cells = int(unseen.size)
    names, counts = np.unique(datasets[unseen].astype(str), return_counts=True)
    warn = bool(unseen.any()) or (
        n_cells > 0 and float(below.sum()) / n_cells > WARN_FRACTION
    )
    return {
        "n": int((unseen | below).sum()),
        "n_cells": n_cells,
        "unseen_datasets": dict(zip(names.tolist(), counts.tolist(), strict=True)),
        "below_threshold": int(below.sum()),
        "threshold": training.threshold,
        "percentile": training.percentile,
        "trained_on": dict(training.datasets),
        "warn": warn,
    }


def domain_shift_warning(result: dict[str, Any]) -> str | None:
    """Return the warning a ``predict`` report calls for, or ``None``.

    It is due when some selected cells come from a dataset the head was not
    trained on, or more than :data:`~cytostore.heads.provenance.WARN_FRACTION`
    of them are less similar to every training cell than the head's threshold.

    Args:
        result: The report :func:`predict` returned.

    Returns:
        One line (without a ``warning:`` prefix), or ``None`` when all is well.

    Examples:
        >>> shift = {"n": 3, "n_cells": 4, "unseen_datasets": {"lmu": 3},
        ...     "below_threshold": 1, "threshold": 0.9, "percentile": 1.0,
        ...     "trained_on": {"bm": 9}, "warn": True}
        >>> print(domain_shift_warning({"out_of_distribution": shift}))
        ... # doctest: +NORMALIZE_WHITESPACE
        3 of 4 cells are outside the head's training data (dataset lmu: 3 cells;
        the head was trained on bm; 1 less similar to every training cell than
        0.900, the 1st percentile of the training cells' own nearest-neighbour
        similarity): its predictions there are unvalidated (see
        out_of_distribution, train_similarity in predictions)
    """
    shift = result.get("out_of_distribution")
    if not shift or not shift.get("warn"):
        return None
    parts = [
        f"dataset {name}: {count} cells"
        for name, count in shift["unseen_datasets"].items()
    ]
    parts.append(f"the head was trained on {', '.join(shift['trained_on'])}")
    if shift["threshold"] is not None:
        pct = float(shift["percentile"])
        parts.append(
            f"{shift['below_threshold']} less similar to every training cell than "
            f"{shift['threshold']:.3f}, the {pct:g}{_ordinal(pct)} percentile of "
            "the training cells' own nearest-neighbour similarity"
        )
    return (
        f"{shift['n']} of {shift['n_cells']} cells are outside the head's training "
        f"data ({'; '.join(parts)}): its predictions there are unvalidated (see "
        "out_of_distribution, train_similarity in predictions)"
    )


def _ordinal(value: float) -> str:
    if value != int(value) or 10 <= int(value) % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(int(value) % 10, "th")


def _predict_bags(
    st: Store,
    head: str,
    estimator: Any,
    meta: dict[str, Any],
    classes: list[str],
    where: str | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    bag = meta["bag"]
    cells = load_cells(st, meta.get("model"), where, [bag, "dataset", "patient_id"])
    bagged, excluded = make_bags(cells, bag, None)
    trained = {tuple(k) for k in meta.get("trained_bags", [])}
    todo = [i for i, k in enumerate(bagged.keys) if k not in trained]
    skipped = len(bagged.keys) - len(todo)
    if not todo:
        raise EmptySelectionError(
            f"every selected patient ({skipped}) was used to train head {head!r}: "
            "their "
            "out-of-fold predictions are in patient_predictions already; select new "
            "patients with --where"
        )
    X = np.asarray(cells.X, np.float32)
    bags = [X[bagged.rows[i]] for i in todo]
    proba = estimator.predict_proba(bags)
    if progress is not None:
        progress(len(todo), len(todo))
    labels = [classes[j] for j in proba.argmax(1)]
    keys = [bagged.keys[i] for i in todo]
    write_patient_predictions(
        st,
        head=head,
        dataset=[k[0] for k in keys],
        patient_id=[k[1] for k in keys],
        label=labels,
        probability=proba.max(1),
        probabilities=probabilities_json(classes, proba),
    )
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {
        "head": head,
        "kind": meta["kind"],
        "table": "patient_predictions",
        "n_predicted": len(keys),
        "skipped_trained_patients": skipped,
        "excluded": excluded,
        "label_counts": dict(zip(values.tolist(), counts.tolist(), strict=True)),
    }
