"""How close is ``embed`` to the model's own speed, and how far ahead of a naive loop?

Two questions, each against a baseline in the same run:

1. From the preprocessed cache: ``cytostore.embedder.embed`` (read cache rows, forward,
   normalise, append + fsync + commit per batch, build the Flat index) vs the model's
   bare forward pass on the same batches (cache rows -> tensor -> backbone, same
   precision and layout, results discarded). Target: >= 0.85x the bare throughput.
2. From raw image files: ``embed`` on a store without a cache (parallel decode and
   preprocessing into the cache, batched channels_last forward of the encoder, whose
   batch norms are folded into its convolutions) vs a naive loop (the registered
   model loaded as is, PIL per image, ``Preprocessing.apply``, fp32, batch 1) over a
   sample of the same files. Target: >= 5x the naive throughput (cells/s).

Data: a synthetic TCIA-shaped tree (``cytostore.data.synthesize``) ingested into a
store; the model is a seeded random-init backbone registered with
``register_random_model`` (weights do not change the speed), by default the CPU
default of ``pretrain`` (``tiny``, 96 px). Reported: best pass of each side (the
machine may be shared), median beside it, and for question 2 the ceiling: the bare
batched forward over the naive loop, which no pipeline can beat on a machine whose
cores the forward pass already fills.

Usage: ``python bench/bench_embed.py [--quick] [--backbone resnet18] [--crop-px 96]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cytostore.data import ingest, synthesize
from cytostore.embedder import Encoder, build_cache, embed, register_random_model
from cytostore.embedder.backbones import build_backbone, load_init_weights
from cytostore.embedder.device import autocast
from cytostore.embedder.pretrain import DEFAULT_BACKBONE, DEFAULT_CROP_PX
from cytostore.embedder.registry import WEIGHTS_FILE, load_card, model_dir
from cytostore.store import Store


def _machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{np.__version__}, torch threads {torch.get_num_threads()}"
    )


def _bare_forward(encoder: Encoder, rows_by_batch: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for rows in rows_by_batch:
        x = encoder.preprocessing.to_tensor(rows, device=encoder.device)
        with torch.inference_mode(), autocast(encoder.device, encoder.precision):
            encoder.backbone(x)
    return time.perf_counter() - t0


def _plain_model(store: Store, name: str) -> torch.nn.Module:
    """The registered model as a user would load it: built, weights in, eval mode."""
    card = load_card(store, name)
    module, _ = build_backbone(card.backbone, crop_px=card.preprocessing.crop_px)
    load_init_weights(module, model_dir(store, name) / WEIGHTS_FILE, name=card.backbone)
    return module.eval()


def _naive(
    model: torch.nn.Module, encoder: Encoder, paths: list[Path], ums: list[float | None]
) -> tuple[float, float]:
    """Time the naive loop; return ``(total s, of which decode + preprocess s)``."""
    prep = encoder.preprocessing
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    t_pixels = 0.0
    t0 = time.perf_counter()
    for path, um in zip(paths, ums, strict=True):
        t1 = time.perf_counter()
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        crop = prep.apply(rgb, um)
        t_pixels += time.perf_counter() - t1
        x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            model((x - mean) / std)
    return time.perf_counter() - t0, t_pixels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer cells")
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--crop-px", type=int, default=DEFAULT_CROP_PX)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--naive-cells", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    cells = args.cells or (600 if args.quick else 20_000)
    reps = args.reps or (2 if args.quick else 5)
    naive_cells = args.naive_cells or (60 if args.quick else 150)
    # The same tree as bench_ingest.py's for the same --cells.
    data = Path(tempfile.gettempdir()) / f"cytostore-bench-synth-{cells}"
    missing = [n for n in ("lmu", "mll_helmholtz", "bm") if not (data / n).is_dir()]
    if missing:
        print(f"writing {cells} synthetic cells to {data} ...", file=sys.stderr)
        synthesize(
            data, cells // 3, seed=0, datasets=missing, workers=os.cpu_count() or 1
        )
    scratch = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        base = scratch / "base"
        ingest(base, data, workers=os.cpu_count())
        store = Store.open(base)
        names = [f"m{i}" for i in range(reps + 1)]
        for name in names:  # same seed: same weights and preprocessing, shared cache
            register_random_model(
                store, name, backbone=args.backbone, crop_px=args.crop_px, seed=0
            )
        raw_copy = scratch / "raw"
        shutil.copytree(base, raw_copy)  # no cache yet: for question 2
        enc = Encoder.load(store, names[0], device="cpu", batch_size=args.batch_size)
        ids = store.where_ids()
        cache = build_cache(store, enc.preprocessing, ids)
        batches = [
            cache.rows(ids[i : i + args.batch_size])
            for i in range(0, ids.size, args.batch_size)
        ]
        _bare_forward(enc, batches[:1])  # warm up
        t_bare: list[float] = []
        t_embed: list[float] = []
        for name in names[1:]:
            t_bare.append(_bare_forward(enc, batches))
            t0 = time.perf_counter()
            report = embed(store, name, batch_size=args.batch_size, device="cpu")
            t_embed.append(time.perf_counter() - t0)
            if report["embedded"] != ids.size:
                raise SystemExit(f"embed wrote {report['embedded']} of {ids.size}")
        # Check the subject's result: the stored vectors are the encoder's.
        got_ids, got = store.vectors(names[1])
        want = enc.embed(got_ids[:64])
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        err = float(np.abs(np.asarray(got[:64]) - want).max())
        # Question 2: raw files.
        raw = Store.open(raw_copy)
        t0 = time.perf_counter()
        report = embed(raw, names[0], batch_size=args.batch_size, device="cpu")
        t_raw = time.perf_counter() - t0
        sample = ids[:: max(1, ids.size // naive_cells)][:naive_cells]
        paths = raw.cell_paths(sample)
        ums = [r[0] for r in raw.cell_meta(sample, ["um_per_px"]).rows]
        t_naive, t_pixels = _naive(_plain_model(raw, names[0]), enc, paths, ums)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cache_ratio = min(t_bare) / min(t_embed)
    raw_rate, naive_rate = report["embedded"] / t_raw, len(sample) / t_naive
    raw_ratio = raw_rate / naive_rate
    # No pipeline beats: the naive loop's decode + preprocess spread over every
    # core, plus the bare batched forward (which already fills the cores).
    cores = os.cpu_count() or 1
    best_s_per_cell = t_pixels / len(sample) / cores + min(t_bare) / ids.size
    ceiling = (t_naive / len(sample)) / best_s_per_cell
    ok_cache, ok_raw = cache_ratio >= 0.85 and err < 1e-2, raw_ratio >= 5
    n = ids.size
    print("## Embedding throughput (`bench_embed.py`)\n")
    print(
        f"Machine: {_machine()}{' (--quick)' if args.quick else ''}. Model: random "
        f"`{args.backbone}` at {args.crop_px} px, precision {enc.precision}, batch "
        f"{args.batch_size}; {n:,} synthetic cells.\n"
    )
    print("| question | baseline | subject | ratio | target | met |")
    print("|---|---|---|---:|---|---|")
    print(
        f"| from the cache | bare forward {n / min(t_bare):.0f} cells/s (median "
        f"{n / statistics.median(t_bare):.0f}) | `embed` {n / min(t_embed):.0f} "
        f"cells/s (median {n / statistics.median(t_embed):.0f}), max error vs "
        f"`Encoder.embed` {err:.1e} | {cache_ratio:.2f}× | ≥ 0.85× | "
        f"{'yes' if ok_cache else 'NO'} |"
    )
    print(
        f"| from raw files | naive loop (PIL, fp32, batch 1) {naive_rate:.1f} cells/s "
        f"on {len(sample)} files | `embed` with cache build {raw_rate:.1f} cells/s on "
        f"{report['embedded']:,} files | {raw_ratio:.1f}× | ≥ 5× | "
        f"{'yes' if ok_raw else 'NO'} |"
    )
    print(
        f"\nCeiling for question 2 on this machine: decoding + preprocessing take "
        f"{1000 * t_pixels / len(sample):.2f} ms per cell in the naive loop and the "
        f"batched forward {1000 * min(t_bare) / ids.size:.2f} ms; even with decoding "
        f"spread perfectly over {cores} cores and no other cost, a pipeline reaches "
        f"{ceiling:.1f}× the naive loop. `embed` from raw files (decode, preprocess, "
        f"cache, forward, write, index) reaches {raw_ratio / ceiling:.0%} of that."
    )
    verdict = "both targets met" if ok_cache and ok_raw else "target missed"
    print(f"\nVerdict: {verdict}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
