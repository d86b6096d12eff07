"""Fixtures of the embedder tests: a small store of synthetic cell images."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from embedder_helpers import CELL_DATASETS, draw_cell
from PIL import Image

from cytostore.store import Store


@pytest.fixture(scope="session")
def _cell_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cell_store_template")
    rng = np.random.default_rng(0)
    store = Store.create(base / "store")
    with store.transaction():
        for dataset, um, side, suffix, n in CELL_DATASETS:
            root = base / "images" / dataset
            root.mkdir(parents=True)
            rows = []
            for i in range(n):
                img = draw_cell(side, um or 0.2, rng, diameter_um=rng.uniform(8, 14))
                name = f"cell_{i}{suffix}"
                Image.fromarray(img).save(root / name)
                rows.append(
                    {
                        "dataset": dataset,
                        "path": name,
                        "label": "AB"[i % 2],
                        "um_per_px": um,
                        "width": side,
                        "height": side,
                    }
                )
            store.upsert_dataset(dataset, "folder", root, um)
            store.add_cells(rows)
    return base


@pytest.fixture
def cell_store(tmp_path: Path, _cell_store_template: Path) -> Store:
    """A store of 12 cells in 3 datasets (0.07 µm/px PNG, 0.17 TIFF, unknown PNG).

    Cell ids 1-5 are ``fine``, 6-10 ``coarse``, 11-12 ``unknown``; files live under
    ``tmp_path/images/<dataset>/`` (a fresh copy per test, free to modify); labels
    alternate ``A``/``B``.
    """
    shutil.copytree(_cell_store_template, tmp_path, dirs_exist_ok=True)
    store = Store.open(tmp_path / "store")
    with store.transaction():
        for dataset, um, *_ in CELL_DATASETS:
            store.upsert_dataset(dataset, "folder", tmp_path / "images" / dataset, um)
    return store


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids oversubscribing the shared CPU (much faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
