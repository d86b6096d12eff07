"""``cytostore pretrain``: self-supervised pretraining of a backbone on a store."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    device_option,
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_report,
    seed_option,
    store_argument,
    where_option,
)

# Kept here (not imported) so that `cytostore --help` does not import torch; a test
# checks they equal cytostore.embedder.pretrain.PRETRAIN_METHODS and BACKBONES.
METHOD_CHOICES = ("simclr", "byol", "dino", "vicreg", "barlowtwins", "moco", "none")
BACKBONE_CHOICES = ("tiny", "resnet18", "resnet34", "resnet50", "vit_s16")
#: Architectures of `cytostore import-model`, trained from their files with --init
#: (a test checks them against cytostore.embedder.foundation.ARCH_NAMES).
IMPORTED_ARCHS = tuple(f"dinobloom-{s}" for s in "sblg") + tuple(
    f"dinov2-vit{s}14" for s in "sblg"
)


class _Backbone(click.Choice):  # type: ignore[type-arg]
    """A house backbone, or an importable architecture (dinobloom-s, timm:NAME)."""

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if isinstance(value, str) and (
            value in IMPORTED_ARCHS or value.startswith(("timm:", "torchvision:"))
        ):
            return value
        return super().convert(value, param, ctx)


@click.command("pretrain")
@store_argument
@click.option("--name", required=True, help="Name to register the model under.")
@click.option(
    "--method",
    type=click.Choice(METHOD_CHOICES),
    default=None,
    help="Self-supervised method; none registers the random-init baseline "
    "[default: the recipe's: simclr on CPU, dino on GPU].",
)
@click.option(
    "--backbone",
    type=_Backbone(BACKBONE_CHOICES),
    default=None,
    help="Backbone (tiny: a 4-layer CNN), or an imported architecture "
    "(dinobloom-s|b|l|g, dinov2-vits14|vitb14|vitl14|vitg14, timm:NAME, "
    "torchvision:NAME: the ViT recipe, dino at its native size) [default: the "
    "recipe's: tiny on CPU, resnet50 on GPU].",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Total epochs [default: as many as fit in --max-minutes; without "
    "either, the recipe's budget: 15 minutes on CPU, 100 epochs on GPU].",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Time budget in minutes; training stops cleanly when it is spent.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=None,
    help="Cells per batch and device [default: the recipe's: 128 on CPU, 256 on GPU].",
)
@click.option(
    "--crop-px",
    type=click.IntRange(min=16),
    default=None,
    help="Input size in pixels (the crop covers --fov-um µm) [default: the "
    "recipe's: 96 on CPU, 128 on GPU].",
)
@click.option(
    "--fov-um",
    type=float,
    default=24.0,
    show_default=True,
    help="Field of view of the input in µm (images of unknown µm/px: resized whole).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Peak AdamW learning rate [default: the method's, scaled by the global "
    "batch: batch x processes / 256].",
)
@where_option
@click.option(
    "--balance",
    type=click.Choice(["dataset", "none"]),
    default="dataset",
    show_default=True,
    help="dataset: each dataset equally likely per batch; none: as the data lies.",
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Start from local weights: a torchvision-format state dict (WEIGHTS.pt), "
    "or, with --backbone dinobloom-s etc., the file import-model takes "
    "(DinoBloom-S.pth, dinov2_vits14_pretrain.pth, .safetensors).",
)
@device_option
@click.option(
    "--devices", type=int, default=None, help="Devices for DDP (e.g. 4 GPUs)."
)
@click.option(
    "--strategy",
    default="auto",
    show_default=True,
    help="Lightning strategy (ddp, ...).",
)
@click.option(
    "--num-nodes",
    type=int,
    default=1,
    show_default=True,
    help="Nodes for multi-node DDP.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: bf16/fp16 AMP on GPUs, bf16 on CPUs that have it natively, else fp32.",
)
@click.option("--resume", is_flag=True, help="Continue the interrupted run of --name.")
@click.option("--overwrite", is_flag=True, help="Replace a model of the same name.")
@click.option(
    "--monitor-cells",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help="Labelled cells held out for the per-epoch kNN monitor (0: none).",
)
@seed_option
@format_option
def pretrain(
    store: Path,
    name: str,
    method: str | None,
    backbone: str | None,
    epochs: int | None,
    max_minutes: float | None,
    batch_size: int | None,
    crop_px: int | None,
    fov_um: float,
    lr: float | None,
    where: str | None,
    balance: str,
    init: Path | None,
    device: str,
    devices: int | None,
    strategy: str,
    num_nodes: int,
    precision: str,
    resume: bool,
    overwrite: bool,
    monitor_cells: int,
    seed: int,
    fmt: str,
) -> None:
    """Pretrain a backbone without labels (lightly SSL) and register it as a model.

    Writes STORE/models/NAME/ (weights, card.json, curves.png). Options left
    unset come from a recipe of docs/recipes.md: without a CUDA GPU (or with
    --device cpu) the CPU recipe, simclr / tiny / 96 px / batch 128 for 15 minutes;
    on a CUDA GPU the GPU recipe, dino / resnet50 / 128 px / batch 256 for 100
    epochs. Giving --epochs or --max-minutes replaces the recipe's budget.

    \b
    Example:
        cytostore pretrain demo-out/store --name tiny-simclr --method simclr \\
            --backbone tiny --epochs 2
        cytostore pretrain demo-out/store --name cpu15  # the CPU recipe: 15 min
        cytostore pretrain demo-out/store --name cpu15 --resume
        cytostore pretrain demo-out/store --name r50-dino --devices 4 --strategy ddp
        cytostore pretrain demo-out/store --name tiny-random --backbone tiny \\
            --method none
        cytostore pretrain demo-out/store --name bloom-ours --backbone dinobloom-s \\
            --init DinoBloom-S.pth --epochs 20  # continue DinoBloom (GPU)
    """
    from cytostore.embedder.pretrain import pretrain as run_pretrain
    from cytostore.embedder.pretrain import process_rank

    with progress_bar("pretrain", unit="") as progress:
        card = run_pretrain(
            store,
            name,
            method=method,
            backbone=backbone,
            epochs=epochs,
            max_minutes=max_minutes,
            batch_size=batch_size,
            where=where,
            balance=balance,
            init=init,
            crop_px=crop_px,
            fov_um=fov_um,
            lr=lr,
            seed=seed,
            device=device,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            precision=precision,
            resume=resume,
            overwrite=overwrite,
            monitor_cells=monitor_cells,
            progress=progress,
        )
    if process_rank() != 0:
        return  # under DDP, rank 0 reports; the others registered nothing
    doc = card.to_dict()
    shown = {
        k: doc[k]
        for k in (
            "name",
            "method",
            "backbone",
            "dim",
            "data",
            "epochs",
            "wall_s",
            "final_loss",
            "sha256",
        )
    }
    shown["knn_monitor"] = card.knn_accuracy
    mixing = (card.knn_monitor or {}).get("mixing") or {}
    shown["dataset_mixing"] = mixing.get("dataset")
    echo_result(render_report(doc if fmt in ("json", "jsonl") else shown, fmt))
    knn = "" if card.knn_accuracy is None else f", kNN monitor {card.knn_accuracy:.3f}"
    if mixing.get("dataset") is not None:
        knn += f", dataset mixing {mixing['dataset']:.3f} (0 = mixed, 1 = apart)"
    echo_summary(
        f"registered {card.name}: {card.method}/{card.backbone}, {card.epochs} epochs "
        f"in {card.wall_s:.0f} s{knn}"
    )
