"""``cytostore mil``: cross-validate and save an attention-MIL head of patient bags."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    device_option,
    echo_summary,
    format_option,
    progress_bar,
    render_head_report,
    seed_option,
    store_argument,
    where_option,
)


@click.command("mil")
@store_argument
@click.option(
    "--model",
    default=None,
    help="Model whose cell embeddings form the bags (default: the only one).",
)
@click.option(
    "--bag",
    default="patient_id",
    show_default=True,
    help="cell_meta column naming each cell's bag.",
)
@click.option(
    "--label",
    default="bag_label",
    show_default=True,
    help="cell_meta column with the bag's class.",
)
@where_option
@click.option(
    "--folds",
    type=int,
    default=5,
    show_default=True,
    help="Stratified patient-level folds.",
)
@click.option(
    "--split",
    default=None,
    help="Published split file or folder of rotations naming patients "
    "(instead of --folds).",
)
@click.option(
    "--name",
    default=None,
    help="Name of the saved head (default abmil-<label>-<model>).",
)
@click.option(
    "--min-bag-size",
    type=int,
    default=2,
    show_default=True,
    help="Exclude bags with fewer cells.",
)
@click.option(
    "--max-epochs",
    type=int,
    default=40,
    show_default=True,
    help="Epochs per fold at most (early stopping).",
)
@click.option(
    "--prior-correction",
    is_flag=True,
    help="Train on the natural class frequencies and divide the training class "
    "prior out of the posterior (decide as if classes were equally likely) "
    "instead of the default class-balanced loss.",
)
@seed_option
@device_option
@format_option
def mil(
    store: Path,
    model: str | None,
    bag: str,
    label: str,
    where: str | None,
    folds: int,
    split: str | None,
    name: str | None,
    min_bag_size: int,
    max_epochs: int,
    prior_correction: bool,
    seed: int,
    device: str,
    fmt: str,
) -> None:
    """Cross-validate a gated attention-MIL head on patient bags, report and save it.

    Out-of-fold patient predictions go to the table patient_predictions and per-cell
    attention to attention; the saved head is refitted on every bag for the median
    of the folds' best epochs (at least 10). A patient gets the class of highest
    posterior, the head trained with a class-balanced loss (or, with
    --prior-correction, unweighted with the training class prior divided out).

    \b
    Example:
        cytostore mil demo-out/store --model tiny-simclr --bag patient_id \\
            --label bag_label --name subtype
        cytostore mil demo-out/store --model tiny-simclr --split splits/mll_test.tsv
        cytostore sql demo-out/store \\
            "SELECT * FROM patient_predictions WHERE head = 'subtype'"
    """
    from cytostore.heads.mil import mil as run_mil

    with progress_bar("folds", unit="fold") as progress:
        result = run_mil(
            Path(store),
            model,
            bag=bag,
            label=label,
            where=where,
            folds=folds,
            split=split,
            name=name,
            min_bag_size=min_bag_size,
            max_epochs=max_epochs,
            prior_correction=prior_correction,
            seed=seed,
            device=device,
            progress=progress,
        )
    report = result.to_dict()
    click.echo(render_head_report(report, fmt))
    echo_summary(
        f"head {report['head']!r} saved: balanced accuracy "
        f"{report['balanced_accuracy']:.3f} over {report['n_test']} patients; "
        f"{report['attention_rows']} attention rows"
    )
