"""``cytostore audit``: score every labelled cell for how likely its label is wrong."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    device_option,
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_result,
    seed_option,
    store_argument,
    where_option,
)

#: Columns printed for the top suspects.
COLUMNS = (
    "rank",
    "cell_id",
    "given_label",
    "suggested_label",
    "score",
    "neighbor_agreement",
    "is_issue",
)


@click.command("audit")
@store_argument
@click.option("--model", required=True, help="Model whose embeddings are used.")
@click.option(
    "--label",
    required=True,
    help="cell_meta column audited, e.g. label or cell_type (cells without one are "
    "left out).",
)
@where_option
@click.option(
    "--name",
    default=None,
    help="Run name in label_issues (default <label>-<model>); a rerun replaces it.",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Nearest cells from other patients whose labels vote.",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Folds of the out-of-fold probe (patient-grouped when there are patients).",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=12,
    show_default=True,
    help="Suspects printed and drawn in the montage.",
)
@click.option(
    "--montage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG of the top suspects beside their look-alikes [default: "
    "audit-<run>.png in the current folder].",
)
@click.option("--no-montage", is_flag=True, help="Do not write the montage.")
@seed_option
@device_option
@format_option
def audit(
    store: Path,
    model: str,
    label: str,
    where: str | None,
    name: str | None,
    k: int,
    folds: int,
    top: int,
    montage: Path | None,
    no_montage: bool,
    seed: int,
    device: str,
    fmt: str,
) -> None:
    """Find likely label errors: out-of-fold probe + other patients' neighbours.

    Every labelled cell gets a score (0-1, higher = more likely mislabelled) from
    cleanlab's confident learning over the mean of two out-of-sample opinions: a
    linear probe's out-of-fold probabilities (patient-grouped folds when the cells
    have patients) and the vote of the cell's k nearest cells from other patients;
    the cells it flags (is_issue) score above 0.5. Rows go to the table
    label_issues under the run name; the top suspects are printed (json: the whole
    report) and drawn beside their look-alikes.

    \b
    Example:
        cytostore audit demo-out/store --model tiny-simclr --label label
        cytostore sql demo-out/store "SELECT cell_id, given_label, suggested_label,
            score FROM label_issues WHERE run = 'label-tiny-simclr' AND is_issue
            ORDER BY rank LIMIT 20"
        cytostore audit demo-out/store --model tiny-simclr --label cell_type \\
            --where "dataset = 'bm'" --name bm-types --top 20 --montage bm.png
    """
    from cytostore.curate import audit as run_audit

    if montage is None and not no_montage:
        montage = Path(f"audit-{name or f'{label}-{model}'}.png")
    with progress_bar("folds", unit="fold") as progress:
        result = run_audit(
            store,
            model,
            label,
            where=where,
            name=name,
            k=k,
            folds=folds,
            top=top,
            montage=None if no_montage else montage,
            seed=seed,
            device=device,
            progress=progress,
        )
    report = result.to_dict()
    rows = [[r[c] for c in COLUMNS] for r in result.top]
    echo_result(render_result(report, fmt, COLUMNS, rows))
    skipped = (
        f"; classes left out (fewer cells than folds): {result.skipped_classes}"
        if result.skipped_classes
        else ""
    )
    drawn = f"; montage written to {result.montage}" if result.montage else ""
    echo_summary(
        f"audit {result.run!r}: {result.n_cells} cells scored ({result.split} folds), "
        f"{result.n_issues} flagged by confident learning, written to "
        f"label_issues{skipped}{drawn}"
    )
