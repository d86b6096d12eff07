"""Fixtures of the store tests: stores with cells and random vectors (no torch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.store import Store


@pytest.fixture(scope="session")
def _vec_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vec_template") / "store"
    store = Store.create(root)
    ids = add_fake_cells(store, 300)
    es = store.create_embedding_set("m", 16)
    with store.vector_writer(es) as w:
        for lo in range(0, 300, 100):
            w.append(ids[lo : lo + 100], random_vectors(300, 16)[lo : lo + 100])
    store.build_index("m")
    return root


@pytest.fixture
def vec_store(tmp_path: Path, _vec_store_template: Path) -> Store:
    """A store with 300 cells and a 16-d cosine Flat set ``m`` holding all of them.

    Vectors are ``random_vectors(300, 16)`` (seed 0), appended in three batches.
    """
    root = tmp_path / "store"
    shutil.copytree(_vec_store_template, root)
    return Store.open(root)


@pytest.fixture(scope="session")
def fake_cells_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store folder with 2,000 fake cells and no vectors (copy it before writing)."""
    root = tmp_path_factory.mktemp("cells_template") / "store"
    add_fake_cells(Store.create(root), 2000, seed=1)
    return root


@pytest.fixture
def cells_store(tmp_path: Path, fake_cells_template: Path) -> Store:
    """A fresh copy of the 2,000-cell store without vectors."""
    root = tmp_path / "store"
    shutil.copytree(fake_cells_template, root)
    return Store.open(root)
