"""Import cell-level labels or notes from a CSV file into the store.

The file names each cell by ``cell_id``, or by ``dataset`` and ``path`` (the image
path relative to the dataset's root, as catalogued; ``dataset`` may be left out of
a store with one dataset). Every other column becomes a column of the
``annotations`` table that ``cell_meta`` joins (see
:mod:`cytostore.store.annotations` for the merge rules): filter on it with
``--where`` and train or audit on it with ``--label``.

A CSV written by ``cytostore select --csv`` (``rank, cell_id, score, dataset, path,
[balance column,] image``) comes back as it is once an annotator has added a column:
the columns ``select`` wrote are not imported, only the ones added.

The file is checked whole before anything is written: a row that names no
catalogued cell, a cell named twice, a value that conflicts with the one stored, a
row with the wrong number of fields: each is reported with its line number and
nothing is imported. Empty fields (and ``nan``, ``NA``, ``null``) mean "no value".
The delimiter (comma, semicolon or tab) is the one the header row uses; quoted
values may hold delimiters and line breaks; a UTF-8 byte-order mark is skipped.

Example: the LMU re-annotations (``annotations.dat``: ``path label reannotation1
reannotation2``, space-separated, no header) as a CSV::

    awk 'BEGIN {print "dataset,path,second_opinion"}
         $3 != "nan" {print "lmu," $1 "," $3}' annotations.dat > second.csv
    cytostore annotate STORE second.csv --key path
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePosixPath
from typing import Any

from cytostore.errors import InvalidArgumentError
from cytostore.store import Store, find_cells, write_annotations

__all__ = ["annotate", "KEYS", "MISSING", "SELECT_COLUMNS"]

#: How a file names its cells.
KEYS = ("cell_id", "path")
#: Field values read as "no value" (compared case-insensitively, stripped).
MISSING = frozenset({"", "nan", "na", "n/a", "null", "none"})
_KEY_COLUMNS = ("cell_id", "dataset", "path")
#: The columns of a ``cytostore select`` CSV: a file holding all of them is one, and
#: those (with its --balance-by column, between ``path`` and ``image``) are not
#: imported unless named in ``columns``.
SELECT_COLUMNS = frozenset({"rank", "cell_id", "score", "dataset", "path", "image"})


def _read(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Return the header and ``(line number, fields)`` of each non-empty row.

    Raises:
        InvalidArgumentError: If the file cannot be read as text or has no header.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(
            f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
            "save it as UTF-8 CSV"
        ) from None
    except OSError as exc:
        raise InvalidArgumentError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}"
        ) from None
    # The delimiter is the one the header row uses most (its names hold none):
    # csv.Sniffer also reads the values and misfires on notes holding ; or ,.
    first = text.lstrip("\r\n").partition("\n")[0]
    delimiter = max(",;\t", key=first.count) if first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        start = 1
        for fields in reader:
            line, start = start, reader.line_num + 1  # a quoted value may span lines
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                continue
            rows.append((line, fields))
    except csv.Error as exc:
        raise InvalidArgumentError(
            f"{path.name} line {reader.line_num}: not valid CSV ({exc})"
        ) from None
    if header is None:
        raise InvalidArgumentError(
            f"{path.name} is empty: give a header row (e.g. cell_id,expert_label) "
            "and one row per cell"
        )
    return header, rows


def _relative(path: str, root: Path | None) -> str:
    """Return ``path`` as catalogued: POSIX, relative to the dataset's root."""
    text = path.strip().replace("\\", "/")
    if root is not None and text.startswith("/"):
        try:
            return Path(text).relative_to(root).as_posix()
        except ValueError:
            return text
    return str(PurePosixPath(text)) if text else text


def annotate(
    store: Store | str | os.PathLike[str],
    file: str | os.PathLike[str],
    *,
    key: str | None = None,
    prefix: str | None = None,
    columns: list[str] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Import the columns of a CSV file as cell annotations (all or nothing).

    Args:
        store: The store (or its folder).
        file: The CSV file: a header, then one row per cell.
        key: ``cell_id`` or ``path`` (``dataset`` + ``path``); ``None``: ``cell_id``
            when the file has that column, else ``path``.
        prefix: Import column ``c`` as ``PREFIX_c`` (to keep a name ``cell_meta``
            already has, such as ``label``, apart).
        columns: Import only these columns of the file (``None``: every column but
            the key columns ``cell_id``, ``dataset``, ``path``).
        replace: Let the file's values replace different ones already stored.

    Returns:
        The report of :func:`cytostore.store.write_annotations` plus ``file`` and
        ``key``.

    Raises:
        InvalidArgumentError: If the file cannot be read, lacks the key column(s)
            or a value column, a column name is unusable or already in
            ``cell_meta`` (use ``prefix``), or any row is bad (unknown cell, a
            cell twice, a wrong field count, a conflicting value): the message
            names the lines, and nothing is imported.
    """
    store = store if isinstance(store, Store) else Store.open(store)
    path = Path(file)
    header, rows = _read(path)
    if key is None:
        key = "cell_id" if "cell_id" in header else "path"
    if key not in KEYS:
        raise InvalidArgumentError(f"--key must be cell_id or path, got {key!r}")
    lowered = [h.lower() for h in header]
    roots = store.dataset_roots()
    needs = ["cell_id"] if key == "cell_id" else ["path"]
    if key == "path" and "dataset" not in lowered and len(roots) != 1:
        needs.append("dataset")
    missing = [c for c in needs if c not in lowered]
    if missing:
        raise InvalidArgumentError(
            f"{path.name} has no {' or '.join(repr(c) for c in missing)} column "
            f"(header: {', '.join(header)}): --key {key} needs "
            + ("cell_id" if key == "cell_id" else "dataset and path")
        )
    value_cols = [h for h in header if h.lower() not in _KEY_COLUMNS]
    if columns is None and SELECT_COLUMNS <= set(lowered):
        # select writes rank, cell_id, score, dataset, path, [its --balance-by
        # column,] image: keep what the annotator added around them.
        theirs = set(header[lowered.index("path") + 1 : lowered.index("image")])
        value_cols = [
            h for h in value_cols if h.lower() not in SELECT_COLUMNS and h not in theirs
        ]
    if columns is not None:
        unknown = [c for c in columns if c not in header]
        if unknown:
            raise InvalidArgumentError(
                f"{path.name} has no column {unknown[0]!r} (header: "
                f"{', '.join(header)}): name columns of the file in --columns"
            )
        value_cols = [c for c in columns if c.lower() not in _KEY_COLUMNS]
    if not value_cols:
        raise InvalidArgumentError(
            f"{path.name} has no column to import besides the key (header: "
            f"{', '.join(header)}): add one, e.g. expert_label"
        )
    if prefix is not None:
        stem = prefix.rstrip("_")
        if not stem:
            raise InvalidArgumentError("--as needs a prefix, e.g. --as expert2")
        names = [f"{stem}_{c}" for c in value_cols]
    else:
        names = list(value_cols)
    at = {h.lower(): i for i, h in enumerate(header)}
    width = len(header)
    bad: list[tuple[int, str]] = []
    good: list[tuple[int, list[str]]] = []
    for line, fields in rows:
        if len(fields) != width:
            bad.append((line, f"{len(fields)} fields, the header has {width}"))
        else:
            good.append((line, fields))
    lines = [line for line, _ in good]
    if key == "cell_id":
        raw_ids = [f[at["cell_id"]].strip() for _, f in good]
        ids = []
        for (line, _), raw in zip(good, raw_ids, strict=True):
            try:
                ids.append(int(raw))
            except ValueError:
                bad.append((line, f"cell_id {raw!r} is not a whole number"))
                ids.append(-1)
    else:
        only = next(iter(roots)) if len(roots) == 1 else None
        datasets = [
            f[at["dataset"]].strip() if "dataset" in at else only for _, f in good
        ]
        paths = [
            _relative(f[at["path"]], roots.get(d or ""))
            for d, (_, f) in zip(datasets, good, strict=True)
        ]
        ids = find_cells(
            store, datasets=[d or "" for d in datasets], paths=paths
        ).tolist()
        for (line, _), d, p, cid in zip(good, datasets, paths, ids, strict=True):
            if cid < 0:
                reason = (
                    f"no dataset {d!r} in the store"
                    if d not in roots
                    else f"no cell {p!r} in dataset {d!r}"
                )
                bad.append((line, reason))
    values: dict[str, list[Any]] = {}
    for name, col in zip(names, value_cols, strict=True):
        j = header.index(col)
        values[name] = [
            None if f[j].strip().lower() in MISSING else f[j].strip() for _, f in good
        ]
    report = write_annotations(
        store,
        ids,
        values,
        lines=lines,
        source=path.name,
        key=key,
        replace=replace,
        bad=bad,
    )
    return {"file": str(path), "key": key, **report}
