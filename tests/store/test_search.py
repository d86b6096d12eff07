from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
from lock_holder import catalog_locked
from vec_helpers import add_fake_cells, random_vectors

from cytostore.errors import (
    DimensionMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
    InvalidWhereError,
    StoreBusyError,
    StoreCorruptError,
    UnknownCellError,
    UnknownColumnError,
    UnknownEmbeddingSetError,
)
from cytostore.store import Store
from cytostore.store.index import index_path
from cytostore.store.vectors import vector_path


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
        ({"where": "colour = 'red'"}, UnknownColumnError, "colour"),
        ({"where": "label = 'XYZ'"}, EmptySelectionError, "selects no cells"),
        ({"k": 0}, InvalidArgumentError, "k must be"),
        ({"model": "nope"}, UnknownEmbeddingSetError, "no embedding set 'nope'"),
        ({"model": "mm"}, UnknownEmbeddingSetError, "did you mean 'm'"),
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
    with pytest.raises(UnknownCellError, match=r"no cell 99999 in embedding set"):
        vec_store.search(99999)


# ---------------------------------------------------------------- searcher cache
def _age_catalog(store: Store, seconds: float = 60.0) -> None:
    """Date the catalog files back, as if the store had been quiet for a while."""
    for path in store.root.glob("catalog.duckdb*"):
        t = path.stat().st_mtime - seconds
        os.utime(path, (t, t))


def _assert_same(a: tuple, b: tuple) -> None:
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_search__repeat_answers_like_a_fresh_store(vec_store: Store) -> None:
    _age_catalog(vec_store)
    first = vec_store.search(5, k=10)
    q = random_vectors(3, 16, seed=3)
    again = [vec_store.search(5, k=10), vec_store.search(q, k=10)]
    _assert_same(again[0], first)
    fresh = Store.open(vec_store.root)
    _assert_same(again[0], fresh.search(5, k=10))
    _assert_same(again[1], fresh.search(q, k=10))
    filtered = vec_store.search(5, k=4, where="label = 'EOS'")
    _assert_same(filtered, fresh.search(5, k=4, where="label = 'EOS'"))
    assert set(filtered[1].ravel().tolist()) <= set(fresh.where_ids("label = 'EOS'"))
    assert vec_store.searcher("m") is vec_store.searcher(1) is vec_store.searcher()


def test_search__repeat_needs_no_catalog_while_files_are_unchanged(
    vec_store: Store,
) -> None:
    """README: a repeated search opens no catalog, so a busy writer cannot block it."""
    _age_catalog(vec_store)
    impatient = Store(vec_store.root, busy_timeout_s=0.2)
    q = random_vectors(2, 16, seed=4)
    first = impatient.search(q, k=5)
    filtered = impatient.search(q, k=5, where="label = 'EOS'")
    with catalog_locked(vec_store.catalog_path):
        _assert_same(impatient.search(q, k=5), first)
        _assert_same(impatient.search(q, k=5, where="label = 'EOS'"), filtered)
        with pytest.raises(StoreBusyError):  # a new filter must read the catalog
            impatient.search(q, k=5, where="label = 'BAS'")
        with pytest.raises(StoreBusyError):  # and so must a store seen first now
            Store(vec_store.root, busy_timeout_s=0.2).search(q, k=5)


def test_search__write_right_after_a_search_is_seen(vec_store: Store) -> None:
    """A catalog written within its file-time granularity is still read again."""
    vec_store.search(5, k=3)
    eos = vec_store.where_ids("label = 'EOS'")
    other = Store.open(vec_store.root)  # as another process would, right away
    with other.transaction() as con:
        con.execute("UPDATE cells SET label = 'BAS' WHERE cell_id = ?", [int(eos[0])])
    _, hits = vec_store.search(int(eos[1]), k=300, where="label = 'EOS'")
    got = set(hits.ravel().tolist()) - {-1}
    assert got == set(eos[2:].tolist())
    new = add_fake_cells(other, 2)
    x = random_vectors(2, 16, seed=22)
    with other.vector_writer() as w:
        w.append(new, x)
    dist, ids = vec_store.search(x, k=1)
    assert ids[:, 0].tolist() == new.tolist()
    np.testing.assert_allclose(dist[:, 0], 1.0, rtol=1e-6)


def test_search__sees_vectors_added_by_another_writer(vec_store: Store) -> None:
    _age_catalog(vec_store)
    vec_store.search(5, k=3)
    other = Store.open(vec_store.root)  # as another process would
    new = add_fake_cells(other, 4)
    x = random_vectors(4, 16, seed=21)
    with other.vector_writer() as w:
        w.append(new, x)
    _age_catalog(vec_store)
    dist, ids = vec_store.search(x, k=2)
    assert ids[:, 0].tolist() == new.tolist()
    _assert_same((dist, ids), Store.open(vec_store.root).search(x, k=2))
    other.build_index()  # the index now holds the new rows too
    _age_catalog(vec_store)
    _assert_same(vec_store.search(x, k=2), (dist, ids))
    es = vec_store.searcher().es
    assert (es.n_vectors, es.n_indexed) == (304, 304)


def test_search__sees_a_rebuilt_index_and_a_second_set(vec_store: Store) -> None:
    _age_catalog(vec_store)
    q = random_vectors(4, 16, seed=8)
    vec_store.search(q, k=5)
    other = Store.open(vec_store.root)
    other.build_index(index="HNSW32", search_params={"efSearch": 4})
    _age_catalog(vec_store)
    got = vec_store.search(q, k=5)
    assert vec_store.searcher().es.index_factory == "HNSW32"
    _assert_same(got, Store.open(vec_store.root).search(q, k=5))
    other.create_embedding_set("m2", 16)
    _age_catalog(vec_store)
    with pytest.raises(UnknownEmbeddingSetError, match="2 embedding sets"):
        vec_store.search(q, k=5)
    _assert_same(vec_store.search(q, k=5, model="m"), got)


def test_search__files_changed_after_caching_are_still_corrupt(
    vec_store: Store,
) -> None:
    _age_catalog(vec_store)
    vec_store.search(1, k=3)
    es = vec_store.embedding_set()
    small = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    small.add_with_ids(np.zeros((10, 16), np.float32), np.arange(1, 11))
    faiss.write_index(small, str(index_path(vec_store, es)))
    with pytest.raises(StoreCorruptError, match="holds 10 vectors .* records 300"):
        vec_store.search(1, k=3)
    vec_store.build_index(rebuild=True)
    vec_store.search(1, k=3)
    with open(vector_path(vec_store, es), "r+b") as f:
        f.truncate(10 * es.row_bytes)
    with pytest.raises(StoreCorruptError, match="holds 10 rows but the catalog"):
        vec_store.search(1, k=3)


@pytest.mark.parametrize("unfiltered_first", [False, True])
def test_search__repeated_filter_follows_a_relabel(
    vec_store: Store, unfiltered_first: bool
) -> None:
    _age_catalog(vec_store)
    where = "label = 'EOS'"
    first = vec_store.search(5, k=4, where=where)
    _assert_same(vec_store.search(5, k=4, where=where), first)
    other = Store.open(vec_store.root)
    eos = other.where_ids(where)
    with other.transaction() as con:
        con.execute("UPDATE cells SET label = 'BAS' WHERE cell_id = ?", [int(eos[0])])
    _age_catalog(vec_store)
    if unfiltered_first:
        vec_store.search(5, k=4)
    after = vec_store.search(5, k=300, where=where)
    assert set(after[1].ravel().tolist()) - {-1} == set(eos[1:].tolist()) - {5}
    _assert_same(after, Store.open(vec_store.root).search(5, k=300, where=where))
