"""``cytostore sql``: run read-only SQL against the catalog."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    format_option,
    render_rows,
    store_argument,
)
from cytostore.store import Store


@click.command("sql")
@store_argument
@click.argument("query")
@format_option
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop the query after this many seconds (Ctrl-C also stops it).",
)
def sql(store: Path, query: str, fmt: str, timeout_s: float | None) -> None:
    """Run one read-only SQL QUERY against the catalog and print the rows.

    Tables: datasets, patients, cells, skipped, models, embedding_sets, heads,
    predictions, patient_predictions, attention, tags and neighbour tables; the
    view cell_meta joins every cell with its patient's and dataset's columns and
    its tags.

    The query runs sandboxed: exactly one SELECT/WITH/VALUES/PIVOT/DESCRIBE/
    SUMMARIZE/SHOW/EXPLAIN statement, on a read-only connection that cannot read
    or write other files, reach the network or load extensions. To write, or to
    join other files, open STORE/catalog.duckdb with your own DuckDB client.

    \b
    Example:
        cytostore sql demo-out/store "SELECT label, count(*) AS n FROM cells GROUP BY 1"
        cytostore sql demo-out/store "DESCRIBE cell_meta" --format json
    """
    result = Store.open(store).sql(query, timeout_s=timeout_s)
    echo_result(render_rows(result.columns, result.rows, fmt))
