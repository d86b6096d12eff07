"""``cytostore models``: list the models registered in a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cytostore.cli._common import (
    echo_summary,
    format_option,
    render_rows,
    store_argument,
)
from cytostore.store import Store

#: Columns of the table, from each model's card.
COLUMNS = (
    "name",
    "method",
    "backbone",
    "dim",
    "crop_px",
    "um_per_px",
    "epochs",
    "final_loss",
    "knn_accuracy",
    "created",
)


def _row(model: dict[str, Any]) -> dict[str, Any]:
    card = model["card"]
    prep = card.get("preprocessing") or {}
    knn = card.get("knn_monitor") or {}
    return {
        "name": model["name"],
        "method": model["method"],
        "backbone": model["backbone"],
        "dim": model["dim"],
        "crop_px": prep.get("crop_px"),
        "um_per_px": prep.get("um_per_px"),
        "epochs": card.get("epochs"),
        "final_loss": card.get("final_loss"),
        "knn_accuracy": knn.get("accuracy"),
        "created": card.get("created") or model["created_at"],
    }


@click.command("models")
@store_argument
@format_option("table", "csv", "json", "jsonl")
def models(store: Path, fmt: str) -> None:
    """List the models registered in STORE, with their training summary.

    The json format adds each model's full card (preprocessing, data, versions,
    sha256 of the weights).

    \b
    Example:
        cytostore models demo-store
        cytostore models demo-store --format json
    """  # noqa: D301 - click needs the \b character
    from cytostore.embedder import list_models

    found = list_models(Store.open(store))
    rows = [_row(m) for m in found]
    if fmt in ("json", "jsonl"):
        for row, model in zip(rows, found, strict=True):
            row["card"] = model["card"]
        click.echo(
            render_rows(
                list(rows[0]) if rows else list(COLUMNS),
                [list(r.values()) for r in rows],
                fmt,
            )
        )
    else:
        click.echo(render_rows(COLUMNS, [[r[c] for c in COLUMNS] for r in rows], fmt))
    echo_summary(f"{len(rows)} models")
