from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
    InvalidWhereError,
    StoreBusyError,
    StoreCorruptError,
    StoreWriteError,
    UnknownColumnError,
    UnknownEmbeddingSetError,
)
from cytostore.store import Store
from cytostore.store import vectors as vectors_mod


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_vector_writer__roundtrip_is_normalised_in_stored_dtype(
    tmp_store: Store, dtype: str
) -> None:
    ids = add_fake_cells(tmp_store, 50)
    x = random_vectors(50, 8, seed=1)
    es = tmp_store.create_embedding_set("m", 8, dtype=dtype)
    with tmp_store.vector_writer(es) as w:
        w.append(ids[:20], x[:20])
        w.append(ids[20:], x[20:])
    got_ids, got = tmp_store.vectors("m")
    assert got_ids.tolist() == ids.tolist()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, _unit(x).astype(dtype))
    assert tmp_store.embedding_set().n_vectors == 50


def test_vectors__memory_mapped_without_copy(vec_store: Store) -> None:
    ids, x = vec_store.vectors()
    assert not x.flags.owndata and not x.flags.writeable
    assert x.shape == (300, 16) and ids.shape == (300,)


def test_vectors__where_selects_rows_in_order(vec_store: Store) -> None:
    all_ids, all_x = vec_store.vectors("m")
    ids, x = vec_store.vectors("m", where="label = 'EOS' AND dataset = 'bm'")
    want = set(vec_store.where_ids("label = 'EOS' AND dataset = 'bm'").tolist())
    assert ids.tolist() == [i for i in all_ids.tolist() if i in want]
    np.testing.assert_array_equal(x, all_x[np.isin(all_ids, ids)])


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("label = ", InvalidWhereError),
        ("no_such_column = 1", UnknownColumnError),
        ("label = 'nothing'", EmptySelectionError),
    ],
)
def test_vectors__bad_where(vec_store: Store, where: str, error: type) -> None:
    with pytest.raises(error) as info:
        vec_store.vectors(where=where)
    assert "\n" not in str(info.value)


def test_embedding_set__unknown_and_ambiguous(vec_store: Store) -> None:
    with pytest.raises(UnknownEmbeddingSetError, match="no embedding set 'nope'"):
        vec_store.embedding_set("nope")
    vec_store.create_embedding_set("other", 4)
    with pytest.raises(UnknownEmbeddingSetError, match="pick one with --model"):
        vec_store.embedding_set()
    assert vec_store.embedding_set(1).model == "m"


def test_create_embedding_set__mismatches(vec_store: Store) -> None:
    with pytest.raises(DimensionMismatchError, match="holds 16-d"):
        vec_store.create_embedding_set("m", 32)
    with pytest.raises(ConfigMismatchError, match="dtype"):
        vec_store.create_embedding_set("m", 16, dtype="float16")
    with pytest.raises(ConfigMismatchError, match="build-index"):
        vec_store.create_embedding_set("m", 16, index_factory="HNSW32")
    with pytest.raises(InvalidArgumentError):
        vec_store.create_embedding_set("x", 16, dtype="int8")


def test_create_embedding_set__records_weights_and_refuses_other_ones(
    vec_store: Store,
) -> None:
    es = vec_store.create_embedding_set("w", 16, weights_sha256="a" * 64)
    assert vec_store.embedding_set("w").weights_sha256 == "a" * 64 == es.weights_sha256
    assert vec_store.create_embedding_set("w", 16, weights_sha256="a" * 64) == es
    with pytest.raises(ConfigMismatchError, match="other weights") as info:
        vec_store.create_embedding_set("w", 16, weights_sha256="b" * 64)
    assert "\n" not in str(info.value)
    # "m" predates fingerprints (None): nothing to compare, and it stays unknown
    assert vec_store.create_embedding_set("m", 16, weights_sha256="b" * 64) == (
        vec_store.embedding_set("m")
    )
    assert vec_store.embedding_set("m").weights_sha256 is None


def test_embedding_sets__catalog_from_before_m021_is_migrated(vec_store: Store) -> None:
    with vec_store.transaction() as con:
        con.execute("ALTER TABLE embedding_sets DROP COLUMN weights_sha256")
        con.execute("DELETE FROM schema_migrations WHERE id = 21")
    store = Store.open(vec_store.root)
    es = store.embedding_set("m")
    assert (es.n_vectors, es.weights_sha256) == (300, None)
    assert store.search(1, k=3)[1].shape == (1, 3)


def test_vector_writer__rejects_duplicates_and_bad_shapes(vec_store: Store) -> None:
    ids = add_fake_cells(vec_store, 2)
    with vec_store.vector_writer("m") as w:
        with pytest.raises(InvalidArgumentError, match="already have vectors"):
            w.append([1], random_vectors(1, 16))
        with pytest.raises(InvalidArgumentError):
            w.append([ids[0], ids[0]], random_vectors(2, 16))
        with pytest.raises(DimensionMismatchError):
            w.append(ids, random_vectors(2, 8))
        with pytest.raises(InvalidArgumentError, match="catalog ids"):
            w.append([-3, ids[0]], random_vectors(2, 16))
        with pytest.raises(InvalidArgumentError, match="non-finite"):
            w.append(ids, np.full((2, 16), np.nan))
        assert w.append(ids, random_vectors(2, 16)) == 302


def test_vector_writer__killed_tail_ignored_then_truncated(vec_store: Store) -> None:
    es = vec_store.embedding_set()
    vpath, ipath = (
        vectors_mod.vector_path(vec_store, es),
        vectors_mod.ids_path(vec_store, es),
    )
    # A killed writer left 3 rows and 2 ids that were never committed.
    with open(vpath, "ab") as f:
        f.write(b"\x01" * (3 * es.row_bytes))
    with open(ipath, "ab") as f:
        f.write(np.array([301, 302], "<i8").tobytes())
    ids, x = vec_store.vectors()
    assert ids.size == 300 and x.shape == (300, 16)
    new = add_fake_cells(vec_store, 2)
    with vec_store.vector_writer() as w:
        w.append(new, random_vectors(2, 16, seed=5))
    ids, x = vec_store.vectors()
    assert ids.tolist()[-2:] == new.tolist() and np.unique(ids).size == 302
    assert vpath.stat().st_size == 302 * es.row_bytes
    np.testing.assert_allclose(x[-2:], _unit(random_vectors(2, 16, seed=5)), rtol=1e-6)


def test_read_vectors__truncated_file_is_corrupt(vec_store: Store) -> None:
    es = vec_store.embedding_set()
    path = vectors_mod.vector_path(vec_store, es)
    with open(path, "r+b") as f:
        f.truncate(10 * es.row_bytes)
    with pytest.raises(
        StoreCorruptError, match="holds 10 rows but the catalog records 300"
    ):
        vec_store.vectors()
    with pytest.raises(StoreCorruptError):
        vec_store.search(1)


def test_vector_writer__disk_full_commits_nothing_and_rerun_succeeds(
    vec_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = add_fake_cells(vec_store, 10)
    x = random_vectors(10, 16, seed=3)
    real = vectors_mod._write_all

    def half_then_full(f, data):  # type: ignore[no-untyped-def]
        real(f, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vectors_mod, "_write_all", half_then_full)
    with (
        vec_store.vector_writer() as w,
        pytest.raises(StoreWriteError, match="disk is full"),
    ):
        w.append(new, x)
    assert vec_store.embedding_set().n_vectors == 300
    assert vec_store.vectors()[0].size == 300
    monkeypatch.setattr(vectors_mod, "_write_all", real)
    with vec_store.vector_writer() as w:
        w.append(new, x)
    ids, got = vec_store.vectors()
    assert ids.size == 310 and np.unique(ids).size == 310
    np.testing.assert_allclose(got[-10:], _unit(x), rtol=1e-6)


def test_vector_writer__second_writer_of_a_set_is_busy(vec_store: Store) -> None:
    with vec_store.vector_writer():
        with pytest.raises(StoreBusyError, match="another process is writing"):
            vec_store.vector_writer()


def test_vectors__reader_waits_then_reports_busy_catalog(
    vec_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = vec_store.root / "catalog.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "c.execute('BEGIN'); print('locked', flush=True); time.sleep(30)",
            str(catalog),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert (
            holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        )
        busy = Store(vec_store.root, busy_timeout_s=0.5)
        with pytest.raises(StoreBusyError, match="is busy"):
            busy.vectors()
    finally:
        holder.kill()
        holder.wait()
    assert Store.open(vec_store.root).vectors()[0].size == 300


def test_vectors__cosine_rows_are_unit_and_l2_rows_as_given(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    es = store.create_embedding_set("m", 3, metric="l2")
    with store.vector_writer(es) as w:
        w.append([7], [[3.0, 0.0, 4.0]])
    assert store.vectors("m")[1].tolist() == [[3.0, 0.0, 4.0]]
    cos = store.create_embedding_set("c", 3)  # metric cosine, the default
    with store.vector_writer(cos) as w:
        w.append([7, 8], [[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]])
    rows = np.asarray(store.vectors("c")[1])
    np.testing.assert_allclose(rows, [[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)


def test_embedding_set__handle_verbs_act_on_its_set(vec_store: Store) -> None:
    m = vec_store.embedding_set("m")
    ids, x = m.vectors(where="cell_id <= 5")
    assert ids.tolist() == [1, 2, 3, 4, 5]
    assert np.array_equal(x, vec_store.vectors("m", where="cell_id <= 5")[1])
    assert m.search(3, k=4)[1].tolist() == vec_store.search(3, k=4)[1].tolist()
    with pytest.raises(ValueError, match="already have vectors in set 'm'"):
        with m.writer() as w:  # the writer is this set's
            w.append([1], np.ones((1, 16), np.float32))
    assert m.n_vectors == 300 and m.refresh().n_vectors == 300
    rebuilt = m.build_index("HNSW16", rebuild=True)
    assert rebuilt.index_factory == "HNSW16" and m.refresh().n_indexed == 300
    assert m.set_id == m.refresh().set_id
