"""Does the data pipeline keep up with the model during pretraining?

Subject: the real training loop, ``train_ssl`` (PyTorch Lightning, uint8 batches
read from a memory-mapped cache, batched on-device augmentations, the method's loss,
AdamW), for a fixed time. Baseline: the same method's bare forward + backward +
optimizer step on random float tensors of the same shape (two views per cell),
without data loading or augmentation. The ratio subject / baseline (cells per
second) is the share of the model's speed the pipeline keeps; the goal is >= 0.8.

Usage: ``python bench/bench_pretrain.py [--quick] [--backbone resnet18]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short timings")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--method", default=None)
    parser.add_argument("--crop-px", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    import torch

    from cytostore.embedder.backbones import build_backbone
    from cytostore.embedder.methods import build_method
    from cytostore.embedder.pretrain import (
        DEFAULT_BACKBONE,
        DEFAULT_BATCH_SIZE,
        DEFAULT_CROP_PX,
        DEFAULT_METHOD,
        default_augment,
    )
    from cytostore.embedder.train import TrainConfig, train_ssl

    backbone = args.backbone or DEFAULT_BACKBONE
    method = args.method or DEFAULT_METHOD
    px = args.crop_px or DEFAULT_CROP_PX
    batch = args.batch_size or DEFAULT_BATCH_SIZE
    min_s = 20.0 if args.quick else 60.0
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    # A memory-mapped uint8 cache of 2,048 cells, as build_cache writes it.
    tmp = Path(tempfile.mkdtemp())
    n = 2048
    cache = np.memmap(tmp / "cells.u8", np.uint8, "w+", shape=(n, px, px, 3))
    rng = np.random.default_rng(0)
    for i in range(0, n, 256):
        cache[i : i + 256] = rng.integers(0, 256, (min(256, n - i), px, px, 3))
    cache.flush()
    cache = np.memmap(tmp / "cells.u8", np.uint8, "r", shape=(n, px, px, 3))

    # Baseline: bare forward + backward + step on random tensors.
    net, dim = build_backbone(backbone, crop_px=px, seed=0)
    ssl = build_method(method, net, dim).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(ssl.parameters(), lr=1e-4)
    views = [
        torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    ]

    def bare_step() -> float:
        loss = ssl.training_loss(views, [], 0.5)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ssl.after_step(0.5)
        return float(loss.detach())

    bare_step()  # warm-up
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        bare_step()
        steps += 1
    base_s = time.perf_counter() - t0
    base_rate = steps * batch / base_s

    # Subject: the real loop for the same time.
    net, dim = build_backbone(backbone, crop_px=px, seed=0)
    ssl = build_method(method, net, dim)
    global_aug, _ = default_augment(px)
    config = TrainConfig(method=method, batch_size=batch, augment=global_aug)
    import pytorch_lightning as pl

    class _StepClock(pl.Callback):
        """Time steps after the first (the baseline's warm-up step is untimed too)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args: object) -> None:
            self.times.append(time.perf_counter())

    clock = _StepClock()
    result = train_ssl(
        ssl,
        cache,
        ["d"] * n,
        config,
        mean,
        std,
        tmp / "run",
        max_s=min_s + 5,
        device="cpu",
        callbacks=[clock],
    )
    subj_steps = len(clock.times) - 1
    subj_s = clock.times[-1] - clock.times[0] if subj_steps > 0 else float("nan")
    subj_rate = subj_steps * batch / subj_s
    ok = result.steps > 0 and all(np.isfinite(e["loss"]) for e in result.epochs)
    ratio = subj_rate / base_rate

    print(
        "## Pretraining throughput: data pipeline vs bare model "
        f"({method}/{backbone})\n"
    )
    print(
        f"{px} px inputs, batch {batch} cells (2 views each), fp32, torch threads "
        f"{torch.get_num_threads()}; each side timed for >= {min_s:.0f} s.\n"
    )
    print("| run | steps | seconds | cells/s |")
    print("|---|---:|---:|---:|")
    print(
        f"| bare forward+backward on random tensors | {steps} | {base_s:.1f} | "
        f"{base_rate:.1f} |"
    )
    print(
        f"| train_ssl from a memmap cache (augment on device) | {subj_steps} | "
        f"{subj_s:.1f} | {subj_rate:.1f} |"
    )
    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs: wall-clock numbers are "
        "noisy); torch "
        f"{torch.__version__}. Subject losses finite: {ok}.\n"
    )
    print(
        f"Verdict: the pipeline keeps {ratio:.2f}x of the bare model's speed "
        f"({'meets' if ratio >= 0.8 else 'misses'} the >= 0.8x goal)."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
