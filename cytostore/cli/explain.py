"""``cytostore explain``: a prediction with its nearest labelled look-alike cells."""

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
    store_argument,
)

#: Options that only mean something with --pixels (name, default).
_PIXEL_ONLY = (("method", None), ("cells", None), ("target", None), ("steps", None))


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
    help="Write a PNG: each explained cell followed by its neighbours (with "
    "--pixels: each cell and its heat map, plus FILE-stem.cell<ID>.png per cell).",
)
@click.option(
    "--pixels",
    is_flag=True,
    help="Attribute the head's output to the pixels of the cell (a patient: of "
    "its top-attention cells) through the backbone; docs/explain.md.",
)
@click.option(
    "--method",
    type=click.Choice(["ig", "gradxinput"]),
    default=None,
    help="With --pixels: integrated gradients from a blurred image (default) or "
    "gradient x input (fast).",
)
@click.option(
    "--cells",
    type=int,
    default=None,
    help="With --pixels: top-attention cells of a patient to explain [default: 3].",
)
@click.option(
    "--class",
    "target",
    default=None,
    help="With --pixels: class whose output is explained (default: the predicted).",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="With --pixels: integration steps of ig [default: 32].",
)
@click.option(
    "--checks",
    is_flag=True,
    help="With --pixels: also run the randomisation, deletion and pointing checks.",
)
@device_option
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
    pixels: bool,
    method: str | None,
    cells: int | None,
    target: str | None,
    steps: int | None,
    checks: bool,
    device: str,
    fmt: str,
) -> None:
    """Explain a prediction with its nearest labelled cells (patients: attention).

    With --pixels: which pixels of the cell (of a patient's top-attention cells)
    drive the call, as heat maps over the images.

    \b
    Example:
        cytostore explain demo-out/store --cell 17 --head bm-linear
        cytostore explain demo-out/store --patient KFP --head subtype --montage why.png
        cytostore explain demo-out/store --patient KFP --head subtype --pixels
        cytostore explain demo-out/store --cell 17 --head bm-linear --pixels --checks
    """
    if pixels:
        _explain_pixels(
            store, head, cell, patient, montage, method, cells, target, steps,
            checks, device, fmt,
        )  # fmt: skip
        return
    given = {"method": method, "cells": cells, "target": target, "steps": steps}
    extra = [n for n, default in _PIXEL_ONLY if given[n] != default]
    if checks:
        extra.append("checks")
    if extra:
        flag = "--class" if extra[0] == "target" else f"--{extra[0]}"
        raise click.UsageError(f"{flag} needs --pixels")
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


def _explain_pixels(
    store: Path,
    head: str,
    cell: int | None,
    patient: str | None,
    montage: Path | None,
    method: str | None,
    cells: int | None,
    target: str | None,
    steps: int | None,
    checks: bool,
    device: str,
    fmt: str,
) -> None:
    from cytostore.explain import DEFAULT_STEPS, explain_pixels

    with progress_bar("explaining", unit="cell") as progress:
        result = explain_pixels(
            Path(store),
            head,
            cell=cell,
            patient=patient,
            method=method or "ig",
            cells=3 if cells is None else cells,
            target=target,
            steps=DEFAULT_STEPS if steps is None else steps,
            montage=montage,
            checks=checks,
            device=device,
            progress=progress,
        )
    pred = result["prediction"]
    who = f"patient {result['patient']}" if result["patient"] else f"cell {cell}"
    if fmt == "table":
        click.echo(
            f"{who}: predicted {pred['label']} (p={pred['probability']:.3f}); "
            f"{result['method']} attribution to {result['target']}"
        )
    columns = [
        "cell_id",
        "attention",
        "total_attribution",
        "peak_x",
        "peak_y",
        "completeness_error",
        "overlay",
    ]
    rows = [
        [
            c["cell_id"],
            c["attention"],
            c["total_attribution"],
            c["peak"]["x"],
            c["peak"]["y"],
            c["completeness_error"],
            c["overlay"],
        ]
        for c in result["cells"]
    ]
    echo_result(render_result(result, fmt, columns, rows))
    found = result.get("checks")
    if found:
        rnd, dl = found["randomisation"], found["deletion"]
        line = (
            f"randomisation: mean rank correlation {rnd['mean_rho']:.2f} "
            f"(passes below {rnd['threshold']}: "
            f"{'passed' if rnd['passed'] else 'FAILED'}); deletion: area between "
            f"curves {dl['area_between']:.3f} "
            f"({'passed' if dl['passed'] else 'FAILED'})"
        )
        if found["pointing"]:
            pt = found["pointing"]
            line += (
                f"; pointing: {pt['mass_share']:.1%} of the attribution on "
                f"{pt['area_share']:.1%} of the area"
            )
        echo_summary(line)
    if result.get("montage"):
        echo_summary(f"montage written to {result['montage']}")
