"""What do cytostore's own probes report on real cells, SSL model vs random init?

Builds (or reuses, ``--store``) a store of ``../shared/data/pbc_sample`` (8 classes x
400 real blood cells) with an SSL model ``ssl`` (default recipe, ``--minutes`` of
pretraining) and the random-init baseline ``random`` of the same architecture, embeds
both, then runs ``cytostore.heads.probe`` (linear, kNN, MLP; 5-fold stratified) on
each and prints the product's report: the same numbers ``cytostore probe`` shows.
The baseline is the random-init model, probed identically in the same run.

Usage: ``python bench/bench_pbc_probe.py [--store DIR] [--minutes 5] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pbc_sample"
TITLE = "## cytostore probe reports on real cells (pbc_sample, 3,200 cells, 8 classes)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, default=None, help="reuse this store")
    parser.add_argument("--minutes", type=float, default=5.0, help="pretraining")
    parser.add_argument("--quick", action="store_true", help="1 minute, 3 folds")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"{TITLE}\n\nskipped: {DATA} is absent")
        return 0
    import torch

    from cytostore.data import ingest
    from cytostore.embedder import embed, list_models, pretrain
    from cytostore.heads import probe
    from cytostore.store import Store

    minutes = 1.0 if args.quick else args.minutes
    folds = 3 if args.quick else 5
    root = args.store or Path(tempfile.mkdtemp()) / "store"
    store = Store.open(root, create=True)
    if store.info()["cells"] == 0:
        ingest(store, DATA, layout="folder", dataset_name="pbc", workers=2)
    have = {m["name"] for m in list_models(store)}
    trained = ""
    if "ssl" not in have:
        t0 = time.monotonic()
        pretrain(store, "ssl", max_minutes=minutes)
        trained = f"pretrained here for {time.monotonic() - t0:.0f} s"
        have.add("ssl")
    if "random" not in have:
        pretrain(store, "random", method="none")
    cards = {m["name"]: m for m in list_models(store)}
    sets = {es.model for es in store.embedding_sets()}
    for name in ("ssl", "random"):
        if name not in sets:
            embed(store, name, device="cpu")

    rows = []
    for name in ("ssl", "random"):
        for kind in ("linear", "knn", "mlp"):
            t0 = time.monotonic()
            report = probe(
                store,
                name,
                "label",
                kind=kind,
                folds=folds,
                split="stratified",
                name=f"bench-{name}-{kind}",
            )
            rows.append((name, kind, report, time.monotonic() - t0))

    print(TITLE + "\n")
    ssl = cards["ssl"]["card"]
    print(
        f"SSL model: {ssl['method']}/{ssl['backbone']} at "
        f"{ssl['preprocessing']['crop_px']} px, {ssl.get('epochs')} epochs, "
        f"{ssl.get('wall_s') or 0:.0f} s of training "
        f"({trained or 'reused from the quality benchmark'}); baseline: random-init "
        f"{cards['random']['backbone']}. `cytostore probe --label label --folds "
        f"{folds} --split stratified`, mean ± sd over folds.\n"
    )
    print("| model | kind | accuracy | balanced accuracy | macro F1 | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for name, kind, r, secs in rows:
        print(
            f"| {name} | {kind} | {r['accuracy']:.3f} | "
            f"{r['balanced_accuracy']:.3f} ± {r['balanced_accuracy_sd'] or 0:.3f} | "
            f"{r['macro_f1']:.3f} | {secs:.1f} |"
        )
    lin = {n: r for n, k, r, _ in rows if k == "linear"}
    print(
        "\nPer-class F1 of the SSL linear probe: "
        + ", ".join(f"{c} {v['f1']:.2f}" for c, v in lin["ssl"]["per_class"].items())
        + ".\n"
    )
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}, threads {torch.get_num_threads()}.\n"
    )
    gain = lin["ssl"]["balanced_accuracy"] - lin["random"]["balanced_accuracy"]
    print(
        f"Verdict: the SSL model's linear probe is {gain:+.3f} balanced accuracy "
        f"over the random-init baseline ({lin['ssl']['balanced_accuracy']:.3f} vs "
        f"{lin['random']['balanced_accuracy']:.3f})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
