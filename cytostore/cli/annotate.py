"""``cytostore annotate``: import cell-level labels or notes from a CSV file."""

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


@click.command("annotate")
@store_argument
@click.argument(
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.csv",
    required=False,
)
@click.option(
    "--key",
    type=click.Choice(["cell_id", "path"]),
    default=None,
    help="How the file names cells: cell_id, or dataset + path relative to the "
    "dataset's root (default: cell_id when the file has that column).",
)
@click.option(
    "--as",
    "prefix",
    default=None,
    metavar="PREFIX",
    help="Import column C as PREFIX_C (needed for names cell_meta has, e.g. label).",
)
@click.option(
    "--columns",
    default=None,
    help="Comma-separated columns of the file to import (default: all but the key).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Let the file's values replace different values already stored.",
)
@click.option(
    "--drop",
    multiple=True,
    metavar="COLUMN",
    help="Remove an imported column instead (repeatable; no FILE then).",
)
@format_option
def annotate(
    store: Path,
    file: Path | None,
    key: str | None,
    prefix: str | None,
    columns: str | None,
    replace: bool,
    drop: tuple[str, ...],
    fmt: str,
) -> None:
    """Import labels or notes per cell from a CSV file into columns of cell_meta.

    Each column of FILE.csv besides the key (cell_id, or dataset + path) becomes a
    column of cell_meta: filter on it with --where, train or audit on it with
    --label. All or nothing: rows naming unknown cells, a cell twice, or a value
    that conflicts with the one stored are listed by line number and nothing is
    imported. Importing a column again adds values for new cells; --replace lets
    changed values win. Empty fields, nan and NA mean no value. A CSV from
    `cytostore select --csv` comes back as it is: only the columns an annotator
    added are imported. --drop COLUMN removes an imported column.

    \b
    Example:
        cytostore annotate demo-out/store second_opinion.csv --key path --as expert2
        cytostore probe demo-out/store --model tiny-simclr --label expert2_label \\
            --where "expert2_label IS NOT NULL"
        cytostore sql demo-out/store "SELECT * FROM annotation_columns"
    """
    if file is None or drop:
        if file is not None or not drop:
            raise click.UsageError(
                "give FILE.csv to import, or --drop COLUMN to remove"
            )
        from cytostore.store import Store, drop_annotations

        dropped = drop_annotations(Store.open(store), drop)
        echo_result(render_report({"dropped": dropped}, fmt))
        echo_summary(
            f"removed column{'s' if len(dropped) > 1 else ''} {', '.join(dropped)}"
        )
        return
    from cytostore.curate.annotate import annotate as run_annotate

    chosen = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    report = run_annotate(
        store, file, key=key, prefix=prefix, columns=chosen, replace=replace
    )
    echo_result(render_report(report, fmt))
    echo_summary(
        f"imported {', '.join(report['columns'])} for {report['cells']} cells: "
        f"{report['added']} values added, {report['changed']} changed, "
        f"{report['unchanged']} unchanged"
        + (
            f" (new columns: {', '.join(report['new_columns'])})"
            if report["new_columns"]
            else ""
        )
    )
