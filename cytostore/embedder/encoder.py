"""The Encoder: a registered model turned into a function from cells to vectors.

Cells (by id, through the preprocessed cache) and outside images (paths or uint8
arrays, e.g. a query for search-by-image) go through the same
:class:`~cytostore.embedder.Preprocessing` recorded in the model card, so a query is
treated exactly like the stored cells. The output is the backbone's pooled feature
(never an SSL projection head), float32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cytostore.embedder.backbones import build_backbone, load_init_weights
from cytostore.embedder.cache import build_cache
from cytostore.embedder.card import WEIGHTS_FILE, ModelCard, sha256_file
from cytostore.embedder.device import (
    autocast,
    resolve_device,
    resolve_precision,
)
from cytostore.embedder.foundation import is_foundation_arch
from cytostore.embedder.preprocess import Preprocessing
from cytostore.embedder.registry import load_card, model_dir
from cytostore.errors import CytostoreError, InvalidArgumentError, StoreCorruptError
from cytostore.store import Store

__all__ = ["Encoder", "ImageInput", "fuse_for_inference"]

logger = logging.getLogger(__name__)

#: One outside image: a file path or a uint8 ``(H, W, 3)`` array.
ImageInput = str | os.PathLike[str] | npt.NDArray[np.uint8]


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``module`` with each BatchNorm folded into its conv.

    Inference only: a batch norm in eval mode is an affine map, so it merges into
    the convolution before it (``torch.fx.experimental.optimization.fuse``); the
    outputs agree to float rounding (relative error ~1e-6) and a CNN runs faster
    (``tiny`` at 96 px on 2 CPU cores: 1.3k -> 1.9k cells/s; ResNet-18: +3 %).
    A module that ``torch.fx`` cannot trace, or without a batch norm (a ViT: nothing
    to fold, and no copy of its weights), is returned unchanged (in eval mode).

    Args:
        module: The backbone (not modified).

    Returns:
        The fused copy, or ``module`` itself.
    """
    from torch.fx.experimental.optimization import fuse

    module = module.eval()
    if not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
    ):
        return module  # nothing to fold (a ViT): skip fuse's deep copy of the weights
    try:
        return fuse(module, inplace=False)
    except Exception as exc:  # noqa: BLE001 - any trace failure: run it unfused
        logger.debug("not fusing %s (%s)", type(module).__name__, exc)
        return module


class Encoder:
    """A backbone with its preprocessing, ready to embed cells or images.

    Use :meth:`load` for a registered model; the constructor wraps any backbone.

    Args:
        backbone: Module mapping float ``(n, 3, c, c)`` to ``(n, dim)``; it is put in
            eval mode and moved to ``device`` in ``channels_last`` layout in place
            (call ``.train()`` again to keep training it).
        preprocessing: What every input goes through.
        name: Model name (for messages and logs).
        dim: Feature width; measured with one forward pass when ``None``.
        store: The store cell ids refer to (needed to embed ids).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with native bf16,
            else fp32; see :mod:`cytostore.embedder.device`), ``fp32``, ``bf16``,
            ``fp16`` (CUDA only).
        batch_size: Default batch size; ``None``: 256 on CUDA, 64 on the CPU.

    Attributes:
        name, dim, preprocessing, backbone, device, precision, card (``None`` unless
        loaded from a store).
    """

    def __init__(
        self,
        backbone: nn.Module,
        preprocessing: Preprocessing,
        *,
        name: str = "backbone",
        dim: int | None = None,
        store: Store | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.preprocessing = preprocessing
        self.name = name
        self.store = store
        self.card: ModelCard | None = None
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 64)
        self.backbone = backbone.eval().to(self.device)
        self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if dim is None:
            dim = int(self._forward(self._blank(1)).shape[1])
        self.dim = dim

    @classmethod
    def load(
        cls,
        store: Store,
        name: str,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
    ) -> Encoder:
        """Load a registered model from ``store``.

        Args:
            store: The store.
            name: Registered model name.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
            precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
            batch_size: Default batch size (``None``: by device).

        Returns:
            The encoder, in eval mode on ``device``, its batch norms folded into the
            convolutions before them (:func:`fuse_for_inference`).

        Raises:
            UnknownModelError: If no such model is registered (lists the names).
            StoreCorruptError: If the weights are missing or their sha256 differs
                from the card's.
        """
        card = load_card(store, name)
        weights = model_dir(store, name) / WEIGHTS_FILE
        if not weights.is_file():
            raise StoreCorruptError(
                f"model {name!r} has no weights file {str(weights)!r}: re-register "
                "it (pretrain again)"
            )
        if card.sha256 and sha256_file(weights) != card.sha256:
            raise StoreCorruptError(
                f"weights {str(weights)!r} do not match the sha256 in model {name!r}'s "
                "card (changed after registration): restore them or re-register"
            )
        crop_px = card.preprocessing.crop_px
        if is_foundation_arch(card.backbone):  # imported: built from its own file
            module, _ = build_backbone(card.backbone, weights, crop_px=crop_px)
        else:
            module, _ = build_backbone(card.backbone, crop_px=crop_px)
            load_init_weights(module, weights, name=card.backbone)
        enc = cls(
            fuse_for_inference(module),
            card.preprocessing,
            name=name,
            dim=card.dim,
            store=store,
            device=device,
            precision=precision,
            batch_size=batch_size,
        )
        enc.card = card
        return enc

    # ---------------------------------------------------------------- forward
    def _blank(self, n: int) -> npt.NDArray[np.uint8]:
        c = self.preprocessing.crop_px
        return np.zeros((n, c, c, 3), dtype=np.uint8)

    def _forward(self, batch_u8: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        x = self.preprocessing.to_tensor(batch_u8, device=self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            y = self.backbone(x)
        return y.float().cpu().numpy().astype(np.float32, copy=False)

    def embed_preprocessed(
        self, batch_u8: npt.NDArray[np.uint8], batch_size: int | None = None
    ) -> npt.NDArray[np.float32]:
        """Embed already preprocessed pixels.

        Args:
            batch_u8: uint8 ``(n, crop_px, crop_px, 3)``, e.g. rows of the cache.
            batch_size: Cells per forward pass (``None``: the encoder's default).

        Returns:
            float32 ``(n, dim)``.
        """
        bs = batch_size or self.batch_size
        out = np.empty((len(batch_u8), self.dim), dtype=np.float32)
        for i in range(0, len(batch_u8), bs):
            out[i : i + bs] = self._forward(batch_u8[i : i + bs])
        return out

    # --------------------------------------------------------------- public
    def embed(
        self,
        ids_or_images: npt.ArrayLike | Sequence[ImageInput],
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        um_per_px: float | Sequence[float | None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embed cells of the store by id, or outside images.

        Args:
            ids_or_images: int64 cell ids (a 1-D integer array or a list of ints), or
                images: paths, uint8 ``(H, W, 3)`` arrays, or one uint8
                ``(n, H, W, 3)`` array.
            batch_size: Cells per forward pass (``None``: the encoder's default).
            progress: Called with ``(done, total)``.
            um_per_px: For images only: their pixel size in µm, one for all or one
                per image (``None``: unknown, the image is resized whole).

        Returns:
            float32 ``(n, dim)``, in input order.

        Raises:
            InvalidArgumentError: If ids are given without a store, or are unknown.
            CytostoreError: If a cell's file vanished or does not decode (it is
                recorded in ``skipped``; :meth:`iter_embed` leaves such cells out).
            ImageDecodeError: If an image path does not decode.
        """
        ids = _as_ids(ids_or_images)
        if ids is None:
            images: Any = ids_or_images
            return self._embed_images(images, um_per_px, batch_size, progress)
        if ids.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if um_per_px is not None:
            raise InvalidArgumentError(
                "um_per_px is for images: cells by id use their catalogued µm/px"
            )
        unique = np.unique(ids)
        got: dict[int, npt.NDArray[np.float32]] = {}
        for chunk, vecs in self.iter_embed(unique, batch_size, progress):
            got.update(zip(chunk.tolist(), vecs, strict=True))
        lost = [int(i) for i in unique if int(i) not in got]
        if lost:
            raise CytostoreError(
                f"{len(lost)} cells could not be read (e.g. {lost[:5]}; recorded in "
                "the skipped table): restore their files, or use iter_embed / "
                "'cytostore embed', which leave them out"
            )
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, cid in enumerate(ids.tolist()):
            out[i] = got[cid]
        return out

    def iter_embed(
        self,
        ids: npt.ArrayLike,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Stream embeddings of cells from the preprocessed cache, batch by batch.

        Missing cache rows are built first (in parallel); cells whose file vanished
        or does not decode are recorded in ``skipped`` and left out.

        Args:
            ids: Cell ids (order kept, duplicates allowed).
            batch_size: Cells per forward pass (``None``: the encoder's default).
            progress: Called with ``(done, total)`` cells embedded.

        Yields:
            ``(ids_chunk int64 (m,), vectors float32 (m, dim))``.

        Raises:
            InvalidArgumentError: If no store is attached or an id is unknown.
        """
        if self.store is None:
            raise InvalidArgumentError(
                "this Encoder has no store: load it with Encoder.load(store, name) "
                "to embed cells by id"
            )
        want = np.asarray(ids, dtype=np.int64).reshape(-1)
        cache = build_cache(self.store, self.preprocessing, want)
        keep = want[cache.contains(want)]
        bs = batch_size or self.batch_size
        total = len(keep)
        if progress is not None:
            progress(0, total)
        for i in range(0, total, bs):
            chunk = keep[i : i + bs]
            vecs = self._forward(cache.rows(chunk))
            if progress is not None:
                progress(min(i + bs, total), total)
            yield chunk, vecs

    def _embed_images(
        self,
        images: Sequence[ImageInput] | npt.NDArray[np.uint8],
        um_per_px: float | Sequence[float | None] | None,
        batch_size: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> npt.NDArray[np.float32]:
        items: list[Any] = list(images)
        if um_per_px is None or isinstance(um_per_px, int | float):
            scales: list[float | None] = [um_per_px] * len(items)
        else:
            scales = list(um_per_px)
        if len(scales) != len(items):
            raise InvalidArgumentError(
                f"{len(items)} images but {len(scales)} µm/px values: give one value "
                "for all or one per image"
            )
        bs = batch_size or self.batch_size
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if progress is not None:
            progress(0, len(items))
        for i in range(0, len(items), bs):
            batch = self._blank(len(items[i : i + bs]))
            for j, (item, um) in enumerate(
                zip(items[i : i + bs], scales[i : i + bs], strict=True)
            ):
                batch[j] = self.preprocessing.apply(_load_image(item), um)
            out[i : i + len(batch)] = self._forward(batch)
            if progress is not None:
                progress(i + len(batch), len(items))
        return out

    def __repr__(self) -> str:
        return (
            f"Encoder(name={self.name!r}, dim={self.dim}, device={self.device}, "
            f"precision={self.precision!r}, prep_id={self.preprocessing.prep_id!r})"
        )


def _as_ids(value: Any) -> npt.NDArray[np.int64] | None:
    """Return ``value`` as int64 ids if it is 1-D integers, else ``None``."""
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and np.issubdtype(value.dtype, np.integer):
            return value.astype(np.int64, copy=False)
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim == 1 and not value.is_floating_point():
            return value.cpu().numpy().astype(np.int64)
        return None
    if isinstance(value, str | os.PathLike):
        raise InvalidArgumentError(
            "embed takes a list of images or ids: wrap a single path in a list"
        )
    seq = list(value)
    if seq and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in seq
    ):
        return np.asarray(seq, dtype=np.int64)
    if not seq:
        return np.zeros(0, dtype=np.int64)
    return None


def _load_image(item: Any) -> npt.NDArray[np.uint8]:
    if isinstance(item, str | os.PathLike):
        from cytostore.data.images import load_rgb

        return load_rgb(Path(item))
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        raise InvalidArgumentError(
            f"images must be uint8 arrays or paths, got {arr.dtype}: convert with "
            "np.clip(x, 0, 255).astype(np.uint8)"
        )
    return arr
