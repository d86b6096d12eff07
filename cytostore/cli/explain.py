"""``cytostore explain``: a prediction with its nearest labelled look-alike cells."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    render_result,
    store_argument,
)


@click.command("explain")
@store_argument
@click.option(
    "--cell", type=int, default=None, help="Cell id to explain (cell-level head)."
)
@click.option(
    "--patient",
    default=None,
    help="Patient to explain (MIL head), as ID or DATASET/ID.",
)
@click.option("--head", required=True, help="Name of a saved head.")
@click.option(
    "-k",
    "--k",
    "k",
    type=int,
    default=5,
    show_default=True,
    help="Nearest labelled cells per explained cell.",
)
@click.option(
    "--top",
    type=int,
    default=5,
    show_default=True,
    help="Top-attention cells of a patient.",
)
@click.option(
    "--reference-label",
    default=None,
    help="Column labelling the neighbours (default: the head's label; "
    "cell_type for patients).",
)
@click.option(
    "--montage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG: each explained cell followed by its neighbours.",
)
@format_option
def explain(
    store: Path,
    cell: int | None,
    patient: str | None,
    head: str,
    k: int,
    top: int,
    reference_label: str | None,
    montage: Path | None,
    fmt: str,
) -> None:
    """Explain a prediction with its nearest labelled cells (patients: attention).

    \b
    Example:
        cytostore explain demo-out/store --cell 17 --head bm-linear
        cytostore explain demo-out/store --patient KFP --head subtype --montage why.png
    """
    from cytostore.heads.explain import explain as run_explain

    result = run_explain(
        Path(store),
        head,
        cell=cell,
        patient=patient,
        k=k,
        top=top,
        reference_label=reference_label,
        montage=montage,
    )
    pred = result["prediction"]
    who = (
        f"cell {result['cell_id']}"
        if "cell_id" in result
        else f"patient {result['patient']}"
    )
    if fmt == "table":
        click.echo(
            f"{who}: predicted {pred['label']} (p={pred['probability']:.3f}), "
            f"recorded {result.get('true_label')}"
        )
    columns = [
        "explained",
        "attention",
        "rank",
        "cell_id",
        "label",
        "dataset",
        "similarity",
    ]
    rows = []
    explained = (
        [(result["cell_id"], None, result["neighbors"])]
        if "cell_id" in result
        else [
            (c["cell_id"], c["attention"], c["neighbors"]) for c in result["top_cells"]
        ]
    )
    for cid, att, neighbours in explained:
        for rank, nb in enumerate(neighbours, start=1):
            rows.append(
                [
                    cid,
                    att,
                    rank,
                    nb["cell_id"],
                    nb["label"],
                    nb["dataset"],
                    nb["similarity"],
                ]
            )
    echo_result(render_result(result, fmt, columns, rows))
    if result.get("montage"):
        echo_summary(f"montage written to {result['montage']}")
