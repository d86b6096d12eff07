"""N ``embed --shard I/N`` processes at once on one store, then ``merge``.

The oracle is a single-process ``embed`` of a copy of the same store: the merged
set must hold the same ids and the same vectors bit for bit, the catalog must
list one set and no shard, and ``verify`` must find every file intact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cytostore.store import Store

N_SHARDS = 3
MODEL = "random-tiny"


def _cytostore(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cytostore", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CYTOSTORE_BUSY_TIMEOUT_S": "60"},
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture
def model_store(synthetic_store: Path, tmp_path: Path) -> Path:
    """The synthetic store with a registered (not yet embedded) random tiny model."""
    from cytostore.embedder import register_random_model

    path = Path(shutil.copytree(synthetic_store, tmp_path / "store"))
    register_random_model(Store.open(path), MODEL, backbone="tiny", crop_px=32)
    return path


def _vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    store = Store.open(path)
    ids, vecs = store.vectors(store.embedding_set(MODEL).set_id)
    order = np.argsort(ids)
    return np.asarray(ids)[order], np.asarray(vecs)[order]


def test_parallel_shards__merge_equals_a_single_process_run_bit_for_bit(
    model_store: Path, tmp_path: Path
) -> None:
    single = Path(shutil.copytree(model_store, tmp_path / "single"))
    from click.testing import CliRunner

    from cytostore.cli import main
    from cytostore.embedder import embed

    procs = [
        _cytostore(
            "embed",
            str(model_store),
            "--model",
            MODEL,
            "--shard",
            f"{i}/{N_SHARDS}",
            "--format",
            "json",
        )
        for i in range(1, N_SHARDS + 1)
    ]
    embed(Store.open(single), MODEL, device="cpu")  # the oracle, meanwhile
    shard_reports = [json.loads(_finish(p)) for p in procs]
    assert sorted(r["shard"] for r in shard_reports) == [
        f"{i}/{N_SHARDS}" for i in range(1, N_SHARDS + 1)
    ]
    assert sum(r["embedded"] for r in shard_reports) == 360

    done = CliRunner().invoke(main, ["merge", str(model_store), "--format", "json"])
    assert done.exit_code == 0, done.output
    merged = json.loads(done.stdout)
    assert merged["added"] == 360 and merged["n_vectors"] == 360

    ids_a, vecs_a = _vectors(single)
    ids_b, vecs_b = _vectors(model_store)
    np.testing.assert_array_equal(ids_a, np.arange(1, 361))
    np.testing.assert_array_equal(ids_b, ids_a)
    assert vecs_b.dtype == vecs_a.dtype
    assert vecs_b.tobytes() == vecs_a.tobytes()  # bit for bit

    sets = (
        Store.open(model_store)
        .sql("SELECT model, shard, n_vectors FROM embedding_sets")
        .rows
    )
    assert sets == [(MODEL, None, 360)]
    checked = CliRunner().invoke(main, ["verify", str(model_store)])
    assert checked.exit_code == 0, checked.output  # exits 1 on any problem


def test_merge__leaves_a_shard_being_written_for_the_next_merge(
    model_store: Path,
) -> None:
    from click.testing import CliRunner

    from cytostore.cli import main
    from cytostore.embedder import embed
    from cytostore.errors import StoreBusyError
    from cytostore.store.locks import file_lock

    store = Store.open(model_store)
    for i in (1, 2):
        embed(store, MODEL, shard=f"{i}/2", device="cpu")
    shard2 = next(s for s in store.embedding_sets() if s.shard == "2/2")
    lock = model_store / "vectors" / f"{shard2.set_id}.lock"
    with file_lock(lock, "held by the test"):  # as a running 'embed --shard 2/2'
        done = CliRunner().invoke(main, ["merge", str(model_store), "--format", "json"])
        assert done.exit_code == 0, done.output
        first = json.loads(done.stdout)
        assert first["shards"] == ["1/2"] and first["busy"] == ["2/2"]
        assert first["n_vectors"] == 180
        assert "2/2 still being written (merge again when they finish)" in done.stderr
        with pytest.raises(StoreBusyError, match="every shard of model"):
            store.merge(MODEL)
    second = store.merge(MODEL)
    assert second["shards"] == ["2/2"] and second["busy"] == []
    assert second["n_vectors"] == 360
    assert [s.shard for s in store.embedding_sets()] == [None]
