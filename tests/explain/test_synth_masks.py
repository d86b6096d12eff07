"""The synthetic generator's structure masks: same images, masks where it drew."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cytostore.data import synthesize
from cytostore.data._draw import MASK_BITS, render_cell, render_cell_masks
from cytostore.data._morphs import MORPHS, STAINS
from cytostore.data.synth import MASKS_DIR, structure_mask


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and MASKS_DIR not in p.parts
    }


def test_synthesize__masks_leave_the_images_unchanged(tmp_path: Path) -> None:
    plain = synthesize(tmp_path / "a", 40, 2, seed=0, datasets=["bm", "mll_helmholtz"])
    masked = synthesize(
        tmp_path / "b", 40, 2, seed=0, datasets=["bm", "mll_helmholtz"], masks=True
    )
    assert plain.to_dict()["n_cells"] == masked.to_dict()["n_cells"]
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert not (tmp_path / "a" / MASKS_DIR).exists()
    images = [p for p in (tmp_path / "b").rglob("*") if p.suffix in (".jpg", ".tif")]
    assert len(images) == 80
    for p in images:
        mask = structure_mask(p)
        assert mask is not None
        from PIL import Image

        assert mask.shape == Image.open(p).size[::-1]
        cell = (mask & MASK_BITS["cell"]) > 0
        assert 0 < cell.mean() < 1
        # nucleus, granules and rods lie inside the cell (basophil granules too)
        inner = (mask & (MASK_BITS["nucleus"] | MASK_BITS["auer_rods"])) > 0
        assert (inner & ~cell).mean() < 0.01
    assert structure_mask(tmp_path / "a" / "bm" / "nothing.jpg") is None


def test_synthesize__masks_are_not_ingested(tmp_path: Path) -> None:
    from cytostore.data import ingest
    from cytostore.store import Store

    synthesize(tmp_path / "d", 30, 2, seed=1, datasets=["bm"], masks=True)
    ingest(tmp_path / "s", tmp_path / "d", workers=1)
    st = Store.open(tmp_path / "s")
    assert st.sql("SELECT count(*) FROM cells").rows[0][0] == 30
    assert st.sql("SELECT count(*) FROM skipped").rows[0][0] == 0


@pytest.mark.parametrize(
    ("cls", "bit", "present"),
    [
        ("FGC", "auer_rods", True),  # faggot cells always carry rods
        ("PMO", "granules", True),
        ("LYT", "granules", False),
        ("LYT", "auer_rods", False),
    ],
)
def test_render_cell_masks__same_image_and_planted_structures(
    cls: str, bit: str, present: bool
) -> None:
    kw = {"out_px": 250, "um_per_px": 0.086}
    img = render_cell(np.random.default_rng(5), MORPHS[cls], STAINS["bm"], **kw)
    img2, mask = render_cell_masks(
        np.random.default_rng(5), MORPHS[cls], STAINS["bm"], **kw
    )
    np.testing.assert_array_equal(img, img2)
    assert bool(((mask & MASK_BITS[bit]) > 0).any()) is present


def test_render_cell_masks__rods_are_darker_than_the_cytoplasm() -> None:
    img, mask = render_cell_masks(
        np.random.default_rng(2), MORPHS["FGC"], STAINS["bm"], out_px=250,
        um_per_px=0.086,
    )  # fmt: skip
    rods = (mask & MASK_BITS["auer_rods"]) > 0
    cyto = mask == MASK_BITS["cell"]  # cell, and nothing planted in it
    assert rods.sum() > 20 and cyto.sum() > 100
    # the green channel: rods (150, 40, 110) absorb it more than the cytoplasm
    assert img[rods, 1].mean() < img[cyto, 1].mean() - 10
