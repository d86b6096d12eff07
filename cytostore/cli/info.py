"""``cytostore info``: summarise a store."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    render_result,
    store_argument,
)
from cytostore.store import Store


@click.command("info")
@store_argument
@format_option
def info(store: Path, fmt: str) -> None:
    """Summarise a store: datasets, cells, patients, skipped files, models, heads.

    'cytostore ls STORE' lists the models, embedding sets, heads and tables with
    their sizes and disk use.

    \b
    Example:
        cytostore info demo-out/store
        cytostore info demo-out/store --format json
    """
    summary = Store.open(store).info()
    cols = ["dataset", "layout", "cells", "patients", "labels", "skipped", "um_per_px"]
    rows = [[d[c] for c in cols] for d in summary["datasets"]]
    echo_result(render_result(summary, fmt, cols, rows))
    echo_summary(
        f"{summary['cells']} cells, {summary['patients']} patients, "
        f"{summary['skipped']} skipped; {summary['models']} models, "
        f"{summary['embedding_sets']} embedding sets, {summary['heads']} heads "
        f"(sizes and disk use: cytostore ls {store})"
    )
