"""Bulk writes of head outputs (predictions, attention) into catalog tables."""

from __future__ import annotations

from typing import Any

import duckdb

__all__ = ["insert_rows"]


def insert_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: dict[str, Any],
    computed: dict[str, str] | None = None,
) -> int:
    """Insert column-wise rows into ``table`` through an Arrow table (fast).

    Args:
        con: A connection inside the caller's transaction.
        table: Target table (a fixed name of the schema).
        columns: ``{column: values}``, all of one length.
        computed: ``{column: SQL expression}`` filled by the database (``now()``).

    Returns:
        The number of rows inserted.
    """
    import pyarrow as pa

    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        return 0
    tbl = pa.table(
        {
            k: list(v) if not hasattr(v, "tolist") else v.tolist()
            for k, v in columns.items()
        }
    )
    view = f"_cytostore_rows_{table}"
    con.register(view, tbl)
    try:
        extra = computed or {}
        cols = ", ".join(f'"{c}"' for c in [*columns, *extra])
        values = ", ".join([*(f'"{c}"' for c in columns), *extra.values()])
        con.execute(
            f"INSERT OR REPLACE INTO {table} ({cols}) SELECT {values} FROM {view}"
        )
    finally:
        con.unregister(view)
    return n
