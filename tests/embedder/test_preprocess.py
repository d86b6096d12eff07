from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from embedder_helpers import draw_cell

from cytostore.embedder import Preprocessing
from cytostore.errors import InvalidArgumentError


def _disc(um_per_px: float, diameter_um: float = 10.0, fov_um: float = 28.0):
    n = int(round(fov_um / um_per_px))
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    img = np.full((n, n, 3), 220, dtype=np.uint8)
    img[(yy - c) ** 2 + (xx - c) ** 2 <= (diameter_um / um_per_px / 2) ** 2] = (
        120,
        40,
        140,
    )
    return img


def _diameter_px(out: np.ndarray) -> int:
    return int((out[:, :, 1] < 130).sum(axis=1).max())


@pytest.mark.parametrize("crop_px", [96, 128])
def test_apply__same_cell_two_scales_same_size(crop_px: int) -> None:
    prep = Preprocessing.for_input(crop_px)
    fine = prep.apply(_disc(0.07), 0.07)
    coarse = prep.apply(_disc(0.17), 0.17)
    assert fine.shape == coarse.shape == (crop_px, crop_px, 3)
    expected = 10.0 / prep.um_per_px
    assert abs(_diameter_px(fine) - expected) <= 1.5
    assert abs(_diameter_px(coarse) - expected) <= 1.5
    corr = np.corrcoef(fine.ravel().astype(float), coarse.ravel().astype(float))[0, 1]
    assert corr > 0.98
    # Images of different fields of view: scaling by µm/px keeps the disc size,
    # resizing each whole (what unknown µm/px does) does not.
    wide = _disc(0.17, fov_um=40.0)
    assert abs(_diameter_px(prep.apply(wide, 0.17)) - expected) <= 1.5
    assert _diameter_px(prep.apply(wide, None)) < 0.8 * _diameter_px(
        prep.apply(_disc(0.07), None)
    )


def test_apply__unknown_scale_resizes_whole_image() -> None:
    img = np.full((60, 90, 3), 200, dtype=np.uint8)
    img[:, :3] = img[:, -3:] = (10, 10, 10)  # dark left/right edges must survive
    prep = Preprocessing.for_input(64)
    out = prep.apply(img, None)
    assert out.shape == (64, 64, 3)
    assert out[32, 0].max() < 60 and out[32, -1].max() < 60
    # the 60-px height is padded (30 % of the square), not cropped
    assert (out[:, 32] == out[0, 32]).all(axis=1).sum() >= 10
    np.testing.assert_array_equal(prep.apply(img, float("nan")), out)


def test_apply__pads_with_border_colour_not_black() -> None:
    img = np.full((40, 40, 3), (210, 190, 230), dtype=np.uint8)
    img[15:25, 15:25] = (50, 20, 80)
    prep = Preprocessing.for_input(96)  # 24 µm field; 40 px x 0.2 µm = 8 µm image
    out = prep.apply(img, 0.2)
    np.testing.assert_array_equal(out[0, 0], (210, 190, 230))
    np.testing.assert_array_equal(out[-1, -1], (210, 190, 230))
    assert out[48, 48].tolist() == [50, 20, 80]


def test_apply__gray_and_rgba_accepted_float_rejected() -> None:
    prep = Preprocessing.for_input(32)
    gray = np.full((50, 50), 100, dtype=np.uint8)
    rgba = np.dstack(
        [np.full((50, 50, 3), 100, np.uint8), np.full((50, 50), 255, np.uint8)]
    )
    np.testing.assert_array_equal(prep.apply(gray, 0.5), prep.apply(rgba, 0.5))
    with pytest.raises(InvalidArgumentError, match="uint8"):
        prep.apply(np.zeros((50, 50, 3), dtype=np.float32), 0.5)


def test_preprocessing__prep_id_stable_and_round_trip() -> None:
    prep = Preprocessing.for_input(128)
    assert prep.um_per_px == pytest.approx(0.1875)
    assert prep.prep_id == "1044c72bebbf"  # hand-recorded: changes only on purpose
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert pickle.loads(pickle.dumps(prep)).prep_id == prep.prep_id
    other = Preprocessing.for_input(96)
    assert other.prep_id != prep.prep_id
    assert other.fov_um == pytest.approx(prep.fov_um) == pytest.approx(24.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"crop_px": 8}, {"um_per_px": 0.0}, {"std": (0.1, 0.0, 0.1)}, {"mean": (0.5,)}],
)
def test_preprocessing__invalid_fields_raise(kwargs: dict) -> None:
    with pytest.raises(InvalidArgumentError):
        Preprocessing(**kwargs)


def test_to_tensor__normalises_in_channels_last() -> None:
    prep = Preprocessing(crop_px=16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    batch = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    batch[1] = 255
    x = prep.to_tensor(batch)
    assert x.dtype == torch.float32 and tuple(x.shape) == (2, 3, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, -1.0, 0.0])
    assert x[1, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
    with pytest.raises(InvalidArgumentError, match="uint8"):
        prep.to_tensor(batch.astype(np.float32))


def test_apply_many__matches_apply() -> None:
    rng = np.random.default_rng(1)
    prep = Preprocessing.for_input(48)
    imgs = [draw_cell(100, 0.1, rng), draw_cell(60, 0.17, rng)]
    many = prep.apply_many(imgs, [0.1, 0.17])
    np.testing.assert_array_equal(many[0], prep.apply(imgs[0], 0.1))
    np.testing.assert_array_equal(many[1], prep.apply(imgs[1], 0.17))
    with pytest.raises(InvalidArgumentError, match="2 images but 3"):
        prep.apply_many(imgs, [0.1, 0.1, 0.1])


@pytest.mark.parametrize("um", [0.07, 0.25, 0.5, None])  # crop inside, padded, whole
def test_apply__pillow_image_gives_the_array_result(um: float | None) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    prep = Preprocessing.for_input(32)
    np.testing.assert_array_equal(
        prep.apply(Image.fromarray(rgb), um), prep.apply(rgb, um)
    )
    with pytest.raises(InvalidArgumentError, match="RGB Pillow image"):
        prep.apply(Image.fromarray(rgb).convert("L"), um)


@pytest.mark.parametrize(
    ("name", "mode", "alpha"),
    [
        ("a.tif", "RGBA", 255),  # LMU-like: fast path, alpha dropped
        ("a.tif", "RGBA", 7),  # see-through: Pillow composites on white
        ("a.tif", "RGB", None),  # MLL-like
        ("a.tif", "L", None),
        ("a.jpg", "RGB", None),  # BM-like: Pillow
        ("a.png", "LA", 255),
    ],
)
def test_load_rgb_image__same_pixels_as_load_rgb(
    tmp_path: Path, name: str, mode: str, alpha: int | None
) -> None:
    from PIL import Image

    from cytostore.data.images import load_rgb, load_rgb_image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (70, 90, len(mode)), dtype=np.uint8)
    if alpha is not None:
        arr[..., -1] = 255
        arr[5, 5, -1] = alpha
    path = tmp_path / name
    Image.fromarray(arr[:, :, 0] if len(mode) == 1 else arr, mode).save(path)
    img = load_rgb_image(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), load_rgb(path))
