"""``cytostore map``: a 2-D map of the embeddings, its picture and the mixing score."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_result,
    seed_option,
    store_argument,
    where_option,
)

#: Columns of the printed mixing rows.
_COLUMNS = (
    "group",
    "cells",
    "same_dataset",
    "expected_dataset",
    "dataset_score",
    "same_label",
    "expected_label",
    "label_score",
)


def _rows(mixing: dict[str, Any]) -> list[list[Any]]:
    label = mixing.get("label_column")
    rows: list[list[Any]] = [
        [
            "all",
            mixing["cells"],
            None,
            None,
            mixing["dataset"],
            None,
            None,
            mixing["label"],
        ]
    ]
    for r in mixing["per_dataset"]:
        rows.append(
            [
                f"dataset={r['dataset']}",
                r["cells"],
                r["same_dataset"],
                r["expected"],
                r["score"],
                None,
                None,
                None,
            ]
        )
    for r in mixing["per_label"]:
        rows.append(
            [
                f"{label}={r['label']}",
                r["cells"],
                r["same_dataset"],
                r["expected_dataset"],
                r["dataset_score"],
                r["same_label"],
                r["expected_label"],
                r["label_score"],
            ]
        )
    return rows


def _compile_note(progress: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """Return ``progress`` preceded, on a terminal, by a note that UMAP compiles.

    The note is shown where the bar is (stderr a terminal, tqdm's own test), as the
    neighbour search before the first epoch compiles numba code for tens of seconds.
    """
    noted = False

    def update(done: int, total: int) -> None:
        nonlocal noted
        if not noted and sys.stderr.isatty():
            from tqdm.auto import tqdm

            tqdm.write(
                "umap: the first run in a process compiles numba code (tens of "
                "seconds) before the epochs start",
                file=sys.stderr,
            )
        noted = True
        progress(done, total)

    return update


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.command("map")
@store_argument
@click.option("--model", required=True, help="Model whose vectors to map.")
@click.option(
    "--method",
    type=click.Choice(["umap", "pca"]),
    default="umap",
    show_default=True,
    help="Projection to 2-D.",
)
@click.option(
    "--color-by",
    default=None,
    help="cell_meta column colouring the picture (default: dataset).",
)
@where_option
@click.option(
    "--name",
    default=None,
    help="Run name (default: MODEL-METHOD); a second run of that name replaces it.",
)
@click.option(
    "--label",
    default="cell_type",
    show_default=True,
    help="cell_meta column of the mixing score's cell-type term.",
)
@click.option(
    "-k", "k", type=int, default=10, show_default=True, help="Neighbours per cell."
)
@click.option(
    "--sample",
    type=int,
    default=None,
    help="Map at most this many cells (a seeded sample; the mixing score still "
    "searches among all).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Scatter PNG to write (default: map-RUN.png in the current folder).",
)
@seed_option
@format_option
def map_command(
    store: Path,
    model: str,
    method: str,
    color_by: str | None,
    where: str | None,
    name: str | None,
    label: str,
    k: int,
    sample: int | None,
    out: Path | None,
    seed: int,
    fmt: str,
) -> None:
    """Map the embeddings to 2-D (table maps), draw them, and print the mixing score.

    The mixing score asks whether cells group by where they came from or by what
    they are: for each cell, the share of its k nearest neighbours from its own
    dataset (and patient, and cell type) against the share expected by chance,
    scaled so 0 = mixed as by chance and 1 = every neighbour from the cell's own
    group. Low dataset and patient scores and a high cell-type score are good.
    It is computed on the embedding, not on the 2-D picture.

    UMAP (the default) compiles its code on first use (numba: tens of seconds;
    on a terminal a note says so, then a bar counts its optimisation epochs);
    --method pca is instant.

    \b
    Example:
        cytostore map demo-out/store --model tiny-simclr --method pca
        cytostore map demo-out/store --model tiny-simclr --method pca \\
            --color-by cell_type --where "dataset <> 'mll_helmholtz'" --name no-mll
        cytostore sql demo-out/store "SELECT run, count(*) FROM maps GROUP BY run"
    """
    from cytostore.curate.map import map_cells

    run = name if name is not None else f"{model}-{method}"
    png = out if out is not None else Path(f"map-{run}.png")
    with (
        progress_bar("mixing") as progress,
        progress_bar("umap", unit="epoch") as epochs,
    ):
        result = map_cells(
            store,
            model,
            method=method,
            color_by=color_by,
            where=where,
            name=name,
            label=label,
            k=k,
            sample=sample,
            seed=seed,
            out=png,
            progress=progress,
            umap_progress=_compile_note(epochs),
        )
    report = {**result.report(), "mixing": result.mixing}
    echo_result(render_result(report, fmt, list(_COLUMNS), _rows(result.mixing)))
    m = result.mixing
    parts = [f"dataset {_score(m['dataset'])}"]
    if m.get("patient") is not None:
        parts.append(f"patient {_score(m['patient'])}")
    if m.get("label_column"):
        parts.append(f"{m['label_column']} {_score(m['label'])}")
    echo_summary(
        f"map run {result.run}: {result.ids.size} cells by {method} in "
        f"{result.elapsed_s:.1f} s, picture {result.png}; mixing (k={m['k']}, 0 = "
        f"mixed, 1 = separated): {', '.join(parts)}"
    )
