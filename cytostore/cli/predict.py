"""``cytostore predict``: apply a saved head, write its predictions to the catalog."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_result,
    store_argument,
    where_option,
)


@click.command("predict")
@store_argument
@click.option(
    "--head",
    required=True,
    help="Name of a saved head (see 'cytostore ls STORE heads').",
)
@where_option
@format_option
def predict(store: Path, head: str, where: str | None, fmt: str) -> None:
    """Apply a saved head to cells (MIL: new patients) and store the predictions.

    \b
    Example:
        cytostore predict demo-out/store --head bm-linear --where "dataset = 'bm'"
        cytostore sql demo-out/store \\
            "SELECT label, count(*) FROM predictions GROUP BY 1"
    """
    from cytostore.heads.predict import domain_shift_warning
    from cytostore.heads.predict import predict as run_predict

    with progress_bar("predict") as progress:
        result = run_predict(Path(store), head, where=where, progress=progress)
    warning = domain_shift_warning(result)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
    rows = sorted(result["label_counts"].items())
    echo_result(render_result(result, fmt, ["label", "count"], rows))
    extra = (
        f" ({result['skipped_trained_patients']} training patients kept their "
        "out-of-fold predictions)"
        if result.get("skipped_trained_patients")
        else f" ({result['kept_out_of_fold']} cells kept their out-of-fold predictions)"
        if result.get("kept_out_of_fold")
        else ""
    )
    written = result.get("n_written", result["n_predicted"])
    echo_summary(f"{written} rows written to {result['table']}{extra}")
