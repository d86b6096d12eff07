"""The job scripts under ``examples/``: they parse, and their commands work.

Each script runs for real against the tiny synthetic store, with the scheduler's
variables faked (``SLURM_ARRAY_TASK_ID``..., a stand-in ``srun`` that starts one
process per task with its ``SLURM_PROCID``, as srun does) and tiny CPU options in
place of the GPU defaults (``PRETRAIN_ARGS``, ``INDEX``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cytostore.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".sh", ".sbatch"))
MODEL = "random-tiny"
TINY = (
    "--method simclr --backbone tiny --crop-px 32 --batch-size 16 --epochs 1 "
    "--monitor-cells 0 --device cpu"
)
FAKE_SRUN = """#!/usr/bin/env bash
# stand-in for srun: one copy of the command per task, with its SLURM ranks
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((r = 0; r < SLURM_NTASKS; r++)); do
    SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NODEID=0 "$@" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": path, "OMP_NUM_THREADS": "1", **extra}


def _start(script: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", str(EXAMPLES / script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    return err


def test_examples__exist_and_parse() -> None:
    assert {p.relative_to(EXAMPLES).as_posix() for p in SCRIPTS} >= {
        "slurm/pretrain.sbatch",
        "slurm/embed-array.sbatch",
        "slurm/merge.sbatch",
        "torchrun/pretrain.sh",
        "any-scheduler/embed-shard.sh",
    }
    for script in SCRIPTS:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True)
        assert done.returncode == 0, (script, done.stderr)


@pytest.fixture
def model_store(synthetic_store: Path, tmp_path: Path) -> Path:
    from cytostore.embedder import register_random_model

    path = Path(shutil.copytree(synthetic_store, tmp_path / "store"))
    register_random_model(Store.open(path), MODEL, backbone="tiny", crop_px=32)
    return path


def test_examples__embed_shards_then_merge_on_slurm_and_any_scheduler(
    model_store: Path, tmp_path: Path
) -> None:
    other = Path(shutil.copytree(model_store, tmp_path / "other"))
    common = {"MODEL": MODEL, "CYTOSTORE_BUSY_TIMEOUT_S": "120"}
    slurm = [
        _start(
            "slurm/embed-array.sbatch",
            _env(
                tmp_path,
                STORE=str(model_store),
                SLURM_ARRAY_TASK_ID=str(i),
                SLURM_ARRAY_TASK_COUNT="2",
                **common,
            ),
        )
        for i in range(2)
    ]
    anywhere = [
        _start(
            "any-scheduler/embed-shard.sh",
            _env(tmp_path, STORE=str(other), I=str(i), N="2", **common),
        )
        for i in (1, 2)
    ]
    for proc in slurm + anywhere:
        _wait(proc)
    _wait(
        _start(
            "slurm/merge.sbatch",
            _env(tmp_path, STORE=str(model_store), INDEX="Flat", **common),
        )
    )
    for path in (model_store, other):
        rows = (
            Store.open(path)
            .sql("SELECT shard, n_vectors, n_indexed FROM embedding_sets")
            .rows
        )
        assert rows == [(None, 360, 360)], path


def _pretrain_env(tmp_path: Path, store: Path, **extra: str) -> dict[str, str]:
    return _env(
        tmp_path,
        STORE=str(store),
        NAME="ddp",
        PRETRAIN_ARGS=TINY,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        **extra,
    )


def _check_pretrained(store: Path, err: str) -> None:
    assert err.count("registered ddp: simclr/tiny") == 1, err[-3000:]
    models = Store.open(store).sql("SELECT name, card FROM models").rows
    assert [m[0] for m in models] == ["ddp"]
    card = json.loads(models[0][1])
    assert card["extra"]["world_size"] == 2
    assert card["extra"]["cells_per_epoch"] == [360]


def test_examples__pretrain_with_srun(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    env = _pretrain_env(
        tmp_path,
        synthetic_store_copy,
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="cytostore-pretrain",
        SLURM_NODELIST="127.0.0.1",
    )
    err = _wait(_start("slurm/pretrain.sbatch", env))
    _check_pretrained(synthetic_store_copy, err)


@pytest.mark.slow  # the same torchrun launch as tests/embedder/test_ddp.py
def test_examples__pretrain_with_torchrun(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    env = _pretrain_env(tmp_path, synthetic_store_copy, NPROC="2")
    err = _wait(_start("torchrun/pretrain.sh", env, str(synthetic_store_copy)))
    _check_pretrained(synthetic_store_copy, err)
