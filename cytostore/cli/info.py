"""``cytostore info``: summarise a store."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    format_option,
    render_report,
    render_rows,
    store_argument,
)
from cytostore.store import Store


@click.command("info")
@store_argument
@format_option("table", "json")
def info(store: Path, fmt: str) -> None:
    """Summarise a store: datasets, cells, patients, skipped files, models, heads.

    'cytostore ls STORE' lists the models, embedding sets, heads and tables with
    their sizes and disk use.

    \b
    Example:
        cytostore info demo-store
        cytostore info demo-store --format json
    """
    summary = Store.open(store).info()
    if fmt == "json":
        click.echo(render_report(summary, "json"))
        return
    cols = ["dataset", "layout", "cells", "patients", "labels", "skipped", "um_per_px"]
    rows = [[d[c] for c in cols] for d in summary["datasets"]]
    click.echo(render_rows(cols, rows, "table"))
    click.echo(
        f"\n{summary['cells']} cells, {summary['patients']} patients, "
        f"{summary['skipped']} skipped; {summary['models']} models, "
        f"{summary['embedding_sets']} embedding sets, {summary['heads']} heads "
        f"(sizes and disk use: cytostore ls {store})"
    )
