"""Imported foundation models: as fast as their bare forward, and how they compare.

Two questions, each against a baseline in the same run:

1. Throughput. For each imported architecture (DinoBloom/DINOv2 ViT-S/B/L/G at its
   native 224 px), ``cytostore.embedder.embed`` from the preprocessed cache (cache
   rows, forward, normalise, append + commit, index) vs the bare batched forward of
   the same module on the same rows (uint8 -> tensor -> backbone, the same precision
   and batch size, results discarded). Target: >= 0.85x the bare throughput. The
   checkpoints are written in DinoBloom's published layout with random values (no
   real weights are available offline here; values do not change the speed) and
   imported with ``import_model``.
2. ``compare`` on a real-cell store (``--store``, default a copy of
   ``/tmp/shared-stores/pbc``: 3,200 PBC cells, 8 classes, models ``ssl`` and
   ``random`` already embedded): the CPU SSL recipe vs a randomly initialised DINOv2
   ViT-S/14 (imported from a random-init checkpoint in DINOv2's own key layout) vs
   the random tiny CNN; linear and kNN heads on the same 5 folds. The baseline is the
   random tiny CNN.

Usage: ``python bench/bench_foundation.py [--quick] [--sizes s,b,l,g] [--no-compare]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytostore.embedder import Encoder, build_cache, embed
from cytostore.embedder.device import autocast
from cytostore.embedder.foundation import build_arch, import_model
from cytostore.store import Store

PBC = Path("/tmp/shared-stores/pbc")
#: cells embedded per size (a ViT-G forward at 224 px takes seconds on a CPU)
CELLS = {"s": 96, "b": 48, "l": 16, "g": 16}
CELLS_QUICK = {"s": 24, "b": 12, "l": 4, "g": 2}
TOKENS = 257  # 16 x 16 patches of 14 px + CLS at 224 px


def _machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def _random_checkpoint(arch: str, path: Path, dinobloom: bool) -> int:
    """Write a random checkpoint of ``arch`` in DinoBloom's or DINOv2's layout."""
    model, _ = build_arch(arch, device="meta")
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for key, meta in model.state_dict().items():
        value = torch.empty(meta.shape).normal_(0.0, 0.02, generator=gen)
        if key.endswith("gamma"):
            value = value.abs() + 0.1
        elif "norm" in key and key.endswith("weight"):
            value += 1.0
        # DINOv2's own names for the SwiGLU of ViT-g
        state[key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")] = value
    d = state["cls_token"].shape[-1]
    state["mask_token"] = torch.zeros(1, d)
    n_params = sum(v.numel() for v in state.values())
    if dinobloom:
        teacher = {f"backbone.{k}": v for k, v in state.items()}
        teacher["dino_head.mlp.0.weight"] = torch.zeros(8, d)
        torch.save({"teacher": teacher}, path)
    else:
        torch.save(state, path)
    return n_params


def _bare(enc: Encoder, batches: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for rows in batches:
        x = enc.preprocessing.to_tensor(rows, device=enc.device)
        with torch.inference_mode(), autocast(enc.device, enc.precision):
            enc.backbone(x)
    return time.perf_counter() - t0


def throughput(sizes: list[str], quick: bool, work: Path) -> list[str]:
    """Question 1: one row per size."""
    src = Store.open(PBC) if PBC.is_dir() else None
    if src is None:
        return ["(skipped: /tmp/shared-stores/pbc is absent)"]
    rows = []
    for size in sizes:
        n = (CELLS_QUICK if quick else CELLS)[size]
        store_dir = work / f"s-{size}"
        shutil.copytree(PBC, store_dir, ignore=shutil.ignore_patterns("cache"))
        store = Store.open(store_dir)
        ckpt = work / f"DinoBloom-{size.upper()}.pth"
        n_params = _random_checkpoint(f"dinobloom-{size}", ckpt, dinobloom=True)
        t0 = time.perf_counter()
        card = import_model(store, f"bloom-{size}", ckpt, f"dinobloom-{size}")
        import_s = time.perf_counter() - t0
        ckpt.unlink()
        where = f"cell_id <= {n}"
        ids = store.where_ids(where)
        cache = build_cache(store, card.preprocessing, ids)
        enc = Encoder.load(store, card.name, device="cpu")
        batch = min(32, n)
        pixels = cache.rows(ids)
        batches = [pixels[i : i + batch] for i in range(0, n, batch)]
        _bare(enc, batches[:1])  # warm-up
        bare_s, embed_s = [], []
        for rep in range(1 if size == "g" else 2):
            bare_s.append(_bare(enc, batches))
            t0 = time.perf_counter()
            report = embed(
                store, card.name, where=where, device="cpu", batch_size=batch
            )
            embed_s.append(time.perf_counter() - t0)
            assert report["embedded"] == n, report
            got_ids, vecs = store.vectors(card.name)
            assert vecs.shape == (n, card.dim), vecs.shape
            if rep == 0 and size != "g":  # embed again from scratch
                store.remove("set", card.name)
        bare_rate = n / min(bare_s)
        embed_rate = n / min(embed_s)
        gflop = 2 * n_params * TOKENS / 1e9
        rows.append(
            f"| dinobloom-{size} | {card.dim} | {n_params / 1e6:.0f} M | {gflop:.0f} | "
            f"{n} | {enc.precision} | {bare_rate:.2f} | {embed_rate:.2f} | "
            f"{embed_rate / bare_rate:.2f}x | {270_000 / embed_rate / 3600:.1f} h | "
            f"{import_s:.1f} s |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
        del enc
        shutil.rmtree(store_dir)
    return rows


def compare_models(work: Path, store_path: Path) -> tuple[list[str], dict[str, Any]]:
    """Question 2: ssl vs a random DINOv2 ViT-S vs the random tiny CNN."""
    from cytostore.heads.compare import compare

    dest = work / "pbc"
    shutil.copytree(store_path, dest)
    store = Store.open(dest)
    ckpt = work / "dinov2_vits14_random.pth"
    _random_checkpoint("dinov2-vits14", ckpt, dinobloom=False)
    import_model(store, "dinov2-s-random", ckpt, "dinov2-vits14")
    t0 = time.perf_counter()
    rep = embed(store, "dinov2-s-random", device="cpu")
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = compare(
        store,
        ["ssl", "dinov2-s-random", "random"],
        "label",
        folds=5,
        png=work / "compare.png",
    )
    compare_s = time.perf_counter() - t0
    shutil.copy(
        work / "compare.png", Path(os.environ.get("FM_PNG", "/tmp/fm-compare.png"))
    )
    lines = []
    for r in report.rows:
        mix = (report.mixing or {}).get(r["model"], {})
        lines.append(
            f"| {r['model']} | {r['head']} | {r['balanced_accuracy']:.3f} ± "
            f"{r['balanced_accuracy_sd']:.3f} | {r['macro_f1']:.3f} ± "
            f"{r['macro_f1_sd']:.3f} | {mix.get('label', '—')} |"
        )
    info = {
        "n": report.n_cells,
        "folds": report.folds,
        "embed_s": embed_s,
        "embedded": rep["embedded"],
        "compare_s": compare_s,
        "report": report,
    }
    return lines, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="s,b,l")
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--store", type=Path, default=PBC)
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    out = ["## Imported foundation models (bench_foundation.py)", ""]
    out.append(f"Machine: {_machine()}.")
    with tempfile.TemporaryDirectory(prefix="bench-foundation-") as tmp:
        work = Path(tmp)
        load_before = _load()
        rows = throughput(sizes, args.quick, work)
        out += [
            "",
            "### Embedding throughput vs the bare forward (CPU, 224 px)",
            "",
            "Random weights in DinoBloom's layout, imported with `import_model`; "
            "`embed` from the preprocessed cache vs the bare batched forward of the "
            "same module (same batch and precision) on the same cells, in the same "
            f"run, best of 2 (ViT-G: 1). Load average: {load_before} before, "
            f"{_load()} after. GFLOP: 2 x parameters x 257 tokens per cell "
            "(approximate). 270k cells: the three TCIA datasets at the measured "
            "`embed` rate on this CPU.",
            "",
            "| arch | dim | params | GFLOP/cell | cells | precision | bare cells/s | "
            "embed cells/s | ratio (target >= 0.85) | 270k cells | import |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
        if not args.no_compare and args.store.is_dir():
            load_before = _load()
            lines, info = compare_models(work, args.store)
            out += [
                "",
                "### `compare` on the PBC sample (3,200 real cells, 8 classes)",
                "",
                "No real foundation weights are available offline here: "
                "`dinov2-s-random` is a randomly initialised DINOv2 ViT-S/14 "
                "(imported from a random checkpoint in DINOv2's key layout, 224 px, "
                "physical-scale crop). `ssl` is the CPU SSL recipe (SimCLR, tiny CNN, "
                "96 px, 12 epochs), `random` the same tiny CNN with random weights "
                f"(the baseline). {info['n']} cells, {info['folds']} stratified folds "
                "(the same for every model), linear probe and kNN (k=20). "
                f"Embedding the {info['embedded']} cells with the ViT-S took "
                f"{info['embed_s']:.0f} s; compare {info['compare_s']:.0f} s. "
                f"Load average: {load_before} before, {_load()} after. "
                "mixing label: the store's neighbourhood mixing score of the cell "
                "types (higher: cell types form neighbourhoods).",
                "",
                "| model | head | balanced accuracy | macro F1 | mixing label |",
                "|---|---|---|---|---|",
                *lines,
            ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
