"""Is ``ingest`` faster than a plain single-process decode loop over the same files?

Question: how many files per second does ``cytostore.data.ingest`` catalogue (find the
layouts, read + sha256 + fully decode every image in worker processes, commit to
DuckDB in chunks) compared with the simplest loop that opens and fully decodes the same
files with Pillow in one process (``Image.open(p).load()``, no hashing, no catalog)?
Target: >= 1.3x with parallel workers on 2 cores. Ingest checks plain uncompressed
8-bit TIFFs (LMU's, MLL's) by checking that every strip lies inside the bytes it read
for the hash, the check Pillow's raw decoder makes, instead of calling Pillow; JPEGs
and everything else are decoded by Pillow.

Data: a synthetic TCIA-shaped tree (``cytostore.data.synthesize``; LMU RGBA TIFF 400 px,
MLL RGB TIFF 144 px, BM JPEG 250 px), kept in ``--data`` between runs because writing
it takes minutes. Baseline and subject run alternately on the same warm page cache,
repeated until ``--min-s`` seconds each; the best pass of each is reported (the
machine may be shared), with the median beside it.

Usage: ``python bench/bench_ingest.py [--quick] [--cells N] [--workers W]``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import PIL
from PIL import Image

from cytostore.data import ingest, synthesize
from cytostore.data.images import is_hidden, is_image_name
from cytostore.store import Store


def _files(root: Path) -> list[Path]:
    return sorted(
        Path(d) / n
        for d, _, names in os.walk(root)
        for n in names
        if is_image_name(n) and not is_hidden(n)
    )


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _baseline(files: list[Path]) -> float:
    start = time.perf_counter()
    for p in files:
        with Image.open(p) as img:
            img.load()
    return time.perf_counter() - start


def _subject(root: Path, workers: int, scratch: Path) -> tuple[float, Path]:
    store = scratch / f"store-{time.monotonic_ns()}"
    start = time.perf_counter()
    ingest(store, root, workers=workers)
    return time.perf_counter() - start, store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3,000 cells, 1 pass min")
    parser.add_argument("--cells", type=int, default=None, help="total cells (20,000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-s", type=float, default=None, help="seconds per side")
    parser.add_argument("--data", type=Path, default=None, help="synthetic tree cache")
    args = parser.parse_args()
    cells = args.cells or (3_000 if args.quick else 20_000)
    min_s = args.min_s if args.min_s is not None else (5.0 if args.quick else 30.0)
    data = args.data or Path(tempfile.gettempdir()) / f"cytostore-bench-synth-{cells}"
    missing = [n for n in ("lmu", "mll_helmholtz", "bm") if not (data / n).is_dir()]
    if missing:  # synthesize renames each dataset into place when it is complete
        print(f"writing {cells} synthetic cells to {data} ...", file=sys.stderr)
        synthesize(
            data, cells // 3, seed=0, datasets=missing, workers=os.cpu_count() or 1
        )
    files = _files(data)
    for p in files:  # warm the page cache for both sides
        p.read_bytes()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    base_s: list[float] = []
    subj_s: list[float] = []
    base_cpu: list[float] = []
    subj_cpu: list[float] = []
    last_store: Path | None = None
    try:
        while len(base_s) < 2 or min(sum(base_s), sum(subj_s)) < min_s:
            c0 = _cpu_s()
            base_s.append(_baseline(files))
            c1 = _cpu_s()
            elapsed, store = _subject(data, args.workers, scratch)
            subj_s.append(elapsed)
            base_cpu.append(c1 - c0)
            subj_cpu.append(_cpu_s() - c1)
            if last_store is not None:
                shutil.rmtree(last_store, ignore_errors=True)
            last_store = store
            if len(base_s) >= 10:
                break
        assert last_store is not None
        # Check the subject's result after timing: every file catalogued, none skipped.
        st = Store.open(last_store)
        n_cells = st.sql("SELECT count(*) FROM cells").rows[0][0]
        n_skipped = st.sql("SELECT count(*) FROM skipped").rows[0][0]
        n_hashed = st.sql("SELECT count(DISTINCT sha256) FROM cells").rows[0][0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ok = n_cells == len(files) and n_skipped == 0 and n_hashed > 0.99 * len(files)
    n = len(files)
    b_best, s_best = min(base_s), min(subj_s)
    ratio = b_best / s_best
    ratio_median = statistics.median(base_s) / statistics.median(subj_s)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("## Ingest throughput vs a single-process Pillow decode loop\n")
    print(
        f"{n:,} synthetic cells (lmu RGBA TIFF 400 px, mll_helmholtz TIFF 144 px, bm "
        f"JPEG 250 px); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (load average {load:.1f} at the end), Python "
        f"{platform.python_version()}, Pillow {PIL.__version__}, DuckDB "
        f"{duckdb.__version__}; {len(base_s)} alternating passes each.\n"
    )
    print("| side | what it does | best s | median s | files/s (best) | CPU ms/file |")
    print("|---|---|---:|---:|---:|---:|")
    print(
        f"| baseline | `Image.open(p).load()` loop, 1 process | {b_best:.2f} | "
        f"{statistics.median(base_s):.2f} | {n / b_best:,.0f} | "
        f"{1000 * statistics.median(base_cpu) / n:.2f} |"
    )
    print(
        f"| subject | `ingest(store, tree, workers={args.workers})`: detect, read, "
        f"sha256, decode (plain TIFFs: strip check), catalogue | {s_best:.2f} | "
        f"{statistics.median(subj_s):.2f} | {n / s_best:,.0f} | "
        f"{1000 * statistics.median(subj_cpu) / n:.2f} |"
    )
    verdict = "meets" if ratio >= 1.3 else "misses"
    cpu_ratio = statistics.median(subj_cpu) / statistics.median(base_cpu)
    print(
        f"\nRatio (baseline time / ingest time): **{ratio:.2f}x** best-of, "
        f"{ratio_median:.2f}x median; {verdict} the 1.3x target with {args.workers} "
        f"workers. Result check: {n_cells:,} cells catalogued, {n_skipped} skipped "
        f"({'ok' if ok else 'WRONG'}). CPU time (user + system, all processes, "
        f"median) of ingest is {cpu_ratio:.2f}x the baseline's: the wall-clock ratio "
        f"can exceed 1 only where {args.workers} cores are free to run the workers."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
