"""Does choosing what to annotate with ``cytostore select`` beat choosing at random?

The label-budget curve on real cells (``pbc_sample``: 3,200 blood cells, 8 classes;
the store's SSL model ``ssl``, its existing vectors, no retraining): a fixed
stratified quarter is held out; from the other three quarters each strategy picks N
= 40, 80, 160, 320 cells, a linear probe (``cytostore.heads.LinearProbe``) is fit on
their true labels and scored by balanced accuracy on the held-out part. Strategies
are the functions ``select`` runs (``k_center_greedy``, ``typiclust``,
``smallest_margin``); ``uncertainty`` is one round: N/2 random cells train a probe,
whose smallest margins pick the other N/2. Baseline: N random cells. 5 seeds
(seeded picks, k-means and probe), mean ± sd. Target: at N = 80 the best strategy
beats random by >= 5 points. Also times one end-to-end ``select`` call on a copy of
the store against loading the vectors alone.

Usage: ``python bench/bench_select.py [--store DIR] [--model ssl] [--quick]``
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

import numpy as np

TITLE = "## Selection for annotation: label-budget curve on real cells (pbc_sample)"
SHARED = Path("/tmp/shared-stores/pbc")
BUDGETS = (40, 80, 160, 320)
STRATEGIES = ("random", "diversity", "typicality", "uncertainty")


def _probe_score(X, y, train, test, classes, seed):  # type: ignore[no-untyped-def]
    from sklearn.metrics import balanced_accuracy_score

    from cytostore.heads import LinearProbe

    head = LinearProbe(seed=seed).fit(X[train], y[train])
    pred = head.predict(X[test])
    return float(balanced_accuracy_score(y[test], pred)) * 100.0


def _pick(strategy, X, y, pool, n, seed):  # type: ignore[no-untyped-def]
    from cytostore.curate.select import k_center_greedy, smallest_margin, typiclust
    from cytostore.heads import LinearProbe

    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.choice(pool, n, replace=False)
    if strategy == "diversity":
        return pool[k_center_greedy(X[pool], n, seed=seed)[0]]
    if strategy == "typicality":
        return pool[typiclust(X[pool], n, seed=seed)[0]]
    first = rng.choice(pool, n // 2, replace=False)
    rest = np.setdiff1d(pool, first)
    if np.unique(y[first]).size < 2:
        return np.r_[first, rng.choice(rest, n - n // 2, replace=False)]
    head = LinearProbe(seed=seed).fit(X[first], y[first])
    rows, _ = smallest_margin(head.predict_proba(X[rest]), n - n // 2)
    return np.r_[first, rest[rows]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, default=SHARED, help="store to read")
    parser.add_argument("--model", default="ssl")
    parser.add_argument("--quick", action="store_true", help="2 seeds")
    args = parser.parse_args()
    if not (args.store / "catalog.duckdb").is_file():
        print(f"{TITLE}\n\nskipped: no store at {args.store}")
        return 0
    import torch
    from sklearn.model_selection import train_test_split

    from cytostore.curate import select
    from cytostore.heads._data import load_cells
    from cytostore.store import Store

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seeds = range(2 if args.quick else 5)
    t_all = time.monotonic()
    store = Store.open(args.store)  # read only: the bench writes to a copy below
    cells = load_cells(store, args.model, None, ["label"])
    X = np.asarray(cells.X, dtype=np.float32)
    y = np.asarray([str(v) for v in cells.meta["label"]])
    classes = np.unique(y)
    rows = np.arange(y.size)
    pool, test = train_test_split(rows, test_size=0.25, stratify=y, random_state=0)
    pool = np.sort(pool)
    results: dict[tuple[str, int], list[float]] = {}
    for seed in seeds:
        for n in BUDGETS:
            for strategy in STRATEGIES:
                chosen = _pick(strategy, X, y, pool, n, seed)
                if np.unique(y[chosen]).size < 2:
                    score = 100.0 / classes.size
                else:
                    score = _probe_score(X, y, chosen, test, classes, seed)
                results.setdefault((strategy, n), []).append(score)

    # End to end: select() on a copy of the store vs reading the vectors alone.
    tmp = Path(tempfile.mkdtemp()) / "store"
    shutil.copytree(args.store, tmp)
    t0 = time.monotonic()
    Store.open(tmp).vectors(args.model)
    base_s = time.monotonic() - t0
    timing = {}
    for strategy in ("diversity", "typicality"):
        t0 = time.monotonic()
        select(tmp, args.model, 80, strategy, csv=tmp.parent / f"{strategy}.csv")
        timing[strategy] = time.monotonic() - t0
    shutil.rmtree(tmp.parent, ignore_errors=True)

    print(TITLE + "\n")
    print(
        f"{y.size} cells ({classes.size} classes), model `{args.model}` (its stored "
        f"vectors); held out: {test.size} cells (stratified, fixed); pool: "
        f"{pool.size}. Linear-probe balanced accuracy (%) on the held-out part after "
        f"N cells chosen by each strategy, mean ± sd over {len(seeds)} seeds.\n"
    )
    print("| strategy | " + " | ".join(f"N={n}" for n in BUDGETS) + " |")
    print("|---|" + "---:|" * len(BUDGETS))
    for strategy in STRATEGIES:
        cells_txt = []
        for n in BUDGETS:
            v = np.asarray(results[(strategy, n)])
            cells_txt.append(
                f"{v.mean():.1f} ± {v.std(ddof=1) if v.size > 1 else 0:.1f}"
            )
        print(f"| {strategy} | " + " | ".join(cells_txt) + " |")
    print()
    rand80 = float(np.mean(results[("random", 80)]))
    gains = {
        s: float(np.mean(results[(s, 80)])) - rand80
        for s in STRATEGIES
        if s != "random"
    }
    best = max(gains, key=lambda s: gains[s])
    for n in BUDGETS:
        r = float(np.mean(results[("random", n)]))
        print(
            f"- N={n}: gain over random "
            + ", ".join(
                f"{s} {float(np.mean(results[(s, n)])) - r:+.1f}"
                for s in STRATEGIES
                if s != "random"
            )
        )
    print(
        f"\nEnd to end (`select`, N=80, copy of the store): diversity "
        f"{timing['diversity']:.2f} s, typicality {timing['typicality']:.2f} s; "
        f"reading the vectors alone {base_s:.3f} s (ratios "
        f"{timing['diversity'] / max(base_s, 1e-9):.0f}x, "
        f"{timing['typicality'] / max(base_s, 1e-9):.0f}x). Whole bench "
        f"{time.monotonic() - t_all:.0f} s; load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}.\n"
    )
    met = gains[best] >= 5.0
    print(
        f"Verdict: at N=80 the best strategy ({best}) is {gains[best]:+.1f} points "
        f"over random ({rand80:.1f}): target (>= +5) "
        f"{'met' if met else 'NOT met'}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
