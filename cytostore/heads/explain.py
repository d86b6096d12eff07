"""``explain``: a prediction shown with real, labelled look-alike cells.

For a cell: the head's prediction and the cell's nearest labelled cells. For a
patient (MIL head): the subtype prediction, the cells with the most attention,
and for each of them its nearest labelled cells from any dataset (other patients).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    UnknownCellError,
)
from cytostore.heads._data import (
    load_cells,
    load_patient_cells,
    open_store,
    sql_literal,
)
from cytostore.heads.registry import load_head
from cytostore.store import Store, to_similarity

__all__ = ["explain"]

logger = logging.getLogger(__name__)


def _reference_label(st: Store, preferred: str | None) -> str:
    if preferred:
        return preferred
    cols = set(st.columns("cell_meta"))
    if "cell_type" in cols:
        n = st.sql("SELECT count(*) FROM cells WHERE cell_type IS NOT NULL").rows[0][0]
        if n:
            return "cell_type"
    return "label"


def _similarities(values: npt.NDArray[np.float32], metric: str) -> list[float | None]:
    """Return search scores as ``similarity`` values (None where there is no hit)."""
    return [None if np.isnan(v) else float(v) for v in to_similarity(values, metric)]


def _neighbours(
    st: Store,
    model: str | int | None,
    cell_id: int,
    k: int,
    where: str,
    label: str,
    metric: str,
) -> list[dict[str, Any]]:
    sims, ids = st.search(int(cell_id), k, where=where, model=model)
    hit = ids[0] >= 0
    nn_ids = ids[0][hit]
    sim = _similarities(sims[0][hit], metric)
    if nn_ids.size == 0:
        return []
    meta = st.cell_meta(nn_ids, ["cell_id", label, "dataset", "patient_id"]).rows
    return [
        {
            "cell_id": int(r[0]),
            "label": r[1],
            "dataset": r[2],
            "patient_id": r[3],
            "similarity": s,
        }
        for r, s in zip(meta, sim, strict=True)
    ]


def _tile(st: Store, cell_id: int) -> npt.NDArray[np.uint8]:
    from cytostore.data import load_rgb
    from cytostore.errors import CytostoreError

    try:
        return load_rgb(st.cell_paths([cell_id])[0])
    except (CytostoreError, OSError) as exc:
        logger.warning("cell %d: picture unavailable (%s)", cell_id, exc)
        return np.full((64, 64, 3), 200, dtype=np.uint8)


def _fmt_sim(s: float | None) -> str:
    return "-" if s is None else f"{s:.3f}"


def explain(
    store: Store | str | os.PathLike[str],
    head: str,
    *,
    cell: int | None = None,
    patient: str | None = None,
    k: int = 5,
    top: int = 5,
    reference_label: str | None = None,
    montage: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Explain a head's prediction for one cell or one patient with look-alike cells.

    Args:
        store: The store (or its folder).
        head: Name of a saved head (cell-level for ``cell``, MIL for ``patient``).
        cell: Cell id to explain.
        patient: Patient (bag) to explain, as ``ID`` or ``DATASET/ID``.
        k: Nearest labelled cells per explained cell.
        top: Top-attention cells of a patient.
        reference_label: Column labelling the neighbours (default: the head's label
            for a cell; ``cell_type`` if filled, else ``label``, for a patient).
        montage: Write a PNG grid here: each row an explained cell (red border)
            followed by its neighbours, with labels, datasets and similarities.

    Returns:
        For a cell: ``{"cell_id", "prediction": {"label", "probability",
        "probabilities"}, "true_label", "neighbors": [{"cell_id", "label",
        "dataset", "patient_id", "similarity"}]}`` (similarity, higher is closer:
        the cosine similarity for cosine sets, minus the squared L2 distance for l2
        sets, as in ``search``); for a patient: ``{"patient",
        "prediction", "true_label", "out_of_fold", "top_cells": [{"cell_id",
        "attention", "neighbors"}]}``; both with ``"montage"`` when written.

    Raises:
        InvalidArgumentError: Neither or both of ``cell``/``patient``, or a head of
            the wrong kind.
        UnknownHeadError: If the head does not exist.
        UnknownCellError: If the cell has no vector in the head's set.
        UnknownPatientError: If the patient has no embedded cells.
    """
    if (cell is None) == (patient is None):
        raise InvalidArgumentError("give exactly one of --cell or --patient")
    if k < 1 or top < 1:
        raise InvalidArgumentError("k and top must be >= 1")
    st = open_store(store)
    estimator, meta = load_head(st, head)
    model = meta.get("model")
    metric = st.embedding_set(model).metric
    classes = [str(c) for c in estimator.classes_.tolist()]
    is_mil = meta["kind"] == "abmil"
    if cell is not None:
        if is_mil:
            raise InvalidArgumentError(
                f"head {head!r} is a MIL head (patients): use --patient, or a cell head"
            )
        out = _explain_cell(
            st, estimator, meta, classes, int(cell), k, reference_label, metric
        )
        rows = [
            (
                int(cell),
                f"cell {cell}\npred {out['prediction']['label']} "
                f"{out['prediction']['probability']:.2f}",
                out["neighbors"],
            )
        ]
    else:
        if not is_mil:
            raise InvalidArgumentError(
                f"head {head!r} classifies cells: use --cell, or a MIL head for "
                "--patient"
            )
        out = _explain_patient(
            st, estimator, meta, classes, str(patient), k, top, reference_label, metric
        )
        rows = [
            (
                c["cell_id"],
                f"cell {c['cell_id']}\natt {c['attention']:.3f}",
                c["neighbors"],
            )
            for c in out["top_cells"]
        ]
    out["head"] = head
    if montage is not None:
        out["montage"] = str(_draw(st, rows, k, Path(montage), out))
    return out


def _explain_cell(
    st: Store,
    estimator: Any,
    meta: dict[str, Any],
    classes: list[str],
    cell: int,
    k: int,
    reference_label: str | None,
    metric: str,
) -> dict[str, Any]:
    label = meta["label"]
    ref = reference_label or label
    try:
        cells = load_cells(st, meta.get("model"), f"cell_id = {cell}", [label])
    except EmptySelectionError:
        raise UnknownCellError(
            f"no cell {cell} with a vector of model {meta.get('model')!r}: check "
            "the id ('cytostore sql STORE \"SELECT cell_id FROM cells\"'), or embed "
            "it with 'cytostore embed'"
        ) from None
    proba = estimator.predict_proba(np.asarray(cells.X, np.float32))[0]
    j = int(proba.argmax())
    where = f'"{ref}" IS NOT NULL AND trim(CAST("{ref}" AS VARCHAR)) <> \'\''
    return {
        "cell_id": cell,
        "prediction": {
            "label": classes[j],
            "probability": float(proba[j]),
            "probabilities": {c: float(p) for c, p in zip(classes, proba, strict=True)},
        },
        "true_label": cells.meta[label][0],
        "reference_label": ref,
        "neighbors": _neighbours(st, meta.get("model"), cell, k, where, ref, metric),
    }


def _explain_patient(
    st: Store,
    estimator: Any,
    meta: dict[str, Any],
    classes: list[str],
    patient: str,
    k: int,
    top: int,
    reference_label: str | None,
    metric: str,
) -> dict[str, Any]:
    bag = meta["bag"]
    cells, dataset, pid = load_patient_cells(
        st, meta.get("model"), bag, patient, [bag, meta["label"]]
    )
    X = np.asarray(cells.X, np.float32)
    proba = estimator.predict_proba([X])[0]
    att = estimator.attention([X])[0]
    j = int(proba.argmax())
    order = np.argsort(-att, kind="stable")[:top]
    ref = _reference_label(st, reference_label)
    nn_where = (
        f'"{ref}" IS NOT NULL AND (coalesce(CAST("{bag}" AS VARCHAR), \'\') <> '
        f"{sql_literal(pid)} OR dataset <> {sql_literal(dataset)})"
    )
    top_cells = [
        {
            "cell_id": int(cells.ids[i]),
            "attention": float(att[i]),
            "neighbors": _neighbours(
                st, meta.get("model"), int(cells.ids[i]), k, nn_where, ref, metric
            ),
        }
        for i in order
    ]
    oof = st.sql(
        "SELECT label, probability, fold FROM patient_predictions "
        "WHERE head = ? AND dataset = ? AND patient_id = ? AND fold IS NOT NULL",
        [meta["name"], dataset, pid],
    ).dicts()
    labels = {str(v) for v in cells.meta[meta["label"]] if v is not None}
    return {
        "patient": f"{dataset}/{pid}",
        "n_cells": int(X.shape[0]),
        "prediction": {
            "label": classes[j],
            "probability": float(proba[j]),
            "probabilities": {c: float(p) for c, p in zip(classes, proba, strict=True)},
        },
        "true_label": sorted(labels)[0] if len(labels) == 1 else None,
        "out_of_fold": oof[0] if oof else None,
        "trained_on": [dataset, pid] in meta.get("trained_bags", []),
        "reference_label": ref,
        "top_cells": top_cells,
    }


def _draw(
    st: Store,
    rows: list[tuple[int, str, list[dict[str, Any]]]],
    k: int,
    out: Path,
    result: dict[str, Any],
) -> Path:
    from cytostore.data import montage

    images: list[npt.NDArray[np.uint8]] = []
    captions: list[str] = []
    highlight: list[int] = []
    blank = np.full((8, 8, 3), 255, dtype=np.uint8)
    for cell_id, caption, neighbours in rows:
        highlight.append(len(images))
        images.append(_tile(st, cell_id))
        captions.append(caption)
        for j in range(k):
            if j < len(neighbours):
                nb = neighbours[j]
                images.append(_tile(st, nb["cell_id"]))
                captions.append(
                    f"{nb['label']} ({nb['dataset']})\nsim {_fmt_sim(nb['similarity'])}"
                )
            else:
                images.append(blank)
                captions.append("")
    pred = result["prediction"]
    who = (
        f"cell {result['cell_id']}"
        if "cell_id" in result
        else f"patient {result['patient']}"
    )
    title = f"{who}: predicted {pred['label']} (p={pred['probability']:.2f})"
    if result.get("true_label") is not None:
        title += f", recorded {result['true_label']}"
    return montage(images, captions, out, ncols=k + 1, title=title, highlight=highlight)
