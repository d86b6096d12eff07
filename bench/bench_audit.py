"""Does ``cytostore audit`` find planted label errors on real cells?

On ``pbc_sample`` (3,200 blood cells, 8 classes; the store's SSL model ``ssl``, its
existing vectors, no retraining) labels are flipped: 5, 10 and 20 % of the cells,
uniformly (to a random other class) and towards each class's most-confused class
(from the confusion matrix of a clean out-of-fold probe), 5 seeds. Each method
ranks all cells; the top n (n = the number flipped) are its flags, scored by
precision and recall against the flipped cells (with n flags both are equal).

- ``audit``: what ``cytostore audit`` computes (``out_of_fold_probs`` +
  ``score_label_issues``: out-of-fold linear probe and the neighbours' vote, mixed,
  cleanlab self-confidence); its own cleanlab flags (``is_issue``) are reported too;
- ``neighbours``: the neighbours' vote alone (1 - vote share of the given label);
- ``in-sample``: the FiftyOne-style baseline: a linear probe fit on all (noisy)
  labels, cells it predicts wrongly first, by its confidence, then the rest by low
  probability of the given label;
- ``random``: a random order.

Target: audit precision >= 0.8 at 10 % uniform noise, and above the in-sample rule
at every level. Also times one end-to-end ``audit`` call (on a copy of the store)
against the in-sample rule.

Usage: ``python bench/bench_audit.py [--store DIR] [--model ssl] [--quick]``
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

TITLE = "## Label audit: planted label errors on real cells (pbc_sample)"
SHARED = Path("/tmp/shared-stores/pbc")
LEVELS = (0.05, 0.10, 0.20)
KINDS = ("uniform", "confused")
METHODS = ("audit", "neighbours", "in-sample", "random")


def _flip(y, rate, kind, confused, n_classes, rng):  # type: ignore[no-untyped-def]
    n_flip = int(round(rate * y.size))
    rows = rng.choice(y.size, n_flip, replace=False)
    noisy = y.copy()
    if kind == "uniform":
        shift = rng.integers(1, n_classes, n_flip)
        noisy[rows] = (y[rows] + shift) % n_classes
    else:
        noisy[rows] = confused[y[rows]]
    return noisy, rows


def _in_sample(X, y, seed):  # type: ignore[no-untyped-def]
    from cytostore.heads import LinearProbe

    P = LinearProbe(seed=seed).fit(X, y).predict_proba(X)
    pred = P.argmax(1)
    given = P[np.arange(y.size), y]
    return np.where(pred != y, 1.0 + P.max(1), 1.0 - given)


def _top_hits(score, truth, n):  # type: ignore[no-untyped-def]
    order = np.lexsort((np.arange(score.size), -score))[:n]
    hits = int(truth[order].sum())
    return hits / n, hits / int(truth.sum())


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

    from cytostore._knn import knn_vote
    from cytostore.curate import audit
    from cytostore.curate._common import groups_of, other_group_neighbors
    from cytostore.curate.audit import K_NEIGHBORS, out_of_fold_probs
    from cytostore.curate.audit import score_label_issues as score
    from cytostore.heads._data import load_cells
    from cytostore.store import Store

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seeds = range(2 if args.quick else 5)
    t_all = time.monotonic()
    store = Store.open(args.store)  # read only: audit() runs on a copy below
    cells = load_cells(store, args.model, None, ["label", "dataset", "patient_id"])
    X = np.asarray(cells.X, dtype=np.float32)
    names = np.asarray([str(v) for v in cells.meta["label"]])
    classes = np.unique(names)
    K = classes.size
    y = np.searchsorted(classes, names).astype(np.int64)
    groups = groups_of(cells)
    sim, nb_ids = other_group_neighbors(
        store, args.model, cells.ids, groups, K_NEIGHBORS
    )
    sorter = np.argsort(cells.ids)
    nb_rows = sorter[np.searchsorted(cells.ids, np.maximum(nb_ids, 0), sorter=sorter)]
    clean_p, _ = out_of_fold_probs(X, y, groups, seed=0)
    conf = np.zeros((K, K))
    np.add.at(conf, (y, clean_p.argmax(1)), 1)
    np.fill_diagonal(conf, -1)
    confused = conf.argmax(1)

    res: dict[tuple[str, float, str], list[tuple[float, float]]] = {}
    issue_pr: dict[tuple[str, float], list[tuple[float, float]]] = {}
    t_audit = t_insample = 0.0
    for kind in KINDS:
        for rate in LEVELS:
            for seed in seeds:
                rng = np.random.default_rng(1000 * seed + int(rate * 100))
                noisy, flipped = _flip(y, rate, kind, confused, K, rng)
                truth = np.zeros(y.size, dtype=bool)
                truth[flipped] = True
                n = int(truth.sum())
                nb_lab = np.where(nb_ids >= 0, noisy[nb_rows], -1)
                t0 = time.monotonic()
                probs, _ = out_of_fold_probs(X, noisy, groups, seed=seed)
                s = score(noisy, probs, nb_lab, sim)
                t_audit += time.monotonic() - t0
                votes = knn_vote(sim, np.maximum(nb_lab, 0), K)
                t0 = time.monotonic()
                ins = _in_sample(X, noisy, seed)
                t_insample += time.monotonic() - t0
                scores = {
                    "audit": s.score,
                    "neighbours": 1.0 - votes[np.arange(y.size), noisy],
                    "in-sample": ins,
                    "random": rng.random(y.size),
                }
                for m, sc in scores.items():
                    res.setdefault((kind, rate, m), []).append(_top_hits(sc, truth, n))
                f = s.is_issue
                issue_pr.setdefault((kind, rate), []).append(
                    (
                        float(truth[f].mean()) if f.any() else 0.0,
                        float(f[truth].mean()),
                    )
                )

    tmp = Path(tempfile.mkdtemp()) / "store"
    shutil.copytree(args.store, tmp)
    t0 = time.monotonic()
    report = audit(tmp, args.model, "label", montage=tmp.parent / "audit.png")
    t_e2e = time.monotonic() - t0
    shutil.rmtree(tmp.parent, ignore_errors=True)

    print(TITLE + "\n")
    print(
        f"{y.size} cells, {K} classes, model `{args.model}` (stored vectors), "
        f"{report.split} 5-fold out-of-fold probe, k={K_NEIGHBORS} neighbours; "
        f"precision of the top-n flags (n = cells flipped; recall is the same "
        f"number), mean ± sd over {len(seeds)} seeds. Most-confused class per "
        "class: "
        + ", ".join(f"{classes[i]}→{classes[j]}" for i, j in enumerate(confused))
        + ".\n"
    )
    print("| noise | level | " + " | ".join(METHODS) + " | audit is_issue P / R |")
    print("|---|---:|" + "---:|" * (len(METHODS) + 1))
    verdict_ok = True
    p10 = 0.0
    for kind in KINDS:
        for rate in LEVELS:
            row = []
            for m in METHODS:
                v = np.asarray([p for p, _ in res[(kind, rate, m)]])
                row.append(f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0:.3f}")
            a = np.mean([p for p, _ in res[(kind, rate, "audit")]])
            b = np.mean([p for p, _ in res[(kind, rate, "in-sample")]])
            verdict_ok &= bool(a > b)
            if kind == "uniform" and rate == 0.10:
                p10 = float(a)
            ip = np.asarray(issue_pr[(kind, rate)])
            print(
                f"| {kind} | {rate:.0%} | "
                + " | ".join(row)
                + f" | {ip[:, 0].mean():.2f} / {ip[:, 1].mean():.2f} |"
            )
    runs = len(KINDS) * len(LEVELS) * len(seeds)
    print(
        f"\nTime per run: audit scoring {t_audit / runs:.1f} s (out-of-fold probe, 5 "
        f"fits) vs the in-sample rule {t_insample / runs:.1f} s (1 fit): "
        f"{t_audit / max(t_insample, 1e-9):.1f}x. End to end `audit` on a copy of the "
        f"store (clean labels, incl. montage): {t_e2e:.1f} s, {report.n_issues} cells "
        f"flagged. Whole bench {time.monotonic() - t_all:.0f} s; load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}.\n"
    )
    met1 = p10 >= 0.8
    print(
        f"Verdict: audit precision at 10 % uniform noise {p10:.3f} (target >= 0.8: "
        f"{'met' if met1 else 'NOT met'}); above the in-sample rule at every level: "
        f"{'met' if verdict_ok else 'NOT met'}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
