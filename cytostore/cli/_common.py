"""Shared pieces of every command: options, error mapping, rendering, progress."""

from __future__ import annotations

import contextlib
import csv
import decimal
import io
import json
import logging
import math
import numbers
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from cytostore._json import jsonable as to_jsonable
from cytostore.errors import CytostoreError, InvalidArgumentError

__all__ = [
    "CytostoreGroup",
    "store_argument",
    "format_option",
    "seed_option",
    "device_option",
    "where_option",
    "FORMATS",
    "MAX_CELL_CHARS",
    "format_number",
    "render_rows",
    "render_report",
    "render_result",
    "render_head_report",
    "echo_result",
    "configure_output",
    "progress_bar",
    "echo_summary",
    "to_jsonable",
]

F = TypeVar("F", bound=Callable[..., Any])


class CytostoreGroup(click.Group):
    """A click group mapping library errors to one-line messages and exit codes.

    ``InvalidArgumentError`` (malformed or refused input) → usage error with the
    invoked subcommand's usage line (exit 2); any other ``CytostoreError`` (a name the
    store lacks, a busy or corrupt store) → ``click.ClickException`` (exit 1); anything
    else keeps its traceback (a bug). Both print one ``Error:`` line.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidArgumentError as exc:
            raise click.UsageError(_one_line(exc), ctx=self._failed(ctx)) from exc
        except CytostoreError as exc:
            raise click.ClickException(_one_line(exc)) from exc

    def _failed(self, ctx: click.Context) -> click.Context:
        """Return a context for the subcommand that failed (for its usage line)."""
        name = ctx.invoked_subcommand
        cmd = self.get_command(ctx, name) if name else None
        if cmd is None:
            return ctx
        # The subcommand's own context is closed by now: a fresh one (not parsed)
        # has the same command path, hence the same usage line and --help hint.
        return click.Context(cmd, info_name=name, parent=ctx)


def _one_line(exc: BaseException) -> str:
    """Return an error's message on one line (the CLI prints one ``Error:`` line)."""
    return " ".join(str(exc).split())


def store_argument(func: F) -> F:
    """The ``STORE`` argument: the store folder."""
    return click.argument(
        "store", type=click.Path(file_okay=False, path_type=Path), metavar="STORE"
    )(func)


#: The ``--format`` choices every command offers.
FORMATS = ("table", "csv", "json", "jsonl")


def format_option(func: F) -> F:
    """``--format table|csv|json|jsonl``: how the result is printed on stdout.

    A result is either rows (search hits, SQL) or one report object (embed,
    pretrain, ...). json prints one document (an array of row objects, or the
    report object); jsonl one object a line (a report: one line); csv a header
    and one line a row (a report: one row, nested values as JSON text); table an
    aligned table (a report: ``key  value`` lines without the empty ones).
    """
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output on stdout: table, csv, json (one document) or jsonl (one "
        "object a line).",
    )(func)


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


#: Widest table cell in characters: longer or multi-line cells end in "…" (the
#: csv, json and jsonl formats keep every value whole).
MAX_CELL_CHARS = 64


def format_number(value: float) -> str:
    """Return ``value`` with 4 significant digits, without an exponent below 10¹².

    Whole numbers print whole; exponents are kept only for magnitudes of at least
    10¹² or below 10⁻⁴.

    Returns:
        The number as table text (``nan``, ``inf`` and ``-inf`` as such).

    Examples:
        >>> [format_number(x) for x in (45000.0, 0.87654, 12.3456, 3.0, 2.5e-07)]
        ['45000', '0.8765', '12.35', '3', '2.5e-07']
    """
    if math.isnan(value) or math.isinf(value):
        return str(value)
    size = abs(value)
    if size >= 1e12 or 0 < size < 1e-4:
        return f"{value:.4g}"
    if value == int(value):
        return str(int(value))
    decimals = max(0, 3 - math.floor(math.log10(size)))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def _cut(text: str) -> str:
    """Return ``text`` on one line of at most :data:`MAX_CELL_CHARS` characters.

    A multi-line text (indented JSON, a query plan) has its line breaks and
    indentation folded into single spaces first.
    """
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    if len(text) > MAX_CELL_CHARS:
        return text[: MAX_CELL_CHARS - 1] + "…"
    return text


def _inline(value: Any, nested: bool = False) -> str:
    """Return a value as uncut table text: numbers plain, containers inline.

    A dict prints as ``k=v, k=v``; a list as ``a, b`` (in a dict: ``[a, b]``).
    """
    if value is None:
        return ""
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real | decimal.Decimal):
        return format_number(float(value))
    if isinstance(value, dict):
        return ", ".join(
            f"{k}={_inline(v, nested=True)}" for k, v in value.items() if not _empty(v)
        )
    if isinstance(value, list | tuple):
        if any(isinstance(v, dict | list | tuple) for v in value):
            return json.dumps(to_jsonable(value), ensure_ascii=False)
        items = ", ".join(_inline(v) for v in value)
        return f"[{items}]" if nested else items
    return str(value)


def _cell(value: Any) -> str:
    """Return one table cell: numbers without exponents, cut to one short line."""
    return _cut(_inline(value))


def _csv_value(value: Any) -> Any:
    """Return one csv field: empty for None and NaN, nested values as JSON text."""
    value = to_jsonable(value)
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(to_jsonable(value), ensure_ascii=False)
    return value


def _empty(value: Any) -> bool:
    """Whether a report value says nothing (None, NaN, "", {} or [])."""
    value = to_jsonable(value)
    return value is None or (isinstance(value, str | list | dict) and not value)


def _table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    return [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Return rows rendered in one of :data:`FORMATS`.

    Args:
        columns: Column names.
        rows: One sequence of values per row, in column order.
        fmt: ``table`` (aligned; cells cut to :data:`MAX_CELL_CHARS`), ``csv``
            (header and rows), ``json`` (one array of row objects) or ``jsonl``
            (one object a line; no rows: empty).

    Returns:
        The text to print, without a trailing newline.
    """
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
        writer.writerows([[_csv_value(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    header = list(columns)
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(header)]
    return "\n".join(_table(header, [header, ["-" * w for w in widths], *cells]))


def render_report(report: dict[str, Any], fmt: str) -> str:
    """Return one report object rendered in one of :data:`FORMATS`.

    Args:
        report: The report (JSON-able after :func:`to_jsonable`).
        fmt: ``json`` (one indented document), ``jsonl`` (one line), ``csv`` (a
            header of the keys and one row; nested values as JSON text) or
            ``table`` (``key  value`` lines; empty values left out, nested values
            inline, cells cut to :data:`MAX_CELL_CHARS`).

    Returns:
        The text to print, without a trailing newline.
    """
    if fmt == "json":
        return json.dumps(to_jsonable(report), indent=2, ensure_ascii=False)
    if fmt == "jsonl":
        return json.dumps(to_jsonable(report), ensure_ascii=False)
    if fmt == "csv":
        return render_rows(list(report), [list(report.values())], "csv")
    shown = [[str(k), _cell(v)] for k, v in report.items() if not _empty(v)]
    return "\n".join(_table(["key", "value"], shown))


def render_result(
    report: dict[str, Any],
    fmt: str,
    columns: Sequence[str] | None = None,
    rows: Sequence[Sequence[Any]] | None = None,
) -> str:
    """Return a command's result: the whole report in json, else its rows if any.

    Commands whose table shows rows of a report (ingest: datasets, export: files,
    predict: label counts, ...) print those rows in table, csv and jsonl, and the
    whole report as the one json document.

    Returns:
        The text to print, without a trailing newline.
    """
    if fmt == "json" or columns is None or rows is None:
        return render_report(report, fmt)
    return render_rows(columns, rows, fmt)


def render_head_report(report: dict[str, Any], fmt: str) -> str:
    """Return a head's report (probe, mil): readable tables, or as a report object.

    Returns:
        The text to print, without a trailing newline.
    """
    if fmt != "table":
        return render_report(report, fmt)
    from cytostore.heads.report import format_report

    return format_report(report)


def echo_result(text: str) -> None:
    """Print a rendered result on stdout (nothing at all when it is empty)."""
    if text:
        click.echo(text)


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "cell") -> Iterator[Callable[[int, int], None]]:
    """Yield a ``progress(done, total)`` callback drawing a tqdm bar on stderr.

    The bar is drawn only when stderr is a terminal (tqdm's own test,
    ``disable=None``): logs and pipes get no progress frames.
    """
    from tqdm.auto import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                leave=False,
                mininterval=0.2,
                disable=None,
            )
        if bar.disable:
            return
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


#: Warnings from these packages (the ``warnings`` module) are hidden unless ``-v``.
_THIRD_PARTY_MODULES = (
    r"(pytorch_lightning|lightning_fabric|lightning|lightning_utilities|lightly|"
    r"torch|torchvision|timm|sklearn|faiss|duckdb|PIL|numpy|scipy)(\.|$)"
)


class _OwnOrWarning(logging.Filter):
    """Let through cytostore's records and any library's warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("cytostore")


class _LowerLevelFormatter(logging.Formatter):
    """``warning: message``, the form of the CLI's own warning lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_output(verbose: bool) -> None:
    """Set up stderr for one command: quiet by default, everything with ``-v``.

    By default log records print as ``warning: message`` (WARNING and up, plus
    cytostore's own), and third-party warnings and INFO lines (Lightning's tips
    and hardware lines, torch deprecations) are hidden. With ``verbose`` every
    logger's INFO lines print as ``LEVEL logger: message`` and warnings show.
    When the root logger already has handlers (an embedding application, pytest)
    they are left alone.
    """
    if not verbose:
        warnings.filterwarnings("ignore", module=_THIRD_PARTY_MODULES)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_LowerLevelFormatter())
        handler.addFilter(_OwnOrWarning())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def echo_summary(message: str) -> None:
    """Print a closing summary line on stderr."""
    click.echo(message, err=True)
