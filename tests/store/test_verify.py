"""verify: checksums, set files, ids, index, paths and temporaries vs the catalog."""

from __future__ import annotations

import fcntl
import os
import shutil
import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from cytostore.store import Store
from cytostore.store.checksums import record_file, sha256_file
from cytostore.store.verify import _index_ids, verify

_OLD = 1_000_000_000  # a file time far in the past (older than any grace period)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify__fresh_store_is_ok(vec_store: Store) -> None:
    report = verify(vec_store)
    assert report.ok, report.problems
    assert (report.files, report.sets, report.cells) == (3, 1, 300)
    assert report.unchecked == []


def test_verify__recorded_checksums_match_the_files(vec_store: Store) -> None:
    with vec_store.connect() as con:
        rows = con.execute("SELECT path, bytes, sha256 FROM files").fetchall()
    assert sorted(r[0] for r in rows) == [
        "indexes/1.faiss",
        "vectors/1.f32",
        "vectors/1.ids",
    ]
    for path, size, sha in rows:
        assert (vec_store.root / path).stat().st_size == size
        assert sha256_file(vec_store.root / path) == sha


def test_verify__flipped_vector_byte_is_a_checksum_mismatch(vec_store: Store) -> None:
    _flip_byte(vec_store.root / "vectors" / "1.f32", 1000)
    report = verify(vec_store, repair=True)  # not repairable: stays a problem
    assert [(p.kind, p.object) for p in report.problems] == [
        ("checksum", "vectors/1.f32")
    ]
    root = str(vec_store.root)
    assert report.problems[0].fix == (
        f"cytostore rm {root} set m --cascade && cytostore embed {root} --model m"
    )


def test_verify__uncommitted_tail_is_truncated_by_repair(vec_store: Store) -> None:
    vec = vec_store.root / "vectors" / "1.f32"
    ids = vec_store.root / "vectors" / "1.ids"
    size = vec.stat().st_size
    with open(vec, "ab") as f:
        f.write(np.ones((2, 16), "<f4").tobytes())
    with open(ids, "ab") as f:
        f.write(np.array([7, 8], "<i8").tobytes())
    report = verify(vec_store)
    assert {(p.kind, p.object) for p in report.problems} == {
        ("tail", "vectors/1.f32"),
        ("tail", "vectors/1.ids"),
    }
    assert report.problems[0].fix == f"cytostore verify {vec_store.root} --repair"
    repaired = verify(vec_store, repair=True)
    assert repaired.ok and len(repaired.repaired) == 2
    assert vec.stat().st_size == size and ids.stat().st_size == 300 * 8


def test_verify__tail_of_a_running_writer_is_not_a_problem(vec_store: Store) -> None:
    with open(vec_store.root / "vectors" / "1.f32", "ab") as f:
        f.write(np.ones((1, 16), "<f4").tobytes())
    with open(vec_store.root / "vectors" / "1.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert verify(vec_store).ok
    assert [p.kind for p in verify(vec_store).problems] == ["tail"]


def test_verify__index_with_wrong_ntotal_is_rebuilt_by_repair(vec_store: Store) -> None:
    path = vec_store.root / "indexes" / "1.faiss"
    small = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    small.add_with_ids(np.eye(10, 16, dtype=np.float32), np.arange(1, 11))
    faiss.write_index(small, str(path))
    report = verify(vec_store)
    kinds = {(p.kind, p.object) for p in report.problems}
    assert kinds == {("size", "indexes/1.faiss"), ("index", "indexes/1.faiss")}
    assert all(
        p.fix == f"cytostore build-index {vec_store.root} --model m --rebuild"
        for p in report.problems
    )
    repaired = verify(vec_store, repair=True)
    assert repaired.ok, repaired.problems
    assert faiss.read_index(str(path)).ntotal == 300


def test_verify__repeated_and_unknown_ids_are_reported(vec_store: Store) -> None:
    ids = vec_store.root / "vectors" / "1.ids"
    arr = np.fromfile(ids, "<i8")
    arr[1] = arr[0]
    arr[2] = 10_000
    ids.write_bytes(arr.astype("<i8").tobytes())
    messages = [p.message for p in verify(vec_store).problems if p.kind == "ids"]
    assert messages == [
        "1 repeated cell ids (e.g. [1])",
        "1 ids are not catalogued cells (e.g. [10000])",
    ]


def test_verify__planted_outside_paths_are_reported(vec_store: Store) -> None:
    vec_store.add_cells(
        [
            {"dataset": "lmu", "path": "../../etc/passwd"},
            {"dataset": "lmu", "path": "/etc/passwd"},
        ]
    )
    with vec_store.transaction() as con:
        con.execute(
            "INSERT INTO models (name, method, backbone, dim, path) "
            "VALUES ('evil', 'none', 'tiny', 16, '../../outside')"
        )
    report = verify(vec_store)
    got = {(p.kind, p.object) for p in report.problems}
    assert got == {("path", "dataset lmu"), ("path", "model evil")}
    by_object = {p.object: p for p in report.problems}
    assert "2 cell paths lead outside" in by_object["dataset lmu"].message
    assert by_object["model evil"].fix == f"cytostore rm {vec_store.root} model evil"


def test_verify__symlink_leading_out_of_a_dataset_root(
    vec_store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"x")
    (root / "a" / "out.png").symlink_to(tmp_path / "secret.png")
    vec_store.upsert_dataset("lab", "folder", root, None)
    vec_store.add_cells(
        [{"dataset": "lab", "path": "a/x.png"}, {"dataset": "lab", "path": "a/out.png"}]
    )
    problems = verify(vec_store).problems
    assert [(p.kind, p.object) for p in problems] == [("path", "dataset lab")]
    assert "'a/out.png'" in problems[0].message


def test_verify__stale_temporary_is_removed_by_repair_young_one_kept(
    vec_store: Store,
) -> None:
    stale = vec_store.root / "indexes" / "1.faiss.tmp"
    young = vec_store.root / "models" / "m" / "backbone.pt.tmp"
    young.parent.mkdir(parents=True)
    for path in (stale, young):
        path.write_bytes(b"half")
    os.utime(stale, (_OLD, _OLD))
    report = verify(vec_store)
    assert [(p.kind, p.object, p.fix) for p in report.problems] == [
        ("temporary", "indexes/1.faiss.tmp", f"cytostore gc {vec_store.root}")
    ]
    assert verify(vec_store, repair=True).ok
    assert not stale.exists() and young.exists()


def test_verify__missing_dataset_root_points_to_relocate(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    with store.transaction() as con:
        con.execute(
            "UPDATE datasets SET root = ? WHERE dataset = 'bm'",
            [str(tmp_path / "gone")],
        )
    problems = verify(store).problems
    assert [(p.kind, p.object) for p in problems] == [("missing", "dataset bm")]
    assert problems[0].fix == f"cytostore relocate {store.root} bm NEW_ROOT"


def test_verify__images_rehashed_against_ingest(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    (root,) = store.sql("SELECT root FROM datasets WHERE dataset = 'bm'").rows[0]
    tree = Path(shutil.copytree(root, tmp_path / "bm"))  # a private copy to damage
    with store.transaction() as con:
        con.execute("UPDATE datasets SET root = ? WHERE dataset = 'bm'", [str(tree)])
    clean = verify(store, images=True)
    assert clean.ok and clean.images == 360
    (rel,) = store.sql("SELECT path FROM cells WHERE dataset = 'bm' LIMIT 1").rows[0]
    _flip_byte(tree / rel, 200)
    problems = verify(store, images=True).problems
    assert [(p.kind, p.object) for p in problems] == [("image", "dataset bm")]
    assert problems[0].message.startswith("1 of 120 images differ")


def test_verify__reused_set_id_forgets_old_checksums(vec_store: Store) -> None:
    with vec_store.transaction() as con:
        con.execute("DELETE FROM embedding_sets")
    es = vec_store.create_embedding_set("other", 8)
    assert es.set_id == 1
    with vec_store.connect() as con:
        assert con.execute("SELECT count(*) FROM files").fetchall() == [(0,)]
    assert verify(vec_store).ok


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_verify__appends_across_writers_keep_the_running_hash(
    cells_store: Store, dtype: str
) -> None:
    es = cells_store.create_embedding_set("m", 8, dtype=dtype)
    rng = np.random.default_rng(0)
    for lo in range(0, 60, 20):  # a new writer each time: the prefix is re-read
        with cells_store.vector_writer(es) as w:
            w.append(np.arange(lo + 1, lo + 11), rng.standard_normal((10, 8)))
            w.append(np.arange(lo + 11, lo + 21), rng.standard_normal((10, 8)))
    with cells_store.connect() as con:
        rows = dict(con.execute("SELECT kind, sha256 FROM files").fetchall())
    suffix = ".f32" if dtype == "float32" else ".f16"
    assert rows["vectors"] == sha256_file(cells_store.root / "vectors" / f"1{suffix}")
    assert rows["ids"] == sha256_file(cells_store.root / "vectors" / "1.ids")


def _ivf_sq8_store(store: Store) -> Path:
    """Rebuild set ``m`` of ``store`` as a compressed IVF index (ids in its lists)."""
    store.build_index("m", "IVF4,SQ8", rebuild=True)
    path = store.root / "indexes" / "1.faiss"
    idx = faiss.read_index(str(path))
    assert not hasattr(idx, "id_map")  # the ids live in the inverted lists
    return path


def _rewrite_index(store: Store, path: Path, idx: faiss.Index) -> None:
    """Write ``idx`` over the set's index and record its checksum (a quiet swap)."""
    faiss.write_index(idx, str(path))
    record_file(store, "indexes/1.faiss", "index", 1)


@pytest.mark.parametrize(
    ("new_id", "detail"),
    [
        (10_000, "1 missing (e.g. [7]), 1 not in the set's first rows (e.g. [10000])"),
        (3, "1 repeated (e.g. [3]), 1 missing (e.g. [7])"),
    ],
)
def test_verify__compressed_ivf_index_ids_are_checked_and_rebuilt(
    vec_store: Store, new_id: int, detail: str
) -> None:
    path = _ivf_sq8_store(vec_store)
    assert verify(vec_store).ok
    idx = faiss.read_index(str(path))
    assert idx.remove_ids(np.array([7], dtype=np.int64)) == 1
    idx.add_with_ids(np.ones((1, 16), np.float32), np.array([new_id]))
    assert idx.ntotal == 300  # only the ids give it away
    _rewrite_index(vec_store, path, idx)
    report = verify(vec_store)
    root = vec_store.root
    assert [p.as_dict() for p in report.problems] == [
        {
            "kind": "index",
            "object": "indexes/1.faiss",
            "message": "its 300 ids differ from the set's first 300 rows' ids: "
            + detail,
            "fix": f"cytostore build-index {root} --model m --rebuild",
        }
    ]
    repaired = verify(vec_store, repair=True)
    assert repaired.ok, repaired.problems
    assert [p.kind for p in repaired.repaired] == ["index"]
    fixed = faiss.extract_index_ivf(faiss.read_index(str(path)))
    assert fixed.ntotal == 300 and fixed.is_trained
    assert verify(vec_store).ok


def test_verify__id_map_index_with_a_stranger_id_names_it(vec_store: Store) -> None:
    path = vec_store.root / "indexes" / "1.faiss"
    idx = faiss.read_index(str(path))
    ids = faiss.vector_to_array(idx.id_map)
    ids[ids == 5] = 20_000
    faiss.copy_array_to_vector(ids, idx.id_map)
    _rewrite_index(vec_store, path, idx)
    (problem,) = verify(vec_store).problems
    assert (problem.kind, problem.message) == (
        "index",
        "its 300 ids differ from the set's first 300 rows' ids: 1 missing "
        "(e.g. [5]), 1 not in the set's first rows (e.g. [20000])",
    )


def test_index_ids__reads_ivf_lists_in_one_array_of_their_bytes() -> None:
    """Oracle: the ids added; memory: numpy's peak is the ids' bytes (+ 1 %)."""
    n = 200_000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    ids = rng.permutation(n).astype(np.int64) * 3 + 1
    idx = faiss.index_factory(4, "IVF8,SQ8")
    idx.train(x[:2000])
    idx.add_with_ids(x, ids)
    tracemalloc.start()
    try:
        have = _index_ids(idx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert have is not None
    np.testing.assert_array_equal(have, np.sort(ids))
    assert peak <= ids.nbytes * 1.01
    assert _index_ids(faiss.IndexFlatL2(4)) is None  # row numbers: nothing to check
