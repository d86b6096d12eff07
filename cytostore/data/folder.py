"""Reader of any lab's export: class folders, or any tree described by a path template.

By default every image below ``<root>/<label>/`` (at any depth) is a cell labelled by
its top folder (``pattern="{label}/**/*"``). A ``pattern`` describes other trees, with
the fields ``{label}`` and ``{patient_id}`` and the wildcards ``*`` (within one folder
name), ``?`` (one character) and ``**/`` (any number of folders)::

    {patient_id}/**/{label}/*.jpg
    {label}/{patient_id}_*.png

Matching is case-insensitive; only image files are considered. ``patients`` is a CSV or
XLSX table keyed by ``patient_id`` whose ``bag_column`` holds the patient's bag label;
its other columns become patient metadata (``age``; ``sex`` as ``'F'``/``'M'``; the
rest as numbers or text). A cell without a ``{label}`` field takes its patient's bag
label. Pixel size is unknown (NULL) unless given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytostore.data.listing import CellRecord, DatasetListing, ReadOptions, split_files
from cytostore.data.tables import normalize_column, parse_sex, read_table
from cytostore.data.vocabulary import cell_type
from cytostore.errors import InvalidArgumentError

__all__ = [
    "LAYOUT",
    "DEFAULT_PATTERN",
    "FIELDS",
    "anchor_of",
    "read",
    "compile_pattern",
]

LAYOUT = "folder"
DEFAULT_PATTERN = "{label}/**/*"
#: Fields a pattern may capture.
FIELDS = ("label", "patient_id")
_TOKEN = re.compile(r"\{(\w*)\}|\*\*/|\*\*|\*|\?|[^{*?]+|\{")


def anchor_of(dirpath: Path, names: Sequence[str]) -> Path | None:
    """Return None: a generic folder is never detected by its content alone.

    ``ingest`` falls back to this layout at the given path when no other layout is
    found there and its sub-folders hold images.
    """
    return None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a path template to a regex over POSIX paths relative to the root.

    Raises:
        InvalidArgumentError: On an unknown or repeated field, or an unbalanced brace.

    Examples:
        >>> m = compile_pattern("{label}/{patient_id}_*.png").match("NGS/P7_3.PNG")
        >>> m["label"], m["patient_id"]
        ('NGS', 'P7')
        >>> rx = compile_pattern("{patient_id}/**/{label}/*.jpg")
        >>> rx.match("P1/a/b/LYT/x.jpg")["label"]
        'LYT'
    """
    out: list[str] = []
    seen: set[str] = set()
    for m in _TOKEN.finditer(pattern.strip().strip("/")):
        tok = m.group(0)
        if m.group(1) is not None:
            name = m.group(1)
            if name not in FIELDS or name in seen:
                raise InvalidArgumentError(
                    f"--pattern {pattern!r}: field {{{name}}} is "
                    f"{'repeated' if name in seen else 'unknown'}; use each of "
                    "{label} and {patient_id} at most once"
                )
            seen.add(name)
            out.append(f"(?P<{name}>[^/]+?)")
        elif tok == "{":
            raise InvalidArgumentError(
                f"--pattern {pattern!r} has an unbalanced '{{': fields are written "
                "{label} or {patient_id}"
            )
        elif tok == "**/":
            out.append("(?:[^/]+/)*")
        elif tok == "**":
            out.append(".*")
        elif tok == "*":
            out.append("[^/]*")
        elif tok == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(tok))
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE)


def _read_patients(path: Path, bag_column: str) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise InvalidArgumentError(
            f"--patients {str(path)!r} does not exist: give a CSV or XLSX file with a "
            "patient_id column"
        )
    bag = normalize_column(bag_column)
    rows = read_table(path.read_bytes(), str(path), text_columns=("patient_id", bag))
    columns = list(rows[0]) if rows else []
    if "patient_id" not in columns:
        raise InvalidArgumentError(
            f"--patients {str(path)!r} has no patient_id column (columns: "
            f"{', '.join(columns)}): rename the column holding the patient ids"
        )
    if bag not in columns:
        raise InvalidArgumentError(
            f"--patients {str(path)!r} has no bag-label column {bag_column!r} "
            f"(columns: {', '.join(columns)}): pass --bag-column NAME"
        )
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        pid = row.get("patient_id")
        if not pid:
            continue
        rec: dict[str, Any] = {"patient_id": pid, "bag_label": row.get(bag)}
        for key, value in row.items():
            if key in ("patient_id", bag):
                continue
            if key in ("sex", "gender", "sex_1f_2m"):
                rec["sex"] = parse_sex(value, coding_1f_2m=key == "sex_1f_2m")
            else:
                rec[key] = value
        out[pid] = rec
    return out


def read(
    anchor: Path,
    files: Sequence[str],
    meta_dirs: Sequence[Path],
    options: ReadOptions | None = None,
) -> DatasetListing:
    """List the cells of a generic folder dataset.

    Args:
        anchor: The dataset root (the path given to ingest).
        files: Every file below ``anchor`` (POSIX paths relative to it).
        meta_dirs: Unused (patient metadata comes from ``options.patients``).
        options: ``pattern``, ``patients``, ``bag_column``, ``dataset_name``,
            ``um_per_px`` (default None = unknown).

    Returns:
        The listing; ``cell_type`` is matched from the label by the vocabulary.

    Raises:
        InvalidArgumentError: On a bad pattern or patients table, or if no image
            matches the pattern.
    """
    options = options or ReadOptions()
    pattern = options.pattern or DEFAULT_PATTERN
    regex = compile_pattern(pattern)
    if options.patients is not None and "patient_id" not in regex.groupindex:
        raise InvalidArgumentError(
            "--patients needs the patient of each image: add {patient_id} to "
            "--pattern, e.g. '{patient_id}/{label}/*.png'"
        )
    images, hidden = split_files(files)
    listing = DatasetListing(
        dataset=options.dataset_name or anchor.name,
        layout=LAYOUT,
        root=anchor,
        um_per_px=options.um_per_px,
        hidden=hidden,
    )
    patients: dict[str, dict[str, Any]] = {}
    if options.patients is not None:
        patients = _read_patients(Path(options.patients), options.bag_column)
    unmatched = 0
    for rel in images:
        m = regex.match(rel)
        if m is None:
            unmatched += 1
            continue
        groups = m.groupdict()
        pid = groups.get("patient_id")
        label = groups.get("label")
        if label is None and pid is not None and pid in patients:
            bag = patients[pid].get("bag_label")
            label = None if bag is None else str(bag)
        listing.cells.append(
            CellRecord(
                path=rel,
                label=label,
                patient_id=pid,
                cell_type=cell_type(LAYOUT, groups.get("label")),
            )
        )
    if not listing.cells:
        raise InvalidArgumentError(
            f"no image under {str(anchor)!r} matches --pattern {pattern!r} "
            f"({len(images)} images found): give a --pattern describing the tree, "
            "e.g. '{label}/*.jpg' or '{patient_id}/**/{label}/*.png'"
        )
    if unmatched:
        listing.warnings.append(
            f"{listing.dataset}: {unmatched} images do not match --pattern "
            f"{pattern!r} and were left out"
        )
    if patients:
        cell_pids = {c.patient_id for c in listing.cells if c.patient_id}
        missing = sorted(cell_pids - set(patients))
        if missing:
            listing.warnings.append(
                f"{listing.dataset}: {len(missing)} patients have images but no row "
                f"in --patients (e.g. {missing[0]})"
            )
        listing.patients = [patients[p] for p in sorted(patients)]
    return listing
