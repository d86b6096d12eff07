"""Fixtures of the pixel-explanation tests: a small embedded store with saved heads."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest (and deterministically) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def explain_store(
    embedded_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """:func:`embedded_store` plus heads: ``lin``, ``mlp``, ``knn`` on the bm labels
    and ``mil`` on the MLL subtypes (all on ``random-tiny``). Read only."""
    from cytostore.heads.mil import mil
    from cytostore.heads.probe import probe

    root = Path(shutil.copytree(embedded_store, tmp_path_factory.mktemp("px") / "s"))
    common = {"where": "dataset = 'bm'", "min_count": 3, "split": "stratified"}
    probe(root, "random-tiny", "label", name="lin", **common)
    probe(root, "random-tiny", "label", name="mlp", kind="mlp", **common)
    probe(root, "random-tiny", "label", name="knn", kind="knn", **common)
    mil(root, "random-tiny", folds=2, max_epochs=10, n_boot=10, name="mil")
    return root
