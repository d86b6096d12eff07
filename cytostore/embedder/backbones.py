"""Backbones: the networks that turn a preprocessed cell image into a feature vector.

Every backbone maps a float tensor ``(n, 3, crop_px, crop_px)`` to ``(n, dim)``; the
classification layer of the torchvision models is replaced by ``nn.Identity`` so the
output is the pooled feature. Weights are never downloaded: a backbone starts from a
seeded random init, or from a torchvision-format state dict a lab brings offline
(``init=PATH``).

Besides the house backbones of :data:`BACKBONES`, every architecture
:mod:`cytostore.embedder.foundation` imports (``dinobloom-s``, ``dinov2-vitb14``,
``timm:<model>``, ``torchvision:<model>``) builds here too, so that a model imported
from a DinoBloom or DINOv2 file loads, embeds and trains like any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cytostore.errors import InvalidArgumentError, WeightsMismatchError

__all__ = [
    "BACKBONES",
    "build_backbone",
    "fit_vit_pos_embedding",
    "is_known_backbone",
    "load_init_weights",
    "TinyCNN",
]

logger = logging.getLogger(__name__)

#: Prefixes of classification layers, ignored when loading a torchvision state dict.
_HEAD_PREFIXES = ("fc.", "heads.")


class TinyCNN(nn.Module):
    """A four-layer convolutional network for tests, demos and CPU-only stores.

    Args:
        dim: Width of the output feature.
        width: Channels of the first layer (doubled twice).
    """

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to features.

        Args:
            x: float ``(n, 3, h, w)``, any ``h, w >= 16``.

        Returns:
            float ``(n, dim)``.
        """
        return torch.flatten(self.pool(self.features(x)), 1)


def _tiny(crop_px: int) -> tuple[nn.Module, int]:
    return TinyCNN(dim=128), 128


def _resnet(arch: str) -> Callable[[int], tuple[nn.Module, int]]:
    def build(crop_px: int) -> tuple[nn.Module, int]:
        import torchvision.models as tvm

        model = getattr(tvm, arch)(weights=None)
        dim = int(model.fc.in_features)
        model.fc = nn.Identity()
        return model, dim

    return build


def _vit_s16(crop_px: int) -> tuple[nn.Module, int]:
    from torchvision.models.vision_transformer import VisionTransformer

    if crop_px % 16:
        raise InvalidArgumentError(
            f"vit_s16 needs an input size divisible by its patch size 16, got "
            f"crop_px={crop_px}: use 96, 112, 128, 224, ..."
        )
    model = VisionTransformer(
        image_size=crop_px,
        patch_size=16,
        num_layers=12,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
    )
    model.heads = nn.Identity()
    return model, 384


#: Backbone name → builder ``(crop_px) -> (module, dim)``.
BACKBONES: dict[str, Callable[[int], tuple[nn.Module, int]]] = {
    "tiny": _tiny,
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "vit_s16": _vit_s16,
}


def is_known_backbone(name: str) -> bool:
    """Return whether ``name`` is a house backbone or an importable architecture."""
    from cytostore.embedder.foundation import is_foundation_arch

    return name in BACKBONES or is_foundation_arch(name)


def build_backbone(
    name: str,
    init: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    *,
    crop_px: int = 128,
    seed: int | None = None,
) -> tuple[nn.Module, int]:
    """Build a backbone by name, randomly initialised or from an offline state dict.

    Args:
        name: One of :data:`BACKBONES` (``tiny``, ``resnet18``, ``resnet34``,
            ``resnet50``, ``vit_s16``), or an importable architecture
            (``dinobloom-s``, ``dinov2-vitb14``, ``timm:<model>``,
            ``torchvision:<model>``; see :mod:`cytostore.embedder.foundation`).
        init: A torchvision-format state dict for this backbone (a path to a ``.pt``
            file, or the dict itself); keys of the classification layer (``fc.*``,
            ``heads.*``) are ignored, every other key must match. ``None``: random.
            For an importable architecture, a path is read and mapped like
            ``cytostore import-model`` does (a DinoBloom or DINOv2 file as
            published).
        crop_px: Input size in pixels (the ViT's positional embedding depends on it).
        seed: Seed of the random init; ``None`` uses torch's current RNG state.

    Returns:
        ``(module, dim)``: the backbone in eval mode, output ``(n, dim)`` float.

    Raises:
        InvalidArgumentError: If ``name`` is unknown or ``crop_px`` does not fit.
        WeightsMismatchError: If ``init`` misses keys or has extra or misshapen ones.

    Examples:
        >>> model, dim = build_backbone("tiny", seed=0)
        >>> model(torch.zeros(2, 3, 96, 96)).shape, dim
        (torch.Size([2, 128]), 128)
    """
    from cytostore.embedder import foundation

    if foundation.is_foundation_arch(name):
        if init is not None and not isinstance(init, Mapping):
            model, dim, _ = foundation.build_from_file(name, init, input_px=crop_px)
            return model, dim
        model, dim = foundation.build_arch(name, input_px=crop_px, seed=seed)
        if init is not None:
            load_init_weights(model, init, name=name)
        return model.eval(), dim
    if name not in BACKBONES:
        raise InvalidArgumentError(
            f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}, or "
            "an imported architecture (dinobloom-s, dinov2-vits14, timm:NAME, "
            "torchvision:NAME)"
        )
    if crop_px < 16:
        raise InvalidArgumentError(f"crop_px={crop_px} is too small: use >= 16 pixels")
    if seed is None:
        model, dim = BACKBONES[name](crop_px)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, dim = BACKBONES[name](crop_px)
    if init is not None:
        load_init_weights(model, init, name=name)
    return model.eval(), dim


def _read_state_dict(
    init: str | os.PathLike[str] | Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    if isinstance(init, Mapping):
        state: Any = dict(init)
    else:
        path = Path(init)
        if not path.is_file():
            raise InvalidArgumentError(
                f"--init weights file {str(path)!r} does not exist: give the path of "
                "a torchvision-format state dict (.pt/.pth)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure
            raise WeightsMismatchError(
                f"cannot read {str(path)!r} as a state dict ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): save it with "
                "torch.save(model.state_dict(), PATH)"
            ) from None
    for wrapper in ("state_dict", "model", "backbone"):
        if isinstance(state, Mapping) and set(state) == {wrapper}:
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightsMismatchError(
            "--init must hold a state dict (name -> tensor): save it with "
            "torch.save(model.state_dict(), PATH)"
        )
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
    }


def fit_vit_pos_embedding(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Interpolate a torchvision ViT positional embedding trained at another size.

    Returns:
        ``state`` itself, or a copy whose ``encoder.pos_embedding`` fits ``model``.
    """
    key = "encoder.pos_embedding"
    if key not in state or not hasattr(model, "image_size"):
        return state
    target = model.state_dict()[key]
    if state[key].shape == target.shape or state[key].shape[-1] != target.shape[-1]:
        return state
    from torchvision.models.vision_transformer import interpolate_embeddings

    logger.info(
        "interpolating the ViT position embedding %s -> %s",
        tuple(state[key].shape),
        tuple(target.shape),
    )
    return interpolate_embeddings(
        image_size=int(getattr(model, "image_size")),  # noqa: B009
        patch_size=int(getattr(model, "patch_size")),  # noqa: B009
        model_state=state,
    )


def load_init_weights(
    model: nn.Module,
    init: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    name: str = "backbone",
) -> None:
    """Load a torchvision-format state dict into ``model`` (in place).

    Keys of classification layers (``fc.*``, ``heads.*``) and a ``module.`` prefix
    are ignored; every other key must exist in ``model`` with the same shape (a ViT
    position embedding of another image size is interpolated).

    Args:
        model: The backbone, as built by :func:`build_backbone`.
        init: Path of a ``.pt`` state dict, or the dict.
        name: Backbone name, for messages.

    Raises:
        InvalidArgumentError: If the file does not exist.
        WeightsMismatchError: If keys are missing, unexpected, or of another shape.
    """
    state = _read_state_dict(init)
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    state = fit_vit_pos_embedding(model, state)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", shapes),
        ):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{more}")
        raise WeightsMismatchError(
            f"the --init weights do not fit backbone {name!r}: {'; '.join(parts)}. "
            f"Give a torchvision {name} state dict or pick the matching --backbone"
        )
    model.load_state_dict(state, strict=True)
