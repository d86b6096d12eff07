"""``cytostore ingest``: catalogue the cell images under a path."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_summary,
    format_option,
    progress_bar,
    render_report,
    render_rows,
    store_argument,
)

_COLUMNS = ("dataset", "layout", "found", "added", "existing", "skipped", "expected")


@click.command("ingest")
@store_argument
@click.argument("path", type=click.Path(path_type=Path), metavar="PATH")
@click.option(
    "--layout",
    type=click.Choice(["auto", "lmu", "mll_helmholtz", "bm", "folder"]),
    default="auto",
    show_default=True,
    help="Dataset layout; auto finds lmu, mll_helmholtz and bm at any depth, else "
    "reads PATH as a folder of class folders.",
)
@click.option(
    "--pattern",
    default=None,
    help="folder: path template with {label} and {patient_id}, e.g. "
    "'{patient_id}/**/{label}/*.jpg' (default '{label}/**/*').",
)
@click.option(
    "--patients",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="folder: CSV/XLSX of patient metadata keyed by patient_id.",
)
@click.option(
    "--bag-column",
    default="bag_label",
    show_default=True,
    help="folder: column of --patients holding the patient's bag label.",
)
@click.option(
    "--dataset-name",
    default=None,
    help="folder: dataset name in the catalog (default: the folder's name).",
)
@click.option(
    "--um-per-px",
    type=float,
    default=None,
    help="Pixel size in µm of the new cells (default: lmu 0.07072, mll_helmholtz "
    "0.1725, bm 0.086, folder unknown).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Decoding processes (default: all CPU cores).",
)
@format_option("table", "json")
def ingest(
    store: Path,
    path: Path,
    layout: str,
    pattern: str | None,
    patients: Path | None,
    bag_column: str,
    dataset_name: str | None,
    um_per_px: float | None,
    workers: int | None,
    fmt: str,
) -> None:
    """Find the datasets under PATH and catalogue every readable cell image in STORE.

    PATH may hold all three TCIA downloads at any depth (or be a .zip of one);
    re-running adds only new files and keeps every cell id. Unreadable files are
    recorded in the table skipped, with the reason.

    \b
    Example:
        cytostore ingest demo-store demo-data
        cytostore ingest my-store ~/Downloads/TCIA --workers 4
        cytostore ingest my-store exports/ --pattern '{patient_id}/{label}/*.jpg'
        cytostore ingest my-store exports/ --patients patients.csv \\
            --pattern '{patient_id}/*.png'
    """
    from cytostore.data import ingest as run_ingest

    with progress_bar("ingest", unit="file") as progress:
        report = run_ingest(
            store,
            path,
            layout,
            pattern=pattern,
            patients=patients,
            bag_column=bag_column,
            dataset_name=dataset_name,
            um_per_px=um_per_px,
            workers=workers,
            progress=progress,
        )
    if fmt == "json":
        click.echo(render_report(report.to_dict(), "json"))
    else:
        rows = [[getattr(d, c) for c in _COLUMNS] for d in report.datasets]
        click.echo(render_rows(_COLUMNS, rows, "table"))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    echo_summary(
        f"ingested {report.added} new cells ({report.skipped} skipped) into {store}"
    )
