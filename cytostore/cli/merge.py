"""``cytostore merge``: join the shard sets of a sharded embedding run."""

from __future__ import annotations

from pathlib import Path

import click

from cytostore.cli._common import (
    echo_result,
    echo_summary,
    format_option,
    progress_bar,
    render_report,
    store_argument,
)


@click.command("merge")
@store_argument
@click.option(
    "--model", default=None, help="Model whose shards to join (default: the only one)."
)
@click.option(
    "--when-ready",
    is_flag=True,
    help="Merge the shards that are ready and exit 0 if none is (for each task of "
    "a job array: shards still being written are merged by a later merge).",
)
@format_option
def merge(store: Path, model: str | None, when_ready: bool, fmt: str) -> None:
    """Join the shard sets written by 'embed --shard I/N' into the model's set.

    Shards can be merged as they finish: shards still being written by an
    'embed --shard' are left for a later merge, and cells already merged are
    skipped (see docs/scale.md for a SLURM array job that does this).

    \b
    Example:
        cytostore embed demo-out/store --model tiny-simclr --shard 1/2
        cytostore embed demo-out/store --model tiny-simclr --shard 2/2
        cytostore merge demo-out/store
        cytostore merge demo-out/store --when-ready  # in each task of a job array
    """
    from cytostore.store import Store

    with progress_bar("merge", unit="vector") as progress:
        report = Store.open(store).merge(
            model, progress=progress, when_ready=when_ready
        )
    echo_result(render_report(report, fmt))
    if not report["shards"] and report["busy"]:
        echo_summary(
            f"no shard of {report['model']} ready: {', '.join(report['busy'])} still "
            "being written or merged (a later merge joins them)"
        )
        return
    if not report["shards"]:
        echo_summary(
            f"nothing to merge: the shards of {report['model']} are merged already "
            f"({report['n_vectors']} vectors in set {report['set_id']})"
        )
        return
    echo_summary(
        f"merged shards {', '.join(report['shards'])} of {report['model']}: "
        f"{report['added']} vectors added, {report['n_vectors']} in set "
        f"{report['set_id']}"
        + (
            f"; {', '.join(report['busy'])} still being written (merge again "
            "when they finish)"
            if report["busy"]
            else ""
        )
    )
