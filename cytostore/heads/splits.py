"""Train/test splits: stratified, patient-grouped, K-fold, and published split files.

A split is a list of :class:`Fold` s (row indices into the caller's arrays). A
published split file is a TSV/CSV naming files, paths or patient ids, with a
``split`` column or with the split in the file name (``lmu_dinobloom_test.tsv``);
a folder of such files is a set of rotations (``data_fold_K__{train,val,test}.csv``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cytostore.errors import LabelError, SplitError

__all__ = [
    "Fold",
    "SplitSpec",
    "stratified_folds",
    "grouped_folds",
    "inner_validation_split",
    "check_class_counts",
    "read_split_specs",
    "assign_split",
]

logger = logging.getLogger(__name__)

_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_KEY_COLUMNS = (
    "path",
    "file",
    "filename",
    "file_name",
    "image",
    "patient_id",
    "patient_name",
    "patient",
    "bag",
)
_SPLIT_COLUMNS = ("split", "set", "subset", "partition")
_HEADER_WORDS = set(_KEY_COLUMNS) | set(_SPLIT_COLUMNS) | {"label", "labels", "class"}
_NAME_WORD = re.compile(
    r"(?<![a-z0-9])(train|training|val|valid|validation|test|testing)(?![a-z])"
)


@dataclass(frozen=True)
class Fold:
    """One train/test split as row indices (int64, ascending).

    Attributes:
        name: ``"split"``, ``"fold 0"``, or a published rotation's name.
        train: Rows to fit on.
        test: Rows to evaluate on.
        val: Rows for early stopping / model selection (``None``: the head makes
            its own inner validation split from ``train``).
    """

    name: str
    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64] | None = None


@dataclass
class SplitSpec:
    """A published split: entry names per split part, one rotation.

    Attributes:
        name: Rotation name (the file name without the split word).
        parts: ``{"train"|"val"|"test": [entry, ...]}`` as written in the files.
        complement: The part that is "everything else" (``"train"`` when only a
            test file exists), or ``None``.
        sources: Files read.
    """

    name: str
    parts: dict[str, list[str]] = field(default_factory=dict)
    complement: str | None = None
    sources: list[str] = field(default_factory=list)


def _idx(a: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.sort(np.asarray(a, dtype=np.int64))


def check_class_counts(
    y: Sequence[str] | npt.NDArray[np.str_], needed: int, what: str
) -> None:
    """Raise if ``y`` has one class or a class with fewer than ``needed`` members.

    Raises:
        LabelError: With the offending classes and the fix (merge, drop, --min-count).
    """
    classes, counts = np.unique(np.asarray(y), return_counts=True)
    if classes.size < 2:
        raise LabelError(
            f"the label has a single class {classes.tolist()} in the selection: a "
            "classifier needs two or more; widen --where or choose another --label"
        )
    small = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < needed}
    if small:
        raise LabelError(
            f"classes with fewer members than {what} ({needed}): {small}; merge or "
            "drop "
            f"them (e.g. with --where), or pass --min-count {needed} to exclude them"
        )


def inner_validation_split(
    y_idx: npt.NDArray[np.int64], val_size: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Split rows into train/validation, stratified; singleton classes stay in train.

    Returns:
        ``(train_rows, val_rows)``, int64 ascending, disjoint, covering all rows.

    Examples:
        >>> tr, va = inner_validation_split(np.array([0] * 10 + [1] * 10), 0.2, 0)
        >>> len(tr), len(va)
        (16, 4)
    """
    rng = np.random.default_rng(seed)
    val: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y_idx):
        rows = np.flatnonzero(y_idx == c)
        if rows.size < 2:
            continue
        n_val = int(min(rows.size - 1, max(1, round(val_size * rows.size))))
        val.append(rng.permutation(rows)[:n_val])
    val_rows = _idx(np.concatenate(val)) if val else np.zeros(0, np.int64)
    mask = np.ones(y_idx.size, dtype=bool)
    mask[val_rows] = False
    return np.flatnonzero(mask).astype(np.int64), val_rows


def stratified_folds(
    y: Sequence[str] | npt.NDArray[np.str_],
    folds: int | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> list[Fold]:
    """Return one stratified train/test split (``folds=None``) or K stratified folds.

    Raises:
        LabelError: If a class has too few members for the split.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    y_arr = np.asarray(y)
    rows = np.arange(y_arr.size)
    if folds is None:
        check_class_counts(y_arr, 2, "needed for a train/test split")
        n_test = max(int(round(test_size * y_arr.size)), np.unique(y_arr).size)
        tr, te = train_test_split(
            rows, test_size=n_test, stratify=y_arr, random_state=seed
        )
        return [Fold("split", _idx(tr), _idx(te))]
    check_class_counts(y_arr, folds, "folds")
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        Fold(f"fold {i}", _idx(tr), _idx(te))
        for i, (tr, te) in enumerate(skf.split(rows, y_arr))
    ]


def grouped_folds(
    y: Sequence[str] | npt.NDArray[np.str_],
    groups: Sequence[str] | npt.NDArray[np.str_],
    folds: int | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> list[Fold]:
    """Return patient-grouped, label-stratified folds: a group is never in two parts.

    With ``folds=None`` one split whose test part is about ``test_size`` of the rows
    (the first of ``round(1 / test_size)`` grouped folds).

    Raises:
        SplitError: If there are fewer groups than folds.
        LabelError: If the label has a single class.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y_arr = np.asarray(y)
    g_arr = np.asarray(groups)
    n_groups = np.unique(g_arr).size
    k = folds if folds is not None else max(2, int(round(1.0 / test_size)))
    if n_groups < k:
        raise SplitError(
            f"{n_groups} patients cannot make {k} patient-grouped folds: use fewer "
            "--folds, a larger --test-size, or --split stratified"
        )
    check_class_counts(y_arr, 1, "one")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out = [
        Fold(f"fold {i}" if folds is not None else "split", _idx(tr), _idx(te))
        for i, (tr, te) in enumerate(sgkf.split(np.zeros(y_arr.size), y_arr, g_arr))
    ]
    return out if folds is not None else out[:1]


# ------------------------------------------------------------ published split files
def _split_word(stem: str) -> str | None:
    m = _NAME_WORD.search(stem.lower())
    return _SPLIT_WORDS[m.group(1)] if m else None


def _rotation_name(stem: str) -> str:
    return _NAME_WORD.sub("", stem.lower()).strip("_- .") or stem


def _read_rows(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    text = path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None, []
    delim = (
        "\t"
        if "\t" in lines[0]
        else ("," if "," in lines[0] else ";" if ";" in lines[0] else "\t")
    )
    rows = list(csv.reader(lines, delimiter=delim))
    first = [c.strip().lower() for c in rows[0]]
    if any(c in _HEADER_WORDS for c in first):
        return first, rows[1:]
    return None, rows


def _read_file(path: Path) -> dict[str, list[str]]:
    """Return ``{split: entries}`` of one file (split column, or split in its name)."""
    header, rows = _read_rows(path)
    key_col = 0
    split_col: int | None = None
    if header is not None:
        key_col = next((header.index(c) for c in _KEY_COLUMNS if c in header), 0)
        split_col = next((header.index(c) for c in _SPLIT_COLUMNS if c in header), None)
    parts: dict[str, list[str]] = defaultdict(list)
    if split_col is None:
        word = _split_word(path.stem)
        if word is None:
            raise SplitError(
                f"{path} has no split column and its name does not say train/val/test: "
                "add a 'split' column or name the file *_train / *_test"
            )
        parts[word] = [
            r[key_col].strip() for r in rows if len(r) > key_col and r[key_col].strip()
        ]
        return dict(parts)
    for r in rows:
        if len(r) <= max(key_col, split_col) or not r[key_col].strip():
            continue
        word = _SPLIT_WORDS.get(r[split_col].strip().lower())
        if word is None:
            raise SplitError(
                f"{path}: split value {r[split_col]!r} is not train/val/test: fix "
                "the file"
            )
        parts[word].append(r[key_col].strip())
    return dict(parts)


def _has_split_column(path: Path) -> bool:
    header, _ = _read_rows(path)
    return header is not None and any(c in header for c in _SPLIT_COLUMNS)


def read_split_specs(path: str | Path) -> list[SplitSpec]:
    """Read a published split file, its sibling parts, or a folder of rotations.

    A file named ``*test*`` whose ``*train*`` sibling exists is read with it; a lone
    test (or train) file makes the other part the complement. A folder yields one
    rotation per group of files differing only by the split word, in natural order.

    Returns:
        One :class:`SplitSpec` per rotation.

    Raises:
        SplitError: If the path does not exist or holds no split file.
    """
    p = Path(path)
    if not p.exists():
        raise SplitError(
            f"split file {str(p)!r} does not exist: give an existing TSV/CSV or folder"
        )
    if p.is_file() and _has_split_column(p):
        spec = SplitSpec(name=_rotation_name(p.stem), sources=[str(p)])
        spec.parts = _read_file(p)
        return [_finish(spec)]
    if p.is_file():
        if _split_word(p.stem) is None:
            raise SplitError(
                f"{p} has no split column and its name does not say train/val/test: "
                "add a 'split' column or name the file *_train / *_test"
            )
        rotation = _rotation_name(p.stem)
        candidates = [
            f
            for f in sorted(p.parent.iterdir())
            if f.is_file()
            and f.suffix == p.suffix
            and _split_word(f.stem) is not None
            and _rotation_name(f.stem) == rotation
        ]
        files = candidates or [p]
    else:
        files = [
            f
            for f in sorted(p.iterdir())
            if f.is_file()
            and f.suffix.lower() in (".csv", ".tsv", ".txt")
            and (_split_word(f.stem) is not None or _has_split_column(f))
        ]
        if not files:
            raise SplitError(
                f"no split files in {p}: expected *_train/*_test TSV/CSV files or "
                "files "
                "with a 'split' column"
            )
    groups: dict[str, SplitSpec] = {}
    for f in files:
        name = _rotation_name(f.stem) if _split_word(f.stem) else f.stem
        spec = groups.setdefault(name, SplitSpec(name=name))
        spec.sources.append(str(f))
        for part, entries in _read_file(f).items():
            spec.parts.setdefault(part, []).extend(entries)

    def natural(s: str) -> list[object]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

    return [_finish(groups[k]) for k in sorted(groups, key=natural)]


def _finish(spec: SplitSpec) -> SplitSpec:
    if "test" not in spec.parts and "train" not in spec.parts:
        raise SplitError(
            f"split {spec.name!r} ({spec.sources}) names neither train nor test "
            "rows: fix the file"
        )
    if "test" not in spec.parts:
        spec.complement = "test"
    elif "train" not in spec.parts:
        spec.complement = "train"
    return spec


def _norm(entry: str) -> str:
    return entry.replace("\\", "/").strip().strip("/")


def assign_split(
    spec: SplitSpec,
    paths: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
) -> tuple[Fold, dict[str, int]]:
    """Map a published split's entries onto rows (cells by path, or patients).

    An entry matches a row whose group (patient id) equals it, whose path equals it,
    or whose path ends with it (``NGS/NGS_7366.tiff``, ``OTH_00167.jpg``).

    Args:
        spec: The published split.
        paths: Each row's file path (``None``: rows are not files).
        groups: Each row's patient/bag id (``None``: rows have none).

    Returns:
        ``(fold, counts)``: the fold (rows not named and not in a complement part are
        left out) and ``{"unmatched_entries": n, "rows_not_in_split": n}``.

    Raises:
        SplitError: If no entry matches any row, or train or test ends up empty.
    """
    n = len(paths) if paths is not None else len(groups or [])
    by_key: dict[str, list[int]] = defaultdict(list)
    by_base: dict[str, list[int]] = defaultdict(list)
    if groups is not None:
        for i, g in enumerate(groups):
            if g is not None:
                by_key[str(g)].append(i)
    norm_paths = [_norm(p) for p in paths] if paths is not None else []
    for i, p in enumerate(norm_paths):
        by_key[p].append(i)
        by_base[p.rsplit("/", 1)[-1]].append(i)
    part_of = np.full(n, "", dtype=object)
    unmatched = 0
    for part, entries in spec.parts.items():
        for raw in entries:
            e = _norm(raw)
            rows = by_key.get(e)
            if rows is None:
                base = e.rsplit("/", 1)[-1]
                rows = [i for i in by_base.get(base, []) if norm_paths[i].endswith(e)]
            if not rows:
                unmatched += 1
                continue
            part_of[rows] = part
    if spec.complement is not None:
        part_of[part_of == ""] = spec.complement
    train = np.flatnonzero(part_of == "train").astype(np.int64)
    test = np.flatnonzero(part_of == "test").astype(np.int64)
    val_rows = np.flatnonzero(part_of == "val").astype(np.int64)
    counts = {
        "unmatched_entries": unmatched,
        "rows_not_in_split": int(np.sum(part_of == "")),
    }
    if unmatched:
        logger.warning(
            "split %s: %d entries name no selected cell or patient",
            spec.name,
            unmatched,
        )
    if train.size == 0 or test.size == 0:
        total = sum(len(v) for v in spec.parts.values())
        raise SplitError(
            f"split {spec.name!r}: {unmatched} of {total} entries match no selected "
            "cell "
            f"or patient, leaving {train.size} train and {test.size} test rows; check "
            "that the file names the cells of this store (paths, file names or "
            "patient ids)"
        )
    return Fold(spec.name, train, test, val_rows if val_rows.size else None), counts
