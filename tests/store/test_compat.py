"""Stores written by the release d6fba90 open with today's code and answer the same.

The fixture ``tests/fixtures/store_v0`` was written by that release
(``tests/fixtures/make_store_v0.py``); ``store_v0_expected`` holds its answers.
Opening migrates a store, so every test works on a copy.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytostore.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = FIXTURES / "store_v0_expected"
MODEL = "rand"


@pytest.fixture
def old_store(tmp_path: Path) -> Store:
    """A private copy of the d6fba90 store, its catalog unpacked, opened (migrated)."""
    root = Path(shutil.copytree(FIXTURES / "store_v0", tmp_path / "store_v0"))
    packed = root / "catalog.duckdb.gz"
    with gzip.open(packed, "rb") as src, (root / "catalog.duckdb").open("wb") as dst:
        shutil.copyfileobj(src, dst)
    packed.unlink()
    return Store.open(root)


def _expected_json(name: str) -> Any:
    return json.loads((EXPECTED / name).read_text())


def test_open__old_store_cell_meta_rows_unchanged(old_store: Store) -> None:
    expected = _expected_json("cell_meta.json")
    res = old_store.sql("SELECT * FROM cell_meta ORDER BY cell_id")
    assert set(expected[0]) <= set(res.columns)
    rows = [dict(zip(res.columns, r, strict=True)) for r in res.rows]
    assert len(rows) == len(expected) == 63
    for got, want in zip(rows, expected, strict=True):
        assert {k: got[k] for k in want} == want


def test_open__old_store_where_ids_unchanged(old_store: Store) -> None:
    expected = _expected_json("cell_meta.json")
    want = sorted(r["cell_id"] for r in expected if r["patient_id"] is not None)
    got = old_store.where_ids("patient_id IS NOT NULL")
    assert got.dtype == np.int64
    assert got.tolist() == want
    assert len(want) > 0


def test_open__old_store_set_description_unchanged(old_store: Store) -> None:
    es = old_store.embedding_set(MODEL)
    assert (es.model, es.dim, es.dtype, es.metric) == (MODEL, 128, "float32", "cosine")
    assert (es.n_vectors, es.n_indexed, es.index_factory) == (63, 63, "Flat")


def test_vectors__old_store_bit_exact(old_store: Store) -> None:
    ids, X = old_store.vectors(MODEL)
    want_ids = np.load(EXPECTED / "ids.npy")
    want = np.load(EXPECTED / "vectors.npy")
    np.testing.assert_array_equal(np.asarray(ids), want_ids)
    assert X.dtype == want.dtype
    assert np.asarray(X).tobytes() == want.tobytes()


def test_vectors__old_store_where_rows_bit_exact(old_store: Store) -> None:
    want_ids = np.load(EXPECTED / "ids.npy")
    want = np.load(EXPECTED / "vectors.npy")
    bm = set(old_store.where_ids("dataset = 'bm'").tolist())
    ids, X = old_store.vectors(MODEL, where="dataset = 'bm'")
    keep = np.isin(want_ids, sorted(bm))
    np.testing.assert_array_equal(np.asarray(ids), want_ids[keep])
    assert np.asarray(X).tobytes() == want[keep].tobytes()


@pytest.mark.parametrize("q", range(4))
def test_search__old_store_same_hits(old_store: Store, q: int) -> None:
    query = _expected_json("search.json")[q]
    d, hits = old_store.search(
        query["cell"], k=query["k"], where=query["where"], model=MODEL
    )
    assert hits.tolist() == query["ids"]
    np.testing.assert_allclose(d, np.asarray(query["distances"]), rtol=0, atol=1e-6)


def test_search__old_store_after_append_sees_new_rows(old_store: Store) -> None:
    """The old set still takes appends: a new row is found by a search at once."""
    want_ids = np.load(EXPECTED / "ids.npy")
    want = np.load(EXPECTED / "vectors.npy")
    new_id = int(old_store.add_cells([{"dataset": "bm", "path": "extra/x.jpg"}])[0])
    es = old_store.embedding_set(MODEL)
    with old_store.vector_writer(es) as w:
        w.append(np.asarray([new_id]), want[:1].copy())
    d, hits = old_store.search(want[0], k=2, model=MODEL)
    assert set(hits[0].tolist()) == {int(want_ids[0]), new_id}
    np.testing.assert_allclose(d[0], [1.0, 1.0], atol=1e-5)
