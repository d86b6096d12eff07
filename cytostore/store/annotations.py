"""User annotations: cell-level columns people import (``annotations`` table).

``cytostore annotate`` turns a CSV of labels or notes into columns of the table
``annotations`` (one row per annotated cell, one column per imported name), which
``cell_meta`` joins: an imported column is filterable in every ``--where`` and usable
as ``--label`` (probe, audit) like any other. ``annotation_columns`` records each
column's type, the file it came from, the key it was matched on and when.

The rules :func:`write_annotations` enforces, all or nothing (one bad row and
nothing changes):

- a name that ``cell_meta`` already has from elsewhere (``label``, ``dataset``, a
  patient column, ``tags``) is refused: import it under another name (``--as``);
- the other way round, a ``patients`` column added later under an imported name
  (it would hide the annotation in ``cell_meta``) is refused by the patients
  writer (:meth:`Catalog.upsert_patients`);
- every row names a catalogued cell, and no cell twice;
- re-importing a column *merges*: cells new to it get their values, equal values
  change nothing, and a different value for a cell that already has one is a
  conflict, refused unless ``replace`` (then the file's value wins for the cells it
  names; the other cells keep theirs);
- an empty value (``None``) changes nothing;
- a column's type is fixed at its first import: BIGINT when every value is an
  integer, DOUBLE when every value is a number, else VARCHAR; a later value that is
  not of the column's type is a bad row.

:func:`drop_annotations` removes columns again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, NotFoundError
from cytostore.store.catalog import safe_identifier

if TYPE_CHECKING:
    import duckdb

    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "annotation_columns",
    "drop_annotations",
    "find_cells",
    "write_annotations",
    "BadRow",
    "refuse_rows",
    "MAX_REPORTED_ROWS",
]

#: Bad rows named in an error message (the count of the others follows).
MAX_REPORTED_ROWS = 5

BadRow = tuple[int, str]
"""A refused row: ``(line number in the file, what is wrong with it)``."""


def refuse_rows(
    bad: Sequence[BadRow], source: str | None, fix: str
) -> InvalidArgumentError:
    """Return the one-line error naming the first bad rows of a refused import."""
    bad = sorted(bad)
    shown = "; ".join(f"line {line}: {why}" for line, why in bad[:MAX_REPORTED_ROWS])
    more = len(bad) - MAX_REPORTED_ROWS
    tail = f"; and {more} more" if more > 0 else ""
    where = f"{source}: " if source else ""
    return InvalidArgumentError(
        f"{where}{len(bad)} bad row{'s' if len(bad) != 1 else ''}, nothing imported "
        f"({shown}{tail}): {fix}"
    )


def annotation_columns(store: Store) -> list[dict[str, Any]]:
    """Return the imported columns in import order.

    Returns:
        Dicts with ``name``, ``type``, ``source`` (file of the last import),
        ``key`` (``cell_id`` or ``path``), ``cells`` (cells with a value now),
        ``created_at`` and ``updated_at``.
    """
    with store.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT name, type, source, key, created_at, updated_at "
            "FROM annotation_columns ORDER BY created_at, name"
        ).fetchall()
        out = []
        for name, typ, source, key, created, updated in rows:
            n = con.execute(
                f'SELECT count("{safe_identifier(name)}") FROM annotations'
            ).fetchall()[0][0]
            out.append(
                {
                    "name": name,
                    "type": typ,
                    "source": source,
                    "key": key,
                    "cells": int(n),
                    "created_at": created,
                    "updated_at": updated,
                }
            )
    return out


def find_cells(
    store: Store,
    *,
    cell_ids: Sequence[int] | npt.NDArray[np.int64] | None = None,
    datasets: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
) -> npt.NDArray[np.int64]:
    """Return the cell id of each key, -1 where the store has no such cell.

    Give either ``cell_ids``, or ``datasets`` and ``paths`` (paths relative to the
    dataset's root, as catalogued).

    Returns:
        int64 ``(n,)`` ids in the order of the keys.

    Raises:
        InvalidArgumentError: If neither or both kinds of key are given, or
            ``datasets`` and ``paths`` differ in length.
    """
    import pyarrow as pa

    if (cell_ids is None) == (paths is None):
        raise InvalidArgumentError("give cell ids, or datasets and paths")
    if cell_ids is not None:
        keys = pa.table({"k": pa.array(np.asarray(cell_ids, np.int64))})
        query = (
            "SELECT c.cell_id FROM _annotation_keys q "
            "LEFT JOIN cells c ON c.cell_id = q.k ORDER BY q.i"
        )
    else:
        if datasets is None or len(datasets) != len(paths or ()):
            raise InvalidArgumentError("give one dataset per path")
        keys = pa.table(
            {
                "d": pa.array(list(datasets), pa.string()),
                "p": pa.array(list(paths or ()), pa.string()),
            }
        )
        query = (
            "SELECT c.cell_id FROM _annotation_keys q "
            "LEFT JOIN cells c ON c.dataset = q.d AND c.path = q.p ORDER BY q.i"
        )
    keys = keys.append_column("i", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    with store.connect(read_only=True) as con:
        con.register("_annotation_keys", keys)
        try:
            got = con.execute(query).fetchnumpy()["cell_id"]
        finally:
            con.unregister("_annotation_keys")
    filled = np.ma.filled(np.ma.asarray(got), -1) if np.ma.isMaskedArray(got) else got
    return np.asarray(filled, dtype=np.float64).astype(np.int64)


def _infer_type(values: Sequence[Any]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "VARCHAR"
    if all(_parse(v, "BIGINT") is not None for v in present):
        return "BIGINT"
    if all(_parse(v, "DOUBLE") is not None for v in present):
        return "DOUBLE"
    return "VARCHAR"


def _parse(value: Any, sql_type: str) -> Any:
    """Return ``value`` as ``sql_type``, or ``None`` if it is not one."""
    if sql_type == "VARCHAR":
        return str(value)
    if isinstance(value, bool):
        return None
    if sql_type == "BIGINT":
        if isinstance(value, int | np.integer):
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            return None
    try:
        out = float(str(value).strip()) if not isinstance(value, float) else value
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=0.0))
    return bool(a == b)


def _check_names(
    con: duckdb.DuckDBPyConnection, names: Sequence[str], have: dict[str, str]
) -> None:
    seen: set[str] = set()
    for name in names:
        safe_identifier(name)
        if name.lower() in seen:
            raise InvalidArgumentError(
                f"column {name!r} is given twice: name each column once"
            )
        seen.add(name.lower())
    meta = {
        r[0].lower()
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'cell_meta'"
        ).fetchall()
    }
    ours = {n.lower() for n in have}
    clash = [n for n in names if n.lower() in meta and n.lower() not in ours]
    if clash:
        raise InvalidArgumentError(
            f"cell_meta already has column{'s' if len(clash) > 1 else ''} "
            f"{', '.join(repr(c) for c in clash)}: import under another name with "
            f"--as PREFIX (e.g. --as expert2 makes expert2_{clash[0]})"
        )


def write_annotations(
    store: Store,
    cell_ids: Sequence[int] | npt.NDArray[np.int64],
    values: Mapping[str, Sequence[Any]],
    *,
    lines: Sequence[int] | None = None,
    source: str | None = None,
    key: str = "cell_id",
    replace: bool = False,
    bad: Sequence[BadRow] = (),
) -> dict[str, Any]:
    """Import annotation columns for cells, in one transaction (all or nothing).

    Args:
        store: The store.
        cell_ids: One cell id per row; -1 (or an id the store lacks) is an unknown
            cell (a bad row).
        values: ``{column: one value per row}``; ``None``: no value for that cell.
        lines: The rows' line numbers in the file (for messages; default 1..n).
        source: The file's name, recorded and named in messages.
        key: How the file named the cells (``cell_id`` or ``path``), recorded.
        replace: Let the file's values overwrite different values already stored.
        bad: Rows the caller already found bad (reported with the others; a row
            of theirs with cell id -1 is not reported again as unknown).

    Returns:
        A report: ``rows``, ``cells``, ``columns`` (names), ``new_columns``,
        ``added`` (values given to cells that had none), ``changed`` (values
        replaced), ``unchanged`` (values equal to the stored ones).

    Raises:
        InvalidArgumentError: If a name is not an identifier or clashes with a
            ``cell_meta`` column from elsewhere, no column is given, or a row is
            bad: unknown cell, a cell named twice, a value not of the column's
            type, or (without ``replace``) a value conflicting with the stored one.
            Nothing is written then.
    """
    import pyarrow as pa

    ids = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
    n = ids.size
    line_of = list(range(1, n + 1)) if lines is None else list(lines)
    if not values:
        raise InvalidArgumentError(
            "no column to import: the file needs a column besides the key"
        )
    for name, vals in values.items():
        if len(vals) != n or len(line_of) != n:
            raise InvalidArgumentError(
                f"column {name!r} has {len(vals)} values for {n} rows"
            )
    names = list(values)
    with store.transaction() as con:
        have = {
            r[0]: r[1]
            for r in con.execute("SELECT name, type FROM annotation_columns").fetchall()
        }
        have = {k: v for k, v in have.items()}
        _check_names(con, names, have)
        lower_have = {k.lower(): k for k in have}
        stored_name = {n_: lower_have.get(n_.lower(), n_) for n_ in names}
        types = {
            n_: have[stored_name[n_]] if stored_name[n_] in have else _infer_type(v)
            for n_, v in values.items()
        }
        found: list[BadRow] = list(bad)
        told = {line for line, _ in bad}
        known = find_cells(store, cell_ids=ids)
        first: dict[int, int] = {}
        for i in range(n):
            cid = int(ids[i])
            if cid < 0 or known[i] < 0:
                if line_of[i] not in told:
                    found.append((line_of[i], f"no cell {cid} in the store"))
            elif cid in first:
                found.append(
                    (line_of[i], f"cell {cid} again (first on line {first[cid]})")
                )
            else:
                first[cid] = line_of[i]
        parsed: dict[str, list[Any]] = {}
        for name in names:
            out = []
            for i, v in enumerate(values[name]):
                p = None if v is None else _parse(v, types[name])
                if v is not None and p is None:
                    found.append(
                        (
                            line_of[i],
                            f"{name} {v!r} is not a {types[name].lower()} like the "
                            "column's other values",
                        )
                    )
                out.append(p)
            parsed[name] = out
        stored = _stored_values(
            con, ids, [stored_name[c] for c in names if stored_name[c] in have]
        )
        counts = {"added": 0, "changed": 0, "unchanged": 0}
        for name in names:
            col = stored.get(stored_name[name])
            for i, v in enumerate(parsed[name]):
                if v is None:
                    continue
                old = None if col is None else col[i]
                if old is None:
                    counts["added"] += 1
                elif _same(old, v):
                    counts["unchanged"] += 1
                elif replace:
                    counts["changed"] += 1
                else:
                    found.append(
                        (
                            line_of[i],
                            f"{name} {v!r} conflicts with the stored {old!r} of cell "
                            f"{int(ids[i])}",
                        )
                    )
        if found:
            raise refuse_rows(
                found,
                source,
                "correct or remove those rows and import again (--replace lets the "
                "file overwrite stored values)",
            )
        new = [c for c in names if stored_name[c] not in have]
        for c in new:
            con.execute(f'ALTER TABLE annotations ADD COLUMN "{c}" {types[c]}')
        arrow_type = {
            "BIGINT": pa.int64(),
            "DOUBLE": pa.float64(),
            "VARCHAR": pa.string(),
        }
        table = pa.table(
            {
                "cell_id": pa.array(ids),
                **{
                    f"v{j}": pa.array(parsed[c], arrow_type[types[c]])
                    for j, c in enumerate(names)
                },
            }
        )
        con.register("_incoming_annotations", table)
        try:
            con.execute(
                "INSERT INTO annotations (cell_id) SELECT DISTINCT i.cell_id FROM "
                "_incoming_annotations i ANTI JOIN annotations a "
                "ON a.cell_id = i.cell_id"
            )
            for j, c in enumerate(names):
                con.execute(
                    f'UPDATE annotations SET "{stored_name[c]}" = i.v{j} '
                    "FROM _incoming_annotations i "
                    f"WHERE annotations.cell_id = i.cell_id AND i.v{j} IS NOT NULL"
                )
        finally:
            con.unregister("_incoming_annotations")
        for c in names:
            con.execute(
                "INSERT INTO annotation_columns (name, type, source, key, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, now(), now()) ON CONFLICT (name) "
                "DO UPDATE SET source = excluded.source, key = excluded.key, "
                "updated_at = excluded.updated_at",
                [stored_name[c], types[c], source, key],
            )
        store.refresh_views()
    return {
        "rows": n,
        "cells": len(first),
        "columns": [stored_name[c] for c in names],
        "new_columns": new,
        **counts,
    }


def _stored_values(
    con: duckdb.DuckDBPyConnection, ids: npt.NDArray[np.int64], columns: Sequence[str]
) -> dict[str, list[Any]]:
    """Return the stored values of ``columns`` for ``ids`` (``None``: none)."""
    import pyarrow as pa

    if not columns:
        return {}
    cols = ", ".join(f'a."{safe_identifier(c)}"' for c in columns)
    keys = pa.table(
        {"k": pa.array(ids), "i": pa.array(np.arange(ids.size, dtype=np.int64))}
    )
    con.register("_annotation_ids", keys)
    try:
        rows = con.execute(
            f"SELECT {cols} FROM _annotation_ids q LEFT JOIN annotations a "
            "ON a.cell_id = q.k ORDER BY q.i"
        ).fetchall()
    finally:
        con.unregister("_annotation_ids")
    return {c: [r[j] for r in rows] for j, c in enumerate(columns)}


def drop_annotations(store: Store, columns: Sequence[str]) -> list[str]:
    """Remove imported columns (their values for every cell) in one transaction.

    Returns:
        The names removed.

    Raises:
        NotFoundError: If a name is not an imported column (nothing is removed).
    """
    with store.transaction() as con:
        have = {
            r[0].lower(): r[0]
            for r in con.execute("SELECT name FROM annotation_columns").fetchall()
        }
        missing = [c for c in columns if c.lower() not in have]
        if missing:
            raise NotFoundError.for_name(
                "annotation column",
                missing[0],
                sorted(have.values()),
                "list them with 'cytostore sql STORE \"SELECT * FROM "
                "annotation_columns\"'",
            )
        names = [have[c.lower()] for c in columns]
        for name in names:
            con.execute(f'ALTER TABLE annotations DROP COLUMN "{name}"')
            con.execute("DELETE FROM annotation_columns WHERE name = ?", [name])
        store.refresh_views()
    return names
