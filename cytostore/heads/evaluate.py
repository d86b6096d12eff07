"""One evaluation engine for every head: folds, cross-validation, typed summaries.

:func:`make_folds` turns a split mode (``stratified``, ``patient``, or a published
split file/folder) into :class:`~cytostore.heads.splits.Fold` s;
:func:`cross_validate` fits a fresh head per fold and pools its out-of-fold
probabilities into a :class:`CVResult`; :meth:`CVResult.summarise` computes the
report's metric part (:class:`Summary`) with ``sklearn.metrics``. ``probe`` and
``mil`` are short functions over these.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix

from cytostore.errors import LabelError, SplitError
from cytostore.heads.metrics import (
    METRICS,
    auroc_ovr,
    bootstrap_ci,
    classification_metrics,
)
from cytostore.heads.splits import (
    Fold,
    assign_split,
    check_class_counts,
    grouped_folds,
    read_split_specs,
    stratified_folds,
)

__all__ = [
    "CVResult",
    "FoldPlan",
    "FoldResult",
    "Summary",
    "cross_validate",
    "make_folds",
]


@dataclass(frozen=True)
class FoldPlan:
    """Folds of one split mode, and what the split left out.

    Attributes:
        name: ``stratified``, ``patient``, or the split file's path.
        folds: The folds (row indices).
        excluded: ``{"split_unmatched_entries": n, "not_in_split": n}`` (non-zero).
    """

    name: str
    folds: list[Fold]
    excluded: dict[str, int] = field(default_factory=dict)


def make_folds(
    split: str,
    y: npt.NDArray[Any],
    groups: Sequence[str | None] | None = None,
    *,
    folds: int | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    paths: Sequence[str] | None = None,
    keep_val: bool = False,
) -> FoldPlan:
    """Return the folds of a split mode over rows labelled ``y``.

    Args:
        split: ``"stratified"``; ``"patient"`` (a group never in train and test;
            ``groups`` required); or a published split file/folder whose entries
            name rows by ``paths`` (cells) or ``groups`` (patients, bags).
        y: Row labels, shape (n,).
        groups: Each row's patient or bag (``None`` for a cell without one).
        folds: K folds, or ``None`` for one split of ``test_size``.
        test_size: Test fraction of the single split.
        seed: Seed of the shuffling.
        paths: Each row's file path (published splits naming files).
        keep_val: Keep a published split's ``val`` part apart (early stopping);
            otherwise it joins ``train``.

    Returns:
        The :class:`FoldPlan`.

    Raises:
        LabelError: One class, or classes with fewer members than folds.
        SplitError: Too few groups, or a split file matching no rows.
    """
    if split == "stratified":
        return FoldPlan(split, stratified_folds(y, folds, test_size, seed))
    if split == "patient":
        g = np.asarray(
            [f"row:{i}" if v is None else v for i, v in enumerate(groups or [])]
        )
        check_class_counts(y, folds or 2, "folds" if folds else "needed for a split")
        return FoldPlan(split, grouped_folds(y, g, folds, test_size, seed))
    out: list[Fold] = []
    unmatched = not_in = 0
    for spec in read_split_specs(split):
        fold, counts = assign_split(spec, paths, groups)
        unmatched += counts["unmatched_entries"]
        not_in = max(not_in, counts["rows_not_in_split"])
        if fold.val is not None and not keep_val:
            fold = Fold(fold.name, np.union1d(fold.train, fold.val), fold.test)
        out.append(fold)
    check_class_counts(y, 1, "one")
    excluded = {"split_unmatched_entries": unmatched, "not_in_split": not_in}
    return FoldPlan(str(split), out, {k: v for k, v in excluded.items() if v})


@dataclass(frozen=True)
class FoldResult:
    """One fold's size and metrics.

    Attributes:
        name: The fold's name.
        n_train: Training rows.
        n_test: Test rows.
        metrics: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``weighted_f1``
            (and ``auroc`` when the engine was asked for it).
        best_epoch: The epoch early stopping kept (heads that have one).
    """

    name: str
    n_train: int
    n_test: int
    metrics: dict[str, float]
    best_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the fold as the report's ``folds`` entry."""
        head = {"name": self.name, "n_train": self.n_train, "n_test": self.n_test}
        epoch = {} if self.best_epoch is None else {"best_epoch": self.best_epoch}
        return head | epoch | self.metrics


@dataclass(frozen=True)
class Summary:
    """The metric part of a report: fold means and sds, pooled scores, intervals.

    Attributes:
        mean: Metric means over folds (NaN folds skipped).
        sd: Sample sds over folds (``None`` with one fold).
        pooled: Metrics of the pooled out-of-fold predictions.
        per_class: Pooled ``{class: {precision, recall, f1, support}}``.
        confusion: Pooled counts, rows true and columns predicted, ``labels`` order.
        labels: The classes.
        ci: Bootstrap 95% intervals of the pooled metrics (``None``: not asked).
    """

    mean: dict[str, float]
    sd: dict[str, float | None]
    pooled: dict[str, float]
    per_class: dict[str, dict[str, float | int]]
    confusion: list[list[int]]
    labels: list[str]
    ci: dict[str, tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report schema's metric keys (see :mod:`heads.report`)."""
        out: dict[str, Any] = {}
        for name in self.mean:
            out[name] = self.mean[name]
            out[f"{name}_sd"] = self.sd[name]
        out["per_class"] = self.per_class
        out["pooled"] = self.pooled
        for name, (lo, hi) in (self.ci or {}).items():
            out[f"{name}_ci"] = [lo, hi]
        out["confusion"] = {"labels": self.labels, "counts": self.confusion}
        return out


@dataclass
class CVResult:
    """Pooled out-of-fold outputs of :func:`cross_validate`.

    Attributes:
        classes: The classes, column order of ``proba``.
        folds: Per-fold results.
        rows: Tested rows, fold after fold.
        fold_of: The fold index of each tested row.
        y_true: Labels of the tested rows.
        proba: float64 (n_tested, n_classes) out-of-fold probabilities.
    """

    classes: list[str]
    folds: list[FoldResult]
    rows: npt.NDArray[np.int64]
    fold_of: npt.NDArray[np.int64]
    y_true: npt.NDArray[Any]
    proba: npt.NDArray[np.float64]

    @property
    def y_pred(self) -> npt.NDArray[Any]:
        """Return the most probable class of each tested row."""
        return np.asarray(self.classes)[self.proba.argmax(1)]

    def summarise(
        self,
        *,
        auroc: bool = False,
        ci: bool = False,
        n_boot: int = 1000,
        seed: int = 0,
    ) -> Summary:
        """Return the :class:`Summary` (AUROC and bootstrap intervals on request)."""
        names = list(METRICS) + (["auroc"] if auroc else [])
        mean: dict[str, float] = {}
        sd: dict[str, float | None] = {}
        for name in names:
            v = np.asarray([f.metrics[name] for f in self.folds], dtype=np.float64)
            v = v[~np.isnan(v)]
            mean[name] = float(v.mean()) if v.size else float("nan")
            sd[name] = float(v.std(ddof=1)) if v.size > 1 else None
        y_pred = self.y_pred
        m = classification_metrics(self.y_true, y_pred, self.classes)
        pooled = {k: m[k] for k in METRICS}
        if auroc:
            pooled["auroc"] = auroc_ovr(self.y_true, self.proba, self.classes)
        intervals = None
        if ci:
            proba = self.proba if auroc else None
            intervals = bootstrap_ci(
                self.y_true, y_pred, proba, self.classes, n_boot=n_boot, seed=seed
            )
        counts = confusion_matrix(self.y_true, y_pred, labels=self.classes)
        return Summary(
            mean, sd, pooled, m["per_class"], counts.tolist(), self.classes, intervals
        )


def _take(X: Any, rows: npt.NDArray[np.int64]) -> Any:
    """Return rows of a matrix, or the bags of a list of bags."""
    return X[rows] if isinstance(X, np.ndarray) else [X[i] for i in rows.tolist()]


def cross_validate(
    factory: Callable[[], Any],
    X: npt.NDArray[Any] | Sequence[npt.NDArray[Any]],
    y: npt.NDArray[Any],
    groups: Sequence[str | None] | None,
    folds: Sequence[Fold],
    *,
    auroc: bool = False,
    after_fit: Callable[[int, Fold, Any], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    total_steps: int | None = None,
) -> CVResult:
    """Fit ``factory()`` on each fold's training rows and test it on the rest.

    A fold with a ``val`` part passes it as ``fit(..., validation=(X, y))`` to heads
    that take one (early stopping), keeping only classes seen in training.

    Args:
        factory: Returns a fresh unfitted head (an sklearn-style classifier).
        X: (n, dim) matrix, or a list of n bags for MIL heads.
        y: Labels, shape (n,).
        groups: Each row's patient/bag; a group in both parts of a fold is refused.
        folds: The folds.
        auroc: Add each fold's ``auroc`` to its metrics.
        after_fit: Called as ``after_fit(i, fold, fitted_head)`` (e.g. attention).
        progress: ``progress(done, total)`` after each fold.
        total_steps: ``total`` given to ``progress`` (default: the fold count).

    Returns:
        The :class:`CVResult`.

    Raises:
        SplitError: If there are no folds or a group is in train and test.
        LabelError: If a fold's training part has a single class.
    """
    if not folds:
        raise SplitError("the split produced no folds: check --split")
    y = np.asarray(y)
    classes = sorted(set(y.tolist()))
    col = {c: j for j, c in enumerate(classes)}
    g = None if groups is None else np.asarray(groups, dtype=object)
    results: list[FoldResult] = []
    probas: list[npt.NDArray[np.float64]] = []
    for i, fold in enumerate(folds):
        if g is not None:
            both = set(g[fold.train].tolist()) & set(g[fold.test].tolist()) - {None}
            if both:
                raise SplitError(
                    f"{fold.name}: {len(both)} patients are in train and test, e.g. "
                    f"{sorted(map(str, both))[:3]}: fix the split file"
                )
        if np.unique(y[fold.train]).size < 2:
            raise LabelError(
                f"{fold.name}: the training part has a single class; use more cells, "
                "fewer folds or another split"
            )
        head = factory()
        kwargs: dict[str, Any] = {}
        if (
            fold.val is not None
            and "validation" in inspect.signature(head.fit).parameters
        ):
            seen = set(y[fold.train].tolist())
            val = np.asarray([r for r in fold.val.tolist() if y[r] in seen], np.int64)
            kwargs["validation"] = (_take(X, val), y[val]) if val.size else None
        head.fit(_take(X, fold.train), y[fold.train], **kwargs)
        p = head.predict_proba(_take(X, fold.test))
        full = np.zeros((fold.test.size, len(classes)))
        for j, c in enumerate(head.classes_.tolist()):
            full[:, col[c]] = p[:, j]
        probas.append(full)
        pred = np.asarray(classes)[full.argmax(1)]
        m = classification_metrics(y[fold.test], pred, classes)
        metrics = {k: m[k] for k in METRICS}
        if auroc:
            metrics["auroc"] = auroc_ovr(y[fold.test], full, classes)
        epoch = getattr(head, "best_epoch_", None)
        results.append(
            FoldResult(
                fold.name,
                int(fold.train.size),
                int(fold.test.size),
                metrics,
                None if epoch is None else int(epoch),
            )
        )
        if after_fit is not None:
            after_fit(i, fold, head)
        if progress is not None:
            progress(i + 1, total_steps or len(folds))
    rows = np.concatenate([f.test for f in folds]).astype(np.int64)
    fold_of = np.concatenate(
        [np.full(f.test.size, i, np.int64) for i, f in enumerate(folds)]
    )
    return CVResult(classes, results, rows, fold_of, y[rows], np.concatenate(probas))
