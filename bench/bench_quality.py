"""How good is the default SSL recipe on real cells after a CPU time budget?

Ingests ``../shared/data/pbc_sample`` (8 classes x 400 real blood cells) as a
``folder`` dataset, pretrains with ``cytostore.embedder.pretrain`` (defaults, no
labels used for training; the kNN monitor holds out some labelled cells) for
``--minutes``, then probes the backbone features of all 3,200 cells:
linear probe (standardised features, LogisticRegression, 5-fold stratified,
balanced accuracy) and a leave-one-out cosine kNN (k=20, balanced accuracy).
Baselines, probed identically: the random-init backbone of the same architecture
(``method="none"``) and raw 24x24 pixels.

Usage: ``python bench/bench_quality.py [--minutes 15] [--quick]``
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pbc_sample"


def _linear(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(
        cross_val_score(
            model, features, labels, cv=folds, scoring="balanced_accuracy"
        ).mean()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--minutes", type=float, default=15.0, help="pretraining budget"
    )
    parser.add_argument("--quick", action="store_true", help="a 3-minute budget")
    parser.add_argument("--store", type=Path, default=None, help="keep the store here")
    parser.add_argument("--method", default=None, help="override the default method")
    parser.add_argument(
        "--backbone", default=None, help="override the default backbone"
    )
    parser.add_argument(
        "--crop-px", type=int, default=None, help="override the input size"
    )
    args = parser.parse_args()
    if not DATA.is_dir():
        print(
            f"## Quality of SSL pretraining on real cells\n\nskipped: {DATA} is absent"
        )
        return 0
    minutes = 3.0 if args.quick else args.minutes

    import torch

    import cytostore
    from cytostore.data import ingest
    from cytostore.embedder import Encoder
    from cytostore.embedder.monitor import knn_accuracy
    from cytostore.embedder.pretrain import (
        DEFAULT_BACKBONE,
        DEFAULT_CROP_PX,
        DEFAULT_METHOD,
        pretrain,
    )
    from cytostore.store import Store

    method = args.method or DEFAULT_METHOD
    backbone = args.backbone or DEFAULT_BACKBONE
    crop_px = args.crop_px or DEFAULT_CROP_PX
    root = args.store or Path(tempfile.mkdtemp()) / "store"
    store = Store.open(root, create=True)
    if store.info()["cells"] == 0:
        ingest(store, DATA, layout="folder", dataset_name="pbc", workers=2)
    ids = store.where_ids(None)
    labels = np.asarray(store.cell_meta(ids, ["label"]).column("label"))

    t0 = time.monotonic()
    card = pretrain(
        store,
        "ssl",
        method=method,
        backbone=backbone,
        crop_px=crop_px,
        max_minutes=minutes,
        overwrite=True,
    )
    call_s = time.monotonic() - t0
    pretrain(
        store,
        "random",
        method="none",
        backbone=backbone,
        crop_px=crop_px,
        overwrite=True,
    )

    rows = []
    for name in ("ssl", "random"):
        feats = Encoder.load(store, name, device="cpu").embed(ids)
        rows.append(
            (
                name,
                _linear(feats, labels),
                knn_accuracy(feats, labels, 20, balanced=True),
            )
        )
    from cytostore.embedder import CellCache, Preprocessing

    raw = CellCache.open(store, Preprocessing.for_input(crop_px)).rows(ids)
    small = torch.nn.functional.interpolate(
        torch.from_numpy(raw).permute(0, 3, 1, 2).float(), size=(24, 24), mode="area"
    )
    pix = small.reshape(len(ids), -1).numpy()
    rows.append(
        (
            "raw 24x24 pixels",
            _linear(pix, labels),
            knn_accuracy(pix, labels, 20, balanced=True),
        )
    )

    ssl_lin, ssl_knn = rows[0][1], rows[0][2]
    best_base = max(r[1] for r in rows[1:])
    history = (
        [round(v, 3) for v in card.knn_monitor["history"] if v is not None]
        if card.knn_monitor
        else "-"
    )
    version = getattr(cytostore, "__version__", "")
    print(
        "## Quality of SSL pretraining on real cells "
        "(pbc_sample, 3,200 cells, 8 classes)\n"
    )
    print(
        f"`pretrain(method={method!r}, backbone={backbone!r}, crop_px={crop_px}, "
        f"max_minutes={minutes:g})`: {card.epochs} epochs, {card.extra.get('steps')} "
        f"steps, {card.wall_s:.0f} s training ({call_s:.0f} s for the whole call "
        f"incl. cache); final loss {card.final_loss:.3f}; kNN monitor per epoch "
        f"{history}.\n"
    )
    print("| features | linear probe (bal. acc., 5-fold) | kNN k=20 (bal. acc., LOO) |")
    print("|---|---:|---:|")
    for name, lin, knn in rows:
        label = (
            f"SSL {method}/{backbone} {crop_px}px"
            if name == "ssl"
            else (f"random-init {backbone}" if name == "random" else name)
        )
        print(f"| {label} | {lin:.3f} | {knn:.3f} |")
    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs: wall-clock numbers are "
        f"noisy), torch threads {torch.get_num_threads()}; cytostore {version}, "
        f"torch {torch.__version__}.\n"
    )
    goal = ssl_lin >= 0.85 and ssl_knn >= 0.80
    print(
        f"Verdict: SSL linear {ssl_lin:.3f} vs best baseline {best_base:.3f} "
        f"({ssl_lin - best_base:+.3f}); kNN {ssl_knn:.3f}; goal (>= 0.85 linear, "
        f">= 0.80 kNN) {'reached' if goal else 'NOT reached'}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
