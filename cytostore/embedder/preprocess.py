"""Preprocessing: bring every cell image to one physical scale and one square size.

The three TCIA datasets image cells at 0.07, 0.086 and 0.17 µm/px, so the same 10 µm
cell is 141, 116 or 58 pixels wide. :class:`Preprocessing` resamples each image to one
target ``um_per_px`` and cuts the centred ``crop_px`` square, so one backbone sees one
scale. The exact same steps run when cells are cached for training, when they are
embedded, and when a query image is searched for, and they are recorded in the model
card (``prep_id`` names them).

Models imported from outside (DinoBloom, DINOv2, timm) may instead ask for the
original protocol of their authors: ``scale="resize"`` resizes each whole image to
``crop_px`` whatever its µm/px (see ``docs/models.md``).

Pixels stay uint8 up to here; the per-channel normalisation (``mean``, ``std``) is
applied on the tensor side by :meth:`Preprocessing.to_tensor`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from cytostore.errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Preprocessing",
    "DEFAULT_FOV_UM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCALES",
]

logger = logging.getLogger(__name__)

#: Field of view (µm) the crop covers by default: one leukocyte (~10-20 µm) and a rim.
DEFAULT_FOV_UM = 24.0
#: torchvision's normalisation, so offline torchvision ``--init`` weights fit as-is.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Version of the resampling algorithm; part of ``prep_id`` so a change rebuilds caches.
_ALGORITHM = "bicubic-box-v1"
#: µm/px policies: ``physical`` (resample to ``um_per_px``, centred crop: ours) or
#: ``resize`` (the whole image resized to ``crop_px``, as DinoBloom was trained).
SCALES = ("physical", "resize")


@dataclass(frozen=True)
class Preprocessing:
    """Resample to ``um_per_px``, centre-crop/pad to ``crop_px``, normalise on tensors.

    Attributes:
        um_per_px: Target pixel size in µm. Every image is resampled from its own
            µm/px to this one (images of unknown µm/px are resized whole instead).
        crop_px: Side of the square output in pixels (the backbone's input size).
        mean: Per-channel RGB mean subtracted by :meth:`to_tensor` (values in 0..1).
        std: Per-channel RGB standard deviation divided by :meth:`to_tensor`.
        scale: ``physical`` (default): resample to ``um_per_px`` and crop;
            ``resize``: resize every whole image to ``crop_px`` (``um_per_px`` is
            then only nominal), the protocol of models trained that way.

    Examples:
        >>> prep = Preprocessing.for_input(128)
        >>> prep.um_per_px, prep.crop_px
        (0.1875, 128)
        >>> img = np.full((144, 144, 3), 200, dtype=np.uint8)
        >>> prep.apply(img, src_um_per_px=0.1725).shape
        (128, 128, 3)
        >>> prep == Preprocessing.from_dict(prep.to_dict())
        True
    """

    um_per_px: float = DEFAULT_FOV_UM / 128
    crop_px: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: str = "physical"
    _id: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        if not (isinstance(self.crop_px, int | np.integer) and self.crop_px >= 16):
            raise InvalidArgumentError(
                f"crop_px must be an integer >= 16, got {self.crop_px!r}"
            )
        if not (math.isfinite(self.um_per_px) and self.um_per_px > 0):
            raise InvalidArgumentError(
                f"um_per_px must be a positive number, got {self.um_per_px!r}"
            )
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != 3:
                raise InvalidArgumentError(
                    f"{what} needs 3 values (R, G, B), got {vals!r}"
                )
        if min(self.std) <= 0:
            raise InvalidArgumentError(f"std must be positive, got {self.std!r}")
        if self.scale not in SCALES:
            raise InvalidArgumentError(
                f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}"
            )
        object.__setattr__(self, "crop_px", int(self.crop_px))
        object.__setattr__(self, "um_per_px", float(self.um_per_px))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "_id", self._hash())

    # ------------------------------------------------------------ construction
    @classmethod
    def for_input(
        cls,
        crop_px: int,
        fov_um: float = DEFAULT_FOV_UM,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> Preprocessing:
        """Return the preprocessing whose ``crop_px`` square covers ``fov_um`` µm.

        Args:
            crop_px: Backbone input size in pixels.
            fov_um: Field of view of the crop in µm (default 24 µm: one cell).
            mean: Per-channel normalisation mean.
            std: Per-channel normalisation standard deviation.

        Returns:
            ``Preprocessing(um_per_px=fov_um / crop_px, crop_px=crop_px, ...)``.

        Raises:
            InvalidArgumentError: If ``fov_um`` or ``crop_px`` is not positive.
        """
        if not fov_um > 0:
            raise InvalidArgumentError(f"fov_um must be positive, got {fov_um!r}")
        return cls(um_per_px=fov_um / crop_px, crop_px=crop_px, mean=mean, std=std)

    @property
    def prep_id(self) -> str:
        """Short stable hash of the fields (and the algorithm version)."""
        return self._id

    @property
    def fov_um(self) -> float:
        """Field of view of the output square in µm."""
        return self.um_per_px * self.crop_px

    def _hash(self) -> str:
        doc = {
            "algorithm": _ALGORITHM,
            "crop_px": self.crop_px,
            "mean": [round(v, 6) for v in self.mean],
            "std": [round(v, 6) for v in self.std],
            "um_per_px": round(self.um_per_px, 9),
        }
        if self.scale != "physical":  # physical ids stay as they were before scale
            doc["scale"] = self.scale
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Return the fields and ``prep_id`` as a JSON-ready dict.

        ``scale`` is written only when it is not ``physical`` (older records lack it).
        """
        doc: dict[str, Any] = {
            "um_per_px": self.um_per_px,
            "crop_px": self.crop_px,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.scale != "physical":
            doc["scale"] = self.scale
        return doc | {"prep_id": self.prep_id}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output (``prep_id`` is recomputed).

        Raises:
            InvalidArgumentError: If a field is missing or invalid.
        """
        try:
            prep = cls(
                um_per_px=float(doc["um_per_px"]),
                crop_px=int(doc["crop_px"]),
                mean=tuple(doc.get("mean", IMAGENET_MEAN)),
                std=tuple(doc.get("std", IMAGENET_STD)),
                scale=str(doc.get("scale", "physical")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"not a preprocessing record ({exc!r}): it needs um_per_px, crop_px, "
                "mean and std"
            ) from None
        if doc.get("prep_id") not in (None, prep.prep_id):
            logger.warning(
                "preprocessing recorded as %s is now %s (algorithm changed): its "
                "cache will be rebuilt",
                doc["prep_id"],
                prep.prep_id,
            )
        return prep

    # ---------------------------------------------------------------- pixels
    def apply(
        self, rgb: npt.NDArray[np.uint8] | Image.Image, src_um_per_px: float | None
    ) -> npt.NDArray[np.uint8]:
        """Resample one image to the target scale and cut the centred square.

        The image is resampled (bicubic, antialiased when shrinking) by
        ``src_um_per_px / um_per_px`` around its centre; where the square reaches
        beyond the image it is padded with the median colour of the image border
        (the smear background), never black. With ``src_um_per_px=None`` (unknown),
        or with ``scale="resize"``, the whole image is padded to a square and
        resized to ``crop_px``.

        Args:
            rgb: uint8 ``(H, W, 3)`` RGB (``(H, W)`` gray and ``(H, W, 4)`` RGBA are
                accepted and converted), or an RGB Pillow image (as
                :func:`cytostore.data.images.load_rgb_image` gives: no array copies).
            src_um_per_px: Pixel size of ``rgb`` in µm; ``None``, NaN or <= 0 mean
                unknown.

        Returns:
            uint8 ``(crop_px, crop_px, 3)``.

        Raises:
            InvalidArgumentError: If ``rgb`` is not an 8-bit image array or an RGB
                Pillow image.
        """
        img: npt.NDArray[np.uint8] | None = None
        if isinstance(rgb, Image.Image):
            if rgb.mode != "RGB":
                raise InvalidArgumentError(
                    f"expected an RGB Pillow image, got mode {rgb.mode}: decode "
                    "files with cytostore.data.load_rgb"
                )
            pil = rgb
            w, h = rgb.size
        else:
            img = _as_rgb(rgb)
            pil = Image.fromarray(img)
            h, w = img.shape[:2]
        known = (
            self.scale == "physical"
            and src_um_per_px is not None
            and math.isfinite(src_um_per_px)
            and src_um_per_px > 0
        )
        # Side of the source square (in source pixels) that becomes the output.
        side = (
            self.crop_px * self.um_per_px / float(src_um_per_px)  # type: ignore[arg-type]
            if known
            else float(max(h, w))
        )
        pad_y = max(0, math.ceil((side - h) / 2) + 2)
        pad_x = max(0, math.ceil((side - w) / 2) + 2)
        if pad_x or pad_y:
            border = _border_colour(img) if img is not None else _pil_border(pil)
            fill = tuple(int(v) for v in border)
            canvas = Image.new("RGB", (w + 2 * pad_x, h + 2 * pad_y), fill)
            canvas.paste(pil, (pad_x, pad_y))
            pil = canvas
        cy, cx = pil.height / 2, pil.width / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        out = pil.resize(
            (self.crop_px, self.crop_px), Image.Resampling.BICUBIC, box=box
        )
        return np.asarray(out, dtype=np.uint8)

    def apply_many(
        self,
        images: list[npt.NDArray[np.uint8]],
        src_um_per_px: list[float | None] | float | None,
    ) -> npt.NDArray[np.uint8]:
        """Apply :meth:`apply` to each image.

        Args:
            images: uint8 ``(H, W, 3)`` arrays (sizes may differ).
            src_um_per_px: One pixel size for all, or one per image (``None``:
                unknown).

        Returns:
            uint8 ``(n, crop_px, crop_px, 3)``.

        Raises:
            InvalidArgumentError: If the number of pixel sizes differs from images.
        """
        if src_um_per_px is None or isinstance(src_um_per_px, int | float):
            scales: list[float | None] = [src_um_per_px] * len(images)
        else:
            scales = list(src_um_per_px)
        if len(scales) != len(images):
            raise InvalidArgumentError(
                f"{len(images)} images but {len(scales)} µm/px values: give one "
                "value for all or one per image"
            )
        out = np.empty((len(images), self.crop_px, self.crop_px, 3), dtype=np.uint8)
        for i, (img, um) in enumerate(zip(images, scales, strict=True)):
            out[i] = self.apply(img, um)
        return out

    # ---------------------------------------------------------------- tensors
    def to_tensor(
        self,
        batch: npt.NDArray[np.uint8] | torch.Tensor,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Turn a uint8 batch into a normalised float tensor in channels_last layout.

        The uint8 batch moves to ``device`` first (4x less to copy than float).

        Args:
            batch: uint8 ``(n, crop_px, crop_px, 3)`` (numpy or torch).
            device: Target device; ``None`` keeps the batch where it is (CPU for
                numpy).

        Returns:
            float32 ``(n, 3, crop_px, crop_px)`` with ``torch.channels_last``
            strides: ``(x / 255 - mean) / std``.

        Raises:
            InvalidArgumentError: If ``batch`` is not ``(n, h, w, 3)`` uint8.

        Examples:
            >>> import torch
            >>> prep = Preprocessing.for_input(32)
            >>> x = prep.to_tensor(np.zeros((2, 32, 32, 3), dtype=np.uint8))
            >>> tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last)
            ((2, 3, 32, 32), True)
        """
        import torch

        t = (
            torch.from_numpy(np.ascontiguousarray(batch))
            if isinstance(batch, np.ndarray)
            else batch
        )
        if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
            raise InvalidArgumentError(
                f"to_tensor needs a uint8 (n, h, w, 3) batch, got {t.dtype} "
                f"{tuple(t.shape)}: run Preprocessing.apply on each image first"
            )
        if device is not None:
            t = t.to(device, non_blocking=True)
        # NHWC memory viewed as NCHW is exactly the channels_last layout.
        x = t.permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _as_rgb(img: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise InvalidArgumentError(
            f"expected a uint8 image, got {arr.dtype}: decode files with "
            "cytostore.data.load_rgb"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise InvalidArgumentError(
            f"expected an (H, W, 3) RGB image, got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _pil_border(pil: Image.Image) -> npt.NDArray[np.uint8]:
    """:func:`_border_colour` of an RGB Pillow image (without copying its pixels)."""
    w, h = pil.size
    edges = [(0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)]
    parts = [np.asarray(pil.crop(box), dtype=np.uint8).reshape(-1, 3) for box in edges]
    return np.median(np.concatenate(parts, axis=0), axis=0).astype(np.uint8)


def _border_colour(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Per-channel median of the one-pixel border: the smear's background colour."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    return np.median(border, axis=0).astype(np.uint8)
