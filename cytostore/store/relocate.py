"""Point a dataset at the new folder of its images (a store copied to another machine).

Cell paths are relative to their dataset's ``root``; a store moved or copied with
its images needs only that one value changed. :func:`relocate` first checks a seeded
random sample of the dataset's cells: each file must exist under the new root (inside
it) with the sha256 recorded at ingest. Only then is ``datasets.root`` updated, in one
transaction; a refusal changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cytostore.errors import (
    InvalidArgumentError,
    RelocationRefusedError,
    StoreCorruptError,
    UnknownDatasetError,
)
from cytostore.store.checksums import sha256_file
from cytostore.store.paths import resolve_inside

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["relocate"]


def _check_cell(root: Path, rel: str, sha: str | None) -> str | None:
    """Why the cell's file under ``root`` does not match, or ``None``."""
    try:
        full = resolve_inside(root, rel, what="cell path")
    except StoreCorruptError:
        return "leads outside the new root"
    if not full.is_file():
        return "missing"
    if sha and sha256_file(full) != sha:
        return "different content (sha256)"
    return None


def relocate(
    store: Store,
    dataset: str,
    new_root: str | os.PathLike[str],
    sample: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Set a dataset's images folder to ``new_root`` after checking a sample of it.

    Args:
        store: The store.
        dataset: The dataset's name (see ``cytostore info``).
        new_root: The folder now holding the dataset's images, laid out as before
            (each cell's ``path`` is relative to it).
        sample: How many cells to check (all when the dataset has fewer).
        seed: Seed of the sample.

    Returns:
        ``dataset``, ``old_root``, ``new_root`` (absolute), ``checked`` (cells
        whose file was compared) and ``cells`` (in the dataset).

    Raises:
        UnknownDatasetError: If the dataset is not in the store.
        InvalidArgumentError: If ``new_root`` is not a folder or ``sample`` < 1.
        RelocationRefusedError: If a sampled file is missing, outside ``new_root``
            or has another sha256 than at ingest; nothing is changed.
    """
    if sample < 1:
        raise InvalidArgumentError(f"sample must be >= 1, got {sample}")
    root = Path(new_root).expanduser()
    if not root.is_dir():
        raise InvalidArgumentError(
            f"new root {str(root)!r} is not a folder: give the folder that now holds "
            f"the images of dataset {dataset!r}"
        )
    root = root.resolve()
    with store.connect(read_only=True) as con:
        found = con.execute(
            "SELECT root FROM datasets WHERE dataset = ?", [dataset]
        ).fetchall()
        if not found:
            names = [
                r[0] for r in con.execute("SELECT dataset FROM datasets").fetchall()
            ]
            raise UnknownDatasetError.for_name(
                "dataset", dataset, names, "see 'cytostore info STORE'"
            )
        cells = con.execute(
            "SELECT path, sha256 FROM cells WHERE dataset = ? ORDER BY cell_id",
            [dataset],
        ).fetchall()
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(cells), size=min(sample, len(cells)), replace=False)
    bad = [
        (cells[i][0], why)
        for i in sorted(picked.tolist())
        if (why := _check_cell(root, cells[i][0], cells[i][1])) is not None
    ]
    if bad:
        raise RelocationRefusedError(
            f"refused: {len(bad)} of {len(picked)} sampled cells of dataset "
            f"{dataset!r} do not match under {str(root)!r} (e.g. {bad[0][0]!r}: "
            f"{bad[0][1]}); give the folder the cell paths are relative to "
            "(nothing was changed)"
        )
    with store.transaction() as con:
        con.execute(
            "UPDATE datasets SET root = ? WHERE dataset = ?", [str(root), dataset]
        )
    return {
        "dataset": dataset,
        "old_root": found[0][0],
        "new_root": str(root),
        "checked": len(picked),
        "cells": len(cells),
    }
