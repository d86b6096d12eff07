"""``cytostore export``: the catalog and embeddings as Parquet."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_result,
    store_argument,
)


@click.command("export")
@store_argument
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), metavar="OUT")
@format_option
def export(store: Path, out: Path, fmt: str) -> None:
    """Write OUT/cells.parquet and one OUT/embeddings_<model>.parquet per set.

    Embeddings are a fixed-size list column of the stored values (bit for bit),
    readable by pandas, Polars, DuckDB and Spark.

    \b
    Example:
        cytostore export demo-out/store demo-out/parquet
        duckdb -c "SELECT count(*) FROM 'demo-out/parquet/embeddings_*.parquet'"
    """
    from cytostore.store import Store

    with progress_bar("export", unit="vector") as progress:
        report = Store.open(store).export(out, progress=progress)
    rows = [[f["file"], f["rows"]] for f in report["files"]]
    echo_result(render_result(report, fmt, ["file", "rows"], rows))
    echo_summary(f"exported {len(report['files'])} files to {out}")
