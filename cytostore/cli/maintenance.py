"""Maintenance commands: ``verify``, ``ls``, ``gc`` and ``relocate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    render_report,
    render_result,
    render_rows,
    store_argument,
)
from cytostore.store import Store

__all__ = ["gc", "ls", "relocate", "render_models", "verify"]


def _human(n: int | None) -> str:
    if n is None:
        return "outside the store"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def render_models(rows: list[dict[str, Any]], fmt: str) -> str:
    """Render :func:`cytostore.store.inventory.list_models` rows (``models``, ``ls``).

    The table and csv formats leave out the card; json and jsonl include it.
    """
    from cytostore.store import MODEL_COLUMNS

    columns = list(MODEL_COLUMNS) + (["card"] if fmt in ("json", "jsonl") else [])
    return render_rows(columns, [[r[c] for c in columns] for r in rows], fmt)


def _render_group(group: str, rows: list[dict[str, Any]], fmt: str) -> str:
    if group == "models":
        return render_models(rows, fmt)
    columns = list(rows[0]) if rows else _EMPTY_COLUMNS[group]
    return render_rows(columns, [[r[c] for c in columns] for r in rows], fmt)


_EMPTY_COLUMNS = {
    "sets": ["set_id", "name", "model", "shard", "dim", "dtype", "metric", "rows"],
    "heads": ["name", "kind", "model", "label", "created", "disk_bytes"],
    "tables": ["table", "rows"],
}


@click.command("verify")
@store_argument
@click.option(
    "--images", is_flag=True, help="Also re-hash every cell image (slow on big data)."
)
@click.option(
    "--repair",
    is_flag=True,
    help="Do the safe repairs: rebuild indexes, truncate uncommitted tails, "
    "delete stale temporaries.",
)
@format_option
def verify(store: Path, images: bool, repair: bool, fmt: str) -> None:
    """Check every store file against the catalog and its recorded checksum.

    Prints each problem with the command that repairs it and exits 1 when any is
    left; prints "ok: N files, M sets checked" otherwise.

    \b
    Example:
        cytostore verify demo-out/store
        cytostore verify demo-out/store --repair
        cytostore verify demo-out/store --images --format json
    """  # noqa: D301 - click needs the \b character
    report = Store.open(store).verify(images=images, repair=repair)
    if fmt != "json":
        for p in report.repaired:
            click.echo(f"repaired: {p.object}: {p.message}", err=True)
    if fmt == "table":
        for p in report.problems:
            click.echo(f"{p.kind}: {p.object}: {p.message}; fix: {p.fix}")
        if report.ok:
            click.echo(f"ok: {report.files} files, {report.sets} sets checked")
    else:
        rows = [[p.kind, p.object, p.message, p.fix] for p in report.problems]
        columns = ["kind", "object", "message", "fix"]
        echo_result(render_result(report.as_dict(), fmt, columns, rows))
        if report.ok and fmt != "json":
            echo_summary(f"ok: {report.files} files, {report.sets} sets checked")
    if report.unchecked:
        echo_summary(
            f"{len(report.unchecked)} files have no recorded checksum (written "
            "before checksums were kept): sizes checked only"
        )
    if not report.ok:
        click.get_current_context().exit(1)


@click.command("ls")
@store_argument
@click.argument(
    "what",
    required=False,
    type=click.Choice(["models", "sets", "heads", "tables"]),
)
@format_option
def ls(store: Path, what: str | None, fmt: str) -> None:
    """List the models, embedding sets, heads and tables of STORE, with disk use.

    Without WHAT, all four are listed, one group after the other (json: one object
    with a key per group).

    \b
    Example:
        cytostore ls demo-out/store
        cytostore ls demo-out/store sets --format json
    """  # noqa: D301 - click needs the \b character
    groups = Store.open(store).ls(what)
    if what is not None:
        echo_result(_render_group(what, groups[what], fmt))
        echo_summary(f"{len(groups[what])} {what}")
        return
    if fmt == "json":
        click.echo(render_report(groups, "json"))
        return
    if fmt == "jsonl":  # one object a line, each saying its group
        lines = [
            render_report({"group": g, **row}, "jsonl")
            for g, rows in groups.items()
            for row in rows
        ]
        echo_result("\n".join(lines))
        return
    blocks = [f"{g}:\n{_render_group(g, rows, fmt)}" for g, rows in groups.items()]
    click.echo("\n\n".join(blocks))


@click.command("gc")
@store_argument
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--cache",
    is_flag=True,
    help="Also remove preprocessing caches no registered model uses.",
)
@click.option(
    "--all-caches",
    is_flag=True,
    help="Remove every preprocessing cache (rebuilt when next needed).",
)
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Keep temporaries (and unregistered model/head folders) younger than this.",
)
@format_option
def gc(
    store: Path, dry_run: bool, cache: bool, all_caches: bool, grace_s: float, fmt: str
) -> None:
    """Remove orphaned and temporary files of STORE and report the bytes reclaimed.

    Files no catalog row refers to and half-written temporaries no live writer
    holds are removed; preprocessing caches only with --cache / --all-caches.

    \b
    Example:
        cytostore gc demo-out/store --dry-run
        cytostore gc demo-out/store --cache
    """  # noqa: D301 - click needs the \b character
    report = Store.open(store).gc(
        dry_run=dry_run,
        cache=cache,
        all_caches=all_caches,
        grace_s=grace_s,
    )
    rows = [[r["path"], r["bytes"], r["why"]] for r in report.removed]
    echo_result(render_result(report.as_dict(), fmt, ["path", "bytes", "why"], rows))
    for kept in report.kept:
        echo_summary(f"kept {kept['path']}: {kept['why']}")
    verb = "would remove" if dry_run else "removed"
    echo_summary(
        f"{verb} {report.files} files ({_human(report.bytes)}) and "
        f"{report.records} stale checksum rows"
    )


@click.command("relocate")
@store_argument
@click.argument("dataset")
@click.argument(
    "new_root", type=click.Path(file_okay=False, path_type=Path), metavar="NEW_ROOT"
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Cells whose file is checked by sha256 first.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@format_option
def relocate(
    store: Path, dataset: str, new_root: Path, sample: int, seed: int, fmt: str
) -> None:
    """Point DATASET at NEW_ROOT, the folder now holding its images.

    For a store copied or moved with its images: a random sample of the dataset's
    files is first checked by sha256 under NEW_ROOT; on any mismatch nothing changes.

    \b
    Example:
        cytostore relocate demo-out/store lmu /mnt/data/lmu  # the images moved
    """  # noqa: D301 - click needs the \b character
    report = Store.open(store).relocate(dataset, new_root, sample=sample, seed=seed)
    if fmt == "table":
        click.echo(
            f"dataset {report['dataset']}: {report['old_root']} -> "
            f"{report['new_root']} ({report['checked']} of {report['cells']} cells "
            "checked)"
        )
    else:
        echo_result(render_report(report, fmt))
