"""``probe``: train and evaluate a cell-level head (linear, kNN, MLP) on embeddings."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, LabelError, SplitError
from cytostore.heads._base import BaseHead
from cytostore.heads._data import (
    Cells,
    and_where,
    load_cells,
    missing_label,
    open_store,
)
from cytostore.heads.knn import KNNHead
from cytostore.heads.linear import LinearProbe
from cytostore.heads.metrics import METRICS, classification_metrics
from cytostore.heads.mlp import MLPHead
from cytostore.heads.registry import (
    check_head_name,
    head_dir,
    save_head,
    weights_of,
)
from cytostore.heads.report import aggregate, by_group, confusion_png
from cytostore.heads.splits import (
    Fold,
    assign_split,
    check_class_counts,
    grouped_folds,
    read_split_specs,
    stratified_folds,
)
from cytostore.store import Store, safe_identifier

__all__ = ["probe", "make_head", "KINDS"]

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


def _drop_missing(cells: Cells, label: str, excluded: dict[str, Any]) -> Cells:
    miss = np.asarray([missing_label(v) for v in cells.meta[label]], dtype=bool)
    if miss.any():
        excluded["missing_label"] = excluded.get("missing_label", 0) + int(miss.sum())
    return cells.take(~miss)


def _labels(cells: Cells, label: str) -> npt.NDArray[np.str_]:
    return np.asarray([str(v).strip() for v in cells.meta[label]])


def _groups(cells: Cells) -> npt.NDArray[np.str_]:
    out = []
    for cid, ds, pid in zip(
        cells.ids.tolist(), cells.meta["dataset"], cells.meta["patient_id"], strict=True
    ):
        out.append(f"cell:{cid}" if pid is None else f"{ds}/{pid}")
    return np.asarray(out)


def _default_name(kind: str, model: str | int | None, label: str) -> str:
    raw = f"{kind}-{label}-{model if model is not None else 'default'}"
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", raw)


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
) -> dict[str, Any]:
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
        The report (schema in :mod:`cytostore.heads.report`), plus ``head``,
        ``kind``, ``model``, ``label``, ``split``, ``classes``, ``confusion_png``.

    Raises:
        LabelError: One class, or classes with fewer members than folds.
        SplitError: A split that cannot be made or matches no cells.
        InvalidArgumentError: Bad arguments (kind, column, where).
    """
    st = open_store(store)
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
    explicit = train_where is not None
    if explicit and (split is not None or folds is not None):
        raise InvalidArgumentError(
            "--train-where/--test-where define the split: drop --split and --folds"
        )
    safe_identifier(label)
    name = check_head_name(name or _default_name(kind, model, label))
    columns = [label, "dataset", "path", "patient_id"] + ([by] if by else [])
    excluded: dict[str, Any] = {}
    report: dict[str, Any] = {}

    if explicit:
        train_cells = _drop_missing(
            load_cells(st, model, and_where(where, train_where), columns),
            label,
            excluded,
        )
        test_cells = _drop_missing(
            load_cells(st, model, and_where(where, test_where), columns),
            label,
            excluded,
        )
        overlap = np.intersect1d(train_cells.ids, test_cells.ids)
        if overlap.size:
            raise SplitError(
                f"{overlap.size} cells match both --train-where and --test-where: make "
                "the two filters disjoint"
            )
        tr_counts = Counter(_labels(train_cells, label).tolist())
        te_counts = Counter(_labels(test_cells, label).tolist())
        shared = sorted(set(tr_counts) & set(te_counts))
        dropped = {
            c: {"train": tr_counts.get(c, 0), "test": te_counts.get(c, 0)}
            for c in sorted(set(tr_counts) ^ set(te_counts))
        }
        if len(shared) < 2:
            raise LabelError(
                f"train and test share {len(shared)} classes of {label!r} "
                f"({shared}): a "
                "transfer evaluation needs two or more; check the filters or the label"
            )
        report["classes_kept"] = shared
        report["classes_dropped"] = dropped
        n_drop = sum(v["train"] + v["test"] for v in dropped.values())
        if n_drop:
            excluded["class_not_shared"] = n_drop
        keep_tr = np.isin(_labels(train_cells, label), shared)
        keep_te = np.isin(_labels(test_cells, label), shared)
        train_cells, test_cells = train_cells.take(keep_tr), test_cells.take(keep_te)
        cells = Cells(
            np.concatenate([train_cells.ids, test_cells.ids]),
            np.concatenate([np.asarray(train_cells.X), np.asarray(test_cells.X)]),
            {
                k: np.concatenate([train_cells.meta[k], test_cells.meta[k]])
                for k in train_cells.meta
            },
        )
        n_tr = len(train_cells)
        fold_list = [
            Fold(
                "explicit",
                np.arange(n_tr, dtype=np.int64),
                np.arange(n_tr, len(cells), dtype=np.int64),
            )
        ]
        split_name = "explicit"
    else:
        cells = _drop_missing(load_cells(st, model, where, columns), label, excluded)
        if len(cells) == 0:
            raise LabelError(
                f"every selected cell has an empty {label!r}: choose a labelled column"
            )
        y_all = _labels(cells, label)
        if min_count is not None:
            per_class = Counter(y_all.tolist())
            rare = {c: n for c, n in per_class.items() if n < min_count}
            if rare:
                excluded["rare_class"] = rare
                cells = cells.take(~np.isin(y_all, list(rare)))
                y_all = _labels(cells, label)
        has_patients = any(p is not None for p in cells.meta["patient_id"])
        split_name = split or ("patient" if has_patients else "stratified")
        if split_name == "stratified":
            fold_list = stratified_folds(y_all, folds, test_size, seed)
        elif split_name == "patient":
            groups = _groups(cells)
            needed = folds if folds is not None else 2
            check_class_counts(
                y_all, needed, "folds" if folds else "needed for a split"
            )
            fold_list = grouped_folds(y_all, groups, folds, test_size, seed)
        else:
            fold_list = []
            unmatched, not_in = 0, 0
            paths = [str(p) for p in cells.meta["path"]]
            pats = [None if p is None else str(p) for p in cells.meta["patient_id"]]
            for spec in read_split_specs(split_name):
                fold, counts = assign_split(spec, paths, pats)
                unmatched += counts["unmatched_entries"]
                not_in = max(not_in, counts["rows_not_in_split"])
                if fold.val is not None:
                    fold = Fold(fold.name, np.union1d(fold.train, fold.val), fold.test)
                fold_list.append(fold)
            if unmatched:
                excluded["split_unmatched_entries"] = unmatched
            if not_in:
                excluded["not_in_split"] = not_in
            split_name = str(split)
    y = _labels(cells, label)
    X = np.asarray(cells.X, dtype=np.float32)
    classes = sorted(set(y.tolist()))
    check_class_counts(y, 1, "one")

    fold_reports: list[dict[str, Any]] = []
    pooled_true: list[npt.NDArray[np.str_]] = []
    pooled_pred: list[npt.NDArray[np.str_]] = []
    pooled_rows: list[npt.NDArray[np.int64]] = []
    head: BaseHead | None = None
    for i, fold in enumerate(fold_list):
        if np.unique(y[fold.train]).size < 2:
            raise LabelError(
                f"{fold.name}: the training part has a single class; use more cells, "
                "fewer folds or another split"
            )
        head = make_head(
            kind, class_weight=class_weight, seed=seed, device=device, k=k, vote=vote
        )
        head.fit(X[fold.train], y[fold.train])
        pred = head.predict(X[fold.test])
        m = classification_metrics(y[fold.test], pred, classes)
        fold_reports.append(
            {
                "name": fold.name,
                "n_train": int(fold.train.size),
                "n_test": int(fold.test.size),
            }
            | {k: m[k] for k in METRICS}
        )
        pooled_true.append(y[fold.test])
        pooled_pred.append(pred)
        pooled_rows.append(fold.test)
        if progress is not None:
            progress(i + 1, len(fold_list))
    yt, yp = np.concatenate(pooled_true), np.concatenate(pooled_pred)
    report.update(aggregate(fold_reports, yt, yp, classes))
    report["folds"] = fold_reports
    report["n_train"] = int(round(np.mean([f["n_train"] for f in fold_reports])))
    report["n_test"] = int(yt.size)
    report["excluded"] = excluded
    if by:
        rows = np.concatenate(pooled_rows)
        report["by_column"] = by
        report["by"] = by_group(yt, yp, cells.meta[by][rows])
    if len(fold_list) > 1:
        head = make_head(
            kind, class_weight=class_weight, seed=seed, device=device, k=k, vote=vote
        )
        rows_all = np.unique(
            np.concatenate([np.concatenate([f.train, f.test]) for f in fold_list])
        )
        head.fit(X[rows_all], y[rows_all])
        report["saved_head_trained_on"] = "all folds"
    else:
        report["saved_head_trained_on"] = "train part"
    if head is None:
        raise SplitError("the split produced no folds: check --split")
    folder = head_dir(st, name)
    counts = report["confusion"]["counts"]
    title = f"{name}: {label} ({split_name})"
    report.update(
        {
            "head": name,
            "kind": kind,
            "model": model,
            "label": label,
            "split": split_name,
            "classes": [str(c) for c in head.classes_.tolist()],
            "confusion_png": str(folder / "confusion.png"),
        }
    )
    knn = kind == "knn"
    meta = {
        "kind": kind,
        "model": model,
        "label": label,
        "where": where,
        "classes": report["classes"],
        "n_features": int(X.shape[1]),
        "weights_sha256": weights_of(st, model),
        "cli": [
            ["--model", model],
            ["--kind", kind],
            ["--label", label],
            ["--where", where],
            ["--train-where", train_where],
            ["--test-where", test_where],
            ["--split", split],
            ["--folds", folds],
            ["--test-size", None if test_size == 0.2 else test_size],
            ["--min-count", min_count],
            ["--class-weight", "none" if class_weight is None else None],
            ["--by", by],
            ["--k", k if knn else None],
            ["--vote", vote if knn else None],
            ["--seed", seed],
        ],
    }
    save_head(
        st,
        name,
        head,
        meta,
        report,
        extras=lambda tmp: confusion_png(
            counts, classes, tmp / "confusion.png", title=title
        ),
    )
    logger.info("probe %s: balanced accuracy %.4f", name, report["balanced_accuracy"])
    return report
