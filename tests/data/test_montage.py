from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cytostore.data import montage
from cytostore.errors import InvalidArgumentError


def _solid(value: int, h: int = 20, w: int = 20) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_montage__grid_geometry_and_tiles(tmp_path: Path) -> None:
    images = [_solid(0), _solid(100, 10, 40), _solid(200), _solid(50)]
    out = montage(images, ["a", "b", "c", "d\nline 2"], tmp_path / "m.png", tile_px=32)
    assert out == tmp_path / "m.png" and not (tmp_path / "m.png.tmp").exists()
    img = np.asarray(Image.open(out).convert("RGB"))
    # 2x2 grid: width = 6 + 2 * (32 + 6); height = 2 * (32 + 6 + 2 lines * 12) + 6
    assert img.shape == (130, 82, 3)
    # Tile centres show the source pixels (the wide image is letterboxed).
    assert img[6 + 16, 6 + 16].tolist() == [0, 0, 0]
    assert img[6 + 16, 44 + 16].tolist() == [100, 100, 100]
    assert img[6 + 2, 44 + 16].tolist() == [255, 255, 255]  # letterbox background
    assert img[68 + 16, 6 + 16].tolist() == [200, 200, 200]


def test_montage__highlight_draws_red_border_only_there(tmp_path: Path) -> None:
    images = [_solid(0), _solid(0)]
    plain = np.asarray(
        Image.open(montage(images, ["", ""], tmp_path / "a.png", tile_px=32))
    )
    marked = np.asarray(
        Image.open(
            montage(images, ["", ""], tmp_path / "b.png", tile_px=32, highlight=1)
        )
    )
    diff = np.argwhere((plain != marked).any(axis=2))
    assert diff.size and diff[:, 1].min() >= 38  # only around the second tile
    assert marked[diff[0][0], diff[0][1]].tolist() == [220, 30, 30]


def test_montage__title_adds_a_line(tmp_path: Path) -> None:
    a = Image.open(montage([_solid(9)], ["x"], tmp_path / "a.png", tile_px=32))
    b = Image.open(
        montage([_solid(9)], ["x"], tmp_path / "b.png", tile_px=32, title="q")
    )
    assert b.height == a.height + 18 and b.width == a.width


@pytest.mark.parametrize(
    ("images", "captions", "match"),
    [
        ([], [], "at least one"),
        ([_solid(1)], [], "one caption per image"),
        ([np.zeros((4, 4, 3), np.float32)], ["x"], "uint8"),
    ],
)
def test_montage__bad_input_raises(
    tmp_path: Path, images: list[np.ndarray], captions: list[str], match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        montage(images, captions, tmp_path / "m.png")
