"""``cytostore models``: list the models registered in a store."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    store_argument,
)
from cytostore.store import Store


@click.command("models")
@store_argument
@format_option
def models(store: Path, fmt: str) -> None:
    """List the models registered in STORE, with their training summary.

    The same list as 'cytostore ls STORE models'. The json format adds each
    model's full card (preprocessing, data, versions, sha256 of the weights).

    \b
    Example:
        cytostore models demo-out/store
        cytostore models demo-out/store --format json
    """  # noqa: D301 - click needs the \b character
    from cytostore.cli.maintenance import render_models
    from cytostore.store import list_models

    rows = list_models(Store.open(store))
    echo_result(render_models(rows, fmt))
    echo_summary(f"{len(rows)} models")
