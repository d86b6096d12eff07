"""Vectorised drawing of one synthetic blood or marrow cell at physical scale.

A cell is drawn on a working grid of about 0.2 µm/px (an image with coarser pixels
is drawn at its own size) as signed-distance shapes and noise fields in numpy, mixed
in optical density (Beer-Lambert), then resized up to the dataset's image size; the
white cell itself is computed only in a window around it. No Python loop
runs over pixels; the loops run over shapes (lobes, red cells, rods).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from cytostore.data._morphs import Morph, Stain

__all__ = ["render_cell", "render_cell_masks", "MASK_BITS"]

F32 = npt.NDArray[np.floating[Any]]  # float32 at run time
_WORK_UM_PER_PX = 0.2
_RBC_RADIUS_UM = 3.7
#: Bit of each planted structure in a structure mask (uint8, bits OR-ed).
MASK_BITS = {"cell": 1, "nucleus": 2, "granules": 4, "auer_rods": 8}
#: A granule pixel: the granule field (peak about 1 per granule) at least this.
_GRANULE_LEVEL = 0.3


@functools.lru_cache(maxsize=16)
def _axis(n_px: int, um_per_px: float) -> F32:
    """Return pixel-centre coordinates (µm) of one axis, 0 at the image centre."""
    return ((np.arange(n_px, dtype=np.float32) - (n_px - 1) / 2) * um_per_px).astype(
        np.float32
    )


def _od(rgb: tuple[int, int, int]) -> F32:
    """Return the optical density (3,) of a colour seen on a white background."""
    return np.float32(-1.0) * np.log(np.asarray(rgb, np.float32) / 255.0)


def _soft(sdf: F32, edge_um: float) -> F32:
    """Return a [0, 1] mask from a signed distance (µm, negative inside)."""
    out = np.multiply(sdf, np.float32(-1.0 / edge_um), dtype=np.float32)
    out += np.float32(0.5)
    np.maximum(out, 0.0, out=out)
    return np.minimum(out, 1.0, out=out)


@functools.lru_cache(maxsize=32)
def _bank(grain_px: int, size: int, channels: int = 0) -> F32:
    """Return a fixed tile of smooth noise (zero mean, unit std) to crop from.

    Cropping a random window of a fixed tile is much cheaper than filtering new
    noise for every image, and the result is still a function of the caller's rng.
    """
    shape = (size, size, channels) if channels else (size, size)
    white = np.random.default_rng(grain_px).standard_normal(shape, dtype=np.float32)
    if grain_px <= 0:
        return white
    sigma = (grain_px / 2, grain_px / 2, 0)[: white.ndim]
    field = ndimage.gaussian_filter(white, sigma, mode="wrap")
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], grain_px: float) -> F32:
    """Return a random window ``shape`` of smooth noise with blobs of ~grain_px."""
    size = max(320, -(-max(shape[:2]) // 64) * 64 + 64)
    channels = shape[2] if len(shape) > 2 else 0
    tile = _bank(int(round(grain_px)), size, channels)
    oy, ox = (int(o) for o in rng.integers(0, size - max(shape[:2]), 2))
    return tile[oy : oy + shape[0], ox : ox + shape[1]]


def _outline(
    theta: F32, rng: np.random.Generator, amp: float, ragged: float = 0.0
) -> F32 | float:
    """Return the relative radius 1 + perturbation of an irregular outline at theta."""
    if amp <= 0 and ragged <= 0:
        return 1.0
    out = np.ones_like(theta)
    for k in (2, 3, 4):
        out += rng.normal(0.0, amp / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if ragged > 0:
        for k in rng.integers(9, 17, size=2):
            out += ragged * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return out


def _arc_sdf(u: F32, v: F32, radius: float, half_angle: float, width: float) -> F32:
    """Return the signed distance to a thick arc around +u (a band nucleus)."""
    rho = np.hypot(u, v)
    theta = np.abs(np.arctan2(v, u))
    ex, ey = radius * math.cos(half_angle), radius * math.sin(half_angle)
    d_end = np.hypot(u - ex, np.abs(v) - ey)
    dist = np.where(theta <= half_angle, np.abs(rho - radius), d_end)
    return dist - width / 2


def _segment_sdf(
    x: F32, y: F32, p0: tuple[float, float], p1: tuple[float, float], width: float
) -> F32:
    """Return the signed distance to a thick straight segment (an Auer rod)."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - p0[0] - t * dx, y - p0[1] - t * dy) - width / 2


def _nucleus_sdf(
    m: Morph, u: F32, v: F32, rn: float, rng: np.random.Generator, coarse: F32
) -> F32:
    """Return the nucleus signed distance in its local, rotated frame (µm)."""
    if m.nucleus == "band":
        return _arc_sdf(u, v, 0.72 * rn, math.radians(rng.uniform(95, 150)), 0.5 * rn)
    if m.nucleus == "lobed":
        n = int(rng.integers(m.lobes[0], m.lobes[1] + 1))
        half = math.radians(rng.uniform(55, 75) if n == 2 else rng.uniform(70, 125))
        arc_r = 0.62 * rn
        lobe_r = rn * (0.52 if n == 2 else 0.47 * (3 / n) ** 0.35)
        sdf = _arc_sdf(u, v, arc_r, half, 0.12 * rn)
        for a in np.linspace(-half, half, n) + rng.normal(0, 0.15, n):
            rad = arc_r * rng.uniform(0.85, 1.2)
            cx, cy = rad * math.cos(a), rad * math.sin(a)
            sq = rng.uniform(0.75, 1.0)
            size = lobe_r * rng.uniform(0.85, 1.15)
            sdf = np.minimum(sdf, np.hypot(u - cx, (v - cy) / sq) - size)
        return sdf
    if m.nucleus == "fragments":
        sdf = np.full_like(u, 1e3)
        for _ in range(int(rng.integers(3, 9))):
            cx, cy = (float(c) for c in rng.uniform(-1.6 * rn, 1.6 * rn, 2))
            sdf = np.minimum(sdf, np.hypot(u - cx, v - cy) - rng.uniform(0.4, 1.4))
        return sdf
    a, b = rn * rng.uniform(1.0, 1.12), rn * rng.uniform(0.88, 1.0)
    sdf = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * b
    sdf = sdf + 0.06 * rn * coarse
    if m.nucleus == "kidney":
        notch = np.hypot(u, v - 1.3 * b) - rng.uniform(0.55, 0.75) * a
        sdf = np.maximum(sdf, -notch - 0.15 * rn)
    elif m.nucleus == "smudge":
        theta = np.arctan2(v, u)
        sdf = np.hypot(u, v) - rn * _outline(theta, rng, 0.35) + 0.25 * rn * coarse
    return sdf


def _splat(
    rng: np.random.Generator,
    xw: F32,
    yw: F32,
    centre: tuple[float, float],
    radius_um: float,
    count: int,
    size_um: float,
    allowed: F32,
) -> F32:
    """Return a field of ``count`` round dots (peak ≈ 1) scattered in a disc.

    ``xw`` and ``yw`` are the window's pixel-centre coordinates (µm); dots landing
    where ``allowed`` < 0.5 are dropped.
    """
    h, w = allowed.shape
    field: F32 = np.zeros((h, w), np.float32)
    if count <= 0:
        return field
    um_per_px = float(xw[1] - xw[0])
    r = radius_um * np.sqrt(rng.uniform(0, 0.92, count))
    a = rng.uniform(0, 2 * np.pi, count)
    ix = np.rint((centre[0] + r * np.cos(a) - xw[0]) / um_per_px).astype(int)
    iy = np.rint((centre[1] + r * np.sin(a) - yw[0]) / um_per_px).astype(int)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    ix, iy = ix[ok], iy[ok]
    keep = allowed[iy, ix] >= 0.5
    np.add.at(field, (iy[keep], ix[keep]), rng.uniform(0.6, 1.2, int(keep.sum())))
    sigma = max(size_um / 2.5 / um_per_px, 0.6)
    field = ndimage.gaussian_filter(field, sigma, truncate=3.0)
    return np.minimum(field * np.float32(2 * np.pi * sigma**2), 1.6)


def _red_cells(
    rng: np.random.Generator, x: F32, count: int, avoid: tuple[float, float, float]
) -> F32:
    """Return the density of ``count`` red cells with central pallor around a cell."""
    n_px = x.shape[0]
    half = float(x[-1]) + _RBC_RADIUS_UM
    um_per_px = float(x[1] - x[0])
    out = np.zeros((n_px, n_px), np.float32)
    for _ in range(count):
        for _try in range(6):  # keep red cells mostly outside the white cell
            cx, cy = (float(c) for c in rng.uniform(-half, half, 2))
            if math.hypot(cx - avoid[0], cy - avoid[1]) > avoid[2] + 1.5:
                break
        r = _RBC_RADIUS_UM * rng.uniform(0.9, 1.1)
        i0 = max(int((cx - r - 1 - x[0]) / um_per_px), 0)
        i1 = min(int((cx + r + 1 - x[0]) / um_per_px) + 1, n_px)
        j0 = max(int((cy - r - 1 - x[0]) / um_per_px), 0)
        j1 = min(int((cy + r + 1 - x[0]) / um_per_px) + 1, n_px)
        if i0 >= i1 or j0 >= j1:
            continue
        d = np.hypot(x[None, i0:i1] - cx, x[j0:j1, None] - cy)
        disc = _soft(d - r, 0.5) * (1.0 - 0.5 * _soft(d - 0.45 * r, 1.6 * r))
        out[j0:j1, i0:i1] += disc
    return out


def render_cell(
    rng: np.random.Generator,
    morph: Morph,
    stain: Stain,
    *,
    out_px: int,
    um_per_px: float,
    od_jitter: npt.NDArray[np.float64] | None = None,
    size_scale: float = 1.0,
) -> npt.NDArray[np.uint8]:
    """Draw one cell centred (with jitter) in a square field.

    Args:
        rng: Source of all randomness (the image is a function of its state).
        morph: The class to draw.
        stain: The dataset's look.
        out_px: Side of the returned image, pixels.
        um_per_px: Pixel size of the returned image, µm.
        od_jitter: Per-channel factors (3,) on the stain density (a patient's slide);
            None means 1.
        size_scale: Factor on the cell diameter (a patient's cells).

    Returns:
        uint8 array (out_px, out_px, 3), RGB.
    """
    return _render(
        rng,
        morph,
        stain,
        out_px=out_px,
        um_per_px=um_per_px,
        od_jitter=od_jitter,
        size_scale=size_scale,
        with_masks=False,
    )[0]


def render_cell_masks(
    rng: np.random.Generator,
    morph: Morph,
    stain: Stain,
    *,
    out_px: int,
    um_per_px: float,
    od_jitter: npt.NDArray[np.float64] | None = None,
    size_scale: float = 1.0,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Draw one cell as :func:`render_cell` does, and the masks of what it planted.

    The image is the same bytes :func:`render_cell` draws from the same ``rng``
    state (the masks draw no random numbers).

    Returns:
        ``(image, mask)``: the uint8 (out_px, out_px, 3) RGB image and a uint8
        (out_px, out_px) mask whose bits (:data:`MASK_BITS`) mark the white cell,
        its nucleus, its granules (where the granule stain is at least
        ``_GRANULE_LEVEL`` of one granule's peak) and its Auer rods.
    """
    image, mask = _render(
        rng,
        morph,
        stain,
        out_px=out_px,
        um_per_px=um_per_px,
        od_jitter=od_jitter,
        size_scale=size_scale,
        with_masks=True,
    )
    if mask is None:  # pragma: no cover - with_masks=True always makes one
        raise RuntimeError("render_cell_masks: no mask was drawn")
    return image, mask


def _render(
    rng: np.random.Generator,
    morph: Morph,
    stain: Stain,
    *,
    out_px: int,
    um_per_px: float,
    od_jitter: npt.NDArray[np.float64] | None,
    size_scale: float,
    with_masks: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None]:
    """Draw one cell centred (with jitter) in a square field (and its masks).

    Args:
        rng: Source of all randomness (the image is a function of its state).
        morph: The class to draw.
        stain: The dataset's look.
        out_px: Side of the returned image, pixels.
        um_per_px: Pixel size of the returned image, µm.
        od_jitter: Per-channel factors (3,) on the stain density (a patient's slide);
            None means 1.
        size_scale: Factor on the cell diameter (a patient's cells).
        with_masks: Also return the structure mask.

    Returns:
        ``(image, mask)``: uint8 (out_px, out_px, 3) RGB, and the structure mask
        (see :func:`render_cell_masks`) or None without ``with_masks``.
    """
    n = min(out_px, max(64, round(out_px * um_per_px / _WORK_UM_PER_PX)))
    wu = out_px * um_per_px / n  # µm per working pixel
    ax = _axis(n, wu)
    edge = max(0.3, 0.8 * wu)
    coarse_full = _noise(rng, (n, n), 3.0 / wu)

    radius = max(2.0, rng.normal(morph.diam_um, morph.diam_sd_um) * size_scale) / 2
    cx, cy = (float(c) for c in rng.uniform(-1.5, 1.5, 2))
    # Everything of the white cell is computed in a window around it.
    reach = radius * (1.3 + 3 * morph.boundary + morph.ragged) + 1.5
    if morph.cyto_density <= 0:  # a smeared nucleus spreads further
        reach = 2.4 * radius + 1.5
    i0, i1 = (
        int(np.clip((c - ax[0]) / wu, 0, n)) for c in (cx - reach, cx + reach + wu)
    )
    j0, j1 = (
        int(np.clip((c - ax[0]) / wu, 0, n)) for c in (cy - reach, cy + reach + wu)
    )
    xw, yw = ax[i0:i1], ax[j0:j1]
    x, y = xw[None, :], yw[:, None]
    coarse = coarse_full[j0:j1, i0:i1]
    fine = _noise(rng, coarse.shape, morph.grain_um / wu)

    theta = np.arctan2(y - cy, x - cx)
    rel = _outline(theta, rng, morph.boundary, morph.ragged)
    cell = _soft(np.hypot(x - cx, y - cy) - radius * rel, edge)

    rn = morph.nc * radius * rng.uniform(0.93, 1.07)
    off = min(
        morph.eccentric * radius * rng.uniform(0.5, 1.0), max(0.0, 0.9 * radius - rn)
    )
    beta, alpha = (float(a) for a in rng.uniform(0, 2 * np.pi, 2))
    nx, ny = cx + off * math.cos(beta), cy + off * math.sin(beta)
    u = (x - nx) * math.cos(alpha) + (y - ny) * math.sin(alpha)
    v = -(x - nx) * math.sin(alpha) + (y - ny) * math.cos(alpha)
    nuc = _soft(_nucleus_sdf(morph, u, v, rn, rng, coarse), edge)
    if morph.cyto_density > 0:
        nuc = nuc * cell
    else:
        cell = nuc
    dens = nuc * morph.chromatin * np.maximum(1.0 + morph.clumping * fine, 0.3)
    for _ in range(int(rng.integers(morph.nucleoli[0], morph.nucleoli[1] + 1))):
        px, py = (float(p) for p in rng.uniform(-0.45 * rn, 0.45 * rn, 2))
        d = np.hypot(x - nx - px, y - ny - py) - rng.uniform(0.5, 0.9)
        dens = dens * (1.0 - 0.55 * _soft(d, edge))
    if morph.nucleus == "cup":
        d = np.hypot(u - 0.3 * rn, v) - 0.42 * rn
        dens = dens * (1.0 - 0.7 * _soft(d, 2 * edge))

    outside_nuc = cell * (1.0 - nuc)
    cyto = outside_nuc * morph.cyto_density * (1.0 + 0.12 * coarse)
    if morph.hof:
        to_c = math.atan2(cy - ny, cx - nx) if off > 0.2 else beta + math.pi
        hx, hy = nx + 0.95 * rn * math.cos(to_c), ny + 0.95 * rn * math.sin(to_c)
        hof = _soft(np.hypot(x - hx, y - hy) - 0.45 * rn, 2 * edge)
        cyto = cyto * (1.0 - 0.5 * hof)
    scale_n = (radius / 6.0) ** 2
    if morph.vacuoles:
        n_vac = int(morph.vacuoles * scale_n)
        vac = _splat(rng, xw, yw, (cx, cy), radius, n_vac, 1.0, outside_nuc)
        cyto = cyto * (1.0 - 0.8 * np.minimum(vac, 1.0))
    n_gran = int(rng.poisson(morph.granules * scale_n)) if morph.granules else 0
    gran_mask = cell if morph.granules_over_nucleus else outside_nuc
    gran = _splat(rng, xw, yw, (cx, cy), radius, n_gran, morph.granule_um, gran_mask)

    win = (
        cyto[:, :, None] * _od(morph.cyto_rgb)
        + dens[:, :, None] * _od(stain.nucleus_rgb)
        + gran[:, :, None] * _od(morph.granule_rgb)
    )
    rods = None
    if morph.auer_p > 0 and rng.uniform() < morph.auer_p:
        rods = np.zeros(cell.shape, np.float32)
        k = int(rng.integers(morph.auer_n[0], morph.auer_n[1] + 1))
        base = rng.uniform(0, 2 * np.pi)
        for _ in range(k):
            r0, a0 = radius * rng.uniform(0.45, 0.8), rng.uniform(0, 2 * np.pi)
            px, py = cx + r0 * math.cos(a0), cy + r0 * math.sin(a0)
            ang = base + rng.normal(0, 0.25) if k > 3 else rng.uniform(0, 2 * np.pi)
            half_len = rng.uniform(1.0, 2.2)
            p0 = (px - half_len * math.cos(ang), py - half_len * math.sin(ang))
            p1 = (px + half_len * math.cos(ang), py + half_len * math.sin(ang))
            rods = np.maximum(rods, _soft(_segment_sdf(x, y, p0, p1, 0.35), edge))
        win = win + (rods * cell)[:, :, None] * _od((150, 40, 110))

    scale = np.asarray(stain.od_scale, np.float32)
    if od_jitter is not None:
        scale = scale * od_jitter.astype(np.float32)
    n_rbc = int(rng.integers(stain.rbc_count[0], stain.rbc_count[1] + 1))
    rbc = _red_cells(rng, ax, n_rbc, (cx, cy, radius))
    rbc[j0:j1, i0:i1] *= 1.0 - cell
    od = _od(stain.bg_rgb) * (1.0 + 0.05 * coarse_full[:, :, None])
    od += rbc[:, :, None] * (_od(stain.rbc_rgb) * scale)
    od[j0:j1, i0:i1] += win * scale
    rgb = np.float32(stain.white) * np.exp(-od)
    rgb += np.float32(stain.noise) * _noise(rng, (n, n, 3), 0)
    blur_px = (stain.blur_px * um_per_px + morph.blur_um) / wu  # working pixels
    if blur_px > 0.3:
        rgb = ndimage.gaussian_filter(rgb, (blur_px, blur_px, 0), truncate=3.0)
    img = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    if n != out_px:
        img = img.resize((out_px, out_px), Image.Resampling.BILINEAR)
    if not with_masks:
        return np.asarray(img), None
    planes = {
        "cell": cell >= 0.5,
        "nucleus": nuc >= 0.5,
        "granules": gran >= _GRANULE_LEVEL,
        "auer_rods": (rods * cell >= 0.5) if rods is not None else None,
    }
    window = np.zeros((j1 - j0, i1 - i0), np.uint8)
    for name, plane in planes.items():
        if plane is not None:
            window |= plane.astype(np.uint8) * np.uint8(MASK_BITS[name])
    full = np.zeros((n, n), np.uint8)
    full[j0:j1, i0:i1] = window
    mask = Image.fromarray(full, "L")
    if n != out_px:
        mask = mask.resize((out_px, out_px), Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(mask)
