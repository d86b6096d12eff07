"""relocate: a dataset moved with its images, checked by sha256 before the switch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cytostore.errors import RelocationRefusedError, UnknownDatasetError
from cytostore.store import Store
from cytostore.store.relocate import relocate
from cytostore.store.verify import verify


def _root(store: Store, dataset: str) -> str:
    return str(
        store.sql("SELECT root FROM datasets WHERE dataset = ?", [dataset]).rows[0][0]
    )


def test_relocate__copied_folder_is_accepted(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    old = _root(store, "lmu")
    new = Path(shutil.copytree(old, tmp_path / "moved"))
    report = relocate(store, "lmu", new, sample=10, seed=1)
    assert report == {
        "dataset": "lmu",
        "old_root": old,
        "new_root": str(new.resolve()),
        "checked": 10,
        "cells": 120,
    }
    assert _root(store, "lmu") == str(new.resolve())
    assert verify(store, images=True).ok


def test_relocate__wrong_folder_is_refused_and_nothing_changes(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    old = _root(store, "bm")
    wrong = Path(shutil.copytree(_root(store, "lmu"), tmp_path / "wrong"))
    with pytest.raises(
        RelocationRefusedError, match=r"refused: 20 of 20 sampled cells of dataset 'bm'"
    ):
        relocate(store, "bm", wrong)
    assert _root(store, "bm") == old


def test_relocate__changed_file_is_refused(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    new = Path(shutil.copytree(_root(store, "bm"), tmp_path / "bm"))
    paths = [
        r[0] for r in store.sql("SELECT path FROM cells WHERE dataset = 'bm'").rows
    ]
    for rel in paths:
        (new / rel).write_bytes((new / rel).read_bytes() + b"x")
    with pytest.raises(RelocationRefusedError, match="different content"):
        relocate(store, "bm", new, sample=5)


def test_relocate__unknown_dataset_and_missing_folder(
    tmp_store: Store, tmp_path: Path
) -> None:
    with pytest.raises(UnknownDatasetError, match="no dataset 'x'"):
        relocate(tmp_store, "x", tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        relocate(tmp_store, "x", tmp_path / "absent")
