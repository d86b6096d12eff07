"""``cytostore synth``: write synthetic TCIA-shaped demo data."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_result,
    seed_option,
)

_COLUMNS = ("dataset", "classes", "cells", "patients", "um_per_px", "root")
_DATASETS = ("lmu", "mll_helmholtz", "bm")


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), metavar="OUT")
@click.option(
    "--cells-per-dataset",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    help="Images per dataset (the mll_helmholtz patients share them).",
)
@click.option(
    "--patients-per-subtype",
    type=click.IntRange(min=1),
    default=None,
    help="mll_helmholtz patients per bag label "
    "(default: cells-per-dataset // 250, between 2 and 8).",
)
@seed_option
@click.option(
    "--datasets",
    type=click.Choice(_DATASETS),
    multiple=True,
    default=_DATASETS,
    show_default=True,
    help="Dataset to write (repeat the option for several).",
)
@click.option(
    "--bm-chunk-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Images per bm chunk folder (0001-1000, 1001-2000, ...).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes drawing the images (the files do not depend on it).",
)
@click.option(
    "--masks",
    is_flag=True,
    help="Also write one structure mask per image, for the pixel explanations' "
    "pointing check: OUT/.masks/<dataset>/<image path in the dataset>.png, an "
    "8-bit grayscale PNG of the image's size whose bits, OR-ed, mark what was "
    "drawn (1 the white cell, 2 its nucleus, 4 granules, 8 Auer rods; 0 "
    "elsewhere). "
    "The hidden folder is never ingested; the images are the same bytes.",
)
@format_option
def synth(
    out: Path,
    cells_per_dataset: int,
    patients_per_subtype: int | None,
    seed: int,
    datasets: tuple[str, ...],
    bm_chunk_size: int,
    workers: int,
    masks: bool,
    fmt: str,
) -> None:
    """Write synthetic lmu, mll_helmholtz and bm datasets in their real layouts.

    OUT/lmu, OUT/mll_helmholtz and OUT/bm get the real folders, file names,
    formats, image sizes and metadata files, with drawn cells whose morphology
    depends on the class (and, for mll_helmholtz, on the patient's AML subtype).
    The same seed writes the same bytes.

    \b
    Example:
        cytostore synth demo-out/data --cells-per-dataset 400 --patients-per-subtype 5
        cytostore synth small-data --cells-per-dataset 120 --patients-per-subtype 2
        cytostore synth bm-only --datasets bm --cells-per-dataset 5000 --workers 8
        cytostore synth masked --datasets bm --cells-per-dataset 400 --masks
    """
    from cytostore.data import synthesize
    from cytostore.data.synth import MASKS_DIR

    with progress_bar("synth", unit="image") as progress:
        report = synthesize(
            out,
            cells_per_dataset,
            patients_per_subtype,
            seed,
            datasets=datasets,
            bm_chunk_size=bm_chunk_size,
            workers=workers,
            progress=progress,
            masks=masks,
        )
    # counted on disk: the report has no mask count, and this is what was written
    n_masks = sum(
        sum(1 for p in (out / MASKS_DIR / name).rglob("*.png") if p.is_file())
        for name in report.datasets
    )
    rows = [
        [
            d.name,
            len(d.counts),
            d.n_cells,
            len(d.patients) or None,
            d.um_per_px,
            str(d.root),
        ]
        for d in report.datasets.values()
    ]
    result = {**report.to_dict(), "n_masks": n_masks}
    echo_result(render_result(result, fmt, _COLUMNS, rows))
    written = f"{report.n_cells} synthetic cells"
    if masks:
        written += f" and {n_masks} structure masks (in {out / MASKS_DIR})"
    echo_summary(f"wrote {written} to {out} (seed {seed})")
