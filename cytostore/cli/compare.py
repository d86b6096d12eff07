"""``cytostore compare``: several models evaluated side by side on the same folds."""

from __future__ import annotations

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

_METRICS = ("balanced_accuracy", "macro_f1", "accuracy")


@click.command("compare")
@store_argument
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="A model to compare (repeat: --model A --model B ...).",
)
@click.option(
    "--label",
    required=True,
    help="cell_meta column holding the cell class, e.g. label or cell_type.",
)
@where_option
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="K-fold cross-validation, patient-grouped when cells have patients.",
)
@click.option(
    "--k", type=click.IntRange(min=1), default=20, show_default=True,
    help="Neighbours of the kNN head.",
)  # fmt: skip
@click.option(
    "--min-count",
    type=click.IntRange(min=1),
    default=None,
    help="Leave out classes with fewer cells (they cannot fill every fold).",
)
@click.option(
    "--bag-label",
    default="bag_label",
    show_default=True,
    help="Patient label column of the MIL rows (added when cells have patients).",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the bar chart here [default: compare-LABEL.png in the current folder].",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Torch device of the heads: cpu, cuda, cuda:N.",
)
@seed_option
@format_option
def compare(
    store: Path,
    models: tuple[str, ...],
    label: str,
    where: str | None,
    folds: int,
    k: int,
    min_count: int | None,
    bag_label: str,
    png: Path | None,
    device: str,
    seed: int,
    fmt: str,
) -> None:
    """Compare models: linear, kNN and (with patients) MIL results on the same folds.

    Every model is evaluated on the cells all of them embed, with the same folds,
    so the differences are the models'. Prints one row per model and head (mean
    ± sd over folds) with the model's neighbourhood mixing scores (dataset: batch
    effect, lower is better; label: higher is better), writes a PNG, and saves
    nothing in the store.

    \b
    Example:
        cytostore compare demo-out/store --model tiny-simclr --model tiny-random \\
            --label label --where "dataset = 'mll_helmholtz'" --png compare.png
        cytostore compare demo-out/store --model tiny-simclr --model tiny-random \\
            --label label --where "dataset = 'bm'" --min-count 5 --format json
    """
    from cytostore.heads.compare import compare as run_compare

    out = png if png is not None else Path(f"compare-{label}.png")
    with progress_bar("evaluations", unit="") as progress:
        report = run_compare(
            store,
            list(models),
            label,
            where=where,
            folds=folds,
            k=k,
            min_count=min_count,
            bag_label=bag_label or None,
            seed=seed,
            device=device,
            png=out,
            progress=progress,
        )
    doc = report.to_dict()
    columns = ["model", "head", "n"]
    rows: list[list[Any]] = []
    if fmt == "table":
        columns += [m.replace("_", " ") for m in _METRICS]
        for r in report.rows:
            rows.append([r["model"], r["head"], r["n"]] + [_pm(r, m) for m in _METRICS])
    else:
        columns += [c for m in _METRICS for c in (m, f"{m}_sd")]
        rows = [[r.get(c) for c in columns] for r in report.rows]
    if report.mixing is not None:  # per model: batch effects and biology
        columns += ["mixing_dataset", "mixing_label"]
        for row, r in zip(rows, report.rows, strict=True):
            mix = report.mixing.get(r["model"], {})
            row += [mix.get("dataset"), mix.get("label")]
    echo_result(render_result(doc, fmt, columns, rows))
    best = report.best("linear")
    echo_summary(
        f"compared {len(report.models)} models on {report.n_cells} cells, "
        f"{report.folds} {report.split} folds: best linear probe {best}; "
        f"figure {report.png}"
    )


def _pm(row: dict[str, Any], metric: str) -> str:
    sd = row.get(f"{metric}_sd")
    return f"{row[metric]:.3f}" + ("" if sd is None else f" ± {sd:.3f}")
