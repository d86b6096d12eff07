from __future__ import annotations

import numpy as np
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.errors import (
    DimensionMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
    InvalidWhereError,
)
from cytostore.store import Store


def _brute(store: Store, q: np.ndarray, k: int, where: str | None = None):
    ids, x = store.vectors(where=where)
    x = np.asarray(x, np.float64)
    qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
    scores = qn @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def test_search__vector_matches_brute_force(vec_store: Store) -> None:
    q = random_vectors(7, 16, seed=42)
    dist, ids = vec_store.search(q, k=10)
    want_d, want_i = _brute(vec_store, q, 10)
    assert dist.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5)
    d1, i1 = vec_store.search(q[0], k=10)
    np.testing.assert_array_equal(i1[0], ids[0])


def test_search__cell_excludes_itself_unless_asked(vec_store: Store) -> None:
    _, x = vec_store.vectors()
    _, with_self = vec_store.search(5, k=4, include_self=True)
    _, without = vec_store.search(5, k=4)
    assert with_self[0, 0] == 5 and 5 not in without[0]
    assert without[0, :3].tolist() == with_self[0, 1:].tolist()
    np.testing.assert_array_equal(
        without, _brute(vec_store, np.asarray(x[4:5]), 5)[1][:, 1:]
    )


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat"])
def test_search__where_is_exact_top_k_within_subset(
    vec_store: Store, factory: str
) -> None:
    if factory != "Flat":
        vec_store.build_index(index=factory)
    where = "label = 'EOS' AND dataset = 'lmu'"
    q = random_vectors(5, 16, seed=7)
    dist, ids = vec_store.search(q, k=6, where=where)
    subset = set(vec_store.where_ids(where).tolist())
    assert (ids >= 0).all() and set(ids.ravel().tolist()) <= subset
    want_d, want_i = _brute(vec_store, q, 6, where=where)
    if factory == "Flat":
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_allclose(dist, want_d, rtol=1e-5)


def test_search__hnsw_with_tiny_subset_still_returns_k(vec_store: Store) -> None:
    vec_store.build_index(index="HNSW32")
    where = "cell_id IN (3, 50, 77, 123, 250)"
    dist, ids = vec_store.search(random_vectors(3, 16, seed=1), k=5, where=where)
    assert sorted(ids[0].tolist()) == [3, 50, 77, 123, 250]
    want_d, want_i = _brute(vec_store, random_vectors(3, 16, seed=1), 5, where=where)
    np.testing.assert_array_equal(ids, want_i)


def test_search__fewer_candidates_than_k_pads(vec_store: Store) -> None:
    dist, ids = vec_store.search(1, k=4, where="cell_id IN (1, 2, 3)")
    assert ids[0, :2].tolist() != [-1, -1] and ids[0, 2:].tolist() == [-1, -1]
    assert np.isnan(dist[0, 2:]).all() and not np.isnan(dist[0, :2]).any()


def test_search__rows_after_the_index_are_searched(vec_store: Store) -> None:
    new = add_fake_cells(vec_store, 3)
    x = random_vectors(3, 16, seed=11)
    with vec_store.vector_writer() as w:
        w.append(new, x)
    assert vec_store.embedding_set().n_indexed == 300  # index lags behind
    dist, ids = vec_store.search(x, k=1)
    assert ids[:, 0].tolist() == new.tolist()
    np.testing.assert_allclose(dist[:, 0], 1.0, rtol=1e-6)
    _, filtered = vec_store.search(x[0], k=1, where=f"cell_id >= {new[0]}")
    assert filtered[0, 0] == new[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"where": "label = = 1"}, InvalidWhereError, "invalid --where"),
        ({"where": "colour = 'red'"}, InvalidWhereError, "colour"),
        ({"where": "label = 'XYZ'"}, EmptySelectionError, "selects no cells"),
        ({"k": 0}, InvalidArgumentError, "k must be"),
        ({"set_or_model": "nope"}, InvalidArgumentError, "no embedding set 'nope'"),
    ],
)
def test_search__bad_input(
    vec_store: Store, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        vec_store.search(1, **kwargs)
    assert "\n" not in str(info.value)


def test_search__wrong_dimension_and_unknown_cell(vec_store: Store) -> None:
    with pytest.raises(DimensionMismatchError, match="16-d"):
        vec_store.search(np.ones(8, np.float32))
    with pytest.raises(InvalidArgumentError, match=r"cells \[99999\] have no vector"):
        vec_store.search(99999)
