"""``cytostore embed``: embed the store's cells with a registered model."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    device_option,
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_report,
    store_argument,
    where_option,
)


@click.command("embed")
@store_argument
@click.option(
    "--model", required=True, help="Registered model name (cytostore models)."
)
@where_option
@click.option(
    "--index",
    default="Flat",
    show_default=True,
    help="FAISS index factory: Flat (exact cosine), HNSW32, IVF1024,Flat, ...",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Stored dtype of the vectors.",
)
@click.option(
    "--batch-size", type=int, default=256, show_default=True, help="Cells per batch."
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Embed only shard I of N (1-based) into its own set; join with 'merge'.",
)
@device_option
@format_option
def embed(
    store: Path,
    model: str,
    where: str | None,
    index: str,
    dtype: str,
    batch_size: int,
    shard: str | None,
    device: str,
    fmt: str,
) -> None:
    """Embed every cell without a vector into the model's embedding set and index.

    Rerun it after ingesting more cells, or after it was killed: only cells without
    a vector are embedded. Each batch is committed on its own, so readers keep
    working while it runs.

    \b
    Example:
        cytostore embed demo-out/store --model tiny-simclr
        cytostore embed demo-out/store --model tiny-random --index HNSW32 \\
            --dtype float16
        cytostore embed demo-out/store --model tiny-simclr --shard 2/8  # machine 2 of 8
    """
    from cytostore.embedder import embed as run_embed
    from cytostore.store import Store

    with progress_bar("embed") as progress:
        report = run_embed(
            Store.open(store),
            model,
            where=where,
            index=index,
            dtype=dtype,
            batch_size=batch_size,
            shard=shard,
            device=device,
            progress=progress,
        )
    echo_result(render_report(report, fmt))
    echo_summary(
        f"embedded {report['embedded']} cells ({report['already']} already done, "
        f"{report['skipped']} skipped); set {report['set_id']} holds "
        f"{report['n_vectors']} vectors"
    )
