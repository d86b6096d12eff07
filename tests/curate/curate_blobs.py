"""Helpers of the curation tests: a store of Gaussian blobs (4 classes, 8 patients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cytostore.store import Store

CLASSES = ("BAS", "EOS", "LYT", "MON")
PER_CLASS = 40
N_PATIENTS = 8
DIM = 16
#: Cells (0-based rows) whose label is planted wrong: one of each class twice.
FLIPPED = (3, 47, 91, 125, 18, 60, 102, 150)


def blob_vectors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (vectors (160, 16), true class index (160,)): blobs around axis 0..3."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    centres = np.eye(len(CLASSES), DIM) * 3.0
    X = centres[y] + rng.normal(0.0, 0.45, (y.size, DIM))
    return X.astype(np.float32), y


def build_blob_store(root: Path, flipped: tuple[int, ...] = FLIPPED) -> Store:
    """Write the blob store: dataset ``d`` (8 x 8 PNGs), model/set ``m``.

    Cell ``i`` (id ``i + 1``) belongs to patient ``P{i % 8}``; the labels of
    ``flipped`` rows are moved to the next class; ``cell_type`` is set on every
    10th cell only (``--exclude-labelled cell_type``).
    """
    X, y = blob_vectors()
    images = root / "images"
    images.mkdir(parents=True)
    store = Store.create(root / "store")
    store.upsert_dataset("d", "folder", images, 0.1)
    store.upsert_patients("d", [{"patient_id": f"P{p}"} for p in range(N_PATIENTS)])
    labels = y.copy()
    labels[list(flipped)] = (labels[list(flipped)] + 1) % len(CLASSES)
    rows = []
    for i in range(y.size):
        shade = 40 + 50 * int(y[i])
        Image.new("RGB", (8, 8), (shade, 100, 200 - shade)).save(images / f"{i}.png")
        rows.append(
            {
                "dataset": "d",
                "path": f"{i}.png",
                "label": CLASSES[labels[i]],
                "patient_id": f"P{i % N_PATIENTS}",
                "cell_type": "x" if i % 10 == 0 else None,
            }
        )
    ids = store.add_cells(rows)
    es = store.create_embedding_set("m", DIM)
    with store.vector_writer(es) as w:
        w.append(ids, X)
    return store
