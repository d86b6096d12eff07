"""Fixtures of the heads tests: planted-signal data and small embedded stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from heads_helpers import build_mil_store, build_store

from cytostore.store import Store


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest (and deterministically) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def probe_store(tmp_path: Path) -> Store:
    return build_store(tmp_path / "store")


@pytest.fixture
def mil_store(tmp_path: Path) -> tuple[Store, dict[str, np.ndarray]]:
    return build_mil_store(tmp_path / "mil")
