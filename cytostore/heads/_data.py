"""The heads' cell loading: the store's loader, patients as bags, filters."""

from __future__ import annotations

import os
from pathlib import Path

from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    UnknownPatientError,
)
from cytostore.store import Cells, Store, is_missing, load_cells

__all__ = [
    "Cells",
    "open_store",
    "load_cells",
    "load_patient_cells",
    "and_where",
    "missing_label",
    "sql_literal",
]

#: The store's missing-value rule, under the name the heads' callers use.
missing_label = is_missing


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
