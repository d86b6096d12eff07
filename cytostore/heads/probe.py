"""``probe``: train and evaluate a cell-level head (linear, kNN, MLP) on embeddings."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, LabelError, SplitError
from cytostore.heads._base import BaseHead
from cytostore.heads._data import Cells, and_where, load_cells, missing_label
from cytostore.heads._data import open_store as _open
from cytostore.heads.evaluate import FoldPlan, FoldResult, Summary, cross_validate
from cytostore.heads.evaluate import make_folds as _make_folds
from cytostore.heads.knn import KNNHead
from cytostore.heads.linear import LinearProbe
from cytostore.heads.mlp import MLPHead
from cytostore.heads.provenance import OutOfFold, Provenance
from cytostore.heads.registry import check_head_name, head_dir, save_head
from cytostore.heads.report import by_group, confusion_png
from cytostore.heads.splits import Fold
from cytostore.store import Store, safe_identifier

__all__ = ["KINDS", "ProbeReport", "make_head", "probe"]

logger = logging.getLogger(__name__)

#: Cell-level head kinds.
KINDS = ("linear", "knn", "mlp")


def make_head(
    kind: str,
    *,
    class_weight: str | None = "balanced",
    seed: int = 0,
    device: str = "cpu",
    k: int = 20,
    vote: str = "temperature",
) -> BaseHead:
    """Return an unfitted cell-level head of ``kind`` (``linear``, ``knn``, ``mlp``).

    ``k`` and ``vote`` (``temperature`` or ``majority``) apply to ``knn`` only.

    Raises:
        InvalidArgumentError: If ``kind`` is unknown.
    """
    if kind == "linear":
        return LinearProbe(class_weight=class_weight, seed=seed, device=device)
    if kind == "knn":
        weighting = "uniform" if vote == "majority" else "temperature"
        return KNNHead(k=k, weighting=weighting)
    if kind == "mlp":
        return MLPHead(class_weight=class_weight, seed=seed, device=device)
    raise InvalidArgumentError(
        f"unknown head kind {kind!r}: use one of {', '.join(KINDS)}"
    )


@dataclass
class ProbeReport:
    """What ``probe`` measured and saved (``to_dict()``: the JSON report).

    Attributes:
        head: Name of the saved head.
        kind: ``linear``, ``knn`` or ``mlp``.
        model: The model whose embeddings were the features.
        label: The label column.
        split: ``stratified``, ``patient``, ``explicit`` or the split file.
        classes: The classes of the saved head.
        summary: Fold means and sds, pooled per-class scores, confusion.
        folds: Per-fold results.
        n_train: Mean training cells per fold.
        n_test: Test cells over all folds.
        excluded: Cells (or entries) left out, by reason.
        saved_head_trained_on: ``all folds`` (K folds) or ``train part``.
        confusion_png: The confusion matrix image.
        by_column: Column of the per-group (bias) report, or ``None``.
        by: Metrics per value of ``by_column``.
        classes_kept: Classes shared by train and test (explicit transfer).
        classes_dropped: ``{class: {"train": n, "test": n}}`` not shared.
    """

    head: str
    kind: str
    model: str | int | None
    label: str
    split: str
    classes: list[str]
    summary: Summary
    folds: list[FoldResult]
    n_train: int
    n_test: int
    excluded: dict[str, Any]
    saved_head_trained_on: str
    confusion_png: str
    by_column: str | None = None
    by: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes_kept: list[str] | None = None
    classes_dropped: dict[str, dict[str, int]] | None = None

    @property
    def balanced_accuracy(self) -> float:
        """Return the mean balanced accuracy over folds."""
        return self.summary.mean["balanced_accuracy"]

    def to_dict(self) -> dict[str, Any]:
        """Return the report in the schema of :mod:`cytostore.heads.report`."""
        out: dict[str, Any] = {}
        if self.classes_kept is not None:
            out |= {"classes_kept": self.classes_kept}
            out |= {"classes_dropped": self.classes_dropped}
        out |= self.summary.to_dict() | {"folds": [f.to_dict() for f in self.folds]}
        out |= {"n_train": self.n_train, "n_test": self.n_test}
        out |= {"excluded": self.excluded}
        if self.by_column:
            out |= {"by_column": self.by_column, "by": self.by}
        keys = ("saved_head_trained_on", "head", "kind", "model", "label", "split")
        out |= {k: getattr(self, k) for k in keys}
        return out | {"classes": self.classes, "confusion_png": self.confusion_png}


def probe(
    store: Store | str | os.PathLike[str],
    model: str | int | None,
    label: str,
    *,
    kind: str = "linear",
    where: str | None = None,
    train_where: str | None = None,
    test_where: str | None = None,
    split: str | None = None,
    folds: int | None = None,
    test_size: float = 0.2,
    min_count: int | None = None,
    class_weight: str | None = "balanced",
    by: str | None = None,
    name: str | None = None,
    k: int = 20,
    vote: str = "temperature",
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> ProbeReport:
    """Train a cell-level head on frozen embeddings, evaluate it, and save it.

    Args:
        store: The store (or its folder).
        model: Model name (or embedding-set id) whose vectors are the features.
        label: ``cell_meta`` column holding the class (``label``, ``cell_type``, ...).
        kind: ``linear`` (L-BFGS logistic regression), ``knn`` (cosine, k=20,
            temperature vote) or ``mlp``.
        where: SQL filter over ``cell_meta`` selecting the cells.
        train_where: Explicit training cells (with ``test_where``): e.g. one dataset
            for training and another for testing; only shared classes are kept.
        test_where: Explicit test cells.
        split: ``"stratified"``, ``"patient"`` (a patient never in train and test),
            or a published split file/folder; ``None``: ``patient`` when the selected
            cells have patients, else ``stratified``.
        folds: K for K-fold cross-validation (``None``: one split).
        test_size: Test fraction of the single split.
        min_count: Exclude classes with fewer cells (counted in ``excluded``).
        class_weight: ``"balanced"`` or ``None``.
        by: Column to repeat the metrics per group of (bias report, e.g. ``sex``).
        name: Name of the saved head (default ``<kind>-<label>-<model>``).
        k: Neighbours of the ``knn`` head (``1``: nearest neighbour).
        vote: ``knn`` vote: ``temperature`` (DINO, T=0.07) or ``majority``.
        seed: Seed of splits and training.
        device: Torch device.
        progress: ``progress(done, total)`` over folds.

    Returns:
        The :class:`ProbeReport` (its ``to_dict()`` is saved as ``report.json``).

    Raises:
        LabelError: One class, or classes with fewer members than folds.
        SplitError: A split that cannot be made or matches no cells.
        InvalidArgumentError: Bad arguments (kind, column, where).
    """
    st = _open(store)
    _check_args(kind, vote, k, class_weight, folds, test_size, train_where, test_where)
    if train_where is not None and (split is not None or folds is not None):
        raise InvalidArgumentError(
            "--train-where/--test-where define the split: drop --split and --folds"
        )
    safe_identifier(label)
    name = check_head_name(name or _default_name(kind, model, label))
    columns = [label, "dataset", "path", "patient_id"] + ([by] if by else [])
    excluded: dict[str, Any] = {}
    transfer: dict[str, Any] = {}
    if train_where is not None:
        cells, plan, transfer = _transfer(
            st, model, label, (where, train_where, test_where), columns, excluded
        )
    else:
        cells = _select(st, model, label, where, columns, min_count, excluded)
        plan = _plan(cells, label, split, folds, test_size, seed)
    y, X = _labels(cells, label), np.asarray(cells.X, dtype=np.float32)
    factory = partial(
        make_head,
        kind,
        class_weight=class_weight,
        seed=seed,
        device=device,
        k=k,
        vote=vote,
    )
    groups = _groups(cells) if plan.name == "patient" else None
    cv = cross_validate(factory, X, y, groups, plan.folds, progress=progress)
    head = factory()
    refit = len(plan.folds) > 1
    rows = _all_rows(plan.folds) if refit else plan.folds[0].train
    head.fit(X[rows], y[rows])
    report = ProbeReport(
        head=name,
        kind=kind,
        model=model,
        label=label,
        split=plan.name,
        classes=[str(c) for c in head.classes_.tolist()],
        summary=cv.summarise(),
        folds=cv.folds,
        n_train=int(round(np.mean([f.n_train for f in cv.folds]))),
        n_test=int(cv.rows.size),
        excluded=excluded | plan.excluded,
        saved_head_trained_on="all folds" if refit else "train part",
        confusion_png=str(head_dir(st, name) / "confusion.png"),
        by_column=by,
        by=by_group(cv.y_true, cv.y_pred, cells.meta[by][cv.rows]) if by else {},
        **transfer,
    )
    cli: list[list[Any]] = [["--model", model], ["--kind", kind], ["--label", label]]
    cli += [["--where", where], ["--train-where", train_where]]
    cli += [["--test-where", test_where], ["--split", split], ["--folds", folds]]
    cli += [["--test-size", None if test_size == 0.2 else test_size]]
    cli += [["--min-count", min_count], ["--by", by], ["--seed", seed]]
    cli += [["--class-weight", "none" if class_weight is None else None]]
    cli += [["--k", k], ["--vote", vote]] if kind == "knn" else []
    oof = OutOfFold.from_cv(cells.ids, cv)
    provenance = oof.finish(st, model, head, X, rows, seed=seed)
    _save(st, report, head, where, X.shape[1], cli, provenance)
    logger.info("probe %s: balanced accuracy %.4f", name, report.balanced_accuracy)
    return report


def _check_args(
    kind: str,
    vote: str,
    k: int,
    class_weight: str | None,
    folds: int | None,
    test_size: float,
    train_where: str | None,
    test_where: str | None,
) -> None:
    """Raise :class:`InvalidArgumentError` naming the first bad argument."""
    if kind not in KINDS:
        raise InvalidArgumentError(
            f"unknown head kind {kind!r}: use one of {', '.join(KINDS)}"
        )
    if vote not in ("temperature", "majority"):
        raise InvalidArgumentError(
            f"vote must be temperature or majority, not {vote!r}"
        )
    if k < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    if class_weight not in ("balanced", None):
        raise InvalidArgumentError("class_weight must be 'balanced' or None")
    if folds is not None and folds < 2:
        raise InvalidArgumentError(f"--folds must be >= 2, got {folds}")
    if not 0.0 < test_size < 1.0:
        raise InvalidArgumentError(f"--test-size must be in (0, 1), got {test_size}")
    if (train_where is None) != (test_where is None):
        raise InvalidArgumentError(
            "give both --train-where and --test-where, or neither"
        )


def _drop_missing(cells: Cells, label: str, excluded: dict[str, Any]) -> Cells:
    miss = np.asarray([missing_label(v) for v in cells.meta[label]], dtype=bool)
    if miss.any():
        excluded["missing_label"] = excluded.get("missing_label", 0) + int(miss.sum())
    return cells.take(~miss)


def _labels(cells: Cells, label: str) -> npt.NDArray[np.str_]:
    return np.asarray([str(v).strip() for v in cells.meta[label]])


def _groups(cells: Cells) -> list[str | None]:
    ds, pid = cells.meta["dataset"], cells.meta["patient_id"]
    return [None if p is None else f"{d}/{p}" for d, p in zip(ds, pid, strict=True)]


def _all_rows(folds: list[Fold]) -> npt.NDArray[np.int64]:
    return np.unique(np.concatenate([np.concatenate([f.train, f.test]) for f in folds]))


def _default_name(kind: str, model: str | int | None, label: str) -> str:
    raw = f"{kind}-{label}-{model if model is not None else 'default'}"
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", raw)


def _select(
    st: Store,
    model: str | int | None,
    label: str,
    where: str | None,
    columns: list[str],
    min_count: int | None,
    excluded: dict[str, Any],
) -> Cells:
    """Return the labelled cells, classes under ``min_count`` left out (counted)."""
    cells = _drop_missing(load_cells(st, model, where, columns), label, excluded)
    if len(cells) == 0:
        raise LabelError(
            f"every selected cell has an empty {label!r}: choose a labelled column"
        )
    if min_count is not None:
        y = _labels(cells, label)
        rare = {c: n for c, n in Counter(y.tolist()).items() if n < min_count}
        if rare:
            excluded["rare_class"] = rare
            cells = cells.take(~np.isin(y, list(rare)))
    return cells


def _plan(
    cells: Cells,
    label: str,
    split: str | None,
    folds: int | None,
    test_size: float,
    seed: int,
) -> FoldPlan:
    has_patients = any(p is not None for p in cells.meta["patient_id"])
    mode = split or ("patient" if has_patients else "stratified")
    y = _labels(cells, label)
    paths = [str(p) for p in cells.meta["path"]]
    pats = [None if p is None else str(p) for p in cells.meta["patient_id"]]
    groups = _groups(cells) if mode == "patient" else pats
    return _make_folds(
        mode, y, groups, folds=folds, test_size=test_size, seed=seed, paths=paths
    )


def _transfer(
    st: Store,
    model: str | int | None,
    label: str,
    filters: tuple[str | None, str | None, str | None],
    columns: list[str],
    excluded: dict[str, Any],
) -> tuple[Cells, FoldPlan, dict[str, Any]]:
    """Return train + test cells on their shared classes, the one explicit fold.

    ``filters`` is ``(where, train_where, test_where)``.
    """
    where = filters[0]
    parts = [
        _drop_missing(load_cells(st, model, and_where(where, w), columns), label, ex)
        for w, ex in ((filters[1], excluded), (filters[2], excluded))
    ]
    overlap = np.intersect1d(parts[0].ids, parts[1].ids)
    if overlap.size:
        raise SplitError(
            f"{overlap.size} cells match both --train-where and --test-where: make "
            "the two filters disjoint"
        )
    tr_counts, te_counts = (Counter(_labels(c, label).tolist()) for c in parts)
    shared = sorted(set(tr_counts) & set(te_counts))
    dropped = {
        c: {"train": tr_counts.get(c, 0), "test": te_counts.get(c, 0)}
        for c in sorted(set(tr_counts) ^ set(te_counts))
    }
    if len(shared) < 2:
        raise LabelError(
            f"train and test share {len(shared)} classes of {label!r} ({shared}): a "
            "transfer evaluation needs two or more; check the filters or the label"
        )
    n_drop = sum(v["train"] + v["test"] for v in dropped.values())
    if n_drop:
        excluded["class_not_shared"] = n_drop
    tr, te = (c.take(np.isin(_labels(c, label), shared)) for c in parts)
    cells = Cells(
        np.concatenate([tr.ids, te.ids]),
        np.concatenate([np.asarray(tr.X), np.asarray(te.X)]),
        {key: np.concatenate([tr.meta[key], te.meta[key]]) for key in tr.meta},
    )
    rows = np.arange(len(cells), dtype=np.int64)
    fold = Fold("explicit", rows[: len(tr)], rows[len(tr) :])
    return (
        cells,
        FoldPlan("explicit", [fold]),
        {
            "classes_kept": shared,
            "classes_dropped": dropped,
        },
    )


def _save(
    st: Store,
    report: ProbeReport,
    head: BaseHead,
    where: str | None,
    n_features: int,
    cli: list[list[Any]],
    provenance: Provenance | None = None,
) -> None:
    """Save the head, its report and confusion PNG (``meta["cli"]`` retrains it).

    ``provenance`` adds its training cell ids and its ``predictions`` rows.
    """
    meta = {
        "kind": report.kind,
        "model": report.model,
        "label": report.label,
        "where": where,
        "classes": report.classes,
        "n_features": int(n_features),
        "cli": cli,
    }
    title = f"{report.head}: {report.label} ({report.split})"
    summary = report.summary

    def draw(tmp: Path) -> None:
        confusion_png(summary.confusion, summary.labels, tmp / "confusion.png", title)

    save_head(
        st,
        report.head,
        head,
        meta,
        report.to_dict(),
        extras=draw,
        provenance=provenance,
    )
