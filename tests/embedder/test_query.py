from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cytostore.embedder import embed, register_random_model, search
from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    UnknownEmbeddingSetError,
)
from cytostore.store import Store


@pytest.fixture
def searchable(cell_store: Store) -> Store:
    register_random_model(cell_store, "rnd", backbone="tiny", crop_px=32, seed=0)
    embed(cell_store, "rnd", device="cpu")
    return cell_store


def test_search__by_cell_rows_match_store_search(searchable: Store) -> None:
    result = search(searchable, cell=3, k=4)
    dist, ids = searchable.search(3, k=4)
    assert [r[0] for r in result.rows] == ids[0].tolist()
    assert [r[1] for r in result.rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([r[2] for r in result.rows], dist[0], rtol=1e-6)
    meta = searchable.cell_meta(ids[0], ["dataset", "label", "path"]).rows
    assert [(d["dataset"], d["label"], d["path"]) for d in result.dicts()] == meta
    assert 3 not in [r[0] for r in result.rows]
    assert search(searchable, cell=3, k=1, include_self=True).rows[0][0] == 3


def test_search__by_image_equals_its_cell(searchable: Store) -> None:
    path = searchable.cell_paths([2])[0]
    um = searchable.cell_meta([2], ["um_per_px"]).rows[0][0]
    result = search(searchable, image=path, um_per_px=um, k=1)
    assert result.rows[0][0] == 2 and result.rows[0][2] == pytest.approx(1.0, abs=1e-4)
    assert result.query == {
        "image": str(path),
        "matched_cell": None,
        "um_per_px": um,
        "um_per_px_from": "given",
    }


def test_search__where_and_montage(searchable: Store, tmp_path: Path) -> None:
    out = tmp_path / "m.png"
    result = search(searchable, cell=1, k=3, where="dataset = 'coarse'", montage=out)
    assert {r[3] for r in result.rows} == {"coarse"} and len(result.rows) == 3
    assert result.montage == out
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_search__bad_input(searchable: Store, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(InvalidArgumentError, match="no image file"):
        search(searchable, image=tmp_path / "missing.png")
    with pytest.raises(InvalidArgumentError, match="not an image"):
        search(searchable, image=not_image)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        search(searchable)
    with pytest.raises(UnknownEmbeddingSetError, match="nope"):
        search(searchable, cell=1, model="nope")
    with pytest.raises(EmptySelectionError):
        search(searchable, cell=1, where="label = 'Z'")
