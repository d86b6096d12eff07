"""What does the SQL sandbox cost? ``Store.sql`` and filtered search vs plain DuckDB.

User SQL runs through :mod:`cytostore.store.sandbox`: DuckDB's parser counts the
statements and checks their type, the connection is hardened and read-only, and a
``--where`` must parse as one expression before it runs inside a fixed clause. The
baseline runs the same query on a plain read-only DuckDB connection (no config, the
query pasted as text), in the same run, alternating sides:

1. ``Store.sql`` of a GROUP BY over 200,000 cells, **cold** (each call opens the
   catalog, as one CLI call does) and **warm** (inside an open ``store.connect()``,
   against the query run directly on that held connection: DuckDB allows one
   configuration per open file in a process, so warm rows measure the per-call
   checks).
2. Filtered search: ``Store.search(cell, k=10, where=...)`` with a 5%-selective
   filter over a 200,000 x 64 set; cold (the store's set cache emptied before each
   query, so the set is loaded and the filter evaluated each time) vs a plain
   connection reading the set's row and ``SELECT cell_id ... WHERE (...)``, plus the
   same set load and restricted FAISS search; warm (the loaded set kept, and the
   store's filter cache answering a repeated filter) vs the same on the held
   connection.

Target for every row: <= 1.1x the baseline (median of alternating passes).

Usage: ``python bench/bench_sandbox.py [--quick]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
from _stores import store_with_cells, write_random_set

from cytostore.store import Store
from cytostore.store.search import Searcher
from cytostore.store.vectors import _SET_COLUMNS

QUERY = "SELECT label, count(*) AS n, avg(width) AS w FROM cell_meta GROUP BY label"
WHERE = "label = 'L07'"


def _machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, duckdb {duckdb.__version__}"
    )


def _build(root: Path, n: int, dim: int) -> Store:
    store = store_with_cells(root, n)
    write_random_set(store, "m", n, dim)
    store.build_index("m")
    return store


def _time(
    subject: Callable[[], object], baseline: Callable[[], object], min_s: float
) -> tuple[float, float]:
    """Median seconds per call of each side, alternating until ``min_s`` per side."""
    subject()
    baseline()  # warm-up
    ts: list[float] = []
    tb: list[float] = []
    while sum(ts) < min_s or sum(tb) < min_s or len(ts) < 5:
        t0 = time.perf_counter()
        subject()
        ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        baseline()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ts), statistics.median(tb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, dim, min_s = (20_000, 32, 0.5) if args.quick else (200_000, 64, 3.0)
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = _build(Path(tmp) / "s", n, dim)
        path = str(store.catalog_path)

        def plain_sql() -> object:
            con = duckdb.connect(path, read_only=True)
            try:
                return con.execute(QUERY).fetchall()
            finally:
                con.close()

        s, b = _time(lambda: store.sql(QUERY).rows, plain_sql, min_s)
        rows.append(("`Store.sql` GROUP BY, cold (a catalog open per call)", s, b))
        if sorted(store.sql(QUERY).rows) != sorted(plain_sql()):  # type: ignore[arg-type]
            raise SystemExit("Store.sql and plain DuckDB disagree")

        # DuckDB refuses a second configuration for an open file in one process,
        # so the held baseline connection has the sandbox's settings: warm rows
        # measure the per-call checks (parse, statement type, relational filter).
        with store.connect() as held:
            s, b = _time(
                lambda: store.sql(QUERY).rows,
                lambda: held.execute(QUERY).fetchall(),
                min_s,
            )
        rows.append(("`Store.sql` GROUP BY, warm (connection held)", s, b))

        es = store.embedding_set("m")
        full = Searcher.of_set(store, es)

        def plain_filtered(con: duckdb.DuckDBPyConnection | None = None) -> object:
            own = con is None
            c = duckdb.connect(path, read_only=True) if own else con
            try:
                # The same catalog work as the subject: the set's row, the filter.
                c.execute(  # type: ignore[union-attr]
                    f"SELECT {_SET_COLUMNS} FROM embedding_sets ORDER BY set_id"
                ).fetchall()
                ids = c.execute(  # type: ignore[union-attr]
                    f"SELECT cell_id FROM cell_meta WHERE ({WHERE}) ORDER BY cell_id"
                ).fetchnumpy()["cell_id"]
            finally:
                if own:
                    c.close()  # type: ignore[union-attr]
            # Cold: load the set as the subject does after its cache is emptied.
            base = Searcher.of_set(store, es) if own else full
            searcher = base.restricted(np.asarray(ids, np.int64), WHERE)
            return searcher.knn(searcher.prepare(searcher.vector_of([7])), 10)

        def cold_search() -> object:
            store._searchers.clear()
            return store.search(7, k=10, where=WHERE, include_self=True)

        s, b = _time(cold_search, plain_filtered, min_s)
        rows.append(("filtered search, 5% `where`, cold (filter evaluated)", s, b))
        got = store.search(7, k=10, where=WHERE, include_self=True)[1]
        want = plain_filtered()[1]  # type: ignore[index]
        if not np.array_equal(got, want):
            raise SystemExit("filtered search and the plain baseline disagree")

        with store.connect() as held:
            s, b = _time(
                lambda: store.search(7, k=10, where=WHERE, include_self=True),
                lambda: plain_filtered(held),
                min_s,
            )
        rows.append(("filtered search, warm (set loaded, connection held)", s, b))

    print("## SQL sandbox cost: `Store.sql` and filtered search vs plain DuckDB\n")
    print(f"Machine: {_machine()}. {n:,} cells; set {n:,}×{dim}; medians of")
    print("alternating passes; baseline = a plain read-only DuckDB connection with")
    print("the query pasted as text.\n")
    print("| question | baseline | subject | ratio | target | met |")
    print("|---|---:|---:|---:|---|---|")
    met_all = True
    for name, s, b in rows:
        ratio = s / b
        met = ratio <= 1.1
        met_all &= met
        print(
            f"| {name} | {b * 1e3:.2f} ms | {s * 1e3:.2f} ms | {ratio:.2f}× | "
            f"≤ 1.1× | {'yes' if met else 'no'} |"
        )
    print(f"\nVerdict: {'all targets met' if met_all else 'not all targets met'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
