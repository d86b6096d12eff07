"""``cytostore select``: choose the next cells to annotate."""

from __future__ import annotations

from pathlib import Path

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


@click.command("select")
@store_argument
@click.option("--model", required=True, help="Model whose embeddings are used.")
@click.option("-n", "n", type=int, required=True, help="How many cells to choose.")
@click.option(
    "--strategy",
    type=click.Choice(["diversity", "typicality", "uncertainty"]),
    required=True,
    help="diversity: greedy k-center; typicality: TypiClust (most typical cell of "
    "each of N clusters); uncertainty: smallest margin of --head.",
)
@click.option(
    "--head",
    default=None,
    help="Saved cell-level head (required by uncertainty and --balance-by predicted).",
)
@click.option(
    "--balance-by",
    default=None,
    help="Spread the N evenly over this cell_meta column's values (patient_id, "
    "dataset, ...; 'predicted': the head's predicted class).",
)
@where_option
@click.option(
    "--exclude-labelled",
    default=None,
    help="Skip cells where this cell_meta column is set (already annotated).",
)
@click.option(
    "--name",
    default=None,
    help="Run name in selections (default <strategy>-<model>); a rerun replaces it.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV of the chosen cells and their image paths for annotators [default: "
    "select-<run>.csv in the current folder].",
)
@click.option(
    "--montage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG of the chosen cells [default: select-<run>.png in the current folder].",
)
@click.option("--no-montage", is_flag=True, help="Do not write the montage.")
@seed_option
@format_option
def select(
    store: Path,
    model: str,
    n: int,
    strategy: str,
    head: str | None,
    balance_by: str | None,
    where: str | None,
    exclude_labelled: str | None,
    name: str | None,
    csv_path: Path | None,
    montage: Path | None,
    no_montage: bool,
    seed: int,
    fmt: str,
) -> None:
    """Choose N cells to annotate next; write selections, a CSV and a montage.

    The chosen cells go to the table selections (rank 1 = annotate first) under
    the run name, their paths to a CSV (rank, cell_id, score, dataset, path relative
    to the dataset's folder, image: the absolute path) and the first 64 to a PNG.

    \b
    Example:
        cytostore select demo-out/store --model tiny-simclr -n 40 \\
            --strategy typicality --balance-by dataset
        cytostore select demo-out/store --model tiny-simclr -n 20 \\
            --strategy diversity --where "dataset = 'lmu'" \\
            --exclude-labelled reannotation1 --csv second-look.csv
        cytostore select demo-out/store --model tiny-simclr -n 20 \\
            --strategy uncertainty --head bm-linear --balance-by predicted
    """
    from cytostore.curate import select as run_select

    run = name or f"{strategy}-{model}"
    with progress_bar("groups", unit="group") as progress:
        result = run_select(
            store,
            model,
            n,
            strategy,
            head=head,
            balance_by=balance_by,
            where=where,
            exclude_labelled=exclude_labelled,
            name=name,
            csv=csv_path or Path(f"select-{run}.csv"),
            montage=None if no_montage else montage or Path(f"select-{run}.png"),
            seed=seed,
            progress=progress,
        )
    columns = ["rank", "cell_id", "score", "dataset", "path"]
    if balance_by:
        columns.append(balance_by)
    rows = [[r[c] for c in columns] for r in result.rows]
    echo_result(render_result(result.to_dict(), fmt, columns, rows))
    skipped = f", {result.n_labelled} labelled skipped" if result.n_labelled else ""
    drawn = f", montage {result.montage}" if result.montage else ""
    echo_summary(
        f"select {result.run!r}: {len(result.rows)} of {result.n_candidates} cells "
        f"by {strategy}{skipped}; written to selections, CSV {result.csv}{drawn}"
    )
