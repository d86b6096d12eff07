"""Store.search against NumPy brute force: metric x dtype x index x tail x where.

Every index is searched in its exact regime (IVF with ``nprobe`` = all lists, HNSW
with ``efSearch`` above the row count), so each answer must equal the brute-force
top-k over the *stored* values (float16 sets: the float16 rows widened to float32).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.store import Store

DIM = 16
N_INDEXED = 400
N_TAIL = 60  # appended after the index was built
K = 10
NLIST = 4
INDEXES = {
    "Flat": ("Flat", None),
    "HNSW": ("HNSW16", {"efSearch": 1024}),
    "IVF": (f"IVF{NLIST},Flat", {"nprobe": NLIST}),
}
WHERE = "dataset = 'bm' AND label <> 'BAS'"

Key = tuple[str, str, str, bool]


@pytest.fixture(scope="module")
def oracle_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Key], Store]:
    """Return a builder of one store per (metric, dtype, index, tail), cached.

    Each store holds ``N_INDEXED + N_TAIL`` fake cells and one set ``m``; its index
    is built over the first ``N_INDEXED`` rows, then (``tail``) ``N_TAIL`` more rows
    are appended without touching the index. Tests only read from it.
    """
    built: dict[Key, Path] = {}

    def get(key: Key) -> Store:
        if key not in built:
            metric, dtype, index, tail = key
            root = tmp_path_factory.mktemp("oracle") / "store"
            store = Store.create(root)
            ids = add_fake_cells(store, N_INDEXED + N_TAIL, seed=3)
            x = random_vectors(N_INDEXED + N_TAIL, DIM, seed=4) * 3.0
            factory, params = INDEXES[index]
            store.create_embedding_set(
                "m", DIM, dtype=dtype, metric=metric, index_factory=factory
            )
            with store.vector_writer("m") as w:
                w.append(ids[:N_INDEXED], x[:N_INDEXED])
            store.build_index("m", search_params=params)
            if tail:
                with store.vector_writer("m") as w:
                    w.append(ids[N_INDEXED:], x[N_INDEXED:])
            built[key] = root
        return Store.open(built[key])

    return get


def _brute_force(
    store: Store, queries: np.ndarray, metric: str, where: str | None
) -> tuple[np.ndarray, np.ndarray]:
    ids, stored = store.vectors("m")
    x = np.asarray(stored, dtype=np.float32)
    ids = np.asarray(ids)
    if where is not None:
        keep = np.isin(ids, store.where_ids(where))
        ids, x = ids[keep], x[keep]
    if metric == "cosine":
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        score = q @ x.T
        order = np.argsort(-score, axis=1, kind="stable")[:, :K]
    else:
        q = queries
        score = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(score, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(score, order, axis=1), ids[order]


@pytest.mark.parametrize(
    ("metric", "dtype", "index", "tail", "where"),
    list(
        itertools.product(
            ("cosine", "l2"),
            ("float32", "float16"),
            tuple(INDEXES),
            (False, True),
            (None, WHERE),
        )
    ),
)
def test_search__matches_brute_force(
    oracle_store: Callable[[Key], Store],
    metric: str,
    dtype: str,
    index: str,
    tail: bool,
    where: str | None,
) -> None:
    store = oracle_store((metric, dtype, index, tail))
    es = store.embedding_set("m")
    assert es.n_indexed == N_INDEXED
    assert es.n_vectors == N_INDEXED + (N_TAIL if tail else 0)
    queries = random_vectors(6, DIM, seed=5) * 3.0
    want_d, want_ids = _brute_force(store, queries, metric, where)
    d, hits = store.search(queries, k=K, where=where, model="m")
    assert hits.shape == d.shape == (6, K)
    assert d.dtype == np.float32 and hits.dtype == np.int64
    for row in range(6):
        assert set(hits[row].tolist()) == set(want_ids[row].tolist())
    np.testing.assert_allclose(d, want_d, rtol=1e-4, atol=1e-4)
    if where is not None:
        assert np.isin(hits, store.where_ids(where)).all()
    if tail:  # the un-indexed rows are candidates too
        tail_ids = np.asarray(store.vectors("m")[0])[N_INDEXED:]
        assert np.isin(want_ids, tail_ids).any()
        assert np.isin(hits, tail_ids).any()


@pytest.mark.parametrize("index", tuple(INDEXES))
def test_search__cell_query_matches_brute_force_without_self(
    oracle_store: Callable[[Key], Store], index: str
) -> None:
    store = oracle_store(("cosine", "float32", index, True))
    ids, stored = store.vectors("m")
    cell = int(ids[7])
    q = np.asarray(stored[7:8], dtype=np.float32)
    want_d, want_ids = _brute_force(store, q, "cosine", None)
    assert want_ids[0, 0] == cell  # the cell is its own nearest row ...
    d, hits = store.search(cell, k=K - 1, model="m")
    assert hits[0].tolist() == want_ids[0, 1:].tolist()  # ... and is left out
    np.testing.assert_allclose(d[0], want_d[0, 1:], rtol=1e-5, atol=1e-5)
