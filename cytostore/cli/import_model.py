"""``cytostore import-model``: register a local DinoBloom/DINOv2/timm checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    render_report,
    store_argument,
)


@click.command("import-model")
@store_argument
@click.option("--name", required=True, help="Name to register the model under.")
@click.option(
    "--weights",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The downloaded checkpoint (.pth/.pt, or .safetensors).",
)
@click.option(
    "--arch",
    required=True,
    help="dinobloom-s|b|l|g, dinov2-vits14|vitb14|vitl14|vitg14, timm:NAME or "
    "torchvision:NAME.",
)
@click.option(
    "--license",
    "license_",
    default=None,
    help="Licence of the weights, for the card [default: the family's, if known].",
)
@click.option(
    "--scale",
    type=click.Choice(["resize", "physical"]),
    default=None,
    help="µm/px policy: resize each whole image to the input size (as the "
    "original), or physical: resample to one µm/px and crop (like our models) "
    "[default: resize for DinoBloom, else physical].",
)
@click.option(
    "--input-px",
    type=click.IntRange(min=16),
    default=None,
    help="Input size in pixels [default: native: 224 for DinoBloom and DINOv2].",
)
@click.option(
    "--fov-um",
    type=click.FloatRange(min=0, min_open=True),
    default=24.0,
    show_default=True,
    help="Field of view of a physical crop in µm.",
)
@click.option("--overwrite", is_flag=True, help="Replace a model of the same name.")
@format_option
def import_model(
    store: Path,
    name: str,
    weights: Path,
    arch: str,
    license_: str | None,
    scale: str | None,
    input_px: int | None,
    fov_um: float,
    overwrite: bool,
    fmt: str,
) -> None:
    """Import a foundation model from a local weights file as a model of STORE.

    Builds the architecture offline (timm/torchvision, never a hub download),
    reads the file with torch.load(weights_only=True) or safetensors, maps its
    keys, refuses a file that does not fit (one line: expected vs found), and
    registers the model with a card recording its provenance (file sha256,
    licence, input size, normalisation, pooling, µm/px policy). Then embed,
    search, probe, mil, explain and export use it like any model. Where to get
    the files: docs/models.md.

    \b
    Example:
        cytostore import-model demo-out/store --name dinobloom-s \\
            --weights DinoBloom-S.pth --arch dinobloom-s
        cytostore import-model demo-out/store --name dinov2-s --arch dinov2-vits14 \\
            --weights dinov2_vits14_pretrain.pth --scale physical
        cytostore embed demo-out/store --model dinobloom-s
    """  # noqa: D301 - click needs the \b character
    from cytostore.embedder.foundation import import_model as run_import

    card = run_import(
        store,
        name,
        weights,
        arch,
        license=license_,
        scale=scale,
        input_px=input_px,
        fov_um=fov_um,
        overwrite=overwrite,
    )
    doc = card.to_dict()
    prov = dict(card.extra.get("provenance", {}))
    shown = {"name": card.name, "backbone": card.backbone, "dim": card.dim}
    shown |= {k: prov.get(k) for k in ("file", "file_sha256", "license")}
    shown |= {k: prov.get(k) for k in ("input_px", "scale", "pooling")}
    shown["sha256"] = card.sha256
    echo_result(render_report(doc if fmt in ("json", "jsonl") else shown, fmt))
    echo_summary(
        f"imported {prov.get('file')} as {card.name}: {card.backbone}, dim "
        f"{card.dim}, {prov.get('input_px')} px ({prov.get('scale')})"
    )
