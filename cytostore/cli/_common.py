"""Shared pieces of every command: options, error mapping, rendering, progress."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import decimal
import io
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from cytostore.errors import CytostoreError, InvalidArgumentError

__all__ = [
    "CytostoreGroup",
    "store_argument",
    "format_option",
    "seed_option",
    "device_option",
    "where_option",
    "render_rows",
    "render_report",
    "render_head_report",
    "progress_bar",
    "echo_summary",
    "to_jsonable",
]

F = TypeVar("F", bound=Callable[..., Any])


class CytostoreGroup(click.Group):
    """A click group mapping library errors to one-line messages and exit codes.

    ``InvalidArgumentError`` → usage error (exit 2); any other ``CytostoreError`` →
    ``click.ClickException`` (exit 1); anything else keeps its traceback (a bug).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidArgumentError as exc:
            raise click.UsageError(str(exc), ctx=ctx) from exc
        except CytostoreError as exc:
            raise click.ClickException(str(exc)) from exc


def store_argument(func: F) -> F:
    """The ``STORE`` argument: the store folder."""
    return click.argument(
        "store", type=click.Path(file_okay=False, path_type=Path), metavar="STORE"
    )(func)


def format_option(*choices: str, default: str = "table") -> Callable[[F], F]:
    """``--format``: how results are printed on stdout."""
    names = choices or ("table", "csv", "json", "jsonl")
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(names),
        default=default,
        show_default=True,
        help="Output format on stdout (json: one document; jsonl: one object a line).",
    )


def seed_option(func: F) -> F:
    """``--seed``: the random seed."""
    return click.option(
        "--seed", type=int, default=0, show_default=True, help="Random seed."
    )(func)


def device_option(func: F) -> F:
    """``--device``: auto, cpu, cuda or cuda:N."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Torch device: auto (CUDA if present, else CPU), cpu, cuda, cuda:N.",
    )(func)


def where_option(func: F) -> F:
    """``--where``: a SQL filter over the columns of the view ``cell_meta``."""
    return click.option(
        "--where",
        default=None,
        help=(
            "SQL filter over the columns of cell_meta, "
            "e.g. \"dataset='lmu' AND age > 60\"."
        ),
    )(func)


def to_jsonable(value: Any) -> Any:
    """Return ``value`` converted to something ``json.dumps`` accepts (NaN → null)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return to_jsonable(value.item())
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Return rows rendered as ``table``, ``csv``, ``json`` (array) or ``jsonl``."""
    if fmt == "json":
        docs = [to_jsonable(dict(zip(columns, r, strict=True))) for r in rows]
        return json.dumps(docs, indent=2, ensure_ascii=False)
    if fmt == "jsonl":
        return "\n".join(
            json.dumps(
                to_jsonable(dict(zip(columns, r, strict=True))), ensure_ascii=False
            )
            for r in rows
        )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append(
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def render_report(report: dict[str, Any], fmt: str) -> str:
    """Return a report dict as one JSON document or as readable ``key: value`` lines."""
    if fmt == "json":
        return json.dumps(to_jsonable(report), indent=2, ensure_ascii=False)
    lines: list[str] = []

    def walk(prefix: str, value: Any, depth: int) -> None:
        pad = "  " * depth
        if isinstance(value, dict):
            lines.append(f"{pad}{prefix}:" if prefix else "")
            for k, v in value.items():
                walk(str(k), v, depth + (1 if prefix else 0))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{prefix}:")
            for i, v in enumerate(value):
                walk(f"[{i}]", v, depth + 1)
        else:
            lines.append(f"{pad}{prefix}: {_cell(to_jsonable(value))}")

    walk("", report, 0)
    return "\n".join(line for line in lines if line)


def render_head_report(report: dict[str, Any], fmt: str) -> str:
    """Return a head's report (probe, mil) as one JSON document or readable tables."""
    if fmt == "json":
        return render_report(report, "json")
    from cytostore.heads.report import format_report

    return format_report(report)


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "cell") -> Iterator[Callable[[int, int], None]]:
    """Yield a ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            tty = sys.stderr.isatty()
            bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                leave=False,
                mininterval=0.2 if tty else 10.0,
                disable=None if tty else False,
            )
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def echo_summary(message: str) -> None:
    """Print a closing summary line on stderr."""
    click.echo(message, err=True)
