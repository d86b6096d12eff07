"""``cytostore sql``: run read-only SQL against the catalog."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import format_option, render_rows, store_argument
from cytostore.store import Store


@click.command("sql")
@store_argument
@click.argument("query")
@format_option()
def sql(store: Path, query: str, fmt: str) -> None:
    """Run one read-only SQL QUERY against the catalog and print the rows.

    Tables: datasets, patients, cells, skipped, models, embedding_sets, heads,
    predictions, patient_predictions, attention and neighbour tables; the view
    cell_meta joins every cell with its patient's and dataset's columns.

    \b
    Example:
        cytostore sql demo-store "SELECT label, count(*) AS n FROM cells GROUP BY ALL"
        cytostore sql demo-store "DESCRIBE cell_meta" --format json
    """
    result = Store.open(store).sql(query)
    click.echo(render_rows(result.columns, result.rows, fmt))
