"""Montages: a PNG grid of cell images with a caption under each tile.

Used by ``search`` and ``explain`` to show a query beside its look-alike cells.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from cytostore.errors import InvalidArgumentError

__all__ = ["montage"]

_PAD_PX = 6
_LINE_PX = 12
_BORDER_PX = 4
_HIGHLIGHT = (220, 30, 30)
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def _fit_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    width_px: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> str:
    if draw.textlength(text, font=font) <= width_px:
        return text
    while text and draw.textlength(text + "…", font=font) > width_px:
        text = text[:-1]
    return text + "…"


def _tile(image: npt.NDArray[np.uint8], tile_px: int) -> Image.Image:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise InvalidArgumentError(
            f"montage images must be uint8 (H, W, 3) arrays, got {arr.dtype} "
            f"{arr.shape}: load them with cytostore.data.load_rgb"
        )
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")
    scale = tile_px / max(img.width, img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.LANCZOS)
    out = Image.new("RGB", (tile_px, tile_px), _BACKGROUND)
    out.paste(img, ((tile_px - size[0]) // 2, (tile_px - size[1]) // 2))
    return out


def montage(
    images: Sequence[npt.NDArray[np.uint8]],
    captions: Sequence[str],
    out: str | os.PathLike[str],
    *,
    ncols: int | None = None,
    tile_px: int = 128,
    title: str | None = None,
    highlight: int | Sequence[int] | None = None,
) -> Path:
    r"""Draw images in a grid with captions and write it as a PNG (atomically).

    Args:
        images: uint8 ``(H, W, 3)`` arrays (any size: each is fitted into a square
            tile, aspect kept).
        captions: One caption per image; ``\n`` separates lines; long lines are cut.
        out: The PNG to write (written as ``<out>.tmp`` then renamed).
        ncols: Tiles per row (default: ``ceil(sqrt(n))``).
        tile_px: Side of each tile in pixels.
        title: A line above the grid.
        highlight: Index (or indices) of tiles drawn with a red border, e.g. the
            query of a search.

    Returns:
        The written path.

    Raises:
        InvalidArgumentError: If there are no images, captions and images differ in
            number, or an image is not uint8 RGB.

    Examples:
        >>> import tempfile, numpy as np
        >>> imgs = [np.zeros((20, 30, 3), np.uint8), np.full((9, 9, 3), 9, np.uint8)]
        >>> out = tempfile.mkdtemp() + "/m.png"
        >>> p = montage(imgs, ["query", "1: NGS\nd=0.12"], out, tile_px=32, highlight=0)
        >>> from PIL import Image; Image.open(p).size
        (82, 68)
    """
    if not images:
        raise InvalidArgumentError("montage needs at least one image")
    if len(captions) != len(images):
        raise InvalidArgumentError(
            f"montage got {len(images)} images but {len(captions)} captions: give one "
            "caption per image (an empty string for none)"
        )
    if tile_px < 8:
        raise InvalidArgumentError(f"tile_px must be at least 8, got {tile_px}")
    n = len(images)
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    marked = {highlight} if isinstance(highlight, int) else set(highlight or ())
    n_lines = max(1, max(len(c.split("\n")) for c in captions))
    cell_w = tile_px + _PAD_PX
    cell_h = tile_px + _PAD_PX + n_lines * _LINE_PX
    top = _LINE_PX + _PAD_PX if title else 0
    canvas = Image.new(
        "RGB", (ncols * cell_w + _PAD_PX, top + nrows * cell_h + _PAD_PX), _BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title:
        draw.text(
            (_PAD_PX, _PAD_PX // 2),
            _fit_text(draw, title, canvas.width - 2 * _PAD_PX, font),
            fill=_TEXT,
            font=font,
        )
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(i, ncols)
        x, y = _PAD_PX + c * cell_w, top + _PAD_PX + r * cell_h
        canvas.paste(_tile(image, tile_px), (x, y))
        if i in marked:
            draw.rectangle(
                (x - 2, y - 2, x + tile_px + 1, y + tile_px + 1),
                outline=_HIGHLIGHT,
                width=_BORDER_PX // 2 + 1,
            )
        for j, line in enumerate(caption.split("\n")):
            draw.text(
                (x, y + tile_px + 2 + j * _LINE_PX),
                _fit_text(draw, line, tile_px, font),
                fill=_TEXT,
                font=font,
            )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
