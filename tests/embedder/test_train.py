from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from cytostore.embedder.augment import AugmentConfig
from cytostore.embedder.backbones import build_backbone
from cytostore.embedder.methods import METHODS, build_method
from cytostore.embedder.train import (
    TrainConfig,
    TrainResult,
    config_difference,
    train_ssl,
)
from cytostore.errors import ConfigMismatchError, TrainingDivergedError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PX = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n: int = 48, seed: int = 0) -> np.ndarray:
    """Blobs of two colours on a pale background: uint8 (n, 40, 40, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :40]
    out = np.full((n, 40, 40, 3), 220, dtype=np.uint8)
    for i in range(n):
        r = rng.uniform(6, 14)
        mask = (yy - 20 + rng.uniform(-3, 3)) ** 2 + (xx - 20) ** 2 < r**2
        out[i][mask] = (120, 40, 160) if i % 2 else (200, 90, 90)
    return out


def _config(method: str = "simclr", **kw: object) -> TrainConfig:
    local = AugmentConfig(out_px=16, scale=(0.1, 0.3)) if method == "dino" else None
    base = dict(
        method=method,
        batch_size=16,
        augment=AugmentConfig(out_px=PX),
        local_augment=local,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _method(name: str = "simclr") -> object:
    backbone, dim = build_backbone("tiny", crop_px=PX, seed=0)
    kwargs = {"n_local_views": 2, "output_dim": 256} if name == "dino" else {}
    return build_method(name, backbone, dim, **kwargs)


def _train(
    tmp_path: Path,
    method: object | None = None,
    config: TrainConfig | None = None,
    **kw: object,
) -> TrainResult:
    """``train_ssl`` on 48 :func:`_images` of one dataset, on the CPU."""
    return train_ssl(
        method if method is not None else _method(),
        _images(),
        ["d"] * 48,
        config if config is not None else _config(),
        MEAN,
        STD,
        tmp_path,
        device="cpu",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_ssl__each_method_runs_with_finite_changing_loss(
    name: str, tmp_path: Path
) -> None:
    result = _train(
        tmp_path,
        method=_method(name),
        config=_config(name),
        epochs=2,
    )
    losses = [e["loss"] for e in result.epochs]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses[0] != losses[1]
    assert result.steps == 2 * (48 // 16)
    assert result.stopped_by == "epochs"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_train_ssl__changes_the_backbone_weights(tmp_path: Path) -> None:
    method = _method()
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    _train(
        tmp_path,
        method=method,
        epochs=1,
    )
    after = method.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_train_ssl__max_s_stops_a_run_without_epoch_limit(tmp_path: Path) -> None:
    result = _train(
        tmp_path,
        max_s=1.0,
    )
    assert result.stopped_by == "time"
    assert result.steps >= 1


def test_train_ssl__resume_continues_the_epoch_count(tmp_path: Path) -> None:
    first = _train(
        tmp_path,
        epochs=1,
    )
    again = _train(
        tmp_path,
        epochs=3,
        resume=True,
    )
    assert [e["epoch"] for e in again.epochs] == [1, 2, 3]
    assert again.epochs[0] == first.epochs[0]  # history travelled in the checkpoint
    assert again.steps == 3 * first.steps


def test_train_ssl__resume_refuses_a_changed_config_naming_it(tmp_path: Path) -> None:
    _train(
        tmp_path,
        epochs=1,
    )
    with pytest.raises(ConfigMismatchError, match=r"batch_size: 16 -> 8"):
        _train(
            tmp_path,
            config=_config(batch_size=8),
            epochs=2,
            resume=True,
        )


def test_train_ssl__refuses_to_restart_over_an_existing_run(tmp_path: Path) -> None:
    _train(
        tmp_path,
        epochs=1,
    )
    with pytest.raises(ValueError, match="--resume"):
        _train(
            tmp_path,
            epochs=1,
        )


class _PoisonSecondEpoch(pl.Callback):
    """Make the weights NaN at the start of the second epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.current_epoch == 1:
            with torch.no_grad():
                next(pl_module.method.backbone.parameters()).fill_(float("nan"))


def test_train_ssl__nan_loss_raises_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    with pytest.raises(TrainingDivergedError, match="last good checkpoint is kept"):
        _train(
            tmp_path,
            epochs=3,
            callbacks=[_PoisonSecondEpoch()],
        )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 0  # the first (good) epoch
    weights = [v for k, v in ckpt["state_dict"].items() if "backbone" in k]
    assert all(torch.isfinite(w.float()).all() for w in weights)


def test_config_difference__names_changed_keys_only() -> None:
    assert config_difference({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3], "c": 0}) == [
        "b: [1, 2] -> [1, 3]",
        "c: None -> 0",
    ]
