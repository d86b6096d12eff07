"""Shared fixtures: isolated environment, temporary stores, the real shared data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cytostore.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run slow tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slow test, run with --runslow")


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the user's home, hub caches or cytostore settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in list(os.environ):
        if key.startswith("CYTOSTORE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CYTOSTORE_BUSY_TIMEOUT_S", "5")


@pytest.fixture
def tmp_store(tmp_path: Path) -> Iterator[Store]:
    """A new empty store in a temporary folder."""
    yield Store.create(tmp_path / "store")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (real metadata and images); skips the test when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data not available: {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic ``lmu``, ``mll_helmholtz`` and ``bm`` layouts (120 cells each, seed 0).

    The folder holds ``lmu/``, ``mll_helmholtz/`` and ``bm/`` as written by
    :func:`cytostore.data.synthesize`; treat it as read-only (it is shared by the
    whole session).
    """
    from cytostore.data import synthesize

    out = tmp_path_factory.mktemp("synth") / "synth"
    synthesize(out, cells_per_dataset=120, patients_per_subtype=2, seed=0)
    return out


@pytest.fixture(scope="session")
def synthetic_store(
    synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A store folder holding the ingested :func:`synthetic_tree` (360 cells).

    Shared by the whole session: open it read-only (``Store.open(path).sql(...)``);
    tests that write use :func:`synthetic_store_copy`.
    """
    from cytostore.data import ingest

    path = tmp_path_factory.mktemp("synthetic_store") / "store"
    ingest(path, synthetic_tree, workers=1)
    return path


@pytest.fixture
def synthetic_store_copy(synthetic_store: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`synthetic_store`'s folder, free to write to."""
    import shutil

    return Path(shutil.copytree(synthetic_store, tmp_path / "store"))


@pytest.fixture(scope="session")
def embedded_store(
    synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """:func:`synthetic_store` plus a random tiny model ``random-tiny`` and its vectors.

    The model is ``register_random_model(store, "random-tiny", backbone="tiny",
    crop_px=32, seed=0)``; every cell is embedded into one Flat cosine set (float32).
    Shared by the whole session: read only; tests that write use
    :func:`embedded_store_copy`.
    """
    import shutil

    from cytostore.embedder import embed, register_random_model

    dest = tmp_path_factory.mktemp("embedded_store") / "store"
    path = Path(shutil.copytree(synthetic_store, dest))
    store = Store.open(path)
    register_random_model(store, "random-tiny", backbone="tiny", crop_px=32, seed=0)
    embed(store, "random-tiny", device="cpu")
    return path


@pytest.fixture
def embedded_store_copy(embedded_store: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`embedded_store`'s folder, free to write to."""
    import shutil

    return Path(shutil.copytree(embedded_store, tmp_path / "embedded_store"))
