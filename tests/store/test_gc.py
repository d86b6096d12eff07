"""gc: orphans, stale temporaries, stale checksum rows and caches."""

from __future__ import annotations

import os
from pathlib import Path

from cytostore.store import Store
from cytostore.store.gc import gc
from cytostore.store.verify import verify

_OLD = 1_000_000_000  # a file time far in the past


def _plant(path: Path, size: int, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    if old:
        os.utime(path, (_OLD, _OLD))
    return path


def _tree(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file()
    }


def test_gc__removes_orphan_and_stale_tmp_keeps_referenced(vec_store: Store) -> None:
    root = vec_store.root
    _plant(root / "vectors" / "9.f32", 100, old=False)  # set 9 does not exist
    _plant(root / "indexes" / "1.faiss.tmp", 30)
    young = _plant(root / "indexes" / "2.faiss.tmp", 7, old=False)
    before = _tree(root)
    dry = gc(vec_store, dry_run=True)
    assert _tree(root) == before
    report = gc(vec_store)
    assert report.removed == dry.removed
    assert sorted((r["path"], r["bytes"], r["why"]) for r in report.removed) == [
        ("indexes/1.faiss.tmp", 30, "temporary"),
        ("vectors/9.f32", 100, "orphan"),
    ]
    assert (report.files, report.bytes) == (2, 130)
    assert report.kept == [{"path": "indexes/2.faiss.tmp", "why": "too recent"}]
    assert young.exists()
    assert verify(vec_store).ok
    assert {
        k: v
        for k, v in before.items()
        if k not in ("vectors/9.f32", "indexes/1.faiss.tmp")
    } == _tree(root)


def test_gc__unregistered_model_folder_keeps_a_resumable_run(vec_store: Store) -> None:
    root = vec_store.root
    _plant(root / "models" / "gone" / "backbone.pt", 50)
    os.utime(root / "models" / "gone", (_OLD, _OLD))
    _plant(root / "models" / "run" / "backbone.pt", 40)
    _plant(root / "models" / "run" / "checkpoints" / "last.ckpt", 10)
    report = gc(vec_store)
    assert sorted(r["path"] for r in report.removed) == [
        "models/gone",
        "models/run/backbone.pt",
    ]
    assert (root / "models" / "run" / "checkpoints" / "last.ckpt").exists()
    assert report.kept[0]["path"] == "models/run/checkpoints"


def test_gc__caches_only_with_cache(vec_store: Store) -> None:
    root = vec_store.root
    for suffix in (".u8", ".ids.npy", ".json"):
        _plant(root / "cache" / f"abc123{suffix}", 10, old=False)
    assert gc(vec_store).removed == []
    report = gc(vec_store, cache=True)
    assert sorted(r["path"] for r in report.removed) == [
        "cache/abc123.ids.npy",
        "cache/abc123.json",
        "cache/abc123.u8",
    ]
    assert report.bytes == 30


def test_gc__drops_checksum_rows_of_removed_objects(vec_store: Store) -> None:
    with vec_store.transaction() as con:
        con.execute(
            "INSERT INTO files VALUES ('vectors/7.f32', 'vectors', '7', 8, 'x', now())"
        )
    assert gc(vec_store, dry_run=True).records == 1
    assert gc(vec_store).records == 1
    assert gc(vec_store).records == 0


def test_gc__removes_rm_trash_and_ingest_extraction_leftovers(tmp_store: Store) -> None:
    from cytostore.store.gc import gc

    trash = tmp_store.root / "heads" / ".h.trash-0123abcd"
    trash.mkdir(parents=True)
    (trash / "head.npz").write_bytes(b"x" * 10)
    extracted = tmp_store.root / "sources" / ".lmu.tmp-4242"
    extracted.mkdir(parents=True)
    (extracted / "a.tif").write_bytes(b"y" * 5)
    keep = tmp_store.root / "sources" / "lmu"
    keep.mkdir()
    report = gc(tmp_store, grace_s=0)
    assert not trash.exists() and not extracted.exists() and keep.is_dir()
    assert report.bytes >= 15
