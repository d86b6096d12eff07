"""Reading embeddings and their cell metadata from a store, aligned row by row."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    UnknownPatientError,
)
from cytostore.store import Store

__all__ = [
    "Cells",
    "open_store",
    "load_cells",
    "load_patient_cells",
    "and_where",
    "missing_label",
    "sql_literal",
]

_MISSING = {"", "nan", "none", "null", "na", "n/a"}


def open_store(store: Store | str | os.PathLike[str]) -> Store:
    """Return ``store`` itself, or the store opened at that path."""
    return store if isinstance(store, Store) else Store.open(Path(store))


def and_where(*clauses: str | None) -> str | None:
    """Return the SQL conjunction of the non-empty clauses (``None`` if none).

    Examples:
        >>> and_where("dataset = 'bm'", None, "age > 60")
        "(dataset = 'bm') AND (age > 60)"
    """
    from cytostore.store import parse_where

    # Each clause must be one expression on its own, so that "a) OR (b" cannot
    # join with its neighbour into a different filter.
    parts = [f"({parse_where(c)})" for c in clauses if c]
    return " AND ".join(parts) if parts else None


def sql_literal(value: str) -> str:
    """Return ``value`` as a quoted SQL string literal.

    Examples:
        >>> sql_literal("O'Brien")
        "'O''Brien'"
    """
    return "'" + str(value).replace("'", "''") + "'"


def missing_label(value: Any) -> bool:
    """Return whether a label value counts as missing (None, NaN, empty, 'nan')."""
    if value is None:
        return True
    if isinstance(value, float):
        return bool(np.isnan(value))
    return str(value).strip().lower() in _MISSING


@dataclass
class Cells:
    """Embeddings of selected cells with metadata columns, row-aligned.

    Attributes:
        ids: int64 (n,) cell ids.
        X: (n, dim) vectors in the stored dtype.
        meta: ``{column: object array (n,)}``.
    """

    ids: npt.NDArray[np.int64]
    X: npt.NDArray[Any]
    meta: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def take(self, rows: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> Cells:
        """Return the subset of rows (indices or mask)."""
        return Cells(
            self.ids[rows], self.X[rows], {k: v[rows] for k, v in self.meta.items()}
        )

    def __len__(self) -> int:
        return int(self.ids.size)


def load_cells(
    store: Store, model: str | int | None, where: str | None, columns: list[str]
) -> Cells:
    """Return the vectors of ``model`` for cells matching ``where`` and their metadata.

    Args:
        store: The store.
        model: Model name or embedding-set id (``None``: the store's only set).
        where: SQL filter over ``cell_meta`` (``None``: every embedded cell).
        columns: ``cell_meta`` columns to return.

    Raises:
        InvalidWhereError: If ``where`` is invalid.
        UnknownColumnError: If a column is not in ``cell_meta``.
        EmptySelectionError: If no embedded cell matches.
        UnknownEmbeddingSetError: If the model has no vectors.
    """
    cols = list(dict.fromkeys(c for c in columns if c))
    store.require_columns(cols)
    ids, X = store.vectors(model, where)
    if ids.size == 0:
        raise EmptySelectionError(f"--where {where!r} selects no embedded cell")
    # The rows of the chosen cells by id: the filter was applied once, by vectors().
    rows = store.cell_meta(ids, ["cell_id", *cols]).rows
    meta_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    order = np.argsort(meta_ids, kind="stable")
    pos = np.searchsorted(meta_ids[order], ids)
    pos = np.clip(pos, 0, max(meta_ids.size - 1, 0))
    found = meta_ids.size > 0 and bool(np.all(meta_ids[order][pos] == ids))
    if not found:
        raise InvalidArgumentError(
            "some vectors belong to cells missing from the catalog: run "
            "'cytostore info STORE' and re-embed"
        )
    take = order[pos]
    meta: dict[str, npt.NDArray[Any]] = {}
    for j, c in enumerate(cols, start=1):
        col = np.empty(len(rows), dtype=object)
        col[:] = [r[j] for r in rows]
        meta[c] = col[take]
    return Cells(np.asarray(ids, np.int64), X, meta)


def load_patient_cells(
    st: Store, model: str | None, bag: str, patient: str, columns: list[str]
) -> tuple[Cells, str, str]:
    """Load one patient's embedded cells: ``patient`` is ``ID`` or ``DATASET/ID``.

    Returns:
        The cells (with ``dataset`` among their columns), the patient's dataset and
        its bare id.

    Raises:
        UnknownPatientError: If no embedded cell has that value in ``bag``.
        InvalidArgumentError: If the id occurs in several datasets (name one).
    """
    dataset, _, pid = patient.rpartition("/")
    where = and_where(
        f'"{bag}" = {sql_literal(pid)}',
        f"dataset = {sql_literal(dataset)}" if dataset else None,
    )
    try:
        cells = load_cells(st, model, where, list(dict.fromkeys([*columns, "dataset"])))
    except EmptySelectionError:
        known = st.sql(
            f'SELECT DISTINCT CAST("{bag}" AS VARCHAR) FROM cell_meta '
            f'WHERE "{bag}" IS NOT NULL'
        ).rows
        raise UnknownPatientError.for_name(
            "patient",
            patient,
            [r[0] for r in known],
            "list them with 'cytostore sql "
            f'STORE "SELECT DISTINCT dataset, {bag} FROM cell_meta"\'',
        ) from None
    datasets = sorted({str(d) for d in cells.meta["dataset"]})
    if len(datasets) > 1:
        raise InvalidArgumentError(
            f"patient {pid!r} exists in datasets {datasets}: write it as DATASET/{pid}"
        )
    return cells, datasets[0], pid
