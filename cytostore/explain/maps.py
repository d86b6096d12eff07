"""Attribution maps drawn back onto the original cell image.

:meth:`Preprocessing.apply` resamples the square of side ``crop_px * um_per_px /
src_um_per_px`` source pixels around the image centre (the whole image padded to a
square when the µm/px is unknown) to ``crop_px`` pixels. :func:`to_original` inverts
that map: each original pixel takes the bilinear sample of the crop's map at its
position, and pixels outside the square (never seen by the model) get 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from cytostore.embedder.preprocess import Preprocessing

__all__ = ["crop_box", "to_original", "overlay", "peak", "mask_to_crop"]


def crop_box(
    height: int, width: int, prep: Preprocessing, src_um_per_px: float | None
) -> tuple[float, float, float]:
    """Return ``(x0, y0, side)``: the square of the original the crop resamples.

    In original pixel coordinates (0 at the image's top-left corner), as
    :meth:`Preprocessing.apply` cuts it.
    """
    known = (
        src_um_per_px is not None and math.isfinite(src_um_per_px) and src_um_per_px > 0
    )
    side = (
        prep.crop_px * prep.um_per_px / float(src_um_per_px)  # type: ignore[arg-type]
        if known
        else float(max(height, width))
    )
    return width / 2 - side / 2, height / 2 - side / 2, side


def to_original(
    crop_map: npt.NDArray[np.floating],
    height: int,
    width: int,
    prep: Preprocessing,
    src_um_per_px: float | None,
) -> npt.NDArray[np.float32]:
    """Return a (crop_px, crop_px) map resampled onto the (height, width) original.

    Args:
        crop_map: A map over the preprocessed crop.
        height: Original image height, pixels.
        width: Original image width, pixels.
        prep: The preprocessing that made the crop.
        src_um_per_px: The original's pixel size (``None``: unknown).

    Returns:
        float32 (height, width); 0 outside the square the crop covers.
    """
    x0, y0, side = crop_box(height, width, prep, src_um_per_px)
    scale = prep.crop_px / side
    jx = ((np.arange(width, dtype=np.float64) + 0.5) - x0) * scale - 0.5
    jy = ((np.arange(height, dtype=np.float64) + 0.5) - y0) * scale - 0.5
    yy, xx = np.meshgrid(jy, jx, indexing="ij")
    out = ndimage.map_coordinates(
        np.asarray(crop_map, np.float64), [yy, xx], order=1, mode="nearest"
    )
    c = prep.crop_px
    outside = (yy < -0.5) | (yy > c - 0.5) | (xx < -0.5) | (xx > c - 0.5)
    out[outside] = 0.0
    return out.astype(np.float32)


def mask_to_crop(
    mask: npt.NDArray[np.bool_], prep: Preprocessing, src_um_per_px: float | None
) -> npt.NDArray[np.bool_]:
    """Return an original-image mask carried into the crop by the same preprocessing.

    The mask goes through :meth:`Preprocessing.apply` as a white-on-black image
    (the crop's pixels) and is thresholded at half.
    """
    img = np.repeat((np.asarray(mask, bool) * np.uint8(255))[:, :, None], 3, axis=2)
    return prep.apply(img, src_um_per_px)[:, :, 0] >= 128


def peak(att_map: npt.NDArray[np.floating]) -> tuple[int, int]:
    """Return ``(x, y)`` of the largest value of a map (first one on ties)."""
    y, x = np.unravel_index(int(np.argmax(att_map)), att_map.shape)
    return int(x), int(y)


def overlay(
    image: npt.NDArray[np.uint8],
    att_map: npt.NDArray[np.floating],
    *,
    alpha: float = 0.7,
) -> npt.NDArray[np.uint8]:
    """Return the image with the map painted over it: red for, blue against.

    The map is smoothed by one pixel, divided by its 99th percentile of absolute
    value (so a few extreme pixels do not wash out the rest) and clipped to
    [-1, 1]; each pixel's colour moves towards red (positive) or blue (negative)
    by ``alpha`` times that value.

    Args:
        image: uint8 (H, W, 3) original image.
        att_map: (H, W) map on the original (:func:`to_original`).
        alpha: Strength of the colour at the largest values.

    Returns:
        uint8 (H, W, 3).
    """
    m = ndimage.gaussian_filter(np.asarray(att_map, np.float32), 1.0)
    scale = float(np.percentile(np.abs(m), 99)) or 1.0
    v = np.clip(m / scale, -1.0, 1.0)[:, :, None]
    base = image.astype(np.float32) * 0.85  # dim the cell a little under the map
    red = np.asarray([255, 30, 0], np.float32)
    blue = np.asarray([0, 90, 255], np.float32)
    pos = alpha * np.clip(v, 0, 1)
    neg = alpha * np.clip(-v, 0, 1)
    out = base * (1 - pos - neg) + red * pos + blue * neg
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_pair(
    image: npt.NDArray[np.uint8], painted: npt.NDArray[np.uint8], out: Path
) -> Path:
    """Write the original and its overlay side by side as one PNG (atomically)."""
    import os

    h, w = image.shape[:2]
    canvas = np.full((h, 2 * w + 4, 3), 255, np.uint8)
    canvas[:, :w] = image
    canvas[:, w + 4 :] = painted
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    Image.fromarray(canvas).save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
