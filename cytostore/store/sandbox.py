"""What user SQL may do: one read-only query over the catalog, and nothing outside it.

Everything a user types that becomes SQL (``cytostore sql``, every ``--where``, the
web page's filter box) passes through here. Three layers, each enough on its own
for the attacks it covers:

1. **The connection** (:data:`HARDENED_CONFIG`, used for *every* catalog
   connection, internal ones too, since a shared catalog may carry planted views or
   macros): no file system or network access beyond the catalog itself, no
   extension install or autoload, configuration locked, a memory limit. User
   queries also run on a read-only connection.
2. **The statement** (:func:`check_query`): DuckDB's own parser must find exactly
   one statement, and it must be a query: SELECT (with WITH), VALUES, PIVOT/UNPIVOT,
   DESCRIBE, SUMMARIZE, SHOW, EXPLAIN.
3. **The filter** (:func:`parse_where`, :func:`where_query`): a ``--where`` must
   parse, on its own, as exactly one DuckDB *expression*; it is placed on lines of
   its own inside a fixed clause and the query must parse as one SELECT, so it
   cannot close its clause or start another statement.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from cytostore.errors import InvalidWhereError, QueryRefusedError

__all__ = [
    "HARDENED_CONFIG",
    "ALLOWED_STATEMENTS",
    "check_query",
    "parse_where",
    "where_query",
    "duckdb_message",
    "interrupt_after",
]

#: Settings of every connection to a catalog. ``memory_limit`` comes from
#: ``CYTOSTORE_SQL_MEMORY_LIMIT`` (default 4 GB).
HARDENED_CONFIG: dict[str, Any] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}

#: What ``cytostore sql`` runs, in words (for messages).
ALLOWED_STATEMENTS = (
    "SELECT (with WITH), VALUES, PIVOT/UNPIVOT, DESCRIBE, SUMMARIZE, SHOW, EXPLAIN"
)
_QUERY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_PIVOT = re.compile(r"^\s*(\(\s*)*(PIVOT|UNPIVOT|PIVOT_WIDER|PIVOT_LONGER)\b", re.I)
_OUTSIDE = (
    "open catalog.duckdb with your own DuckDB client to write or to read other files"
)


def hardened_config() -> dict[str, Any]:
    """Return :data:`HARDENED_CONFIG` with the memory limit of this process."""
    limit = os.environ.get("CYTOSTORE_SQL_MEMORY_LIMIT", "4GB")
    return HARDENED_CONFIG | {"memory_limit": limit}


def duckdb_message(exc: BaseException) -> str:
    """Return DuckDB's error as one line, keeping its hint (``Candidate bindings``).

    DuckDB puts the useful part of a binder error (the columns it would accept, or
    "Did you mean ...") on the line after the first; the caret drawing is dropped.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    keep = [lines[0]]
    for ln in lines[1:]:
        if ln.startswith(("Candidate bindings", "Did you mean")):
            keep.append(ln)
    return " ".join(keep)


def check_query(query: str) -> duckdb.Statement:
    """Return the one statement of ``query`` if it is a read-only query.

    Args:
        query: SQL typed by a user.

    Returns:
        DuckDB's parsed statement, ready to execute.

    Raises:
        InvalidWhereError: If the query does not parse.
        QueryRefusedError: If it holds no statement or several, or one that is not
            a query (COPY, ATTACH, SET, INSTALL, INSERT, CALL, PRAGMA, ...).
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise InvalidWhereError(f"SQL does not parse: {duckdb_message(exc)}") from None
    if len(statements) != 1:
        raise QueryRefusedError(
            f"cytostore runs exactly one SQL statement, this holds {len(statements)}: "
            "send one query at a time"
        )
    statement = statements[0]
    kind = statement.type
    if kind in _QUERY_TYPES or (
        kind == duckdb.StatementType.MULTI and _PIVOT.match(query)
    ):
        return statement
    name = str(kind).rsplit(".", 1)[-1]
    raise QueryRefusedError(
        f"only read-only queries run here ({ALLOWED_STATEMENTS}), not {name}: "
        f"{_OUTSIDE}"
    )


@functools.lru_cache(maxsize=256)
def where_query(where: str) -> str:
    """Return the query selecting the ids of ``cell_meta`` rows that pass ``where``.

    ``where`` must parse, on its own, as exactly one DuckDB expression
    (:func:`parse_where`); DuckDB's text of that expression (its ``str``, which is
    what DuckDB's relational ``filter`` renders too) then sits on lines of its own
    inside the clause, so a trailing ``--`` comment cannot reach the closing
    parenthesis, and the whole query must parse as exactly one SELECT. A filter
    therefore cannot close its clause or start a statement; it runs on the
    read-only, hardened connection like any user SQL.

    Returns:
        ``SELECT cell_id FROM cell_meta WHERE (...) ORDER BY cell_id``.

    Raises:
        InvalidWhereError: If ``where`` is not one expression, or the query built
            from it is not one SELECT.
    """
    rendered = str(parse_where(where))
    query = f"SELECT cell_id FROM cell_meta WHERE (\n{rendered}\n) ORDER BY cell_id"
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error:
        statements = []
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise InvalidWhereError(
            f"invalid --where {where!r}: it does not stay one expression inside a "
            "WHERE clause; give a plain boolean expression over cell_meta"
        )
    return query


def parse_where(where: str) -> duckdb.Expression:
    """Parse a ``--where`` filter as one SQL expression over ``cell_meta``.

    Returns:
        The DuckDB expression, to be applied with ``relation.filter(...)``.

    Raises:
        InvalidWhereError: If ``where`` is not one expression (a ``)`` closing the
            clause, a ``;`` starting a statement, an empty string, ...).
    """
    if not where.strip():
        raise InvalidWhereError(
            "--where is empty: give a boolean expression over cell_meta, e.g. "
            "\"dataset = 'lmu'\""
        )
    try:
        return duckdb.SQLExpression(where)
    except duckdb.Error as exc:
        raise InvalidWhereError(
            f"invalid --where {where!r}: not one SQL expression "
            f"({duckdb_message(exc)}); "
            "give a boolean expression over the columns of cell_meta, e.g. "
            "\"dataset = 'lmu' AND label IS NOT NULL\""
        ) from None


@contextlib.contextmanager
def interrupt_after(
    con: duckdb.DuckDBPyConnection, timeout_s: float | None
) -> Iterator[threading.Event]:
    """Interrupt whatever ``con`` runs once ``timeout_s`` seconds have passed.

    Yields:
        An event that is set if the interrupt fired.
    """
    fired = threading.Event()
    if timeout_s is None:
        yield fired
        return

    def _fire() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(timeout_s, _fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
