"""``cytostore ingest``: catalogue the cell images under a path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_result,
    store_argument,
)

if TYPE_CHECKING:
    from cytostore.data import IngestReport

_COLUMNS = ("dataset", "layout", "found", "added", "existing", "skipped", "expected")


def _unshown(report: IngestReport) -> list[str]:
    """The report's warnings, less the count mismatches (the column ``expected``).

    A mismatch of the catalogued and the published count is one warning per
    dataset; all of them together print as one line pointing at the column.
    """
    counts = {
        d.dataset: f"{d.dataset}: {d.added + d.existing:,} cells catalogued, "
        for d in report.datasets
    }
    mismatched = [
        name
        for name, prefix in counts.items()
        if any(w.startswith(prefix) for w in report.warnings)
    ]
    rest = [
        w
        for w in report.warnings
        if not any(w.startswith(counts[name]) for name in mismatched)
    ]
    if mismatched:
        rest.append(
            f"{', '.join(mismatched)}: the cell count differs from the published "
            "one (column expected): a partial or modified download?"
        )
    return rest


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
@format_option
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
        cytostore ingest demo-out/store demo-out/data
        cytostore ingest demo-out/store demo-out/data --workers 4  # adds nothing
        cytostore ingest lab-store exports/ --pattern '{patient_id}/{label}/*.jpg'
        cytostore ingest lab-store exports/ --patients patients.csv \\
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
    rows = [[getattr(d, c) for c in _COLUMNS] for d in report.datasets]
    echo_result(render_result(report.to_dict(), fmt, _COLUMNS, rows))
    for warning in _unshown(report):
        click.echo(f"warning: {warning}", err=True)
    echo_summary(
        f"ingested {report.added} new cells ({report.skipped} skipped) into {store}"
    )
