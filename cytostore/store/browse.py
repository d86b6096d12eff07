"""Browsing cells: one page of a filtered, sorted selection and its counts.

What a grid of cells needs (the web page's ``/cells``, ``GET /api/cells``): the
``where`` filter is the sandboxed ``--where`` of every command
(:func:`~cytostore.store.sandbox.where_query`), the sort is one column of
``cell_meta`` checked by name, and only the rows of the page are read, so paging
through 270k cells never loads them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cytostore.errors import InvalidArgumentError, UnknownColumnError
from cytostore.store.catalog import QueryResult, safe_identifier
from cytostore.store.sandbox import where_query

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog

__all__ = ["GRID_COLUMNS", "browse_cells", "count_cells"]

#: Columns of a grid row (those ``cell_meta`` has; ``tags`` when present).
GRID_COLUMNS = ("cell_id", "dataset", "patient_id", "label", "cell_type", "tags")


def _selection(where: str | None) -> str:
    """Return a subquery of the selected cell ids (sandboxed ``where``)."""
    if not where:
        return "SELECT cell_id FROM cell_meta"
    return where_query(where).removesuffix(" ORDER BY cell_id")


def _order_clause(store: Catalog, order: str | None, columns: Sequence[str]) -> str:
    if not order:
        return "cell_id"
    desc = order.startswith("-")
    name = order[1:] if desc else order
    if name not in columns:
        raise UnknownColumnError(
            f"cannot sort by {name!r}: not a column of cell_meta; sort by one of "
            f"{', '.join(columns)} (prefix '-' for descending)"
        )
    return f'"{safe_identifier(name)}" {"DESC" if desc else "ASC"} NULLS LAST, cell_id'


def browse_cells(
    store: Catalog,
    where: str | None = None,
    order: str | None = None,
    *,
    limit: int = 100,
    offset: int = 0,
    columns: Sequence[str] | None = None,
) -> tuple[int, QueryResult]:
    """Return the number of cells ``where`` selects and one page of their rows.

    Args:
        store: The store (or its catalog).
        where: SQL filter over ``cell_meta`` (``None``/empty: every cell).
        order: A ``cell_meta`` column to sort by, ``-column`` for descending
            (``None``: by ``cell_id``); ties are broken by ``cell_id``.
        limit: Rows per page (1..10,000).
        offset: Rows to skip (>= 0).
        columns: Columns of each row (default: :data:`GRID_COLUMNS` that exist).

    Returns:
        ``(total, rows)``: the count of selected cells and the page's rows.

    Raises:
        InvalidArgumentError: If ``limit`` or ``offset`` is out of range.
        InvalidWhereError: If ``where`` is not one valid expression.
        UnknownColumnError: If ``where``, ``order`` or ``columns`` name a column
            ``cell_meta`` lacks.

    Examples:
        >>> import tempfile
        >>> from cytostore.store import Store
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> _ = store.add_cells([{"dataset": "d", "path": f"{i}.png", "label": "L"}
        ...                      for i in range(3)])
        >>> total, page = browse_cells(store, "cell_id > 1", "-cell_id", limit=1)
        >>> total, page.column("cell_id")
        (2, [3])
    """
    if not 1 <= int(limit) <= 10_000:
        raise InvalidArgumentError(f"limit must be 1..10000, got {limit}")
    if int(offset) < 0:
        raise InvalidArgumentError(f"offset must be >= 0, got {offset}")
    have = store.columns("cell_meta")
    wanted = [c for c in GRID_COLUMNS if c in have] if columns is None else columns
    for c in wanted:
        if c not in have:
            raise UnknownColumnError(
                f"no column {c!r} in cell_meta: see 'cytostore sql STORE \"DESCRIBE "
                "cell_meta\"'"
            )
    selection = _selection(where)
    cols = ", ".join(f'"{safe_identifier(c)}"' for c in wanted)
    total = int(store.sql(f"SELECT count(*) FROM ({selection})").rows[0][0])
    page = store.sql(
        f"SELECT {cols} FROM cell_meta WHERE cell_id IN ({selection}) "
        f"ORDER BY {_order_clause(store, order, have)} LIMIT ? OFFSET ?",
        [int(limit), int(offset)],
    )
    return total, page


def count_cells(
    store: Catalog, where: str | None = None, by: Sequence[str] = ("dataset", "label")
) -> list[dict[str, Any]]:
    """Return the number of selected cells per value of the ``by`` columns.

    Args:
        store: The store (or its catalog).
        where: SQL filter over ``cell_meta`` (``None``/empty: every cell).
        by: ``cell_meta`` columns to group by.

    Returns:
        One dict per group (``by`` columns and ``n``), largest first.

    Raises:
        InvalidWhereError, UnknownColumnError: As :func:`browse_cells`.
    """
    keys = ", ".join(f'"{safe_identifier(c)}"' for c in by)
    return store.sql(
        f"SELECT {keys}, count(*) AS n FROM cell_meta WHERE cell_id IN "
        f"({_selection(where)}) GROUP BY ALL ORDER BY n DESC, {keys}"
    ).dicts()
