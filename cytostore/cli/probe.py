"""``cytostore probe``: train and evaluate a cell-level head on frozen embeddings."""

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


@click.command("probe")
@store_argument
@click.option(
    "--model",
    default=None,
    help="Model whose embeddings are the features (default: the only one).",
)
@click.option(
    "--label",
    required=True,
    help="cell_meta column holding the class, e.g. label or cell_type.",
)
@click.option(
    "--kind",
    type=click.Choice(["linear", "knn", "mlp"]),
    default="linear",
    show_default=True,
    help="Head: L-BFGS logistic regression, cosine kNN (k=20, DINO vote) or "
    "one-hidden-layer MLP.",
)
@where_option
@click.option(
    "--train-where",
    default=None,
    help="Explicit training cells (SQL over cell_meta); needs --test-where.",
)
@click.option(
    "--test-where",
    default=None,
    help="Explicit test cells, e.g. another dataset (transfer on shared classes).",
)
@click.option(
    "--split",
    default=None,
    help="stratified, patient, or a published split file/folder (default: "
    "patient when the cells have patients, else stratified).",
)
@click.option(
    "--folds",
    type=int,
    default=None,
    help="K-fold cross-validation (default: one split).",
)
@click.option(
    "--test-size",
    type=float,
    default=0.2,
    show_default=True,
    help="Test fraction of the single split.",
)
@click.option(
    "--min-count",
    type=int,
    default=None,
    help="Exclude classes with fewer cells than this.",
)
@click.option(
    "--class-weight",
    type=click.Choice(["balanced", "none"]),
    default="balanced",
    show_default=True,
    help="Class weights of the loss.",
)
@click.option(
    "--by",
    default=None,
    help="Repeat the metrics per value of this column (bias report), e.g. sex.",
)
@click.option(
    "--name",
    default=None,
    help="Name of the saved head (default <kind>-<label>-<model>).",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=int,
    default=20,
    show_default=True,
    help="knn: neighbours per cell (1: nearest neighbour).",
)
@click.option(
    "--vote",
    type=click.Choice(["temperature", "majority"]),
    default="temperature",
    show_default=True,
    help="knn: exp(cos/0.07)-weighted vote (DINO) or plain majority.",
)
@seed_option
@device_option
@format_option
def probe(
    store: Path,
    model: str | None,
    label: str,
    kind: str,
    where: str | None,
    train_where: str | None,
    test_where: str | None,
    split: str | None,
    folds: int | None,
    test_size: float,
    min_count: int | None,
    class_weight: str,
    by: str | None,
    name: str | None,
    k: int,
    vote: str,
    seed: int,
    device: str,
    fmt: str,
) -> None:
    """Train a linear, kNN or MLP head on a model's embeddings, report and save it.

    \b
    Example:
        cytostore probe demo-out/store --model tiny-simclr --label label \\
            --where "dataset = 'bm'" --name bm-linear
        cytostore probe demo-out/store --model tiny-simclr --label cell_type \\
            --kind knn --folds 5
        cytostore probe demo-out/store --model tiny-simclr --label cell_type \\
            --train-where "dataset = 'bm'" --test-where "dataset = 'lmu'"
        cytostore probe demo-out/store --model tiny-random --label label --by dataset \\
            --format json
    """
    from cytostore.heads.probe import probe as run_probe

    with progress_bar("folds", unit="fold") as progress:
        result = run_probe(
            Path(store),
            model,
            label,
            kind=kind,
            where=where,
            train_where=train_where,
            test_where=test_where,
            split=split,
            folds=folds,
            test_size=test_size,
            min_count=min_count,
            class_weight=None if class_weight == "none" else class_weight,
            by=by,
            name=name,
            k=k,
            vote=vote,
            seed=seed,
            device=device,
            progress=progress,
        )
    report = result.to_dict()
    click.echo(render_head_report(report, fmt))
    echo_summary(
        f"head {report['head']!r} saved: balanced accuracy "
        f"{report['balanced_accuracy']:.3f} on {report['n_test']} test cells"
    )
