"""Writers of one set exclude each other: index builds, merges and vector appends."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.errors import StoreBusyError
from cytostore.store import Store
from cytostore.store.faults import FAULT_ENV, FAULT_MODE_ENV, InjectedFault


def _shard(store: Store, i: int, n: int, x: np.ndarray, ids: np.ndarray) -> None:
    es = store.create_embedding_set("m", x.shape[1], shard=f"{i}/{n}")
    with store.vector_writer(es) as w:
        w.append(ids, x[ids - 1])


def _halves(store: Store) -> tuple[np.ndarray, np.ndarray]:
    ids = store.where_ids()
    return ids[(ids - 1) % 2 == 0], ids[(ids - 1) % 2 == 1]


def test_build_index__busy_while_another_writer_holds_the_set(vec_store: Store) -> None:
    vec_store.busy_timeout_s = 0.0
    with vec_store.vector_writer("m"):
        with pytest.raises(StoreBusyError, match="writing embedding set 'm'"):
            vec_store.build_index("m", rebuild=True)
    assert vec_store.build_index("m", rebuild=True).n_indexed == 300


def test_build_index__two_processes_rebuild_at_once_both_succeed(
    vec_store: Store,
) -> None:
    cmd = [sys.executable, "-m", "cytostore", "build-index", str(vec_store.root)]
    procs = [
        subprocess.Popen(
            [*cmd, "--rebuild", "--index", "HNSW32"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [
        (p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs
    ]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    es = vec_store.embedding_set("m")
    assert (es.index_factory, es.n_indexed) == ("HNSW32", 300)
    assert os.listdir(vec_store.root / "indexes") == [f"{es.set_id}.faiss"]


def test_build_index__removes_a_killed_builds_temporaries(vec_store: Store) -> None:
    es = vec_store.embedding_set("m")
    for name in (f"{es.set_id}.faiss.tmp", f"{es.set_id}.faiss.123-456.tmp"):
        (vec_store.root / "indexes" / name).write_bytes(b"half an index")
    vec_store.build_index("m", rebuild=True)
    assert os.listdir(vec_store.root / "indexes") == [f"{es.set_id}.faiss"]


def test_build_index__extending_leaves_a_loaded_searcher_unchanged(
    vec_store: Store,
) -> None:
    before = vec_store.searcher("m")
    index, n = before.index, before.index.ntotal
    new = add_fake_cells(vec_store, 4, seed=3)
    with vec_store.vector_writer("m") as w:
        w.append(new, random_vectors(4, 16, seed=3))
    assert vec_store.build_index("m").n_indexed == 304
    assert index.ntotal == n == 300  # a search running now keeps its own index
    assert vec_store.searcher("m").index.ntotal == 304


def test_merge__leaves_a_shard_being_written_for_a_later_merge(
    cells_store: Store,
) -> None:
    x = random_vectors(2000, 8, seed=1)
    first, second = _halves(cells_store)
    _shard(cells_store, 1, 2, x, first)
    _shard(cells_store, 2, 2, x, second)
    with cells_store.vector_writer("m@2/2"):
        report = cells_store.merge("m")
        assert (report["shards"], report["busy"]) == (["1/2"], ["2/2"])
        assert sorted(s.name for s in cells_store.embedding_sets()) == ["m", "m@2/2"]
    report = cells_store.merge("m")
    assert (report["shards"], report["busy"]) == (["2/2"], [])
    assert (report["n_vectors"], report["skipped"]) == (2000, 0)


def test_merge__refuses_while_every_shard_is_being_written(cells_store: Store) -> None:
    x = random_vectors(2000, 8, seed=1)
    first, second = _halves(cells_store)
    _shard(cells_store, 1, 2, x, first)
    _shard(cells_store, 2, 2, x, second)
    with cells_store.vector_writer("m@1/2"), cells_store.vector_writer("m@2/2"):
        with pytest.raises(StoreBusyError, match="every shard of model 'm' is being"):
            cells_store.merge("m")
    assert [s.name for s in cells_store.embedding_sets()] == ["m@1/2", "m@2/2"]
    report = cells_store.merge("m")
    assert (report["added"], report["skipped"], report["n_vectors"]) == (2000, 0, 2000)


def test_merge__when_ready_returns_nothing_merged_while_every_shard_is_busy(
    cells_store: Store,
) -> None:
    x = random_vectors(2000, 8, seed=1)
    first, second = _halves(cells_store)
    _shard(cells_store, 1, 2, x, first)
    _shard(cells_store, 2, 2, x, second)
    with cells_store.vector_writer("m@1/2"), cells_store.vector_writer("m@2/2"):
        report = cells_store.merge("m", when_ready=True)
    assert (report["shards"], report["busy"], report["added"]) == (
        [],
        ["1/2", "2/2"],
        0,
    )
    assert [s.name for s in cells_store.embedding_sets()] == ["m@1/2", "m@2/2"]
    report = cells_store.merge("m", when_ready=True)
    assert (report["shards"], report["n_vectors"]) == (["1/2", "2/2"], 2000)


def test_merge__report_counts_the_rows_it_inserted(cells_store: Store) -> None:
    x = random_vectors(2000, 8, seed=2)
    first, second = _halves(cells_store)
    _shard(cells_store, 1, 2, x, first)
    assert cells_store.merge("m")["added"] == 1000
    # a shard that repeats 500 cells the full set already holds
    _shard(cells_store, 2, 2, x, np.sort(np.concatenate([second, first[:500]])))
    report = cells_store.merge("m")
    assert (report["added"], report["skipped"], report["n_vectors"]) == (
        1000,
        500,
        2000,
    )
    ids, _ = cells_store.vectors("m")
    assert np.unique(ids).size == ids.size == 2000


def test_merge__rerun_after_a_fault_mid_deletion_cleans_up(
    cells_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = random_vectors(2000, 8, seed=3)
    first, second = _halves(cells_store)
    _shard(cells_store, 1, 2, x, first)
    _shard(cells_store, 2, 2, x, second)
    monkeypatch.setenv(FAULT_ENV, "merge.mid_drop:2")
    monkeypatch.setenv(FAULT_MODE_ENV, "raise")
    with pytest.raises(InjectedFault):
        cells_store.merge("m")
    monkeypatch.delenv(FAULT_ENV)
    left = sorted(os.listdir(cells_store.root / "vectors"))
    assert any(name.startswith(("1.", "2.")) for name in left)  # shard files left
    report = cells_store.merge("m")
    assert (report["shards"], report["added"], report["n_vectors"]) == ([], 0, 2000)
    (full,) = cells_store.embedding_sets()
    names = {n.split(".")[0] for n in os.listdir(cells_store.root / "vectors")}
    assert names == {str(full.set_id)}
