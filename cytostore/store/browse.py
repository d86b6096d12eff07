"""Browsing cells: one page of a filtered, sorted selection and its counts.

What a grid of cells needs (the web page's ``/cells``, ``GET /api/cells``): the
``where`` filter is the sandboxed ``--where`` of every command
(:func:`~cytostore.store.sandbox.where_query`), the sort is one column of
``cell_meta`` checked by name, and only the rows of the page are read, so paging
through 270k cells never loads them all. Each call reads the catalog over one
connection (opening one costs ~15 ms on a 200k-cell catalog, more than the
queries), and :func:`catalog_stamp` lets a caller keep results while the catalog
files are unchanged (``cytostore serve`` does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cytostore.errors import InvalidArgumentError, UnknownColumnError
from cytostore.store.catalog import QueryResult, safe_identifier
from cytostore.store.sandbox import where_query
from cytostore.store.search import _catalog_stamp

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog

__all__ = [
    "GRID_COLUMNS",
    "browse_cells",
    "catalog_stamp",
    "count_cells",
    "where_clause",
]

#: Columns of a grid row (those ``cell_meta`` has; ``tags`` when present).
GRID_COLUMNS = ("cell_id", "dataset", "patient_id", "label", "cell_type", "tags")


#: Seconds a catalog file must be unchanged before :func:`catalog_stamp` vouches
#: for it (file times are coarse: two writes within one tick can share one).
SETTLE_S = 1.0


def catalog_stamp(store: Catalog, settle_s: float = SETTLE_S) -> tuple[Any, ...] | None:
    """Return a value that changes whenever the catalog's content may have changed.

    Every committed write, by this process or another, changes ``catalog.duckdb``
    or its write-ahead log ``catalog.duckdb.wal`` (DuckDB appends each commit to
    the log and folds it into the file at a checkpoint), so the files' inode, size
    and modification time stand for the catalog's state: results read *after*
    taking a stamp may be kept under it (the same stamp as the searcher cache's,
    :class:`~cytostore.store.search.SearcherCache`). A file changed within
    ``settle_s`` is too fresh to vouch for (a second write in the same clock tick
    could leave all three equal), and then the stamp is ``None``: read again, keep
    nothing.

    Args:
        store: The store (or its catalog).
        settle_s: How long the files must have been unchanged.

    Returns:
        A hashable stamp, or ``None`` when the catalog changed just now.

    Examples:
        >>> import tempfile
        >>> from cytostore.store import Store
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> catalog_stamp(store) is None  # just written
        True
        >>> catalog_stamp(store, settle_s=0) == catalog_stamp(store, settle_s=0)
        True
    """
    stamp = _catalog_stamp(store)
    fresh_ns = time.time_ns() - int(settle_s * 1e9)
    if any(part is not None and part[2] > fresh_ns for part in stamp):
        return None
    return stamp


def where_clause(where: str | None) -> str:
    """Return the sandboxed ``WHERE (...)`` clause of ``where`` over ``cell_meta``.

    :func:`~cytostore.store.sandbox.where_query` checks that the expression stays
    one expression inside its parentheses; the clause is taken from its query. Use
    it after ``FROM cell_meta`` in a query run by :meth:`Catalog.sql` (read-only,
    hardened, one statement).

    Returns:
        ``WHERE (`` the expression on lines of its own ``)``, or ``""`` for no
        filter.

    Raises:
        InvalidWhereError: If ``where`` is not one expression.

    Examples:
        >>> print(where_clause("dataset = 'bm'"))
        WHERE (
        dataset = 'bm'
        )
    """
    if not where:
        return ""
    query = where_query(where)
    head, tail = "SELECT cell_id FROM cell_meta ", " ORDER BY cell_id"
    return query.removeprefix(head).removesuffix(tail)


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
    clause = where_clause(where)
    with store.connect(read_only=True):  # one catalog visit for the three reads
        have = store.columns("cell_meta")
        wanted = [c for c in GRID_COLUMNS if c in have] if columns is None else columns
        for c in wanted:
            if c not in have:
                raise UnknownColumnError(
                    f"no column {c!r} in cell_meta: see 'cytostore sql STORE "
                    '"DESCRIBE cell_meta"\''
                )
        cols = ", ".join(f'"{safe_identifier(c)}"' for c in wanted)
        total = int(store.sql(f"SELECT count(*) FROM cell_meta {clause}").rows[0][0])
        page = store.sql(
            f"SELECT {cols} FROM cell_meta {clause} "
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
        f"SELECT {keys}, count(*) AS n FROM cell_meta {where_clause(where)} "
        f"GROUP BY ALL ORDER BY n DESC, {keys}"
    ).dicts()
