"""``cytostore search``: the cells most similar to a cell or an image."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    device_option,
    echo_result,
    echo_summary,
    format_option,
    render_rows,
    store_argument,
    where_option,
)


@click.command("search")
@store_argument
@click.option("--cell", type=int, default=None, help="Query by this cell id.")
@click.option(
    "--image",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Query by this image file: a catalogued one (same sha256) by its cell's "
    "stored vector, any other embedded with the set's model.",
)
@click.option(
    "--model", default=None, help="Embedding set's model (default: the only one)."
)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits.")
@where_option
@click.option(
    "--include-self", is_flag=True, help="Keep the query cell among its hits."
)
@click.option(
    "--um-per-px",
    type=float,
    default=None,
    help="Pixel size of --image in µm (default: its dataset's when the file lies "
    "in a dataset's folder, else unknown: resized whole, with a warning).",
)
@click.option(
    "--montage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a PNG of the query and its hits.",
)
@format_option
@device_option
def search(
    store: Path,
    cell: int | None,
    image: Path | None,
    model: str | None,
    k: int,
    where: str | None,
    include_self: bool,
    um_per_px: float | None,
    montage: Path | None,
    fmt: str,
    device: str,
) -> None:
    """Print the k cells most similar to a cell (--cell) or an image (--image).

    With --where, the answer is the exact top-k among the matching cells (for the
    default Flat index). similarity: higher is closer (cosine similarity; minus the
    squared L2 distance for l2 sets).

    \b
    Example:
        cytostore search demo-out/store --model tiny-simclr --cell 42 -k 5
        cytostore search demo-out/store --model tiny-simclr --cell 42 \\
            --where "dataset = 'bm'" --format json
        cytostore search demo-out/store --model tiny-simclr --image my_cell.png \\
            --um-per-px 0.1 --montage hits.png
    """
    from cytostore.embedder import search as run_search
    from cytostore.store import Store

    result = run_search(
        Store.open(store),
        cell=cell,
        image=image,
        model=model,
        k=k,
        where=where,
        include_self=include_self,
        um_per_px=um_per_px,
        montage=montage,
        device=device,
    )
    echo_result(render_rows(result.columns, result.rows, fmt))
    matched = result.query.get("matched_cell")
    if matched is not None:
        kept = "kept" if include_self else "left out (--include-self keeps it)"
        echo_summary(
            f"{image} is catalogued as cell {matched} (same sha256): searched with its "
            f"stored vector; the cell itself is {kept}"
        )
    es = result.embedding_set
    summary = f"{len(result.rows)} hits in set {es.set_id} ({es.model}, {es.metric})"
    if result.montage is not None:
        summary += f"; montage written to {result.montage}"
    echo_summary(summary)
