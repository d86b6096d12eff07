"""What audit and select share: patient groups, neighbours, tiles."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.store import Cells, Store, is_missing

__all__ = [
    "GROUP_COLUMNS",
    "groups_of",
    "open_store",
    "other_group_neighbors",
    "tiles",
    "unit_rows",
]

logger = logging.getLogger(__name__)

#: The columns that say which patient a cell comes from.
GROUP_COLUMNS = ("dataset", "patient_id")


def groups_of(cells: Cells) -> npt.NDArray[np.object_]:
    """Return each cell's patient as ``"dataset/patient_id"`` (``None``: none)."""
    out = np.empty(len(cells), dtype=object)
    out[:] = [
        None if is_missing(p) else f"{d}/{p}"
        for d, p in zip(cells.meta["dataset"], cells.meta["patient_id"], strict=True)
    ]
    return out


def unit_rows(X: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Return the rows of ``X`` as float32 unit vectors (zero rows stay zero)."""
    Xf = np.asarray(X, dtype=np.float32)
    norm = np.linalg.norm(Xf, axis=1, keepdims=True)
    return (Xf / np.where(norm > 0, norm, 1.0)).astype(np.float32, copy=False)


def other_group_neighbors(
    store: Store,
    model: str | int | None,
    ids: npt.NDArray[np.int64],
    groups: npt.NDArray[np.object_],
    k: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Return each cell's ``k`` nearest cells among ``ids`` from *other* patients.

    The store's search (its FAISS index, restricted by an id selector) answers: the
    cells of one patient are searched among the cells of every other patient; a cell
    without a patient among all cells but itself.

    Args:
        store: The store.
        model: The embedding set.
        ids: int64 ``(n,)`` candidate (and query) cells.
        groups: Each cell's patient (``None``: none), as from :func:`groups_of`.
        k: Neighbours per cell.

    Returns:
        ``(similarity, neighbour ids)``, each ``(n, k)``: cosine similarity (or
        squared L2 distance for an L2 set), NaN and -1 where fewer exist.
    """
    searcher = store.searcher(model)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    n = ids.size
    sim = np.full((n, k), np.nan, dtype=np.float32)
    nb = np.full((n, k), -1, dtype=np.int64)
    keys = np.asarray(["" if g is None else str(g) for g in groups], dtype=object)
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        if key:
            others = np.setdiff1d(sorted_ids, ids[rows], assume_unique=True)
            if others.size == 0:
                continue
            part = searcher.restricted(others, f"patient other than {key}")
            d, i = part.knn(part.prepare(part.vector_of(ids[rows])), k)
        else:
            part = searcher.restricted(sorted_ids, "the cells audited")
            d, i = part.knn(part.prepare(part.vector_of(ids[rows])), k, ids[rows])
        sim[rows], nb[rows] = d, i
    return sim, nb


def tiles(store: Store, cell_ids: npt.ArrayLike) -> dict[int, npt.NDArray[np.uint8]]:
    """Return each cell's picture as uint8 RGB, by id (one catalog visit for all).

    A picture that cannot be read is a grey square (and a warning in the log).
    """
    from cytostore.data import load_rgb
    from cytostore.errors import CytostoreError

    ids = sorted({int(i) for i in np.asarray(cell_ids).reshape(-1).tolist() if i >= 0})
    grey = np.full((64, 64, 3), 200, dtype=np.uint8)
    try:
        paths = store.cell_paths(ids)
    except CytostoreError as exc:
        logger.warning("pictures unavailable (%s)", exc)
        return dict.fromkeys(ids, grey)
    out = {}
    for cell_id, path in zip(ids, paths, strict=True):
        try:
            out[cell_id] = load_rgb(path)
        except (CytostoreError, OSError) as exc:
            logger.warning("cell %d: picture unavailable (%s)", cell_id, exc)
            out[cell_id] = grey
    return out


def plain(value: Any) -> Any:
    """Return numpy scalars as Python values (for JSON reports)."""
    return value.item() if isinstance(value, np.generic) else value


def open_store(store: Store | str | os.PathLike[str]) -> Store:
    """Return ``store`` itself, or the store opened at that path.

    Raises:
        StoreNotFoundError: If there is no store there.
    """
    return store if isinstance(store, Store) else Store.open(Path(store))
