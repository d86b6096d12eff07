"""How do the catalog, the vectors, an IVF-PQ index and export behave at 10M cells?

A synthetic 10M-cell store (no images): catalog rows written by bulk SQL in 1M-row
transactions, clustered 128-d float32 vectors (a mixture of 10,000 Gaussians in a
32-d subspace plus noise, unit length) written through the store's vector writer in
chunks, an ``IVF…,PQ…`` index built by ``Store.build_index`` (trained on a sample,
codes added chunk by chunk, candidates re-ranked from the memory-mapped float
vectors), then search and ``export``. Each build step runs in its own child process,
which reports its wall time, its peak resident memory (``VmHWM``) and the bytes it
wrote.

Questions, each against a baseline of the same run:

1. Peak memory of every step vs the bytes it writes (target ≤ 2×; the index step
   must never hold the float matrix: 10M × 128 × 4 B = 5.1 GB).
2. recall@10 of ``Store.search`` through the index vs exact brute force
   (``faiss.knn`` over all vectors) on 1,000 held-out queries (target ≥ 0.95).
3. Single-query latency (p50 of 200): unfiltered through the index (target ≤ 10 ms),
   and with a 1 %-selective ``where`` through the index and exactly over the
   selection (target ≤ 50 ms), against exact brute force over everything.

Usage: ``python bench/bench_scale.py [--quick] [--n N] [--root DIR] [--keep]``
(``--quick``: 200k cells). The store is written under ``--root`` (default
``/tmp/sc-scale``) and deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np

DIM = 128
LATENT = 32
CLUSTERS = 10_000
CATALOG_CHUNK = 1_000_000
VECTOR_CHUNK = 250_000
N_QUERIES = 1_000
N_LATENCY = 200
LABELS = 100  # label = 'L07' selects 1 %
WHERE = "label = 'L07'"
SET = "bench"


def _machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}, faiss "
        f"{faiss.__version__}, duckdb {duckdb.__version__}"
    )


def _peak_rss() -> int:
    """Peak resident set (VmHWM) of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _size(*paths: Path) -> int:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total


# --------------------------------------------------------------- the data
def _generator() -> tuple[np.ndarray, np.ndarray]:
    """The mixture: cluster centres in a 32-d latent space and its 128-d lift."""
    rng = np.random.default_rng(12345)
    centres = rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32) * 3.0
    lift = rng.standard_normal((LATENT, DIM)).astype(np.float32) / np.sqrt(LATENT)
    return centres, lift


def vectors_chunk(seed: int, n: int) -> np.ndarray:
    """``n`` clustered 128-d float32 vectors, the same for the same seed."""
    centres, lift = _generator()
    rng = np.random.default_rng((7, seed))
    which = rng.integers(0, CLUSTERS, n)
    z = centres[which] + rng.standard_normal((n, LATENT), dtype=np.float32)
    x = z @ lift + 0.1 * rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def queries() -> np.ndarray:
    """1,000 held-out queries from the same mixture (seed outside the stored ones)."""
    return vectors_chunk(10**12, N_QUERIES)


# -------------------------------------------------------------- the steps
def step_catalog(root: Path, n: int) -> dict[str, Any]:
    from cytostore.store import Store

    t0 = time.perf_counter()
    store = Store.create(root)
    with store.transaction() as con:
        for d in range(3):
            con.execute(
                "INSERT INTO datasets VALUES (?, 'folder', '/', NULL, NULL, now())",
                [f"ds{d}"],
            )
    for lo in range(1, n + 1, CATALOG_CHUNK):
        hi = min(lo + CATALOG_CHUNK, n + 1)
        with store.transaction() as con:
            con.execute(
                "INSERT INTO cells (cell_id, dataset, path, label, patient_id, "
                "um_per_px, width, height) "
                "SELECT i, 'ds' || (i % 3), 'img/' || i || '.png', "
                f"'L' || lpad((hash(i) % {LABELS})::VARCHAR, 2, '0'), "
                "'P' || (i // 1000), 0.1, 64 + i % 7, 64 + i % 5 "
                "FROM range(?, ?) t(i)",
                [lo, hi],
            )
    elapsed = time.perf_counter() - t0
    return {"elapsed_s": elapsed, "bytes": _size(*root.glob("catalog.duckdb*"))}


def step_vectors(root: Path, n: int) -> dict[str, Any]:
    from cytostore.store import Store

    store = Store.open(root)
    es = store.create_embedding_set(SET, DIM)
    gen_s = 0.0
    t0 = time.perf_counter()
    with store.vector_writer(es) as w:
        for lo in range(0, n, VECTOR_CHUNK):
            hi = min(lo + VECTOR_CHUNK, n)
            g0 = time.perf_counter()
            x = vectors_chunk(lo, hi - lo)
            gen_s += time.perf_counter() - g0
            w.append(np.arange(lo + 1, hi + 1, dtype=np.int64), x)
            del x
    elapsed = time.perf_counter() - t0
    return {
        "elapsed_s": elapsed - gen_s,
        "generate_s": gen_s,
        "bytes": _size(root / "vectors"),
    }


def step_index(root: Path, n: int, factory: str) -> dict[str, Any]:
    from cytostore.store import Store

    store = Store.open(root)
    t0 = time.perf_counter()
    es = store.build_index(SET, factory, rebuild=True)
    elapsed = time.perf_counter() - t0
    return {
        "elapsed_s": elapsed,
        "bytes": _size(root / "indexes"),
        "search_params": es.search_params,
        "n_indexed": es.n_indexed,
    }


def step_truth(root: Path, n: int) -> dict[str, Any]:
    """Exact top-10 of the queries over all vectors (plain chunked reads)."""
    from cytostore.store import Store

    done = root / "truth.json"
    while (root / "truth.running").exists() and not done.is_file():
        time.sleep(5)  # another process is computing it (bench run by hand)
    if done.is_file():  # computed by an earlier (or concurrent) run of this step
        doc: dict[str, Any] = json.loads(done.read_text())
        return doc
    store = Store.open(root)
    es = store.embedding_set(SET)
    q = queries()
    t0 = time.perf_counter()
    best_d = np.full((len(q), 10), -np.inf, np.float32)
    best_i = np.full((len(q), 10), -1, np.int64)
    chunk = 500_000
    with open(root / "vectors" / f"{es.set_id}.f32", "rb") as f:
        for lo in range(0, es.n_vectors, chunk):
            m = min(chunk, es.n_vectors - lo)
            x = np.fromfile(f, np.float32, m * DIM).reshape(m, DIM)
            d, i = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
            d_all = np.hstack([best_d, d])
            i_all = np.hstack([best_i, i + lo + 1])  # cell id = row + 1 here
            top = np.argsort(-d_all, axis=1, kind="stable")[:, :10]
            best_d = np.take_along_axis(d_all, top, 1)
            best_i = np.take_along_axis(i_all, top, 1)
    elapsed = time.perf_counter() - t0
    np.save(root / "truth_ids.npy", best_i)
    doc = {"elapsed_s": elapsed, "bytes": 0, "peak_rss": _peak_rss()}
    done.write_text(json.dumps(doc))
    return doc


def step_search(root: Path, n: int) -> dict[str, Any]:
    from cytostore.store import Store

    store = Store.open(root)
    es = store.embedding_set(SET)
    q = queries()
    truth = np.load(root / "truth_ids.npy")
    t0 = time.perf_counter()
    store.search(q[:1], 10, model=SET)  # loads the set and its index (cached)
    load_s = time.perf_counter() - t0
    # the recorded search parameters first; more lists / candidates only if the
    # recall stays under the target (each setting is recorded with build-index)
    base = dict(es.search_params)
    sweep = []
    kf = int(base.get("k_factor", 1))
    for mult, k_factor in ((1, kf), (1, 2 * kf), (2, 2 * kf)):
        params = {**base, "nprobe": base["nprobe"] * mult, "k_factor": k_factor}
        if params != base:
            store.build_index(SET, search_params=params)
            store.search(q[:1], 10, model=SET)  # reload
        t0 = time.perf_counter()
        _, ids = store.search(q, 10, model=SET)
        batch_s = time.perf_counter() - t0
        recall = float(
            np.mean(
                [len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]
            )
        )
        sweep.append({"params": params, "recall": recall, "qps": len(q) / batch_s})
        if recall >= 0.95:
            break

    def p50(fn: Any) -> tuple[float, float]:
        times = []
        for j in range(N_LATENCY):
            t = time.perf_counter()
            fn(q[j : j + 1])
            times.append(time.perf_counter() - t)
        times.sort()
        return statistics.median(times) * 1e3, times[int(0.95 * len(times))] * 1e3

    unfiltered = p50(lambda x: store.search(x, 10, model=SET))
    t0 = time.perf_counter()
    store.search(q[:1], 10, model=SET, where=WHERE)  # runs the where once (cached)
    first_filtered_s = time.perf_counter() - t0
    filtered = p50(lambda x: store.search(x, 10, model=SET, where=WHERE))
    # exactly over the selection: the selected rows, gathered from the memory map
    sel = store.where_ids(WHERE)
    searcher = store.searcher(SET)
    sel_rows = np.asarray(sel - 1)  # cell id = row + 1 in this store
    mat = searcher.matrix

    def exact_subset(x: np.ndarray) -> Any:
        xb = np.ascontiguousarray(mat[sel_rows], dtype=np.float32)
        return faiss.knn(x, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)

    exact_sel = p50(exact_subset)
    # filtered recall: the index with the selector vs exact over the selection
    fq = q[:100]
    _, f_ids = store.search(fq, 10, model=SET, where=WHERE)
    _, e_pos = exact_subset(fq)
    f_truth = sel[e_pos]
    f_recall = float(
        np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(f_ids, f_truth, strict=True)]
        )
    )

    # baseline: exact brute force over every vector, one query (memory map)
    def brute(x: np.ndarray) -> Any:
        return faiss.knn(x, mat, 10, metric=faiss.METRIC_INNER_PRODUCT)

    t = time.perf_counter()
    for j in range(3):
        brute(q[j : j + 1])
    brute_ms = (time.perf_counter() - t) / 3 * 1e3
    return {
        "elapsed_s": 0.0,
        "bytes": 0,
        "load_s": load_s,
        "batch_qps": len(q) / batch_s,
        "recall": recall,
        "sweep": sweep,
        "unfiltered_ms": unfiltered,
        "filtered_ms": filtered,
        "first_filtered_s": first_filtered_s,
        "exact_selection_ms": exact_sel,
        "filtered_recall": f_recall,
        "selected": int(sel.size),
        "brute_ms": brute_ms,
        "search_params": sweep[-1]["params"],
    }


def step_export(root: Path, n: int) -> dict[str, Any]:
    from cytostore.store import Store

    out = root.parent / (root.name + "-export")
    shutil.rmtree(out, ignore_errors=True)
    store = Store.open(root)
    t0 = time.perf_counter()
    report = store.export(out)
    elapsed = time.perf_counter() - t0
    written = _size(out)
    shutil.rmtree(out, ignore_errors=True)
    return {"elapsed_s": elapsed, "bytes": written, "files": report["files"]}


STEPS = {
    "catalog": step_catalog,
    "vectors": step_vectors,
    "index": step_index,
    "truth": step_truth,
    "search": step_search,
    "export": step_export,
}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(name: str, root: Path, n: int, factory: str) -> None:
    import cytostore.store  # noqa: F401  (the baseline includes the libraries)

    before = _rss()
    fn: Any = STEPS[name]
    doc = fn(root, n, factory) if name == "index" else fn(root, n)
    doc.setdefault("peak_rss", _peak_rss())
    doc["rss_before"] = before
    doc["load"] = os.getloadavg()
    print(json.dumps(doc, default=str))


def _run_step(name: str, root: Path, n: int, factory: str) -> dict[str, Any]:
    print(f"[bench_scale] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--step",
            name,
            "--root",
            str(root),
            "--n",
            str(n),
            "--factory",
            factory,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"step {name} failed")
    doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    doc["wall_s"] = time.perf_counter() - t0
    print(f"[bench_scale] {name}: {json.dumps(doc)[:400]}", file=sys.stderr, flush=True)
    return doc


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200k cells")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--root", type=Path, default=Path("/tmp/sc-scale/store"))
    parser.add_argument("--factory", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the store under --root and the steps already measured there",
    )
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (200_000 if args.quick else 10_000_000)
    factory = args.factory or ("IVF1024,PQ32" if n < 1_000_000 else "IVF4096,PQ32")
    if args.step:
        _child(args.step, args.root, n, factory)
        return 0
    if not args.resume:
        shutil.rmtree(args.root, ignore_errors=True)
    args.root.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    res: dict[str, dict[str, Any]] = {}
    saved = args.root.parent / (args.root.name + "-steps")
    saved.mkdir(exist_ok=True)
    try:
        for name in STEPS:
            done = saved / f"{name}.json"
            if args.resume and done.is_file():
                res[name] = json.loads(done.read_text())
                continue
            res[name] = _run_step(name, args.root, n, factory)
            done.write_text(json.dumps(res[name], default=str))
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
            shutil.rmtree(saved, ignore_errors=True)
    load_after = os.getloadavg()
    _report(res, n, factory, load_before, load_after, args.quick)
    return 0


def _report(
    res: dict[str, dict[str, Any]],
    n: int,
    factory: str,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    quick: bool,
) -> None:
    s = res["search"]
    rows = []
    ok: dict[str, bool] = {}
    for name, what in (
        ("catalog", f"catalog rows ({n:,} cells, 1M-row transactions)"),
        ("vectors", f"vector file ({n:,}×{DIM} float32, {VECTOR_CHUNK:,}-row appends)"),
        ("index", f"`{factory}` index (trained on a sample, added in chunks)"),
        ("export", "`export` (cells.parquet + embeddings parquet)"),
    ):
        r = res[name]
        ratio = r["peak_rss"] / max(r["bytes"], 1)
        ok[name] = ratio <= 2.0
        extra = (
            f"; data generation {r['generate_s']:.0f} s apart"
            if name == "vectors"
            else ""
        )
        rows.append(
            [
                what,
                f"{_gb(r['bytes'])} written",
                f"{r['elapsed_s']:.0f} s{extra}; peak RSS {_gb(r['peak_rss'])} "
                f"({_gb(r['peak_rss'] - r['rss_before'])} above the process "
                "after imports)",
                f"{ratio:.2f}× bytes",
                "peak ≤ 2× bytes",
                "yes" if ok[name] else "NO",
            ]
        )
    ok["recall"] = s["recall"] >= 0.95
    rows.append(
        [
            f"recall@10, {N_QUERIES:,} held-out queries",
            f"exact brute force ({res['truth']['elapsed_s']:.0f} s for all)",
            "`Store.search`: "
            + "; ".join(
                f"{w['params']} recall {w['recall']:.3f} ({w['qps']:.0f} QPS)"
                for w in s["sweep"]
            ),
            "—",
            "≥ 0.95",
            "yes" if ok["recall"] else "NO",
        ]
    )
    u50, u95 = s["unfiltered_ms"]
    ok["ann"] = u50 <= 10
    rows.append(
        [
            f"single query, unfiltered (p50 of {N_LATENCY})",
            f"exact brute force {s['brute_ms']:.0f} ms",
            f"through the index {u50:.1f} ms (p95 {u95:.1f})",
            f"{s['brute_ms'] / u50:.0f}× faster",
            "p50 ≤ 10 ms",
            "yes" if ok["ann"] else "NO",
        ]
    )
    f50, f95 = s["filtered_ms"]
    e50, e95 = s["exact_selection_ms"]
    ok["filtered"] = min(f50, e50) <= 50
    rows.append(
        [
            f"single query, `where {WHERE}` ({s['selected']:,} cells, "
            f"{100 * s['selected'] / n:.1f} %)",
            f"unfiltered {u50:.1f} ms",
            f"`Store.search` with the where {f50:.1f} ms (p95 {f95:.1f}; recall vs "
            f"exact on the selection {s['filtered_recall']:.3f}); exact over the "
            f"selection gathered from the memory map {e50:.1f} ms; first call "
            f"(runs the where) {s['first_filtered_s']:.2f} s",
            f"{f50 / u50:.1f}×",
            "p50 ≤ 50 ms",
            "yes" if ok["filtered"] else "NO",
        ]
    )
    print(f"## Scale: a {n / 1e6:g}M-cell store (`bench_scale.py`)\n")
    print(
        f"Machine: {_machine()}{' (--quick)' if quick else ''}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (shared CPU).\n"
    )
    print("| step / question | baseline | subject | ratio | target | met |")
    print("|---|---|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    missed = [k for k, v in ok.items() if not v]
    print(
        "\nVerdict: "
        + ("every target met." if not missed else "missed: " + ", ".join(missed) + ".")
    )
    print(f"\nRaw: `{json.dumps(res, default=str)}`")


if __name__ == "__main__":
    sys.exit(main())
