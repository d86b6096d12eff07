"""search(image=...): a catalogued image uses its stored vector; unknown scale warns."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from embedder_helpers import draw_cell
from PIL import Image

from cytostore.embedder import embed, register_random_model, search
from cytostore.store import Store

_SCALE_WARNING = "give --um-per-px"


@pytest.fixture
def hashed(cell_store: Store, tmp_path: Path) -> tuple[Store, list[int]]:
    """The cell store plus a dataset ``hashed`` of 4 cells whose sha256 is recorded
    (the 4th a byte copy of the 3rd), embedded with a seeded random ``tiny``."""
    rng = np.random.default_rng(5)
    root = tmp_path / "images" / "hashed"
    root.mkdir(parents=True)
    rows = []
    for i in range(3):
        Image.fromarray(draw_cell(120, 0.1, rng, diameter_um=11)).save(
            root / f"h{i}.png"
        )
    shutil.copyfile(root / "h2.png", root / "h3.png")
    for i in range(4):
        sha = hashlib.sha256((root / f"h{i}.png").read_bytes()).hexdigest()
        rows.append(
            {"dataset": "hashed", "path": f"h{i}.png", "um_per_px": 0.1, "sha256": sha}
        )
    cell_store.upsert_dataset("hashed", "folder", root, 0.1)
    cell_store.add_cells(rows)
    ids = [
        r[0]
        for r in cell_store.sql(
            "SELECT cell_id FROM cells WHERE dataset = 'hashed' ORDER BY cell_id"
        ).rows
    ]
    register_random_model(cell_store, "rnd", backbone="tiny", crop_px=32, seed=0)
    embed(cell_store, "rnd", device="cpu")
    return cell_store, ids


def test_search__a_catalogued_image_uses_its_cells_stored_vector(
    hashed: tuple[Store, list[int]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, ids = hashed
    query = tmp_path / "elsewhere" / "renamed.png"  # outside every root, no µm/px
    query.parent.mkdir()
    shutil.copyfile(store.cell_paths([ids[0]])[0], query)
    with caplog.at_level(logging.WARNING):
        got = search(store, image=query, k=5)
    want = search(store, cell=ids[0], k=5)
    assert got.query["matched_cell"] == ids[0]
    assert got.rows == want.rows  # the cell's own search, itself left out
    assert ids[0] not in [r[0] for r in got.rows]
    assert _SCALE_WARNING not in caplog.text


def test_search__a_catalogued_image_finds_itself_first_with_include_self(
    hashed: tuple[Store, list[int]],
) -> None:
    store, ids = hashed
    path = store.cell_paths([ids[1]])[0]
    got = search(store, image=path, k=1, include_self=True, um_per_px=5.0)
    assert got.rows[0][0] == ids[1]  # a wrong --um-per-px cannot spoil it
    assert got.rows[0][2] == pytest.approx(1.0, abs=1e-5)


def test_search__a_catalogued_image_leaves_out_every_cell_of_its_sha256(
    hashed: tuple[Store, list[int]],
) -> None:
    store, ids = hashed
    got = search(store, image=store.cell_paths([ids[3]])[0], k=20)
    assert got.query["matched_cell"] == ids[2]  # the lowest id of the two copies
    hits = [r[0] for r in got.rows]
    assert ids[2] not in hits and ids[3] not in hits
    both = search(store, image=store.cell_paths([ids[3]])[0], k=2, include_self=True)
    assert sorted(r[0] for r in both.rows) == [ids[2], ids[3]]


def test_search__an_unknown_scale_image_warns_and_says_how_to_fix_it(
    hashed: tuple[Store, list[int]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = hashed
    query = tmp_path / "new.png"
    rng = np.random.default_rng(9)
    Image.fromarray(draw_cell(100, 0.1, rng)).save(query)
    with caplog.at_level(logging.WARNING, logger="cytostore"):
        got = search(store, image=query, k=3)
    assert (got.query["matched_cell"], got.query["um_per_px"]) == (None, None)
    assert _SCALE_WARNING in caplog.text and "new.png" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cytostore"):
        given = search(store, image=query, k=3, um_per_px=0.1)
    assert given.query["um_per_px_from"] == "given"
    assert _SCALE_WARNING not in caplog.text


def test_search__an_image_in_a_datasets_folder_takes_its_um_per_px(
    hashed: tuple[Store, list[int]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = hashed
    query = tmp_path / "images" / "fine" / "uncatalogued.png"
    rng = np.random.default_rng(11)
    Image.fromarray(draw_cell(300, 0.07, rng, diameter_um=12)).save(query)
    with caplog.at_level(logging.WARNING, logger="cytostore"):
        got = search(store, image=query, k=4)
    assert got.query["um_per_px"] == pytest.approx(0.07)
    assert got.query["um_per_px_from"] == "dataset fine"
    assert _SCALE_WARNING not in caplog.text
    assert got.rows == search(store, image=query, k=4, um_per_px=0.07).rows
    assert got.rows != search(store, image=query, k=4, um_per_px=0.5).rows
