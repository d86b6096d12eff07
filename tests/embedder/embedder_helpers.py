"""Helpers of the embedder tests: synthetic cell images and stores of them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from cytostore.store import Store

#: (dataset, um_per_px or None, image side px, file suffix, cells)
CELL_DATASETS = (
    ("fine", 0.07, 300, ".png", 5),
    ("coarse", 0.17, 144, ".tif", 5),
    ("unknown", None, 90, ".png", 2),
)


def draw_cell(
    side_px: int,
    um_per_px: float,
    rng: np.random.Generator,
    diameter_um: float = 10.0,
) -> npt.NDArray[np.uint8]:
    """A pale background with a dark disc (the cell) and a nucleus, uint8 RGB."""
    yy, xx = np.mgrid[:side_px, :side_px].astype(np.float64)
    c = (side_px - 1) / 2 + rng.uniform(-2, 2, size=2)
    r = diameter_um / um_per_px / 2
    d2 = (yy - c[0]) ** 2 + (xx - c[1]) ** 2
    img = np.empty((side_px, side_px, 3), dtype=np.float64)
    img[...] = rng.uniform(200, 230, size=3)
    img[d2 <= r**2] = rng.uniform(120, 180, size=3)
    img[d2 <= (0.5 * r) ** 2] = rng.uniform(40, 100, size=3)
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def add_cells(store: Store, dataset: str, n: int, seed: int) -> npt.NDArray[np.int64]:
    """Write ``n`` more cells of ``dataset`` and catalogue them; return their ids."""
    um, side, suffix = next(
        (u, s, x) for d, u, s, x, _ in CELL_DATASETS if d == dataset
    )
    root = store.dataset_roots()[dataset]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = f"extra_{seed}_{i}{suffix}"
        Image.fromarray(draw_cell(side, um or 0.2, rng)).save(root / name)
        rows.append({"dataset": dataset, "path": name, "um_per_px": um})
    return store.add_cells(rows)
