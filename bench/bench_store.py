"""What does the store's vector side cost over raw FAISS, and what do its options buy?

Four measurements, each against a baseline in the same run:

1. Exact search, 1,000 queries, k=10, over 200k x 384 vectors: ``Store.search`` (catalog
   lookup, memory-mapped ids, cached ``IndexIDMap2(Flat)``) vs a raw
   ``faiss.IndexFlatIP`` on the same array. Target: <= 1.15x the raw time.
2. Single-query latency with a 5%-selective ``where`` (filter before search with a
   FAISS ID selector) vs the unfiltered query. Target: <= 2x, recall 1.0 against
   brute force on the subset.
3. 1M clustered vectors (a mixture of 1,000 Gaussians): the recommended ANN factory
   (``IVF1024,Flat``, nprobe from the catalog) through ``Store.search`` vs exact
   brute force (``faiss.knn``) on the same vectors. Target: recall@10 >= 0.95 at
   >= 10x the flat QPS.
4. Peak memory of the writer taking 1M precomputed vectors in batches (and building
   the Flat index), in a child process: peak RSS (``VmHWM``) minus the RSS before
   writing, over the bytes of the vectors. Target: <= 2x.

Timings alternate subject and baseline and repeat until ``--min-s`` seconds per side;
best and median passes are reported (the machine may be shared); question 1 must meet
its target on both.

Usage: ``python bench/bench_store.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
from _stores import store_with_cells

from cytostore.store import Store

DIM = 384


def _machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}, faiss "
        f"{faiss.__version__}, duckdb {duckdb.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def _write(
    store: Store,
    name: str,
    make: Callable[[int, int], np.ndarray],
    n: int,
    batch: int = 50_000,
) -> None:
    es = store.create_embedding_set(name, DIM)
    with store.vector_writer(es) as w:
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            w.append(np.arange(lo + 1, hi + 1, dtype=np.int64), make(lo, hi))


def _gaussian(seed: int) -> Callable[[int, int], np.ndarray]:
    def make(lo: int, hi: int) -> np.ndarray:
        rng = np.random.default_rng((seed, lo))
        return rng.standard_normal((hi - lo, DIM), dtype=np.float32)

    return make


def _mixture(seed: int, n_clusters: int = 1000, sigma: float = 0.6):  # type: ignore[no-untyped-def]
    centers = (
        np.random.default_rng(seed)
        .standard_normal((n_clusters, DIM))
        .astype(np.float32)
    )

    def make(lo: int, hi: int) -> np.ndarray:
        rng = np.random.default_rng((seed, lo))
        which = rng.integers(n_clusters, size=hi - lo)
        noise = rng.standard_normal((hi - lo, DIM), dtype=np.float32)
        return centers[which] + sigma * noise

    return make


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _alternate(
    subject: Callable[[], Any], baseline: Callable[[], Any], min_s: float
) -> tuple[list[float], list[float]]:
    ts: list[float] = []
    tb: list[float] = []
    while sum(ts) < min_s or sum(tb) < min_s or len(ts) < 3:
        for fn, out in ((baseline, tb), (subject, ts)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ts, tb


def exact_search(scratch: Path, n: int, nq: int, min_s: float) -> dict[str, Any]:
    store = store_with_cells(scratch / "exact", n)
    _write(store, "flat", _gaussian(1), n)
    store.build_index("flat")
    ids, x = store.vectors("flat")
    raw = faiss.IndexFlatIP(DIM)
    raw.add(np.ascontiguousarray(x))
    q = _unit(np.random.default_rng(7).standard_normal((nq, DIM)))
    store.search(q[:1], k=10, model="flat")  # load the index once
    ts, tb = _alternate(
        lambda: store.search(q, k=10, model="flat"),
        lambda: raw.search(q, 10),
        min_s,
    )
    _, got = store.search(q, k=10, model="flat")
    _, want = raw.search(q, 10)
    agree = float(np.mean(got == ids[want]))
    # Single-query latency, 5% filter vs none.
    where = "label = 'L07'"
    q1 = q[:50]
    lat_f: list[float] = []
    lat_u: list[float] = []
    for i in range(len(q1)):
        for w, out in ((None, lat_u), (where, lat_f)):
            t0 = time.perf_counter()
            store.search(q1[i], k=10, where=where if w else None, model="flat")
            out.append(time.perf_counter() - t0)
    sub_ids, sub_x = store.vectors("flat", where=where)
    brute = np.argsort(-(q1 @ np.asarray(sub_x).T), axis=1)[:, :10]
    _, filt = store.search(q1, k=10, where=where, model="flat")
    recall = float(
        np.mean(
            [
                len(set(f) & set(sub_ids[b])) / 10
                for f, b in zip(filt, brute, strict=True)
            ]
        )
    )
    return {
        "n": n,
        "nq": nq,
        "subject_s": min(ts),
        "baseline_s": min(tb),
        "subject_med": statistics.median(ts),
        "baseline_med": statistics.median(tb),
        "agree": agree,
        "lat_f_ms": 1e3 * statistics.median(lat_f),
        "lat_u_ms": 1e3 * statistics.median(lat_u),
        "recall_f": recall,
        "subset": int(sub_ids.size),
    }


def ann(scratch: Path, n: int, nq: int, nq_flat: int, factory: str) -> dict[str, Any]:
    store = store_with_cells(scratch / "ann", n)
    make = _mixture(3)
    _write(store, "ann", make, n)
    t0 = time.perf_counter()
    es = store.build_index("ann", factory)
    build_s = time.perf_counter() - t0
    _, x = store.vectors("ann")
    ids = store.vectors("ann")[0]
    q = _unit(make(n + 10_000_000, n + 10_000_000 + nq))
    # Exact baseline: brute force on the same (memory-mapped) vectors.
    t0 = time.perf_counter()
    _, gt_pos = faiss.knn(q[:nq_flat], x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    flat_qps = nq_flat / (time.perf_counter() - t0)
    store.search(q[:1], k=10, model="ann")  # load the index once
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        _, got = store.search(q, k=10, model="ann")
        times.append(time.perf_counter() - t0)
    ann_qps = nq / min(times)
    gt = ids[gt_pos]
    recall = float(
        np.mean(
            [len(set(g) & set(t)) / 10 for g, t in zip(got[:nq_flat], gt, strict=True)]
        )
    )
    return {
        "n": n,
        "factory": factory,
        "params": es.search_params,
        "build_s": build_s,
        "flat_qps": flat_qps,
        "ann_qps": ann_qps,
        "recall": recall,
        "nq": nq,
        "nq_flat": nq_flat,
    }


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """VmHWM: this process's peak RSS. (``ru_maxrss`` is not used: Linux carries the
    parent's RSS at fork into it across ``exec``.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _writer_child(root: str, n: int) -> None:
    store = Store.open(root)  # the parent made the catalog: its peak is not ours
    store.sql("SELECT count(*) FROM cells")
    before = _rss_now()
    t0 = time.perf_counter()
    _write(store, "mem", _gaussian(5), n, batch=10_000)
    appended = _peak_rss()
    store.build_index("mem")
    indexed = _peak_rss()
    print(
        json.dumps(
            {
                "before": before,
                "appended": appended,
                "indexed": indexed,
                "elapsed_s": time.perf_counter() - t0,
                "n_vectors": store.embedding_set("mem").n_vectors,
            }
        )
    )


def writer_memory(scratch: Path, n: int) -> dict[str, Any]:
    store_with_cells(scratch / "mem", n)
    proc = subprocess.run(
        [sys.executable, __file__, "--writer-child", str(scratch / "mem"), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["bytes"] = n * DIM * 4
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer vectors")
    parser.add_argument("--min-s", type=float, default=None)
    parser.add_argument("--factory", default="IVF1024,Flat")
    parser.add_argument("--writer-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer_child:
        _writer_child(args.writer_child[0], int(args.writer_child[1]))
        return 0
    n_exact = 50_000 if args.quick else 200_000
    n_ann = 200_000 if args.quick else 1_000_000
    min_s = args.min_s if args.min_s is not None else (2.0 if args.quick else 8.0)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        scratch = Path(tmp)
        ex = exact_search(scratch, n_exact, 1000, min_s)
        an = ann(scratch, n_ann, 1000, 200, args.factory)
        mem = writer_memory(scratch, n_ann)
    ratio_best = ex["subject_s"] / ex["baseline_s"]
    ratio = ex["subject_med"] / ex["baseline_med"]
    lat_ratio = ex["lat_f_ms"] / ex["lat_u_ms"]
    speed = an["ann_qps"] / an["flat_qps"]
    mem_ratio = (mem["indexed"] - mem["before"]) / mem["bytes"]
    mem_append = (mem["appended"] - mem["before"]) / mem["bytes"]
    ok = {
        "exact": max(ratio, ratio_best) <= 1.15 and ex["agree"] > 0.999,
        "filter": lat_ratio <= 2.0 and ex["recall_f"] == 1.0,
        "ann": an["recall"] >= 0.95 and speed >= 10,
        "memory": mem_ratio <= 2.0 and mem["n_vectors"] == n_ann,
    }
    gb = mem["bytes"] / 1e9
    yes = {k: "yes" if v else "NO" for k, v in ok.items()}
    rows = [
        [
            f"exact search, {ex['nq']:,} queries, k=10, {ex['n']:,}×{DIM}",
            f"raw `IndexFlatIP` {ex['baseline_s']:.2f} s "
            f"(median {ex['baseline_med']:.2f})",
            f"`Store.search` {ex['subject_s']:.2f} s (median {ex['subject_med']:.2f}); "
            f"same ids {ex['agree']:.4f}",
            f"{ratio:.2f}× median, {ratio_best:.2f}× best",
            "≤ 1.15×",
            yes["exact"],
        ],
        [
            f"single query, `where` selecting {ex['subset']:,} "
            f"({100 * ex['subset'] / ex['n']:.0f}%), median of 50",
            f"unfiltered {ex['lat_u_ms']:.1f} ms",
            f"filtered {ex['lat_f_ms']:.1f} ms; recall vs brute force on the subset "
            f"{ex['recall_f']:.3f}",
            f"{lat_ratio:.2f}× latency",
            "≤ 2×, recall 1.0",
            yes["filter"],
        ],
        [
            f"{an['n']:,} clustered vectors (1,000 Gaussians), k=10",
            f"exact brute force {an['flat_qps']:.0f} QPS ({an['nq_flat']} queries)",
            f"`{an['factory']}` {an['params']} via `Store.search`: "
            f"{an['ann_qps']:.0f} QPS, recall@10 {an['recall']:.3f}; "
            f"build {an['build_s']:.0f} s",
            f"{speed:.1f}× QPS",
            "≥ 10×, recall ≥ 0.95",
            yes["ann"],
        ],
        [
            f"writer peak RSS, {n_ann:,}×{DIM} float32 ({gb:.2f} GB) in 10k batches",
            f"vector bytes {gb:.2f} GB",
            f"+{(mem['appended'] - mem['before']) / 1e9:.2f} GB appending "
            f"({mem_append:.2f}×), +{(mem['indexed'] - mem['before']) / 1e9:.2f} GB "
            "with the Flat index",
            f"{mem_ratio:.2f}×",
            "≤ 2×",
            yes["memory"],
        ],
    ]
    missed = [k for k, v in ok.items() if not v]
    print("## Store: search, filtered search, ANN, writer memory (`bench_store.py`)\n")
    print(f"Machine: {_machine()}{' (--quick)' if args.quick else ''}.\n")
    print("| question | baseline | subject | ratio | target | met |")
    print("|---|---|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    verdict = "all four targets met" if not missed else "missed: " + ", ".join(missed)
    print(f"\nVerdict: {verdict}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
