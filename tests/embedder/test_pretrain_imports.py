"""``pretrain`` loads Lightning and lightly only when it runs (embed starts faster)."""

from __future__ import annotations

import subprocess
import sys


def test_pretrain_methods__are_the_lightly_methods_and_none() -> None:
    from cytostore.embedder.methods import METHODS
    from cytostore.embedder.pretrain import PRETRAIN_METHODS

    assert PRETRAIN_METHODS == (*METHODS, "none")


def test_embedder_import__does_not_load_lightning_or_lightly() -> None:
    code = (
        "import sys, cytostore.embedder, cytostore.embedder.embed; "
        "print(sorted(m for m in ('pytorch_lightning', 'lightly') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
