"""Helpers of the store tests: fake cells and random vectors (no torch)."""

from __future__ import annotations

import numpy as np

from cytostore.store import Store

LABELS = ("BAS", "EOS", "LYT", "MON")


def add_fake_cells(store: Store, n: int, seed: int = 0) -> np.ndarray:
    """Catalogue ``n`` fake cells in two datasets with four labels; return their ids."""
    rng = np.random.default_rng(seed)
    start = int(store.sql("SELECT count(*) FROM cells").rows[0][0])
    rows = [
        {
            "dataset": "lmu" if i % 2 == 0 else "bm",
            "path": f"cells/{i:06d}.tif",
            "label": LABELS[int(rng.integers(len(LABELS)))],
            "patient_id": f"P{i % 7}",
        }
        for i in range(start, start + n)
    ]
    return store.add_cells(rows)


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
