"""``predict``: apply a saved head to cells (or, for MIL heads, to new patients)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from cytostore.errors import EmptySelectionError
from cytostore.heads._data import load_cells, open_store
from cytostore.heads.mil import make_bags
from cytostore.heads.registry import load_head
from cytostore.store import Store, write_patient_predictions, write_predictions

__all__ = ["predict"]

logger = logging.getLogger(__name__)

_CHUNK = 65536


def _probabilities_json(classes: list[str], proba: np.ndarray) -> list[str]:
    return [
        json.dumps({c: round(float(p), 6) for c, p in zip(classes, row, strict=True)})
        for row in proba
    ]


def predict(
    store: Store | str | os.PathLike[str],
    head: str,
    *,
    where: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Apply a saved head and write its predictions into the catalog.

    A cell-level head writes ``predictions(cell_id, head, label, probability,
    probabilities)`` for every selected embedded cell (replacing earlier rows of
    the head). A MIL head groups the selected cells into bags and writes
    ``patient_predictions`` (``fold`` NULL) for patients it was *not* trained on;
    its out-of-fold predictions for its training patients stay as they are.

    Args:
        store: The store (or its folder).
        head: Name of a saved head.
        where: SQL filter over ``cell_meta`` (``None``: every embedded cell).
        progress: ``progress(done, total)`` over cells (or bags).

    Returns:
        ``{"head", "kind", "table", "n_predicted", "label_counts", ...}`` (MIL adds
        ``skipped_trained_patients``).

    Raises:
        UnknownHeadError: If no head of that name exists.
        EmptySelectionError: If ``where`` selects no embedded cell (or no new patient).
    """
    st = open_store(store)
    estimator, meta = load_head(st, head)
    classes = [str(c) for c in estimator.classes_.tolist()]
    if meta["kind"] == "abmil":
        return _predict_bags(st, head, estimator, meta, classes, where, progress)
    cells = load_cells(st, meta.get("model"), where, [])
    n = len(cells)
    labels: list[str] = []
    probs: list[np.ndarray] = []
    for start in range(0, n, _CHUNK):
        p = estimator.predict_proba(
            np.asarray(cells.X[start : start + _CHUNK], np.float32)
        )
        probs.append(p)
        labels += [classes[j] for j in p.argmax(1)]
        if progress is not None:
            progress(min(start + _CHUNK, n), n)
    proba = np.concatenate(probs)
    write_predictions(
        st,
        head=head,
        cell_id=cells.ids,
        label=labels,
        probability=proba.max(1),
        probabilities=_probabilities_json(classes, proba),
    )
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {
        "head": head,
        "kind": meta["kind"],
        "table": "predictions",
        "n_predicted": n,
        "label_counts": dict(zip(values.tolist(), counts.tolist(), strict=True)),
    }


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
        probabilities=_probabilities_json(classes, proba),
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
