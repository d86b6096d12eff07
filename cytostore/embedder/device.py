"""Devices and numeric precision: where a backbone runs and in which float format.

``resolve_device("auto")`` picks CUDA when present, else the CPU.
``resolve_precision("auto", device)`` picks the fastest format that keeps features
close to float32:

- CUDA: bfloat16 autocast where the GPU supports it, else float16 autocast;
- CPU: bfloat16 autocast only where the CPU computes bf16 natively (AVX512-BF16 or
  AMX); on other CPUs (e.g. AVX2 only) oneDNN emulates bf16 and runs several times
  *slower* than float32, so float32 is used. Convolutional backbones run in
  ``channels_last`` layout on every device (faster on CPU and tensor cores).
"""

from __future__ import annotations

import ctypes
import logging
import sys

import torch

from cytostore._torch import resolve_device
from cytostore.errors import InvalidArgumentError

__all__ = [
    "PRECISIONS",
    "resolve_device",
    "resolve_precision",
    "autocast",
    "tune_allocator",
]

logger = logging.getLogger(__name__)

#: Accepted precision names.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_fast_bf16() -> bool:
    """Return whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # pragma: no cover - probe unavailable in this build
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return the concrete precision (``fp32``, ``bf16`` or ``fp16``) for ``device``.

    Args:
        precision: One of :data:`PRECISIONS`; ``auto`` decides as the module says.
        device: Where the model runs.

    Returns:
        ``fp32``, ``bf16`` or ``fp16``.

    Raises:
        InvalidArgumentError: If ``precision`` is unknown, or ``fp16`` on the CPU.
    """
    if precision not in PRECISIONS:
        raise InvalidArgumentError(
            f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}"
        )
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise InvalidArgumentError(
            "fp16 autocast is for CUDA: use bf16 or fp32 on the CPU"
        )
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Return the autocast context for a concrete precision (disabled for fp32)."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(
        device_type=device.type, dtype=dtype, enabled=precision != "fp32"
    )


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back at once.

    A CNN forward on the CPU allocates and frees tens of MB of activations per
    batch. By default glibc serves each such block with a fresh ``mmap`` and
    unmaps it on ``free``, so every batch page-faults its memory in again (about
    150 faults per cell for ``tiny`` at 96 px). With ``mmap`` off for the heap
    (``M_MMAP_MAX=0``) and a high trim threshold, freed blocks are reused: on 2
    CPU cores ``tiny`` embeds about 1.5k instead of 1.1k cells/s. The process then
    keeps its peak memory until it exits. :func:`~cytostore.embedder.embed` and
    :func:`~cytostore.embedder.pretrain` (so ``cytostore embed`` and ``cytostore
    pretrain``) call this on Linux; elsewhere it does nothing.

    Returns:
        True if the allocator is tuned (now or before), False if not possible.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    mallopt(m_top_pad, 64 << 20)
    _ALLOCATOR_TUNED = bool(ok)
    if ok:
        logger.debug("glibc allocator tuned: no mmap for heap blocks, trim at 1 GiB")
    return _ALLOCATOR_TUNED
