from __future__ import annotations

import faiss
import numpy as np
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.errors import InvalidArgumentError, StoreCorruptError
from cytostore.store import Store
from cytostore.store.index import index_path, load_index


def test_build_index__extends_with_new_rows(vec_store: Store) -> None:
    es = vec_store.embedding_set()
    assert (es.n_vectors, es.n_indexed) == (300, 300)
    new = add_fake_cells(vec_store, 5)
    with vec_store.vector_writer() as w:
        w.append(new, random_vectors(5, 16, seed=9))
    assert vec_store.embedding_set().n_indexed == 300
    es = vec_store.build_index()
    assert (es.n_vectors, es.n_indexed) == (305, 305)
    idx = faiss.read_index(str(index_path(vec_store, es)))
    ids, x = vec_store.vectors()
    assert idx.ntotal == 305
    # The index's ids are cell ids, its vectors the stored rows.
    np.testing.assert_array_equal(idx.reconstruct_batch(ids[-5:]), x[-5:])


def test_build_index__unchanged_set_is_not_rewritten(vec_store: Store) -> None:
    path = index_path(vec_store, vec_store.embedding_set())
    before = path.stat().st_mtime_ns
    vec_store.build_index()
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("factory", "params"), [("HNSW32", {"efSearch": 128}), ("IVF8,Flat", {"nprobe": 8})]
)
def test_build_index__factory_records_params_and_finds_neighbours(
    vec_store: Store, factory: str, params: dict[str, int]
) -> None:
    es = vec_store.build_index(index=factory)
    assert es.index_factory == factory and es.search_params == params
    ids, x = vec_store.vectors()
    q = np.asarray(x[:20], dtype=np.float32)
    dist, got = vec_store.search(q, k=5)
    exact = np.argsort(-(q @ np.asarray(x, np.float32).T), axis=1)[:, :5]
    recall = np.mean(
        [len(set(g) & set(ids[e])) / 5 for g, e in zip(got, exact, strict=True)]
    )
    assert recall >= 0.9
    assert vec_store.sql("SELECT index_factory FROM embedding_sets").rows == [
        (factory,)
    ]


def test_build_index__invalid_factory_is_one_line_error(vec_store: Store) -> None:
    with pytest.raises(
        InvalidArgumentError, match="invalid FAISS index factory 'Bogus7'"
    ):
        vec_store.build_index(index="Bogus7")


def test_build_index__ivf_with_too_few_vectors(vec_store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="needs at least 4096 vectors"):
        vec_store.build_index(index="IVF4096,Flat")


def test_load_index__count_disagreeing_with_catalog_is_corrupt(
    vec_store: Store,
) -> None:
    es = vec_store.embedding_set()
    ids, x = vec_store.vectors()
    small = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    small.add_with_ids(np.asarray(x[:10]), ids[:10])
    faiss.write_index(small, str(index_path(vec_store, es)))
    with pytest.raises(StoreCorruptError, match="holds 10 vectors .* records 300"):
        load_index(vec_store, es)
    with pytest.raises(StoreCorruptError, match="--rebuild"):
        vec_store.search(1)
    vec_store.build_index(rebuild=True)
    assert vec_store.search(1, k=3)[1].shape == (1, 3)


def test_load_index__missing_file_is_corrupt(vec_store: Store) -> None:
    index_path(vec_store, vec_store.embedding_set()).unlink()
    with pytest.raises(StoreCorruptError, match="missing"):
        vec_store.search(1)
