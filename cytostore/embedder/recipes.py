"""Pretraining recipes: the settings ``pretrain`` uses for what the caller leaves unset.

Two recipes are documented in ``docs/recipes.md``:

- :data:`CPU_RECIPE` (no CUDA GPU): SimCLR, the ``tiny`` 4-layer CNN, 96 px, batch
  128, a 15-minute budget. Measured on ``pbc_sample`` (see ``BENCHMARKS.md``).
- :data:`GPU_RECIPE` (a CUDA GPU): DINO, ResNet-50, 128 px, batch 256, 100 epochs.
  The standard settings of the DINO/SimCLR papers scaled to 128 px cells; **not
  measured here** (no GPU was available when it was written).

:func:`recipe_for` picks one by device; :func:`fill_recipe` fills the options the
caller left as ``None``. The budget (``epochs``, ``max_minutes``) is one unit: when
either is given, the recipe's budget is not used at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Recipe", "CPU_RECIPE", "GPU_RECIPE", "recipe_for", "fill_recipe"]


@dataclass(frozen=True)
class Recipe:
    """Defaults of one pretraining recipe.

    Attributes:
        name: ``cpu`` or ``gpu``.
        method: SSL method.
        backbone: Backbone name.
        crop_px: Input size in pixels.
        batch_size: Cells per batch and device.
        epochs: Total epochs (``None``: as many as fit in ``max_minutes``).
        max_minutes: Time budget (``None``: no limit, run ``epochs``).
        measured: Whether ``docs/recipes.md`` reports a measured run of it.
    """

    name: str
    method: str
    backbone: str
    crop_px: int
    batch_size: int
    epochs: int | None
    max_minutes: float | None
    measured: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict."""
        return asdict(self)


#: Without a CUDA GPU: the measured 15-minute CPU recipe.
CPU_RECIPE = Recipe(
    name="cpu",
    method="simclr",
    backbone="tiny",
    crop_px=96,
    batch_size=128,
    epochs=None,
    max_minutes=15.0,
    measured=True,
)
#: With a CUDA GPU: DINO / ResNet-50 at 128 px for 100 epochs (not measured here).
GPU_RECIPE = Recipe(
    name="gpu",
    method="dino",
    backbone="resnet50",
    crop_px=128,
    batch_size=256,
    epochs=100,
    max_minutes=None,
    measured=False,
)


def recipe_for(device: torch.device) -> Recipe:
    """Return the recipe for training on ``device``.

    Args:
        device: The resolved training device (see
            :func:`cytostore.embedder.resolve_device`).

    Returns:
        :data:`GPU_RECIPE` for a CUDA device, else :data:`CPU_RECIPE` (CPU, MPS).

    Examples:
        >>> recipe_for(torch.device("cpu")).max_minutes
        15.0
        >>> recipe_for(torch.device("cuda", 0)).name
        'gpu'
    """
    return GPU_RECIPE if device.type == "cuda" else CPU_RECIPE


def fill_recipe(
    recipe: Recipe,
    *,
    method: str | None,
    backbone: str | None,
    crop_px: int | None,
    batch_size: int | None,
    epochs: int | None,
    max_minutes: float | None,
) -> Recipe:
    """Return ``recipe`` with every option the caller gave put in its place.

    Options left as ``None`` keep the recipe's value, except the budget: giving
    ``epochs`` or ``max_minutes`` replaces the recipe's budget (both of its fields).

    Args:
        recipe: The device's recipe.
        method: SSL method, or ``None``.
        backbone: Backbone, or ``None``.
        crop_px: Input size, or ``None``.
        batch_size: Batch size, or ``None``.
        epochs: Epochs, or ``None``.
        max_minutes: Time budget, or ``None``.

    Returns:
        The settings to train with (``name`` stays the recipe's).

    Examples:
        >>> fill_recipe(CPU_RECIPE, method=None, backbone="resnet18", crop_px=None,
        ...             batch_size=None, epochs=3, max_minutes=None).max_minutes is None
        True
    """
    own_budget = epochs is not None or max_minutes is not None
    return Recipe(
        name=recipe.name,
        method=recipe.method if method is None else method,
        backbone=recipe.backbone if backbone is None else backbone,
        crop_px=recipe.crop_px if crop_px is None else crop_px,
        batch_size=recipe.batch_size if batch_size is None else batch_size,
        epochs=epochs if own_budget else recipe.epochs,
        max_minutes=max_minutes if own_budget else recipe.max_minutes,
        measured=recipe.measured,
    )
