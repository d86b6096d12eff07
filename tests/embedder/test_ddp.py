"""Real multi-process DDP pretraining on the CPU (gloo): 2 processes, 1 epoch.

The processes are started the way a cluster starts them (``torchrun``, one
process per rank, as ``srun`` would), so each one's exit status is seen; the
failure test uses Lightning's own launcher (``--devices 2 --strategy ddp``), whose
exit status is rank 0's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cytostore.store import Store

WHERE = "dataset != 'bm'"  # 240 of the 360 synthetic cells
SELECTED = 240
TRAIN = [
    "--name",
    "ddp",
    "--method",
    "simclr",
    "--backbone",
    "tiny",
    "--crop-px",
    "32",
    "--batch-size",
    "16",
    "--monitor-cells",
    "0",
    "--where",
    WHERE,
    "--device",
    "cpu",
]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def _backbone_of_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "method.backbone."
    return {
        k[len(prefix) :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(prefix)
    }


@pytest.fixture(scope="module")
def ddp_run(
    synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    import shutil

    store = Path(
        shutil.copytree(synthetic_store, tmp_path_factory.mktemp("ddp") / "store")
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = _run(
        [
            *torchrun,
            "--nproc-per-node",
            "2",
            "-m",
            "cytostore",
            "-v",  # shows warnings (the stride warning would appear here)
            "pretrain",
            str(store),
            *TRAIN,
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--epochs",
            "1",
            "--format",
            "json",
        ]
    )
    return store, done


def test_ddp_pretrain__both_processes_exit_0_and_rank_0_registers_once(
    ddp_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    store, done = ddp_run
    assert done.returncode == 0, done.stderr[-3000:]  # torchrun: every rank exited 0
    assert done.stderr.count("registered ddp: simclr/tiny") == 1
    card = json.loads(done.stdout)  # one JSON document: rank 0's report only
    assert card["name"] == "ddp"
    assert card["extra"]["world_size"] == 2
    # every selected cell drawn once per epoch across both processes
    assert card["extra"]["cells_per_epoch"] == [SELECTED]
    assert card["extra"]["steps"] == -(-SELECTED // (2 * 16))  # per process
    # the default rate follows the global batch (2 x 16 cells); SimCLR's is 2e-3
    assert card["extra"]["lr"] == pytest.approx(2e-3 * 2 * 16 / 256)
    assert card["extra"]["sync_batchnorm"] is False  # torch syncs BN on GPUs only
    rows = Store.open(store).sql("SELECT name, sha256 FROM models").rows
    assert rows == [("ddp", card["sha256"])]
    folder = store / "models" / "ddp"
    assert sorted(p.name for p in folder.iterdir()) == [
        "backbone.pt",
        "card.json",
        "checkpoints",
        "curves.png",
    ]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "config.json",
        "last.ckpt",
    ]


def test_ddp_pretrain__registers_rank_0s_final_weights(
    ddp_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    store, _ = ddp_run
    folder = store / "models" / "ddp"
    registered = torch.load(
        folder / "backbone.pt", map_location="cpu", weights_only=True
    )
    final = _backbone_of_checkpoint(folder / "checkpoints" / "last.ckpt")  # rank 0's
    assert registered.keys() == final.keys()
    for key, value in registered.items():
        assert torch.equal(value, final[key].contiguous()), key


def test_ddp_pretrain__no_grad_stride_warning(
    ddp_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, done = ddp_run
    assert "Grad strides do not match bucket view strides" not in done.stderr


def test_ddp_pretrain__resume_continues_a_ddp_run(
    ddp_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    store, _ = ddp_run
    again = _run(
        [
            sys.executable,
            "-m",
            "cytostore",
            "pretrain",
            str(store),
            *TRAIN,
            "--epochs",
            "2",
            "--resume",
            "--format",
            "json",
        ]
    )
    assert again.returncode == 0, again.stderr[-3000:]
    card = json.loads(again.stdout)
    assert card["epochs"] == 2
    assert card["extra"]["cells_per_epoch"] == [SELECTED, SELECTED]
    assert len(card["extra"]["loss_history"]) == 2
    assert Store.open(store).sql("SELECT count(*) FROM models").rows == [(1,)]


def test_ddp_pretrain__a_failing_rank_fails_the_command_naming_it(
    synthetic_store_copy: Path,
) -> None:
    done = _run(
        [
            sys.executable,
            "-m",
            "cytostore",
            "pretrain",
            str(synthetic_store_copy),
            *TRAIN,
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--epochs",
            "1",
        ],
        CYTOSTORE_FAULT="pretrain.step.rank1",
        CYTOSTORE_FAULT_MODE="raise",
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "Error: process 1 of 2 failed: InjectedFault: injected fault at "
        "pretrain.step.rank1"
    ), done.stderr[-3000:]
    assert Store.open(synthetic_store_copy).sql("SELECT name FROM models").rows == []
    assert not (synthetic_store_copy / "models" / "ddp" / "backbone.pt").exists()


def test_train_ssl__refuses_fewer_devices_than_launched_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from cytostore.embedder.train import TrainConfig, train_ssl
    from cytostore.errors import InvalidArgumentError

    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InvalidArgumentError, match=r"one of 4 processes .* is 2"):
        train_ssl(
            None,  # type: ignore[arg-type]  # refused before the method is used
            np.zeros((8, 8, 8, 3), np.uint8),
            ["d"] * 8,
            TrainConfig(batch_size=2),
            (0.5,) * 3,
            (0.2,) * 3,
            tmp_path / "run",
            epochs=1,
            device="cpu",
            devices=2,
        )
    assert not (tmp_path / "run").exists()  # nothing written


def test_pretrain__random_init_refuses_ddp(tmp_store: Store) -> None:
    from click.testing import CliRunner

    from cytostore.cli import main

    args = ["pretrain", str(tmp_store.root), "--name", "r", "--method", "none"]
    done = CliRunner().invoke(main, [*args, "--devices", "2", "--strategy", "ddp"])
    assert done.exit_code == 2
    assert done.output.splitlines()[-1] == (
        "Error: --method none registers a random init and trains nothing: run it "
        "as one process, without --devices/--num-nodes"
    )
    assert tmp_store.sql("SELECT count(*) FROM models").rows == [(0,)]


def test_on_global_zero__destroys_the_process_group_after_its_broadcast(
    tmp_path: Path,
) -> None:
    # a group left for interpreter exit can abort a finished rank (SIGABRT)
    import torch.distributed as dist

    from cytostore.embedder.train import on_global_zero

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        assert on_global_zero(lambda: {"registered": "ddp"}) == {"registered": "ddp"}
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_sync_batchnorm__on_gpus_under_ddp_only() -> None:
    from cytostore.embedder.train import sync_batchnorm

    assert sync_batchnorm("gpu", 2) and sync_batchnorm("cuda", 8)
    assert not sync_batchnorm("gpu", 1) and not sync_batchnorm("cpu", 2)
