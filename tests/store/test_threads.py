"""One ``Store`` shared by threads answers every call as a single thread would.

8 threads x 200 mixed calls (search by cell and by vector, with and without a
``where``; ``sql``; ``vectors`` with and without a ``where``; ``where_ids``) on one
``Store`` object over a store with a Flat index. The oracle is the same call made
first, one at a time, on another ``Store`` object of the same folder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from vec_helpers import random_vectors

from cytostore.store import Store

THREADS = 8
CALLS = 200
WHERES = (
    None,
    "label = 'BAS'",
    "dataset = 'lmu'",
    "patient_id IN ('P1', 'P2') AND label <> 'MON'",
)
QUERIES = (
    "SELECT label, count(*) AS n FROM cell_meta GROUP BY label ORDER BY label",
    "SELECT cell_id, dataset FROM cell_meta WHERE cell_id % 37 = 1 ORDER BY cell_id",
    "SELECT model, n_vectors, n_indexed FROM embedding_sets",
)

Call = tuple[str, Any, Any]


def _calls(seed: int, n: int) -> list[Call]:
    """``n`` calls drawn with ``seed``: (kind, argument, where)."""
    rng = np.random.default_rng(seed)
    kinds = ("search_cell", "search_vector", "sql", "vectors", "where_ids")
    out: list[Call] = []
    for _ in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        where = WHERES[int(rng.integers(len(WHERES)))]
        if kind == "search_cell":
            out.append((kind, int(rng.integers(1, 301)), where))
        elif kind == "search_vector":
            out.append((kind, int(rng.integers(8)), where))
        elif kind == "sql":
            out.append((kind, QUERIES[int(rng.integers(len(QUERIES)))], None))
        else:
            out.append((kind, None, where))
    return out


def _answer(store: Store, call: Call) -> tuple[Any, ...]:
    kind, arg, where = call
    if kind == "search_cell":
        return store.search(arg, k=5, where=where)
    if kind == "search_vector":
        return store.search(random_vectors(8, 16, seed=9)[arg], k=5, where=where)
    if kind == "sql":
        return (store.sql(arg).rows,)
    if kind == "vectors":
        ids, rows = store.vectors("m", where=where)
        return np.asarray(ids), np.asarray(rows)
    return (store.where_ids(where),)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray):
            if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
        elif x != y:
            return False
    return True


def _run_threads(n: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_store__shared_by_8_threads_answers_as_one_thread(vec_store: Store) -> None:
    plans = [_calls(seed, CALLS) for seed in range(THREADS)]
    oracle = Store.open(vec_store.root)
    distinct = dict.fromkeys(c for plan in plans for c in plan)
    expected = {c: _answer(oracle, c) for c in distinct}
    start = threading.Barrier(THREADS)
    errors: list[tuple[Call, str]] = []
    wrong: list[Call] = []
    done = [0] * THREADS

    def work(i: int) -> None:
        start.wait()
        for call in plans[i]:
            try:
                got = _answer(vec_store, call)
            except Exception as exc:  # every error is the finding: collect them all
                errors.append((call, repr(exc)))
                continue
            if not _same(got, expected[call]):
                wrong.append(call)
            done[i] += 1

    _run_threads(THREADS, work)
    assert errors == []
    assert wrong == []
    assert sum(done) == THREADS * CALLS


def test_store__threads_see_a_commit_made_by_another_thread(vec_store: Store) -> None:
    """Readers running while a thread appends and indexes never fail or see a mix."""
    from vec_helpers import add_fake_cells

    new = add_fake_cells(vec_store, 20, seed=5)
    x = random_vectors(20, 16, seed=6)
    start = threading.Barrier(5)
    errors: list[str] = []
    sizes: list[int] = []

    def work(i: int) -> None:
        start.wait()
        if i == 0:
            with vec_store.vector_writer("m") as w:
                w.append(new, x)
            vec_store.build_index("m")
            return
        for _ in range(40):
            try:
                ids, rows = vec_store.vectors("m")
                dist, hits = vec_store.search(int(ids[-1]), k=3)
            except Exception as exc:  # collected: the assertion names them
                errors.append(repr(exc))
                continue
            if rows.shape[0] != ids.size or (hits < 0).any():
                errors.append(f"inconsistent: {ids.size} ids, {rows.shape[0]} rows")
            sizes.append(int(ids.size))

    _run_threads(5, work)
    assert errors == []
    assert set(sizes) <= {300, 320}
    assert vec_store.embedding_set("m").n_indexed == 320


@pytest.mark.parametrize("rebuild", [True, False])
def test_build_index__two_threads_at_once_both_succeed(
    vec_store: Store, rebuild: bool
) -> None:
    start = threading.Barrier(2)
    results: list[Any] = []

    def work(i: int) -> None:
        start.wait()
        try:
            results.append(vec_store.build_index("m", "HNSW32", rebuild=rebuild))
        except Exception as exc:  # collected: the assertion names it
            results.append(exc)

    _run_threads(2, work)
    assert [type(r).__name__ for r in results] == ["EmbeddingSet"] * 2
    es = vec_store.embedding_set("m")
    assert (es.index_factory, es.n_indexed) == ("HNSW32", 300)
    assert sorted(p.name for p in (vec_store.root / "indexes").iterdir()) == [
        f"{es.set_id}.faiss"
    ]
    dist, ids = vec_store.search(7, k=3)
    assert ids.shape == (1, 3) and (ids > 0).all()


def test_searcher_cache__concurrent_first_searches_load_the_set_once(
    vec_store: Store,
) -> None:
    """8 threads searching a set nobody loaded yet share one loaded copy."""
    from cytostore.store.search import SearcherCache

    cache = SearcherCache()
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def first_search() -> None:
        barrier.wait()
        got.append(cache.get(vec_store, "m"))

    threads = [threading.Thread(target=first_search) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len({id(s) for s in got}) == 1
