"""Curation tables: label issues, selections for annotation and 2-D maps, by run.

``curate`` computes, the store keeps. Each curation command writes one *run*: a
``curation_runs`` row (``kind``, ``run``, ``model``, ``params`` as JSON text,
``created_at``) and its rows in the kind's table:

- ``audit`` → ``label_issues`` (:func:`write_label_issues`),
- ``select`` → ``selections`` (:func:`write_selection`),
- ``map`` → ``maps`` (:func:`write_map`).

A writer replaces the rows of its run, and only those, in one transaction: a second
run under the same name leaves every other run as it was. Rows name cells by
``cell_id``, so withdrawing a patient or a dataset (``cytostore rm``) deletes their
rows with the cells (a run then keeps the ranks it was written with: gaps show where
cells went); ``rm model`` takes the model's runs with it (``--cascade``). The readers
below are what pages and notebooks use; the tables are also plain SQL
(``cytostore sql STORE "SELECT * FROM label_issues WHERE run = 'x'"``).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, NotFoundError
from cytostore.store.writers import Column, _insert_columns

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store
    from cytostore.store.catalog import QueryResult

__all__ = [
    "CURATION_KINDS",
    "CURATION_TABLES",
    "check_run_name",
    "curation_runs",
    "delete_curation_run",
    "read_label_issues",
    "read_map",
    "read_selection",
    "write_label_issues",
    "write_map",
    "write_selection",
]

#: The kinds of curation run, each with the table holding its rows.
CURATION_TABLES = {"audit": "label_issues", "select": "selections", "map": "maps"}
CURATION_KINDS = tuple(CURATION_TABLES)
#: The longest run name accepted.
MAX_RUN_CHARS = 64
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*")


def check_run_name(run: str) -> str:
    """Return ``run`` if it is a usable run name.

    Raises:
        InvalidArgumentError: If it is empty, longer than :data:`MAX_RUN_CHARS` or
            not letters, digits and ``. _ : @ + -`` (starting with a letter or digit).

    Examples:
        >>> check_run_name("ssl-label")
        'ssl-label'
    """
    if not (0 < len(run) <= MAX_RUN_CHARS and _RUN.fullmatch(run)):
        raise InvalidArgumentError(
            f"run name {run!r} is not usable: give 1 to {MAX_RUN_CHARS} letters, "
            "digits or . _ : @ + - starting with a letter or digit, e.g. 'ssl-label'"
        )
    return run


def _check_kind(kind: str) -> str:
    if kind not in CURATION_TABLES:
        raise InvalidArgumentError(
            f"unknown curation kind {kind!r}: choose one of {', '.join(CURATION_KINDS)}"
        )
    return kind


def _replace_run(
    store: Store,
    kind: str,
    run: str,
    model: str | None,
    params: dict[str, Any] | None,
    columns: dict[str, Column],
) -> int:
    """Replace run ``(kind, run)``: its ``curation_runs`` row and its rows."""
    check_run_name(run)
    table = CURATION_TABLES[_check_kind(kind)]
    ids = np.asarray(columns["cell_id"], dtype=np.int64)
    if np.unique(ids).size != ids.size:
        raise InvalidArgumentError(
            f"the rows of {kind} run {run!r} name a cell twice: pass each cell once"
        )
    with store.transaction() as con:
        con.execute(f"DELETE FROM {table} WHERE run = ?", [run])
        con.execute("DELETE FROM curation_runs WHERE kind = ? AND run = ?", [kind, run])
        _insert_columns(
            con,
            "curation_runs",
            {
                "kind": [kind],
                "run": [run],
                "model": [model],
                "params": [json.dumps(params or {}, sort_keys=True, default=str)],
            },
            {"created_at": "now()"},
        )
        n = _insert_columns(con, table, {"run": [run] * ids.size, **columns})
    return n


def write_label_issues(
    store: Store,
    run: str,
    *,
    model: str,
    label_column: str,
    params: dict[str, Any] | None,
    cell_ids: Column,
    given_label: Column,
    suggested_label: Column,
    score: Column,
    rank: Column,
    neighbor_agreement: Column,
    is_issue: Column,
) -> int:
    """Replace the ``label_issues`` rows (and the run row) of audit run ``run``.

    Args:
        store: The store.
        run: The run's name (see :func:`check_run_name`).
        model: The model whose vectors were audited.
        label_column: The ``cell_meta`` column audited.
        params: The run's settings (written as JSON text in ``curation_runs``).
        cell_ids: One int64 cell id per row, each once.
        given_label: The label the cell has.
        suggested_label: The label the audit would give it.
        score: 0-1, higher = more likely mislabelled.
        rank: 1 = most suspect.
        neighbor_agreement: Share of the cell's neighbours with the given label
            (``None``/NaN where it has none).
        is_issue: Whether confident learning flags the cell.

    Returns:
        The number of rows written.

    Raises:
        InvalidArgumentError: If the run name is unusable, columns differ in length
            or a cell is named twice.
    """
    agreement = np.asarray(neighbor_agreement, dtype=np.float64)
    return _replace_run(
        store,
        "audit",
        run,
        model,
        params,
        {
            "model": [model] * len(agreement),
            "label_column": [label_column] * len(agreement),
            "cell_id": np.asarray(cell_ids, dtype=np.int64),
            "given_label": _as_strings(given_label),
            "suggested_label": _as_strings(suggested_label),
            "score": np.asarray(score, dtype=np.float64),
            "rank": np.asarray(rank, dtype=np.int32),
            "neighbor_agreement": [
                None if np.isnan(v) else float(v) for v in agreement
            ],
            "is_issue": np.asarray(is_issue, dtype=bool),
        },
    )


def write_selection(
    store: Store,
    run: str,
    *,
    model: str,
    strategy: str,
    params: dict[str, Any] | None,
    cell_ids: Column,
    rank: Column,
    score: Column,
) -> int:
    """Replace the ``selections`` rows (and the run row) of select run ``run``.

    Args:
        store: The store.
        run: The run's name (see :func:`check_run_name`).
        model: The model whose vectors the selection used.
        strategy: ``diversity``, ``typicality``, ``uncertainty`` (or ``random``).
        params: The run's settings (JSON text in ``curation_runs``).
        cell_ids: The chosen cells, each once.
        rank: 1 = annotate first.
        score: The strategy's score of each cell (its meaning is in the docs).

    Returns:
        The number of rows written.

    Raises:
        InvalidArgumentError: See :func:`write_label_issues`.
    """
    ids = np.asarray(cell_ids, dtype=np.int64)
    return _replace_run(
        store,
        "select",
        run,
        model,
        params,
        {
            "cell_id": ids,
            "rank": np.asarray(rank, dtype=np.int32),
            "strategy": [strategy] * ids.size,
            "score": np.asarray(score, dtype=np.float64),
        },
    )


def write_map(
    store: Store,
    run: str,
    model: str,
    params: dict[str, Any] | None,
    cell_ids: Column,
    x: Column,
    y: Column,
) -> int:
    """Replace the ``maps`` rows (and the run row) of map run ``run``.

    Args:
        store: The store.
        run: The run's name (see :func:`check_run_name`).
        model: The model whose vectors were mapped.
        params: The run's settings, e.g. ``{"method": "umap", "where": ...}``.
        cell_ids: One int64 cell id per point, each once.
        x: First coordinate of each point (stored as REAL, float32).
        y: Second coordinate.

    Returns:
        The number of rows written.

    Raises:
        InvalidArgumentError: See :func:`write_label_issues`.
    """
    return _replace_run(
        store,
        "map",
        run,
        model,
        params,
        {
            "cell_id": np.asarray(cell_ids, dtype=np.int64),
            "x": np.asarray(x, dtype=np.float32),
            "y": np.asarray(y, dtype=np.float32),
        },
    )


def delete_curation_run(store: Store, kind: str, run: str) -> int:
    """Delete run ``(kind, run)`` and its rows; return the rows deleted (0: none)."""
    table = CURATION_TABLES[_check_kind(kind)]
    with store.transaction() as con:
        row = con.execute(f"DELETE FROM {table} WHERE run = ?", [run]).fetchone()
        con.execute("DELETE FROM curation_runs WHERE kind = ? AND run = ?", [kind, run])
    return int(row[0]) if row else 0


def curation_runs(store: Store, kind: str | None = None) -> list[dict[str, Any]]:
    """Return the curation runs (newest first), optionally of one kind.

    Returns:
        Dicts with ``kind``, ``run``, ``model``, ``params`` (a dict),
        ``created_at`` and ``rows`` (its rows now in the kind's table).

    Raises:
        InvalidArgumentError: If ``kind`` is not one of :data:`CURATION_KINDS`.
    """
    kinds = [_check_kind(kind)] if kind is not None else list(CURATION_KINDS)
    counts = " UNION ALL ".join(
        f"SELECT '{k}' AS kind, run, count(*) AS n FROM {t} GROUP BY run"
        for k, t in CURATION_TABLES.items()
    )
    rows = store.sql(
        "SELECT r.kind, r.run, r.model, r.params, r.created_at, coalesce(c.n, 0) "
        f"FROM curation_runs r LEFT JOIN ({counts}) c "
        "ON c.kind = r.kind AND c.run = r.run "
        "WHERE r.kind IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY r.created_at DESC, r.kind, r.run",
        [kinds],
    ).rows
    out = []
    for k, run, model, params, created, n in rows:
        try:
            doc = json.loads(params) if params else {}
        except ValueError:
            doc = {}
        out.append(
            {
                "kind": k,
                "run": run,
                "model": model,
                "params": doc if isinstance(doc, dict) else {},
                "created_at": created,
                "rows": int(n),
            }
        )
    return out


def _require_run(store: Store, kind: str, run: str) -> None:
    known = [
        r[0]
        for r in store.sql(
            "SELECT run FROM curation_runs WHERE kind = ? ORDER BY run", [kind]
        ).rows
    ]
    if run not in known:
        raise NotFoundError.for_name(
            f"{kind} run",
            run,
            known,
            f"run 'cytostore {kind} STORE ... --name {run}' first",
            where=str(store.root),
        )


def read_label_issues(store: Store, run: str, limit: int | None = None) -> QueryResult:
    """Return audit run ``run``'s rows by rank (most suspect first).

    Args:
        store: The store.
        run: The audit run.
        limit: Only the first ``limit`` rows (``None``: all).

    Returns:
        Columns ``cell_id``, ``given_label``, ``suggested_label``, ``score``,
        ``rank``, ``neighbor_agreement``, ``is_issue``, ``model``, ``label_column``.

    Raises:
        NotFoundError: If there is no audit run of that name.
    """
    _require_run(store, "audit", run)
    cap = "" if limit is None else f" LIMIT {max(int(limit), 0)}"
    return store.sql(
        "SELECT cell_id, given_label, suggested_label, score, rank, "
        "neighbor_agreement, is_issue, model, label_column FROM label_issues "
        f"WHERE run = ? ORDER BY rank, cell_id{cap}",
        [run],
    )


def read_selection(store: Store, run: str) -> QueryResult:
    """Return select run ``run``'s rows by rank (annotate first first).

    Returns:
        Columns ``cell_id``, ``rank``, ``strategy``, ``score``.

    Raises:
        NotFoundError: If there is no select run of that name.
    """
    _require_run(store, "select", run)
    return store.sql(
        "SELECT cell_id, rank, strategy, score FROM selections WHERE run = ? "
        "ORDER BY rank, cell_id",
        [run],
    )


def read_map(
    store: Store, run: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Return map run ``run`` as ``(cell_ids, xy)``, by cell id.

    Returns:
        int64 ``(n,)`` ids and float32 ``(n, 2)`` coordinates.

    Raises:
        NotFoundError: If there is no map run of that name.
    """
    _require_run(store, "map", run)
    with store.connect(read_only=True) as con:
        got = con.execute(
            "SELECT cell_id, x, y FROM maps WHERE run = ? ORDER BY cell_id", [run]
        ).fetchnumpy()
    ids = np.asarray(got["cell_id"], dtype=np.int64)
    xy = np.stack(
        [np.asarray(got["x"], np.float32), np.asarray(got["y"], np.float32)], axis=1
    ).reshape(ids.size, 2)
    return ids, xy


def _as_strings(values: Column) -> list[str | None]:
    return [None if v is None else str(v) for v in values]
