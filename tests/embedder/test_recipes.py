from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from cytostore.embedder.pretrain import pretrain
from cytostore.embedder.recipes import (
    CPU_RECIPE,
    GPU_RECIPE,
    fill_recipe,
    recipe_for,
)
from cytostore.store import Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_UNSET: dict[str, Any] = dict(
    method=None,
    backbone=None,
    crop_px=None,
    batch_size=None,
    epochs=None,
    max_minutes=None,
)


class _StopAfterOneStep(pl.Callback):
    """End training after its first step (the budget under test is 15 minutes)."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        trainer.should_stop = True


@pytest.mark.parametrize(
    ("device", "want"),
    [
        (torch.device("cpu"), CPU_RECIPE),
        (torch.device("cuda"), GPU_RECIPE),
        (torch.device("cuda", 1), GPU_RECIPE),
        (torch.device("mps"), CPU_RECIPE),
    ],
)
def test_recipe_for__cuda_gets_the_gpu_recipe_else_the_cpu_one(
    device: torch.device, want: object
) -> None:
    assert recipe_for(device) is want


def test_recipes__are_the_documented_ones() -> None:
    assert (CPU_RECIPE.method, CPU_RECIPE.backbone, CPU_RECIPE.crop_px) == (
        "simclr",
        "tiny",
        96,
    )
    assert (CPU_RECIPE.batch_size, CPU_RECIPE.epochs, CPU_RECIPE.max_minutes) == (
        128,
        None,
        15.0,
    )
    assert (GPU_RECIPE.method, GPU_RECIPE.backbone, GPU_RECIPE.crop_px) == (
        "dino",
        "resnet50",
        128,
    )
    assert (GPU_RECIPE.batch_size, GPU_RECIPE.epochs, GPU_RECIPE.max_minutes) == (
        256,
        100,
        None,
    )


@pytest.mark.parametrize("recipe", [CPU_RECIPE, GPU_RECIPE])
def test_fill_recipe__nothing_given_is_the_recipe(recipe: Any) -> None:
    assert fill_recipe(recipe, **_UNSET) == recipe


@pytest.mark.parametrize(
    ("given", "epochs", "max_minutes"),
    [
        ({"epochs": 3}, 3, None),
        ({"max_minutes": 2.5}, None, 2.5),
        ({"epochs": 3, "max_minutes": 2.5}, 3, 2.5),
    ],
)
@pytest.mark.parametrize("recipe", [CPU_RECIPE, GPU_RECIPE])
def test_fill_recipe__a_given_budget_replaces_the_recipes_whole_budget(
    recipe: Any, given: dict[str, Any], epochs: int | None, max_minutes: float | None
) -> None:
    got = fill_recipe(recipe, **{**_UNSET, **given})
    assert (got.epochs, got.max_minutes) == (epochs, max_minutes)
    assert (got.method, got.backbone) == (recipe.method, recipe.backbone)


def test_fill_recipe__given_options_win_over_the_gpu_recipe() -> None:
    got = fill_recipe(
        GPU_RECIPE, **{**_UNSET, "method": "simclr", "backbone": "tiny", "crop_px": 64}
    )
    assert (got.method, got.backbone, got.crop_px, got.batch_size) == (
        "simclr",
        "tiny",
        64,
        256,
    )
    assert (got.epochs, got.max_minutes) == (100, None)


def test_pretrain__without_a_budget_on_cpu_runs_the_15_minute_cpu_recipe(
    cell_store: Store,
) -> None:
    card = pretrain(
        cell_store,
        "default",
        crop_px=32,
        batch_size=4,
        device="cpu",
        workers=1,
        callbacks=[_StopAfterOneStep()],
    )
    recipe = card.extra["recipe"]
    assert recipe["name"] == "cpu"
    assert (recipe["epochs"], recipe["max_minutes"]) == (None, 15.0)
    assert (card.method, card.backbone) == ("simclr", "tiny")
    assert card.extra["steps"] == 1
    assert card.extra["stopped_by"] == "time"  # no epoch count: the budget rules


def test_pretrain__an_epoch_count_replaces_the_cpu_recipes_time_budget(
    cell_store: Store,
) -> None:
    card = pretrain(
        cell_store, "one", crop_px=32, batch_size=4, epochs=1, device="cpu", workers=1
    )
    recipe = card.extra["recipe"]
    assert (recipe["name"], recipe["epochs"], recipe["max_minutes"]) == ("cpu", 1, None)
    assert (card.epochs, card.extra["stopped_by"]) == (1, "epochs")


def test_pretrain_help__names_both_recipes_as_the_library_defines_them() -> None:
    from click.testing import CliRunner

    from cytostore.cli import main

    text = " ".join(CliRunner().invoke(main, ["pretrain", "--help"]).output.split())
    for r, budget in ((CPU_RECIPE, "15 minutes"), (GPU_RECIPE, "100 epochs")):
        named = f"{r.method} / {r.backbone} / {r.crop_px} px / batch {r.batch_size}"
        assert f"{named} for {budget}" in text
