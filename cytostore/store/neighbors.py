"""Batch k-nearest neighbours of many cells, written into a catalog table.

The table ``(cell_id, rank, neighbor_id, similarity, set_id)`` lets SQL answer
questions such as "how often do a class's neighbours share its label, per dataset"::

    SELECT m.dataset, m.label, avg((n.label = m.label)::INT) AS agreement
    FROM knn10 k JOIN cell_meta m ON m.cell_id = k.cell_id
                 JOIN cell_meta n ON n.cell_id = k.neighbor_id
    GROUP BY ALL ORDER BY ALL

``similarity`` is higher for closer cells: the cosine similarity for ``cosine`` sets,
minus the squared L2 distance for ``l2`` sets (see
:func:`~cytostore.store.search.to_similarity`). Tables written before that name was
chosen have a ``distance`` column instead, holding the raw search score (cosine
similarity, or the squared L2 distance); :func:`similarity_sql` reads either, and
writing the table again with ``neighbors`` renames it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cytostore.errors import InvalidArgumentError, NotFoundError
from cytostore.store.catalog import safe_identifier
from cytostore.store.faults import fault_point
from cytostore.store.search import Searcher, to_similarity

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["neighbors", "similarity_sql"]

logger = logging.getLogger(__name__)

_QUERY_BATCH = 2048


def neighbors(
    store: Store,
    into: str,
    k: int = 10,
    *,
    model: str | int | None = None,
    where: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Find each selected cell's ``k`` nearest other cells and store them as a table.

    Both the query cells and their candidate neighbours are the cells matching
    ``where`` (all cells of the set when ``None``); a cell is never its own
    neighbour. An existing neighbour table of that name is replaced in the same
    transaction that writes the new rows, so readers see the old or the new table.

    Args:
        store: The store.
        into: Name of the table to (re)create, e.g. ``knn10``.
        k: Neighbours per cell.
        model: Set id or model name (``None``: the store's only set).
        where: SQL filter over ``cell_meta``.
        progress: Called with ``(cells done, cells)``.

    Returns:
        A report: ``table``, ``set_id``, ``model``, ``metric``, ``k``, ``cells``,
        ``rows``.

    Raises:
        InvalidArgumentError: If ``into`` is not an identifier, names a table or
            view that is not a neighbour table, or ``k`` < 1.
        UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError: As for
            :func:`cytostore.store.search.search`.
    """
    import pyarrow as pa

    safe_identifier(into)
    if int(k) < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    _check_target(store, into)
    searcher = Searcher(store, model, where)
    queries = searcher.ids if searcher.subset is None else searcher.subset
    total = int(queries.size)
    cols: dict[str, list[np.ndarray]] = {
        "cell_id": [],
        "rank": [],
        "neighbor_id": [],
        "similarity": [],
    }
    for lo in range(0, total, _QUERY_BATCH):
        batch = np.asarray(queries[lo : lo + _QUERY_BATCH], dtype=np.int64)
        q = searcher.prepare(searcher.vector_of(batch))
        dist, ids = searcher.knn(q, int(k), exclude=batch)
        hit = ids >= 0
        rows, ranks = np.nonzero(hit)
        cols["cell_id"].append(batch[rows])
        cols["rank"].append((ranks + 1).astype(np.int32))
        cols["neighbor_id"].append(ids[hit])
        cols["similarity"].append(to_similarity(dist[hit], searcher.es.metric))
        if progress is not None:
            progress(min(lo + _QUERY_BATCH, total), total)
    table = pa.table(
        {name: pa.array(np.concatenate(parts)) for name, parts in cols.items()}
    ).append_column(
        "set_id",
        pa.array(
            np.full(sum(p.size for p in cols["cell_id"]), searcher.es.set_id, np.int32)
        ),
    )
    fault_point("neighbors.before_write")  # neighbours found, nothing written
    with store.transaction() as con:
        _check_target_in(con, into)
        con.register("_neighbors_rows", table)
        con.execute(f'DROP TABLE IF EXISTS "{into}"')
        con.execute(
            f'CREATE TABLE "{into}" AS SELECT cell_id::BIGINT AS cell_id, '
            "rank::INTEGER AS rank, neighbor_id::BIGINT AS neighbor_id, "
            "similarity::FLOAT AS similarity, set_id::INTEGER AS set_id "
            "FROM _neighbors_rows ORDER BY cell_id, rank"
        )
        con.unregister("_neighbors_rows")
        fault_point("neighbors.in_transaction")  # table replaced, not committed
        con.execute(
            "INSERT OR REPLACE INTO neighbor_tables VALUES (?, ?, ?, ?, ?, now())",
            [into, searcher.es.set_id, int(k), where, table.num_rows],
        )
    fault_point("neighbors.after_commit")
    logger.info("wrote %d neighbour rows into %s", table.num_rows, into)
    return {
        "table": into,
        "set_id": searcher.es.set_id,
        "model": searcher.es.model,
        "metric": searcher.es.metric,
        "k": int(k),
        "cells": total,
        "rows": table.num_rows,
    }


def similarity_sql(store: Store, table: str) -> str:
    """Return a SQL expression for the similarity column of a neighbour table.

    New tables have ``similarity``; older ones ``distance`` (negated here for
    ``l2`` sets, so the expression is higher-is-closer for every table).

    Args:
        store: The store.
        table: A neighbour table's name (a row of ``neighbor_tables``).

    Returns:
        ``"similarity"``, ``"distance"`` or ``"(-distance)"``.

    Raises:
        InvalidArgumentError: If ``table`` is not an identifier.
        NotFoundError: If ``table`` is not a neighbour table of the store.
    """
    safe_identifier(table)
    with store.connect(read_only=True) as con:
        known = [
            r[0] for r in con.execute("SELECT name FROM neighbor_tables").fetchall()
        ]
        if table not in known:
            raise NotFoundError.for_name(
                "neighbour table",
                table,
                known,
                "write one with 'cytostore neighbors STORE --into NAME'",
            )
        columns = {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = ?",
                [table],
            ).fetchall()
        }
        if "similarity" in columns:
            return "similarity"
        metric = con.execute(
            "SELECT e.metric FROM neighbor_tables n JOIN embedding_sets e "
            "USING (set_id) WHERE n.name = ?",
            [table],
        ).fetchall()
    return "(-distance)" if metric and metric[0][0] == "l2" else "distance"


def _check_target(store: Store, into: str) -> None:
    with store.connect(read_only=True) as con:
        _check_target_in(con, into)


def _check_target_in(con: Any, into: str) -> None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE lower(table_name) = lower(?)",
        [into],
    ).fetchall()[0][0]
    ours = con.execute(
        "SELECT count(*) FROM neighbor_tables WHERE lower(name) = lower(?)", [into]
    ).fetchall()[0][0]
    if exists and not ours:
        raise InvalidArgumentError(
            f"{into!r} is a catalog table or view that is not a neighbour table: "
            "choose another --into name (e.g. knn10)"
        )
