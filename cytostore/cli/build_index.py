"""``cytostore build-index``: (re)build the FAISS index of an embedding set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_report,
    seed_option,
    store_argument,
)


@click.command("build-index")
@store_argument
@click.option(
    "--model", default=None, help="Embedding set's model (default: the only one)."
)
@click.option(
    "--index",
    default=None,
    help="FAISS factory string (default: keep the set's), e.g. HNSW32, IVF1024,Flat.",
)
@click.option("--nprobe", type=int, default=None, help="IVF lists searched per query.")
@click.option("--ef-search", type=int, default=None, help="HNSW search breadth.")
@click.option("--rebuild", is_flag=True, help="Rebuild even if it could be extended.")
@seed_option
@format_option
def build_index(
    store: Path,
    model: str | None,
    index: str | None,
    nprobe: int | None,
    ef_search: int | None,
    rebuild: bool,
    seed: int,
    fmt: str,
) -> None:
    """Bring a set's index up to date, or rebuild it with another FAISS factory.

    \b
    Example:
        cytostore build-index demo-out/store --model tiny-simclr --index HNSW32
        cytostore build-index demo-out/store --model tiny-random --index IVF16,Flat \\
            --nprobe 4
        cytostore build-index demo-out/store --model tiny-simclr --rebuild
    """
    from cytostore.store import Store

    params: dict[str, Any] | None = None
    if nprobe is not None or ef_search is not None:
        params = {}
        if nprobe is not None:
            params["nprobe"] = nprobe
        if ef_search is not None:
            params["efSearch"] = ef_search
    with progress_bar("index", unit="vector") as progress:
        es = Store.open(store).build_index(
            model,
            index,
            search_params=params,
            rebuild=rebuild,
            seed=seed,
            progress=progress,
        )
    echo_result(render_report(es.as_dict(), fmt))
    echo_summary(
        f"index {es.index_factory} of set {es.set_id} holds {es.n_indexed} vectors"
    )
