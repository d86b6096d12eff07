"""Search of compressed (PQ) indexes: exact re-ranking and exact filtered search.

Oracle: brute force (``faiss.knn``) over the stored float vectors.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from vec_helpers import add_fake_cells

from cytostore.store import Store

DIM = 32


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM)).astype(np.float32) * 3
    x = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, DIM), np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def pq_store(tmp_store: Store) -> tuple[Store, np.ndarray, np.ndarray]:
    ids = add_fake_cells(tmp_store, 4000)
    x = _clustered(4000, 0)
    es = tmp_store.create_embedding_set("m", DIM)
    with tmp_store.vector_writer(es) as w:
        w.append(ids, x)
    tmp_store.build_index("m", "IVF16,PQ4")  # 4 bytes a vector: very lossy
    return tmp_store, ids, x


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean(
            [len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]
        )
    )


def test_compressed_index__reranks_candidates_with_exact_distances(
    pq_store: tuple[Store, np.ndarray, np.ndarray],
) -> None:
    store, ids, x = pq_store
    es = store.embedding_set("m")
    assert es.search_params == {"nprobe": 8, "k_factor": 32}
    q = _clustered(50, 1)
    d_true, i_true = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    dist, found = store.search(q, 10, model="m")
    reranked = _recall(found, ids[i_true])
    # the returned similarities are the exact cosines of the returned cells
    rows = {int(c): v for c, v in zip(ids, x, strict=True)}
    exact = np.array([[q[j] @ rows[int(c)] for c in found[j]] for j in range(len(q))])
    np.testing.assert_allclose(dist, exact, rtol=1e-5, atol=1e-5)
    store.build_index("m", search_params={"nprobe": 8, "k_factor": 1})
    _, plain = store.search(q, 10, model="m")
    assert reranked > _recall(plain, ids[i_true]) + 0.2
    assert reranked >= 0.8


def test_compressed_index__small_selection_is_searched_exactly(
    pq_store: tuple[Store, np.ndarray, np.ndarray],
) -> None:
    store, ids, x = pq_store
    where = "label = 'EOS' AND dataset = 'lmu'"
    chosen = np.sort(store.where_ids(where))
    at = np.searchsorted(ids, chosen)
    q = _clustered(20, 2)
    _, i_true = faiss.knn(q, x[at], 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = store.search(q, 10, model="m", where=where)
    np.testing.assert_array_equal(found, chosen[i_true])  # exact, same order
