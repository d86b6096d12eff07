"""``cytostore rm``: remove a model, set or head, or withdraw a patient or dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    render_result,
    store_argument,
)

__all__ = ["rm"]

_KINDS = ("model", "set", "head", "patient", "dataset")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _rows(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """One line per removed thing: ``(what, name, count)``."""
    out: list[tuple[str, str, Any]] = []
    for group, names in report.get("removed", {}).items():
        out += [
            (group.rstrip("s").replace("neighbor_table", "table"), n, "") for n in names
        ]
    out += [("rows", table, n) for table, n in report["rows"].items() if n]
    for s in report.get("sets", []):
        new = f" -> set {s['new_set_id']}" if "new_set_id" in s else ""
        out.append(
            ("set rows", f"{s['model']} (set {s['set_id']}{new})", s["rows_removed"])
        )
    for c in report.get("caches", []):
        out.append((f"cache rows ({c['action']})", c["prep_id"], c["rows_removed"]))
    out += [("file", f, "") for f in report["files"]]
    return out


def _summary(report: dict[str, Any]) -> str:
    verb = "would remove" if report["dry_run"] else "removed"
    what = f"{report['kind']} {report['name']!r}"
    if report.get("dataset") and report["kind"] == "patient":
        what += f" of dataset {report['dataset']!r}"
    if "note" in report:
        return f"{report['note']}: {len(report['files'])} files"
    parts = []
    if "cells" in report:
        parts.append(f"{report['cells']} cells")
    parts.append(f"{sum(report['rows'].values())} catalog rows")
    if report.get("sets"):
        parts.append(f"{len(report['sets'])} embedding sets rewritten")
    parts.append(f"{len(report['files'])} files")
    return f"{verb} {what}: {', '.join(parts)}, {_human(report['bytes'])}"


@click.command("rm")
@store_argument
@click.argument("kind", type=click.Choice(_KINDS), metavar="KIND")
@click.argument("name", metavar="NAME")
@click.option(
    "--dataset",
    default=None,
    help="The patient's dataset (needed when the id is in several datasets).",
)
@click.option(
    "--cascade",
    is_flag=True,
    help="Also remove what depends on a model or set (its sets, heads, neighbour "
    "tables) instead of refusing.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@format_option
def rm(
    store: Path,
    kind: str,
    name: str,
    dataset: str | None,
    cascade: bool,
    dry_run: bool,
    fmt: str,
) -> None:
    """Remove a model, set or head, or a patient or dataset everywhere (consent).

    KIND is model, set, head, patient or dataset. A model or set that is still used
    (sets, heads, neighbour tables) is refused unless --cascade. A patient or
    dataset is removed from every table, vector set, index, cache and thumbnail,
    so that no query finds it; the other cells keep their ids. Prints what was
    removed: catalog rows per table, files and bytes.

    \b
    Example:
        cytostore rm demo-out/store patient KFP --dataset mll_helmholtz --dry-run
        cytostore rm demo-out/store patient KFP --dataset mll_helmholtz
        cytostore rm demo-out/store head bm-linear
        cytostore rm demo-out/store model tiny-random --cascade
    """  # noqa: D301 - click needs the \b character
    from cytostore.store import Store

    report = Store.open(store).remove(
        kind,
        name,
        dataset=dataset,
        cascade=cascade,
        dry_run=dry_run,
    )
    columns = ["removed", "name", "count"]
    echo_result(render_result(report, fmt, columns, _rows(report)))
    echo_summary(_summary(report))
