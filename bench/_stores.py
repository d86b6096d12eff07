"""Synthetic stores the benchmarks share: cells in the catalog, random vector sets.

Made with one bulk SQL insert (no images): the store-side benchmarks measure the
catalog, vectors and indexes, not decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cytostore.store import Store


def store_with_cells(root: Path, n: int) -> Store:
    """A store whose catalog holds ``n`` cells: 20 labels (5% each), widths 64-70."""
    store = Store.create(root)
    with store.transaction() as con:
        con.execute(
            "INSERT INTO datasets VALUES ('bench', 'folder', '/', NULL, NULL, now())"
        )
        con.execute(
            "INSERT INTO cells (cell_id, dataset, path, label, width) "
            "SELECT i, 'bench', 'c' || i, 'L' || lpad((i % 20)::VARCHAR, 2, '0'), "
            "64 + i % 7 FROM range(1, ?) t(i)",
            [n + 1],
        )
    return store


def write_random_set(
    store: Store, name: str, n: int, dim: int, seed: int = 0, batch: int = 50_000
) -> None:
    """Give cells 1..n standard-normal float32 vectors in a set ``name`` of ``dim``."""
    es = store.create_embedding_set(name, dim)
    with store.vector_writer(es) as w:
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            rng = np.random.default_rng((seed, lo))
            x = rng.standard_normal((hi - lo, dim), dtype=np.float32)
            w.append(np.arange(lo + 1, hi + 1, dtype=np.int64), x)
