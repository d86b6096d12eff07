"""``mil``: cross-validate and save a gated attention-MIL head of patient bags.

Out-of-fold outputs go to the catalog: each patient's prediction and each cell's
attention come from the fold that tested that patient (tables ``patient_predictions``
and ``attention``). The saved head is refitted on every bag for the number of epochs
that :func:`refit_epochs` chooses from the folds' early stopping.

Every report carries a baseline on the same folds, so that attention must earn its
place: each bag becomes the mean of its cells' embeddings and a
:class:`~cytostore.heads.linear.LinearProbe` classifies those means.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, LabelError, SplitError
from cytostore.heads._data import Cells, load_cells, missing_label, open_store
from cytostore.heads.abmil import ABMILHead, refit_epochs
from cytostore.heads.evaluate import (
    CVResult,
    FoldPlan,
    FoldResult,
    Summary,
    cross_validate,
    make_folds,
)
from cytostore.heads.linear import LinearProbe
from cytostore.heads.registry import check_head_name, head_dir, save_head
from cytostore.heads.report import confusion_png
from cytostore.heads.splits import Fold
from cytostore.store import (
    Store,
    safe_identifier,
    write_attention,
    write_patient_predictions,
)

__all__ = ["Bagged", "Baseline", "MILReport", "make_bags", "mil", "refit_epochs"]

logger = logging.getLogger(__name__)


class Bagged:
    """Cells grouped into bags (one per ``(dataset, bag value)``).

    Attributes:
        keys: ``(dataset, bag)`` per bag.
        rows: Row indices into the cells, per bag.
        labels: Bag label per bag (``None`` where no cell has one).
    """

    def __init__(
        self,
        keys: list[tuple[str, str]],
        rows: list[npt.NDArray[np.int64]],
        labels: list[str | None],
    ) -> None:
        self.keys = keys
        self.rows = rows
        self.labels = labels


def make_bags(
    cells: Cells, bag: str, label: str | None
) -> tuple[Bagged, dict[str, Any]]:
    """Group cells into bags and check them.

    Returns:
        ``(bags, excluded)``; ``excluded`` counts cells without a bag value.

    Raises:
        LabelError: If a bag's cells carry different labels.
        SplitError: If a patient's cells fall in two bags (they would leak across
            folds).
    """
    excluded: dict[str, Any] = {}
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    no_bag = 0
    for i, (ds, b) in enumerate(
        zip(cells.meta["dataset"], cells.meta[bag], strict=True)
    ):
        if missing_label(b):
            no_bag += 1
            continue
        groups[(str(ds), str(b))].append(i)
    if no_bag:
        excluded["cells_without_bag"] = no_bag
    keys = sorted(groups)
    rows = [np.asarray(groups[k], dtype=np.int64) for k in keys]
    labels: list[str | None] = []
    conflicts: dict[str, list[str]] = {}
    for k, r in zip(keys, rows, strict=True):
        values = (
            sorted(
                {str(v).strip() for v in cells.meta[label][r] if not missing_label(v)}
            )
            if label
            else []
        )
        if len(values) > 1:
            conflicts[f"{k[0]}/{k[1]}"] = values
        labels.append(values[0] if values else None)
    if conflicts:
        shown = dict(list(conflicts.items())[:5])
        raise LabelError(
            f"{len(conflicts)} bags hold cells with different {label!r} values, e.g. "
            f"{shown}: a bag needs one label; fix the labels or choose another --bag"
        )
    if bag != "patient_id" and "patient_id" in cells.meta:
        where_is: dict[tuple[str, str], set[str]] = defaultdict(set)
        for k, r in zip(keys, rows, strict=True):
            for p in cells.meta["patient_id"][r]:
                if p is not None:
                    where_is[(k[0], str(p))].add(k[1])
        split = {f"{d}/{p}": sorted(b) for (d, p), b in where_is.items() if len(b) > 1}
        if split:
            raise SplitError(
                f"{len(split)} patients are in two or more bags, e.g. "
                f"{dict(list(split.items())[:3])}: folds would leak patients; use "
                "--bag patient_id or a bag column that nests patients"
            )
    return Bagged(keys, rows, labels), excluded


#: The decision rule of the report, by ``prior_correction``.
DECISION_RULES = {
    False: "argmax of the posterior (head trained with class-balanced loss)",
    True: "argmax of posterior / training class prior (unweighted loss)",
}
#: How the baseline is named in reports.
BASELINE = "mean pooling + LinearProbe"


@dataclass
class Baseline:
    """Mean pooling + linear probe on the same folds as the attention head.

    Attributes:
        method: ``"mean pooling + LinearProbe"``.
        summary: Its fold means, sds, pooled metrics and bootstrap intervals.
        folds: Its per-fold results.
    """

    method: str
    summary: Summary
    folds: list[FoldResult]

    def to_dict(self) -> dict[str, Any]:
        """Return the report's ``baseline`` entry (the metric schema, plus folds)."""
        out = {"method": self.method} | self.summary.to_dict()
        return out | {"folds": [f.to_dict() for f in self.folds]}


@dataclass
class MILReport:
    """What ``mil`` measured and saved (``to_dict()``: the JSON report).

    Attributes:
        head: Name of the saved head.
        model: The model whose cell embeddings formed the bags.
        label: The bag label column.
        bag: The bag column.
        split: ``stratified K-fold (patients)`` or the split file.
        classes: The classes.
        summary: Out-of-fold metrics of the attention head, with AUROC and CIs.
        folds: Per-fold results (with ``best_epoch``).
        baseline: Mean pooling + linear probe on the same folds.
        n_bags: Bags used.
        n_train: Mean training bags per fold.
        n_test: Bags tested out of fold.
        excluded: Cells or bags left out, by reason.
        refit_epochs: Epochs of the saved head's refit on every bag: the median
            of the folds' best epochs (rounded up), at least ``min_epochs``.
        confusion_png: The confusion matrix image.
        attention_rows: Rows written to ``attention``.
        patient_prediction_rows: Rows written to ``patient_predictions``.
        decision_rule: How a patient's class is decided from the posterior.
    """

    head: str
    model: str | int | None
    label: str
    bag: str
    split: str
    classes: list[str]
    summary: Summary
    folds: list[FoldResult]
    baseline: Baseline
    n_bags: int
    n_train: int
    n_test: int
    excluded: dict[str, Any]
    refit_epochs: int
    confusion_png: str
    attention_rows: int
    patient_prediction_rows: int
    decision_rule: str = ""

    @property
    def balanced_accuracy(self) -> float:
        """Return the attention head's mean balanced accuracy over folds."""
        return self.summary.mean["balanced_accuracy"]

    def to_dict(self) -> dict[str, Any]:
        """Return the report in the schema of :mod:`cytostore.heads.report`."""
        out = self.summary.to_dict() | {"folds": [f.to_dict() for f in self.folds]}
        base = self.baseline.summary.pooled
        out["baseline"] = self.baseline.to_dict()
        out["attention_vs_baseline"] = {
            m: {"attention": self.summary.pooled[m], "baseline": base[m]}
            for m in ("balanced_accuracy", "auroc")
        }
        keys: tuple[str, ...] = ("n_bags", "n_train", "n_test", "excluded", "head")
        out |= {k: getattr(self, k) for k in keys} | {"kind": "abmil"}
        keys = ("model", "label", "bag", "split", "classes", "refit_epochs")
        out |= {k: getattr(self, k) for k in keys + ("decision_rule",)}
        keys = ("confusion_png", "attention_rows", "patient_prediction_rows")
        return out | {k: getattr(self, k) for k in keys}


def _default_name(model: str | int | None, label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", f"abmil-{label}-{model}")


def mil(
    store: Store | str | os.PathLike[str],
    model: str | int | None,
    *,
    bag: str = "patient_id",
    label: str = "bag_label",
    where: str | None = None,
    folds: int | None = 5,
    split: str | None = None,
    name: str | None = None,
    min_bag_size: int = 2,
    max_epochs: int = 40,
    prior_correction: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> MILReport:
    """Cross-validate a gated attention-MIL head on patient bags and save it.

    Args:
        store: The store (or its folder).
        model: Model name (or embedding-set id) whose cell vectors form the bags.
        bag: ``cell_meta`` column naming each cell's bag (patient).
        label: ``cell_meta`` column with the bag's class (e.g. ``bag_label``).
        where: SQL filter over ``cell_meta`` selecting the cells.
        folds: Stratified patient-level folds (ignored when ``split`` is given).
        split: A published split file or folder of rotations naming patients.
        name: Name of the saved head (default ``abmil-<label>-<model>``).
        min_bag_size: Bags with fewer cells are excluded (counted).
        max_epochs: Upper bound on epochs per fold (early stopping on an inner
            validation split of the training bags, or on the split's ``val`` part).
        prior_correction: Train on the natural class frequencies and divide each
            fold's training class prior out of the posterior (decide as if classes
            were equally likely) instead of the class-balanced loss; see
            :class:`ABMILHead`. The prior never comes from the tested patients.
        n_boot: Bootstrap resamples of the 95% intervals.
        seed: Seed of folds and training.
        device: Torch device.
        progress: ``progress(done, total)`` over folds (plus the final refit).

    Returns:
        The :class:`MILReport`, with the mean-pooling baseline on the same folds.

    Raises:
        LabelError: One class, classes with fewer bags than folds, mixed-label bags.
        SplitError: A patient in two bags, or a split matching no patients.
        InvalidArgumentError: Bad arguments.
    """
    st = open_store(store)
    _check_args(bag, label, folds, split, min_bag_size)
    name = check_head_name(name or _default_name(model, label))
    cells = load_cells(st, model, where, [bag, label, "dataset", "patient_id"])
    keys, rows, y, excluded = _labelled_bags(cells, bag, label, min_bag_size)
    X = np.asarray(cells.X, dtype=np.float32)
    bags = [X[r] for r in rows]
    plan = _plan(split, folds, y, [k[1] for k in keys], seed)
    attention: dict[int, npt.NDArray[np.float64]] = {}

    def keep_attention(i: int, fold: Fold, head: ABMILHead) -> None:
        test = fold.test.tolist()
        attention.update(
            zip(test, head.attention([bags[j] for j in test]), strict=True)
        )

    factory = partial(
        ABMILHead,
        max_epochs=max_epochs,
        class_weight=None if prior_correction else "balanced",
        prior_correction=prior_correction,
        seed=seed,
        device=device,
    )
    n_steps = len(plan.folds) + 1
    groups = [f"{d}/{b}" for d, b in keys]
    cv = cross_validate(
        factory, bags, y, groups, plan.folds, auroc=True,
        after_fit=keep_attention, progress=progress, total_steps=n_steps,
    )  # fmt: skip
    means = np.stack([b.mean(axis=0) for b in bags])
    base = cross_validate(
        partial(LinearProbe, seed=seed, device=device),
        means, y, groups, _cell_folds(plan), auroc=True,
    )  # fmt: skip
    best_epochs = [f.best_epoch or 1 for f in cv.folds]
    epochs = refit_epochs(best_epochs, min_epochs=min(factory().min_epochs, max_epochs))
    final = factory(max_epochs=epochs, early_stopping=False).fit(bags, y)
    if progress is not None:
        progress(n_steps, n_steps)
    summarise = partial(_summarise, n_boot=n_boot, seed=seed)
    report = MILReport(
        head=name, model=model, label=label, bag=bag, split=plan.name,
        classes=cv.classes, summary=summarise(cv), folds=cv.folds,
        baseline=Baseline(BASELINE, summarise(base), base.folds),
        n_bags=len(bags), n_train=int(round(np.mean([f.n_train for f in cv.folds]))),
        n_test=int(cv.rows.size), excluded=excluded | _unmatched(plan),
        refit_epochs=epochs, decision_rule=DECISION_RULES[prior_correction],
        confusion_png=str(head_dir(st, name) / "confusion.png"),
        attention_rows=int(sum(a.size for a in attention.values())),
        patient_prediction_rows=int(cv.rows.size),
    )  # fmt: skip
    cli = _cli_flags(model, bag, label, where, folds, split, min_bag_size)
    cli += [["--max-epochs", max_epochs], ["--prior-correction", prior_correction]]
    meta: dict[str, Any] = {"kind": "abmil", "model": model, "label": label}
    meta |= {"bag": bag, "where": where, "n_features": int(X.shape[1])}
    meta |= {"classes": cv.classes, "trained_bags": [list(k) for k in keys]}
    meta |= {"cli": cli + [["--seed", seed]], "best_epochs": best_epochs}
    meta |= {"refit_epochs": epochs, "decision_rule": report.decision_rule}
    _save(st, report, final, meta, cells, keys, rows, cv, attention)
    logger.info("mil %s: balanced accuracy %.4f", name, report.balanced_accuracy)
    return report


def _check_args(
    bag: str, label: str, folds: int | None, split: str | None, min_bag_size: int
) -> None:
    """Refuse bad column names, fold counts and bag sizes before any work."""
    safe_identifier(bag)
    safe_identifier(label)
    if split is None and (folds is None or folds < 2):
        raise InvalidArgumentError(
            f"--folds must be >= 2 (got {folds}), or give --split"
        )
    if min_bag_size < 1:
        raise InvalidArgumentError(f"min_bag_size must be >= 1, got {min_bag_size}")


def _plan(
    split: str | None, folds: int | None, y: Any, ids: list[str], seed: int
) -> FoldPlan:
    """Patient folds: the published split's, or stratified ``folds``-fold."""
    if split is not None:
        return make_folds(split, y, ids, seed=seed, keep_val=True)
    plan = make_folds("stratified", y, folds=folds, seed=seed)
    return FoldPlan(f"stratified {folds}-fold (patients)", plan.folds)


def _summarise(cv: Any, *, n_boot: int, seed: int) -> Any:
    """Pooled out-of-fold metrics with bootstrap intervals."""
    return cv.summarise(auroc=True, ci=True, n_boot=n_boot, seed=seed)


def _cli_flags(
    model: str | int | None,
    bag: str,
    label: str,
    where: str | None,
    folds: int | None,
    split: str | None,
    min_bag_size: int,
) -> list[list[Any]]:
    """The flags that retrain this head (recorded in its metadata)."""
    cli: list[list[Any]] = [["--model", model], ["--bag", bag], ["--label", label]]
    cli += [["--where", where], ["--folds", None if split is not None else folds]]
    return cli + [["--split", split], ["--min-bag-size", min_bag_size]]


def _unmatched(plan: FoldPlan) -> dict[str, int]:
    """Return the split's unmatched entries (bags outside a split are just unused)."""
    return {k: v for k, v in plan.excluded.items() if k == "split_unmatched_entries"}


def _cell_folds(plan: FoldPlan) -> list[Fold]:
    """Return the folds with ``val`` joined to ``train`` (the baseline needs none)."""
    return [
        Fold(f.name, f.train if f.val is None else np.union1d(f.train, f.val), f.test)
        for f in plan.folds
    ]


def _labelled_bags(
    cells: Cells, bag: str, label: str, min_bag_size: int
) -> tuple[
    list[tuple[str, str]],
    list[npt.NDArray[np.int64]],
    npt.NDArray[np.str_],
    dict[str, Any],
]:
    """Return the bags with a label and enough cells: keys, rows, labels, excluded.

    Raises:
        LabelError: If no bag has a label.
    """
    bagged, excluded = make_bags(cells, bag, label)
    keep: list[int] = []
    no_label = small = 0
    for i, (r, lab) in enumerate(zip(bagged.rows, bagged.labels, strict=True)):
        if lab is None:
            no_label += 1
        elif r.size < min_bag_size:
            small += 1
        else:
            keep.append(i)
    if no_label:
        excluded["bags_without_label"] = no_label
    if small:
        excluded[f"bags_smaller_than_{min_bag_size}"] = small
    y = np.asarray([bagged.labels[i] for i in keep], dtype=str)
    if y.size == 0:
        raise LabelError(f"no bag has a {label!r} value: choose the bag label column")
    return [bagged.keys[i] for i in keep], [bagged.rows[i] for i in keep], y, excluded


def _save(
    st: Store,
    report: MILReport,
    final: ABMILHead,
    meta: dict[str, Any],
    cells: Cells,
    keys: list[tuple[str, str]],
    rows: list[npt.NDArray[np.int64]],
    cv: CVResult,
    attention: dict[int, npt.NDArray[np.float64]],
) -> None:
    """Save the head; its out-of-fold rows commit with the head's catalog row."""
    fold_of = dict(zip(cv.rows.tolist(), cv.fold_of.tolist(), strict=True))
    order = sorted(attention)
    tested = cv.rows.tolist()
    probabilities = [
        json.dumps({c: round(float(p), 6) for c, p in zip(cv.classes, r, strict=True)})
        for r in cv.proba
    ]

    def write_rows() -> None:
        sizes = [rows[i].size for i in order]
        write_attention(
            st,
            head=report.head,
            cell_id=np.concatenate([cells.ids[rows[i]] for i in order])
            if order
            else [],
            dataset=[
                keys[i][0] for i, n in zip(order, sizes, strict=True) for _ in range(n)
            ],
            patient_id=[
                keys[i][1] for i, n in zip(order, sizes, strict=True) for _ in range(n)
            ],
            attention=np.concatenate([attention[i] for i in order]) if order else [],
            fold=np.repeat([fold_of[i] for i in order], sizes) if order else [],
            replace_head=True,
        )
        write_patient_predictions(
            st,
            head=report.head,
            dataset=[keys[i][0] for i in tested],
            patient_id=[keys[i][1] for i in tested],
            label=cv.y_pred.tolist(),
            probability=cv.proba.max(1),
            probabilities=probabilities,
            fold=cv.fold_of,
            true_label=cv.y_true.tolist(),
            replace_head=True,
        )

    summary = report.summary
    title = f"{report.head}: {report.label} per {report.bag} (out-of-fold)"

    def draw(tmp: Path) -> None:
        confusion_png(summary.confusion, summary.labels, tmp / "confusion.png", title)

    save_head(
        st,
        report.head,
        final,
        meta,
        report.to_dict(),
        extras=draw,
        catalog_rows=write_rows,
    )
