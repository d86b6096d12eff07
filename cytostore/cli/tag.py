"""``cytostore tag``: add or remove tags on the cells a filter selects."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    render_report,
    store_argument,
)


@click.command("tag")
@store_argument
@click.option(
    "--where",
    required=True,
    help="SQL filter over cell_meta choosing the cells, e.g. \"label = 'BLA'\".",
)
@click.option("--add", "add", multiple=True, help="Tag to attach (repeatable).")
@click.option("--remove", "remove", multiple=True, help="Tag to remove (repeatable).")
@format_option
def tag(
    store: Path, where: str, add: tuple[str, ...], remove: tuple[str, ...], fmt: str
) -> None:
    """Add or remove tags on the cells --where selects; filter on them later.

    Tags show in cell_meta as the list column `tags`: filter with
    list_contains(tags, 'review').

    \b
    Example:
        cytostore tag demo-out/store --where "label = 'BLA' AND dataset = 'bm'" \\
            --add review
        cytostore search demo-out/store --model tiny-simclr --cell 1 \\
            --where "list_contains(tags, 'review')"
        cytostore tag demo-out/store --where "cell_id = 7" --remove review --add ok
    """
    from cytostore.store import Store

    report = Store.open(store).tag(where, add=add, remove=remove)
    echo_result(render_report(report, fmt))
    echo_summary(
        f"{report['cells']} cells selected: {report['added']} tags added, "
        f"{report['removed']} removed"
    )
