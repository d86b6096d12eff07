"""rm: models, sets, heads and their dependents; patients and datasets everywhere."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from vec_helpers import random_vectors

from cytostore.errors import HasDependentsError, InvalidArgumentError, NotInStoreError
from cytostore.store import Store
from cytostore.store.index import index_path
from cytostore.store.remove import remove
from cytostore.store.trash import TRASH_MARK
from cytostore.store.vectors import ids_path, vector_path
from cytostore.store.verify import verify

N, DIM, PREP, ROW = 120, 16, "abc123", 2 * 2 * 3


def build(root: Path, index: str = "Flat") -> Store:
    """120 cells in lmu/bm (patients P0..P3 in each), set ``m`` with an index, a
    registered model ``m``, head ``h`` (predictions, attention, patient predictions),
    neighbour table ``knn5``, tags, skipped rows, a cache and thumbnails."""
    store = Store.create(root)
    rows = [
        {
            "dataset": "bm" if i % 2 else "lmu",
            "path": f"c/{i:04d}.tif",
            "label": "BAS" if i % 3 else "EOS",
            "patient_id": f"P{i % 4}",
        }
        for i in range(N)
    ]
    for ds in ("lmu", "bm"):
        store.upsert_dataset(ds, "folder", root, 0.1)
        store.upsert_patients(
            ds, [{"patient_id": f"P{p}", "age": 50.0 + p} for p in range(4)]
        )
    ids = store.add_cells(rows)
    store.add_skipped([("bm", "bad.tif", "does not decode"), ("lmu", "x.tif", "empty")])
    es = store.create_embedding_set("m", DIM, index_factory=index)
    with store.vector_writer(es) as w:
        w.append(ids[:80], random_vectors(N, DIM)[:80])
    store.build_index("m")
    with store.vector_writer("m") as w:  # 40 rows past the index
        w.append(ids[80:], random_vectors(N, DIM)[80:])
    store.neighbors("knn5", 5)
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "backbone.pt").write_bytes(b"w" * 100)
    (root / "heads" / "h").mkdir(parents=True)
    (root / "heads" / "h" / "head.json").write_text("{}")
    bm = store.sql("SELECT cell_id, patient_id FROM cells WHERE dataset = 'bm'").rows
    with store.transaction() as con:
        con.execute(
            "INSERT INTO models (name, method, backbone, dim, path) "
            "VALUES ('m', 'none', 'tiny', 16, 'models/m')"
        )
        con.execute(
            "INSERT INTO heads (name, kind, model, label, path, report) "
            "VALUES ('h', 'knn', 'm', 'label', 'heads/h', '{}')"
        )
        con.execute(
            "INSERT INTO predictions (cell_id, head, label) "
            "SELECT cell_id, 'h', label FROM cells"
        )
        con.executemany(
            "INSERT INTO attention (cell_id, head, patient_id, attention, dataset) "
            "VALUES (?, 'h', ?, 0.5, 'bm')",
            bm,
        )
        con.execute(
            "INSERT INTO patient_predictions (dataset, patient_id, head, label) "
            "SELECT dataset, patient_id, 'h', 'NPM1' FROM patients"
        )
        con.execute(
            "CREATE TABLE IF NOT EXISTS tags "
            "(cell_id BIGINT, tag VARCHAR, created_at TIMESTAMP)"
        )
        con.execute("INSERT INTO tags (cell_id, tag) SELECT cell_id, 'x' FROM cells")
    cache = root / "cache"
    cache.mkdir()
    pixels = np.random.default_rng(1).integers(0, 255, (N, 2, 2, 3), dtype=np.uint8)
    (cache / f"{PREP}.u8").write_bytes(pixels.tobytes())
    np.save(cache / f"{PREP}.ids.npy", np.asarray(ids, np.int64))
    header = {"format": "cytostore-cache-1", "shape": [N, 2, 2, 3], "dtype": "uint8"}
    (cache / f"{PREP}.json").write_text(json.dumps(header))
    (root / "thumbnails").mkdir()
    for i in ids[:8]:
        (root / "thumbnails" / f"{i}.png").write_bytes(b"png")
    return store


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rm") / "store"
    build(root)
    return root


@pytest.fixture
def store(_template: Path, tmp_path: Path) -> Store:
    import shutil

    return Store.open(shutil.copytree(_template, tmp_path / "store"))


def patient_cells(store: Store, ds: str, pid: str) -> set[int]:
    rows = store.sql(
        "SELECT cell_id FROM cells WHERE dataset = ? AND patient_id = ?", [ds, pid]
    ).rows
    return {r[0] for r in rows}


def check_consistent(store: Store) -> None:
    """Every set: ids unique and catalogued, files exactly n_vectors rows, index ==
    its first n_indexed rows; no trash, no files of unregistered sets."""
    assert verify(store, grace_s=0).problems == []
    cells = {r[0] for r in store.sql("SELECT cell_id FROM cells").rows}
    registered = set()
    for es in store.embedding_sets():
        registered.add(es.set_id)
        ids, x = store.vectors(es.set_id)
        assert ids.size == es.n_vectors == len(set(ids.tolist()))
        assert set(ids.tolist()) <= cells
        assert vector_path(store, es).stat().st_size == es.n_vectors * es.row_bytes
        assert ids_path(store, es).stat().st_size == es.n_vectors * 8
        idx = faiss.read_index(str(index_path(store, es)))
        assert idx.ntotal == es.n_indexed
        indexed = faiss.vector_to_array(faiss.downcast_index(idx).id_map)
        assert sorted(indexed.tolist()) == sorted(ids[: es.n_indexed].tolist())
    for folder in ("vectors", "indexes", "cache", "thumbnails", "models", "heads"):
        for p in (
            (store.root / folder).glob("*") if (store.root / folder).is_dir() else []
        ):
            assert TRASH_MARK not in p.name, p
            stem = p.name.split(".")[0]
            if folder in ("vectors", "indexes") and stem.isdigit():
                assert int(stem) in registered, p


def cell_tables(store: Store) -> list[str]:
    return [
        r[0]
        for r in store.sql(
            "SELECT DISTINCT table_name FROM information_schema.columns "
            "WHERE column_name IN ('cell_id', 'neighbor_id') AND table_name IN "
            "(SELECT table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE')"
        ).rows
    ]


def assert_gone(store: Store, gone: set[int], ds: str, pid: str | None) -> None:
    ids = list(gone)
    for table in cell_tables(store):
        cols = store.columns(table)
        for col in ("cell_id", "neighbor_id"):
            if col in cols:
                n = store.sql(
                    f"SELECT count(*) FROM {table} WHERE {col} IN (SELECT unnest(?))",
                    [ids],
                ).rows[0][0]
                assert n == 0, (table, col)
    where, params = (
        ("dataset = ?", [ds])
        if pid is None
        else (
            "dataset = ? AND patient_id = ?",
            [ds, pid],
        )
    )
    for table in ("patients", "patient_predictions", "cell_meta"):
        q = f"SELECT count(*) FROM {table} WHERE {where}"
        assert store.sql(q, params).rows == [(0,)], table
    for es in store.embedding_sets():
        ids_now, _ = store.vectors(es.set_id)
        assert not set(ids_now.tolist()) & gone
    cache_ids = np.load(store.root / "cache" / f"{PREP}.ids.npy")
    assert not set(cache_ids.tolist()) & gone
    thumbs = {int(p.name.split(".")[0]) for p in (store.root / "thumbnails").iterdir()}
    assert not thumbs & gone


def test_remove_patient__gone_everywhere_others_bit_identical(store: Store) -> None:
    gone = patient_cells(store, "bm", "P1")
    before_ids, before_x = (np.array(a) for a in store.vectors("m"))
    es0 = store.embedding_set("m")
    ntotal0 = faiss.read_index(str(index_path(store, es0))).ntotal
    meta0 = store.sql("SELECT * FROM cells ORDER BY cell_id").rows
    pixels0 = np.fromfile(store.root / "cache" / f"{PREP}.u8", np.uint8).reshape(N, -1)
    report = remove(store, "patient", "P1", dataset="bm")
    assert report["cells"] == len(gone) == 30
    assert report["rows"]["cells"] == 30 and report["rows"]["patients"] == 1
    assert report["rows"]["predictions"] == 30 and report["rows"]["attention"] == 30
    assert report["rows"]["patient_predictions"] == 1 and report["rows"]["tags"] == 30
    assert report["caches"] == [
        {"prep_id": PREP, "rows_removed": 30, "bytes": 30 * ROW, "action": "compacted"}
    ]
    assert_gone(store, gone, "bm", "P1")
    check_consistent(store)
    es = store.embedding_set("m")
    assert report["sets"][0]["new_set_id"] == es.set_id != es0.set_id
    ids, x = store.vectors("m")
    keep = ~np.isin(before_ids, list(gone))
    assert ids.tolist() == before_ids[keep].tolist()  # same ids, same order
    assert x.tobytes() == before_x[keep].tobytes()  # bit-identical rows
    gone_indexed = int(np.isin(before_ids[: es0.n_indexed], list(gone)).sum())
    assert es.n_indexed == ntotal0 - gone_indexed and gone_indexed > 0
    meta = store.sql("SELECT * FROM cells ORDER BY cell_id").rows
    assert meta == [r for r in meta0 if r[0] not in gone]  # ids never change
    cache_ids = np.load(store.root / "cache" / f"{PREP}.ids.npy")
    pixels = np.fromfile(store.root / "cache" / f"{PREP}.u8", np.uint8)
    assert pixels.tobytes() == pixels0[~np.isin(before_ids, list(gone))].tobytes()
    assert cache_ids.tolist() == [i for i in before_ids.tolist() if i not in gone]
    # the neighbour table follows the set; nobody's neighbours include the patient
    assert store.sql("SELECT DISTINCT set_id FROM knn5").rows == [(es.set_id,)]
    assert store.sql("SELECT set_id FROM neighbor_tables").rows == [(es.set_id,)]
    _, hits = store.search(int(ids[0]), k=N)
    assert not set(hits[0].tolist()) & gone and (hits[0] >= 0).sum() == N - 31
    assert store.sql("SELECT count(*) FROM patients").rows == [(7,)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_remove_patient__search_matches_brute_force(
    tmp_path: Path, factory: str
) -> None:
    store = build(tmp_path / "s", factory)
    gone = patient_cells(store, "lmu", "P2")
    remove(store, "patient", "P2", dataset="lmu")
    check_consistent(store)
    ids, x = store.vectors("m")
    assert not set(ids.tolist()) & gone
    q = int(ids[3])
    dist, hits = store.search(q, k=5)
    if factory == "Flat":
        sims = x.astype(np.float32) @ x[3].astype(np.float32)
        sims[3] = -np.inf
        assert hits[0].tolist() == ids[np.argsort(-sims, kind="stable")[:5]].tolist()
    assert not set(hits[0].tolist()) & gone and (hits[0] >= 0).all()


def test_remove_dataset__gone_everywhere(store: Store) -> None:
    gone = {
        r[0] for r in store.sql("SELECT cell_id FROM cells WHERE dataset = 'lmu'").rows
    }
    report = remove(store, "dataset", "lmu")
    assert report["cells"] == 60 and report["rows"]["skipped"] == 1
    assert report["rows"]["datasets"] == 1 and report["rows"]["patients"] == 4
    assert_gone(store, gone, "lmu", None)
    assert store.sql("SELECT dataset FROM datasets").rows == [("bm",)]
    assert store.sql("SELECT dataset FROM skipped").rows == [("bm",)]
    check_consistent(store)


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.mark.parametrize(
    ("kind", "name"),
    [("patient", "P1"), ("dataset", "bm"), ("model", "m"), ("head", "h")],
)
def test_remove__dry_run_changes_nothing_and_predicts_the_counts(
    store: Store, kind: str, name: str
) -> None:
    before = tree(store.root)
    dataset = "bm" if kind == "patient" else None
    plan = remove(store, kind, name, dataset=dataset, cascade=True, dry_run=True)
    assert tree(store.root) == before and plan["dry_run"] is True
    done = remove(store, kind, name, dataset=dataset, cascade=True)
    assert plan["rows"] == done["rows"] and sum(done["rows"].values()) > 0


def test_remove_patient__id_in_two_datasets_needs_dataset(store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="in datasets bm, lmu.*--dataset"):
        remove(store, "patient", "P1")


def test_remove_head__rows_and_folder(store: Store) -> None:
    report = remove(store, "head", "h")
    assert report["rows"] == {
        "predictions": N,
        "patient_predictions": 8,
        "attention": 60,
        "heads": 1,
    }
    assert report["files"] == ["heads/h"] and report["bytes"] == 2
    assert not (store.root / "heads" / "h").exists()
    assert list((store.root / "heads").iterdir()) == []
    for table in ("heads", "predictions", "attention", "patient_predictions"):
        assert store.sql(f"SELECT count(*) FROM {table}").rows == [(0,)]
    assert store.embedding_set("m").n_vectors == N  # nothing else touched


def test_remove_model__refused_while_used(store: Store) -> None:
    before = tree(store.root)
    with pytest.raises(HasDependentsError) as exc:
        remove(store, "model", "m")
    msg = str(exc.value)
    assert "embedding sets m (set 1)" in msg and "heads h" in msg
    assert "neighbour tables knn5" in msg and "--cascade" in msg and "\n" not in msg
    with pytest.raises(HasDependentsError, match="heads h; neighbour tables knn5"):
        remove(store, "set", "m")
    assert tree(store.root) == before


def test_remove_model__cascade_removes_sets_heads_tables(store: Store) -> None:
    report = remove(store, "model", "m", cascade=True)
    assert report["removed"] == {
        "models": ["m"],
        "sets": ["m"],
        "heads": ["h"],
        "neighbor_tables": ["knn5"],
    }
    assert sorted(report["files"]) == [
        "heads/h",
        "indexes/1.faiss",
        "models/m",
        "vectors/1.f32",
        "vectors/1.ids",
        "vectors/1.lock",
    ]
    assert report["rows"]["embedding_sets"] == 1 and report["rows"]["models"] == 1
    assert report["bytes"] >= N * (DIM * 4 + 8) + 100
    for table in (
        "models",
        "embedding_sets",
        "heads",
        "neighbor_tables",
        "predictions",
    ):
        assert store.sql(f"SELECT count(*) FROM {table}").rows == [(0,)]
    assert "knn5" not in store.sql(
        "SELECT table_name FROM information_schema.tables"
    ).column("table_name")
    assert store.sql("SELECT count(*) FROM cells").rows == [(N,)]  # cells stay
    check_consistent(store)


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("model", "nope", "no model 'nope'"),
        ("set", "nope", "no embedding set 'nope'"),
        ("head", "nope", "no head 'nope'"),
        ("patient", "P9", "no patient 'P9'"),
        ("dataset", "nope", "no dataset 'nope'"),
    ],
)
def test_remove__unknown_name(store: Store, kind: str, name: str, message: str) -> None:
    with pytest.raises(NotInStoreError, match=message):
        remove(store, kind, name)


# ------------------------------------------------------------------ kill tests
def _rm_in_child(root: Path, args: str, fault: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOSTORE_FAULT")}
    if fault:
        env["CYTOSTORE_FAULT"] = fault
    code = (
        "from cytostore.store import Store\n"
        "from cytostore.store.remove import remove\n"
        f"remove(Store.open({str(root)!r}), {args})\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode


@pytest.mark.parametrize(
    "fault",
    [
        "rm.mid_compaction",
        "rm.before_commit",
        "rm.after_trash_move",
        "rm.after_commit",
        "rm.after_old_trash",
    ],
)
def test_remove_patient__killed_then_rerun_completes(store: Store, fault: str) -> None:
    gone = patient_cells(store, "bm", "P3")
    args = "'patient', 'P3', dataset='bm'"
    assert _rm_in_child(store.root, args, fault) == -9
    store = Store.open(store.root)
    if fault in ("rm.mid_compaction", "rm.before_commit", "rm.after_trash_move"):
        # not committed: the patient is still there and the store reads as before
        assert patient_cells(store, "bm", "P3") == gone
        ids, _ = store.vectors("m")
        assert ids.size == store.embedding_set("m").n_vectors == N
        _, hits = store.search(int(ids[0]), k=3)
        assert (hits >= 0).all()
    assert _rm_in_child(store.root, args, None) == 0
    store = Store.open(store.root)
    assert_gone(store, gone, "bm", "P3")
    check_consistent(store)
    assert store.embedding_set("m").n_vectors == N - len(gone)


@pytest.mark.parametrize("fault", ["rm.after_trash_move", "rm.after_commit"])
def test_remove_model__killed_then_rerun_completes(store: Store, fault: str) -> None:
    args = "'model', 'm', cascade=True"
    assert _rm_in_child(store.root, args, fault) == -9
    assert _rm_in_child(store.root, args, None) == 0
    store = Store.open(store.root)
    assert store.sql("SELECT count(*) FROM models").rows == [(0,)]
    assert store.embedding_sets() == []
    assert sorted(p.name for p in (store.root / "vectors").iterdir()) == []
    check_consistent(store)
