"""Batched, cytology-safe augmentations of uint8 cell crops, on the training device.

Per-image PIL transforms starve training on a few CPU cores, so every view of a
batch is made at once from the cached uint8 array: one affine sampling grid per
image (random resized crop, any rotation, flips) through
:func:`torch.nn.functional.grid_sample`, stain jitter in haematoxylin-eosin-DAB
optical-density space [0], brightness/contrast/saturation/hue jitter, rare
grayscale and a per-image Gaussian blur by grouped convolution.

Cells have no orientation, so any angle and both flips are allowed; the crop scale
stays moderate so that the cell stays in view; colour changes stay in the range seen
between haematology labs (no heavy grayscale).

- [0] Tellez et al., Whole-slide mitosis detection in H&E breast histology using
  PHH3 as a reference to train distilled stain-invariant CNNs, 2018,
  https://arxiv.org/abs/1808.05896
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = ["AugmentConfig", "BatchAugment", "to_input"]

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), RGB optical
# density.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LUMA = (0.299, 0.587, 0.114)
_Rand = Callable[..., Tensor]


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one family of views (e.g. DINO's global or local crops).

    Attributes:
        out_px: Side of the output views in pixels.
        scale: Range of the crop's area as a fraction of the cached crop.
        ratio: Range of the crop's aspect ratio (width / height).
        rotate: Rotate by a uniformly random angle in [0, 360) degrees.
        flip_p: Probability of a horizontal flip (with any rotation this also
            covers vertical flips).
        stain_sigma: Haematoxylin/eosin jitter: each stain's optical density is
            scaled by U(1 - s, 1 + s) and shifted by U(-s, s) * 0.1; 0 disables it.
        jitter_p: Probability of brightness/contrast/saturation/hue jitter.
        brightness: Brightness factor range half-width (factor U(1 - b, 1 + b)).
        contrast: Contrast factor range half-width.
        saturation: Saturation factor range half-width.
        hue: Hue rotation as a fraction of a full turn (angle U(-h, h) * 360°).
        gray_p: Probability of converting a view to grayscale (keep small).
        blur_p: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's standard deviation, in output pixels.
    """

    out_px: int = 64
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate: bool = True
    flip_p: float = 0.5
    stain_sigma: float = 0.05
    jitter_p: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.04
    gray_p: float = 0.05
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.2)

    def to_dict(self) -> dict[str, object]:
        """Return the parameters as a JSON-ready dict."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
        }


def to_input(
    images_u8: Tensor,
    mean: tuple[float, float, float] | list[float],
    std: tuple[float, float, float] | list[float],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Turn uint8 cells into a normalised network input, without augmentation.

    Args:
        images_u8: uint8 (B, H, W, 3) RGB cells.
        mean: Per-channel mean of the [0, 1] RGB values.
        std: Per-channel standard deviation.
        dtype: Floating dtype of the result.

    Returns:
        (B, 3, H, W) tensor ``(x / 255 - mean) / std`` in ``dtype``.

    Examples:
        >>> x = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
        >>> to_input(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).unique().tolist()
        [1.0]
    """
    x = images_u8.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)


class BatchAugment(nn.Module):
    """Make one random view of every cell of a uint8 batch.

    Args:
        config: The augmentation parameters.
        mean: Per-channel mean used to normalise the output.
        std: Per-channel standard deviation used to normalise the output.

    Examples:
        >>> aug = BatchAugment(AugmentConfig(out_px=16), (0.5,) * 3, (0.25,) * 3)
        >>> x = torch.randint(0, 256, (4, 24, 24, 3), dtype=torch.uint8)
        >>> g = torch.Generator().manual_seed(0)
        >>> aug(x, g).shape
        torch.Size([4, 3, 16, 16])
    """

    def __init__(
        self,
        config: AugmentConfig,
        mean: tuple[float, float, float] | list[float],
        std: tuple[float, float, float] | list[float],
    ) -> None:
        super().__init__()
        self.config = config
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False
        )

    def forward(
        self, images_u8: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Return one augmented, normalised view of each image.

        Args:
            images_u8: uint8 (B, H, W, 3) RGB cells, on any device.
            generator: A CPU generator for the random parameters (same seed and
                input → same output); ``None`` uses torch's global generator.

        Returns:
            float32 (B, 3, out_px, out_px) on the input's device, normalised with
            ``mean``/``std``; before normalisation every value lies in [0, 1].
        """
        x = images_u8.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        x = self.augment01(x, generator)
        mean: Tensor = self.mean
        std: Tensor = self.std
        return (x - mean) / std

    def augment01(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment float (B, 3, H, W) images in [0, 1]; the values stay in [0, 1]."""
        cfg = self.config
        b = x.shape[0]

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator).to(x.device)

        x = _geometric(x, cfg, rand)
        if cfg.stain_sigma > 0:
            x = _stain_jitter(x, cfg.stain_sigma, rand)
        if cfg.jitter_p > 0:
            x = _colour_jitter(x, cfg, rand)
        if cfg.gray_p > 0:
            gray = (x * _luma(x)).sum(dim=1, keepdim=True).expand_as(x)
            x = torch.where((rand(b) < cfg.gray_p).view(b, 1, 1, 1), gray, x)
        if cfg.blur_p > 0:
            x = _blur(x, cfg, rand)
        return x.clamp_(0.0, 1.0)


def _luma(x: Tensor) -> Tensor:
    return torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)


def _geometric(x: Tensor, cfg: AugmentConfig, rand: _Rand) -> Tensor:
    """Random resized crop + rotation + flip as one affine grid per image."""
    b = x.shape[0]
    area = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * rand(b)
    log_r = math.log(cfg.ratio[0]) + (
        math.log(cfg.ratio[1]) - math.log(cfg.ratio[0])
    ) * rand(b)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the full width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - w) * (2.0 * rand(b) - 1.0)  # centre in [-1, 1] grid units
    cy = (1.0 - h) * (2.0 * rand(b) - 1.0)
    angle = 2.0 * math.pi * rand(b) if cfg.rotate else torch.zeros(b, device=x.device)
    flip = torch.where(rand(b) < cfg.flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * w * flip, -sin * h, cx], dim=1),
            torch.stack([sin * w * flip, cos * h, cy], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [b, 3, cfg.out_px, cfg.out_px], align_corners=False)
    if x.shape[-1] > 2 * cfg.out_px / math.sqrt(max(cfg.scale[1], 1e-3)):
        # Shrink first (antialiased) so that bilinear sampling does not alias.
        side = math.ceil(2 * cfg.out_px / math.sqrt(max(cfg.scale[1], 1e-3)))
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def _stain_jitter(x: Tensor, sigma: float, rand: _Rand) -> Tensor:
    """Scale and shift each stain's optical density (HED space).

    ``od' = od @ H diag(alpha) R + beta @ R`` (H: RGB→HED, R: HED→RGB), folded into
    one per-image 3x3 matrix and offset.
    """
    b = x.shape[0]
    to_hed = _HED_FROM_RGB.to(x.device)
    to_rgb = _RGB_FROM_HED.to(x.device)
    alpha = 1.0 + sigma * (2.0 * rand(b, 3) - 1.0)
    beta = 0.1 * sigma * (2.0 * rand(b, 3) - 1.0)
    m = to_hed.unsqueeze(0) * alpha.unsqueeze(1) @ to_rgb  # (B, 3, 3)
    offset = beta @ to_rgb  # (B, 3)
    od = -torch.log(x.clamp(min=1.0 / 255.0))  # (B, 3, H, W) optical density
    od = torch.einsum("bchw,bcd->bdhw", od, m) + offset.view(b, 3, 1, 1)
    return torch.exp(-od).clamp(0.0, 1.0)


def _colour_jitter(x: Tensor, cfg: AugmentConfig, rand: _Rand) -> Tensor:
    """Brightness, contrast, saturation and hue jitter (fixed order), per image."""
    b = x.shape[0]
    on = (rand(b) < cfg.jitter_p).to(x.dtype).view(b, 1, 1, 1)

    def factor(half_width: float) -> Tensor:
        f = 1.0 + half_width * (2.0 * rand(b) - 1.0)
        return (1.0 + on.view(b) * (f - 1.0)).view(b, 1, 1, 1)

    y = x * factor(cfg.brightness)
    gray_mean = (y * _luma(y)).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    y = (y - gray_mean) * factor(cfg.contrast) + gray_mean
    gray = (y * _luma(y)).sum(dim=1, keepdim=True)
    y = (y - gray) * factor(cfg.saturation) + gray
    if cfg.hue > 0:
        # Hue rotation about the gray axis (YIQ chroma rotation).
        angle = 2.0 * math.pi * cfg.hue * (2.0 * rand(b) - 1.0) * on.view(b)
        y = _rotate_hue(y.clamp(0.0, 1.0), angle)
    return y.clamp(0.0, 1.0)


_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _rotate_hue(x: Tensor, angle: Tensor) -> Tensor:
    b = x.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack(
        [
            torch.stack([one, zero, zero], 1),
            torch.stack([zero, cos, -sin], 1),
            torch.stack([zero, sin, cos], 1),
        ],
        1,
    )  # (B, 3, 3) acting on YIQ
    m = _YIQ2RGB.to(x.device) @ rot @ _RGB2YIQ.to(x.device)  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m.view(b, 3, 3), x)


def _blur(x: Tensor, cfg: AugmentConfig, rand: _Rand) -> Tensor:
    """Separable Gaussian blur with a per-image sigma (grouped convolution)."""
    b, c, hgt, wid = x.shape
    on = rand(b) < cfg.blur_p
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * rand(b)
    radius = max(1, math.ceil(2.0 * cfg.blur_sigma[1]))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1) ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    identity = (t == 0).to(x.dtype).view(1, -1).expand(b, -1)
    k = torch.where(on.view(b, 1), k, identity)  # (B, 2r+1)
    k = k.repeat_interleave(c, dim=0)  # (B*C, 2r+1)
    y = x.reshape(1, b * c, hgt, wid)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, hgt, wid)
