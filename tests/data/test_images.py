from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cytostore.data.images import image_size, load_rgb, probe_image, to_rgb
from cytostore.errors import ImageDecodeError


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "1", "LA", "I;16"])
@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_load_rgb__any_mode_becomes_uint8_rgb(
    tmp_path: Path, write_img: Callable[..., Path], mode: str, suffix: str
) -> None:
    if mode == "CMYK" and suffix == ".png":
        pytest.skip("PNG cannot hold CMYK")
    if mode == "LA" and suffix == ".tiff":
        pytest.skip("Pillow does not write LA TIFF")
    path = write_img(tmp_path / f"x{suffix}", mode, size=9)
    rgb = load_rgb(path)
    assert rgb.shape == (9, 9, 3)
    assert rgb.dtype == np.uint8
    # Oracle: Pillow's own conversion for the modes where it is well defined.
    if mode in ("RGB", "RGBA", "L", "P", "1", "CMYK"):
        with Image.open(path) as img:
            expected = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(rgb, expected)


def test_load_rgb__16bit_scaled_over_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    rgb = load_rgb(path)
    # Hand-checked: v / 257 rounded, gray in all three channels.
    assert rgb[0, :, 0].tolist() == [0, 1, 255, 128]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_to_rgb__transparent_alpha_composited_on_white() -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, 0] = 200  # red channel
    rgba[0, :, 3] = [0, 128, 255]
    rgb = to_rgb(Image.fromarray(rgba))
    # Hand-checked: out = c * a + 255 * (1 - a)
    assert rgb[0, :, 0].tolist() == [255, 227, 200]  # 200*128/255 + 255*127/255 = 227.4
    assert rgb[0, :, 1].tolist() == [255, 127, 0]


def test_to_rgb__opaque_alpha_dropped() -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgba)), rgba[..., :3])


def test_to_rgb__float_image_min_max_scaled() -> None:
    arr = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    assert to_rgb(Image.fromarray(arr))[0, :, 1].tolist() == [0, 128, 255]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tiff"])
def test_load_rgb__truncated_file_raises(
    tmp_path: Path, write_img: Callable[..., Path], suffix: str
) -> None:
    path = write_img(tmp_path / f"x{suffix}", size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        load_rgb(path)
    with pytest.raises(ImageDecodeError):
        probe_image(path)


def test_load_rgb__truncated_raises_even_if_pillow_was_told_to_pad(
    tmp_path: Path, write_img: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = write_img(tmp_path / "x.jpg", size=64)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageDecodeError):
        load_rgb(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty"), (b"hello, I am text", "not an image")],
)
def test_load_rgb__empty_or_text_raises(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "x.tiff"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=match):
        load_rgb(path)


def test_load_rgb__missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="does not exist"):
        load_rgb(tmp_path / "nope.png")


def test_probe_image__hash_and_size(
    tmp_path: Path, write_img: Callable[..., Path]
) -> None:
    img = Image.new("RGB", (7, 5), (1, 2, 3))
    path = tmp_path / "a.png"
    img.save(path)
    w, h, digest = probe_image(path)
    assert (w, h) == (7, 5) == image_size(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def _pillow_verdict(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            img.load()
            return img.width, img.height
    except (OSError, SyntaxError, ValueError):
        return None


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw", "packbits"])
@pytest.mark.parametrize("size", [(7, 5), (150, 120)])
def test_probe_image__tiff_agrees_with_pillow_whole_and_truncated(
    tmp_path: Path,
    mode: str,
    compression: str | None,
    size: tuple[int, int],
) -> None:
    """The uncompressed-TIFF fast path accepts exactly what Pillow decodes."""
    rng = np.random.default_rng(len(mode) + size[0])
    bands = len(mode)
    arr = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    img = Image.fromarray(arr[:, :, 0] if bands == 1 else arr, mode)
    whole = tmp_path / "whole.tif"
    img.save(whole, compression=compression)
    data = whole.read_bytes()
    # Cut anywhere: inside the header, the IFD, the first strip, the last byte.
    for n in sorted({len(data), len(data) - 1, len(data) // 2, 300, 60, 9}):
        if n > len(data):
            continue
        cut = tmp_path / f"cut{n}.tif"
        cut.write_bytes(data[:n])
        expected = _pillow_verdict(cut)
        if expected is None:
            with pytest.raises(ImageDecodeError):
                probe_image(cut)
        else:
            w, h, digest = probe_image(cut)
            assert (w, h) == expected
            assert digest == hashlib.sha256(data[:n]).hexdigest()
    assert probe_image(whole)[:2] == size


def test_raw_tiff_size__takes_plain_tiffs_and_leaves_the_rest_to_pillow(
    tmp_path: Path,
) -> None:
    from cytostore.data.images import _raw_tiff_size

    rgba = np.zeros((400, 400, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    path = tmp_path / "lmu.tiff"
    Image.fromarray(rgba, "RGBA").save(path)  # several strips of <= 64 kB
    data = path.read_bytes()
    assert _raw_tiff_size(data) == (400, 400)
    assert _raw_tiff_size(data[:-1]) is None  # last strip one byte short
    Image.fromarray(rgba, "RGBA").save(path, compression="tiff_lzw")
    assert _raw_tiff_size(path.read_bytes()) is None  # compressed: Pillow decodes
    Image.new("I;16", (4, 4)).save(path)
    assert _raw_tiff_size(path.read_bytes()) is None  # 16-bit: Pillow decodes
    Image.new("1", (9, 3)).save(path)
    assert _raw_tiff_size(path.read_bytes()) is None  # 1-bit: Pillow decodes
    assert _raw_tiff_size(b"II*\x00" + b"\xff" * 20) is None
    assert _raw_tiff_size(b"\x89PNG\r\n") is None


@pytest.mark.parametrize(
    ("mode", "alpha"),
    [
        ("L", None),
        ("LA", 255),
        ("LA", 90),
        ("RGB", None),
        ("RGBA", 255),
        ("RGBA", 0),
        ("RGBX", None),
    ],
)
@pytest.mark.parametrize("size", [(7, 5), (300, 260)])  # one strip, several
def test_load_rgb__uncompressed_tiff_fast_path_equals_pillow(
    tmp_path: Path, mode: str, alpha: int | None, size: tuple[int, int]
) -> None:
    from cytostore.data.images import _raw_tiff_rgb

    rng = np.random.default_rng(size[0])
    bands = len(mode)
    arr = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    if alpha is not None:
        arr[..., -1] = 255
        arr[0, 0, -1] = alpha  # one see-through pixel, or none
    img = Image.fromarray(arr[:, :, 0] if bands == 1 else arr, mode)
    path = tmp_path / "x.tif"
    img.save(path)
    with Image.open(path) as ref:
        ref.load()
        want = to_rgb(ref)
    got = load_rgb(path)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    fast = _raw_tiff_rgb(path.read_bytes())
    if alpha is None or alpha == 255:
        assert fast is not None  # the plain cases do take the fast path
        np.testing.assert_array_equal(fast, want)
    else:
        assert fast is None  # see-through: Pillow composites
