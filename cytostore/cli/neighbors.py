"""``cytostore neighbors``: every cell's k nearest neighbours as a catalog table."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_report,
    store_argument,
    where_option,
)


@click.command("neighbors")
@store_argument
@click.option(
    "--model", default=None, help="Embedding set's model (default: the only one)."
)
@where_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Neighbours.")
@click.option("--into", required=True, help="Table to (re)create, e.g. nn_simclr.")
@format_option
def neighbors(
    store: Path, model: str | None, where: str | None, k: int, into: str, fmt: str
) -> None:
    """Write each selected cell's k nearest other cells into the table --into.

    Columns: cell_id, rank, neighbor_id, similarity (higher is closer, as in search),
    set_id. Queries and candidates are the cells matching --where; an earlier table
    of that name is replaced.

    \b
    Example:
        cytostore neighbors demo-out/store --model tiny-simclr -k 10 --into nn_simclr
        cytostore sql demo-out/store "SELECT m.label, avg((n.label = m.label)::INT)
            FROM nn_simclr k JOIN cell_meta m ON m.cell_id = k.cell_id
            JOIN cell_meta n ON n.cell_id = k.neighbor_id GROUP BY ALL"
    """
    from cytostore.store import Store

    with progress_bar("neighbors") as progress:
        report = Store.open(store).neighbors(
            into, k, model=model, where=where, progress=progress
        )
    echo_result(render_report(report, fmt))
    echo_summary(f"wrote {report['rows']} rows for {report['cells']} cells into {into}")
