"""``mil``: cross-validate and save a gated attention-MIL head of patient bags.

Out-of-fold outputs go to the catalog: each patient's prediction and each cell's
attention come from the fold that tested that patient (tables ``patient_predictions``
and ``attention``). The saved head is refitted on every bag for the median number of
epochs that early stopping chose in the folds.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, LabelError, SplitError
from cytostore.heads._data import Cells, load_cells, missing_label, open_store
from cytostore.heads.abmil import ABMILHead
from cytostore.heads.metrics import METRICS, auroc_ovr, classification_metrics
from cytostore.heads.registry import (
    check_head_name,
    head_dir,
    save_head,
    weights_of,
)
from cytostore.heads.report import aggregate, confusion_png
from cytostore.heads.splits import (
    Fold,
    assign_split,
    check_class_counts,
    read_split_specs,
    stratified_folds,
)
from cytostore.store import (
    Store,
    safe_identifier,
    write_attention,
    write_patient_predictions,
)

__all__ = ["mil", "Bagged", "make_bags"]

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
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
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
        n_boot: Bootstrap resamples of the 95% intervals.
        seed: Seed of folds and training.
        device: Torch device.
        progress: ``progress(done, total)`` over folds (plus the final refit).

    Returns:
        The report: per-fold and mean ± sd accuracy, balanced accuracy, macro and
        weighted F1, ``auroc``, ``<metric>_ci``, ``per_class``, ``n_bags``, ...

    Raises:
        LabelError: One class, classes with fewer bags than folds, mixed-label bags.
        SplitError: A patient in two bags, or a split matching no patients.
        InvalidArgumentError: Bad arguments.
    """
    st = open_store(store)
    safe_identifier(bag)
    safe_identifier(label)
    if split is None and (folds is None or folds < 2):
        raise InvalidArgumentError(
            f"--folds must be >= 2 (got {folds}), or give --split"
        )
    if min_bag_size < 1:
        raise InvalidArgumentError(f"min_bag_size must be >= 1, got {min_bag_size}")
    name = check_head_name(name or _default_name(model, label))
    cells = load_cells(st, model, where, [bag, label, "dataset", "patient_id"])
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
    keys = [bagged.keys[i] for i in keep]
    rows = [bagged.rows[i] for i in keep]
    y = np.asarray([bagged.labels[i] for i in keep], dtype=str)
    if y.size == 0:
        raise LabelError(f"no bag has a {label!r} value: choose the bag label column")
    X = np.asarray(cells.X, dtype=np.float32)
    bags = [X[r] for r in rows]
    classes = sorted(set(y.tolist()))

    if split is not None:
        fold_list: list[Fold] = []
        unmatched = 0
        for spec in read_split_specs(split):
            fold, counts = assign_split(spec, None, [k[1] for k in keys])
            unmatched += counts["unmatched_entries"]
            fold_list.append(fold)
        if unmatched:
            excluded["split_unmatched_entries"] = unmatched
        check_class_counts(y, 1, "one")
        split_name = str(split)
    else:
        assert folds is not None  # noqa: S101 - checked above
        fold_list = stratified_folds(y, folds, seed=seed)
        split_name = f"stratified {folds}-fold (patients)"

    n_steps = len(fold_list) + 1
    proba_oof = np.full((len(bags), len(classes)), np.nan)
    fold_of = np.full(len(bags), -1, dtype=np.int64)
    attention_oof: dict[int, npt.NDArray[np.float64]] = {}
    fold_reports: list[dict[str, Any]] = []
    best_epochs: list[int] = []
    col = {c: j for j, c in enumerate(classes)}
    for f_i, fold in enumerate(fold_list):
        if np.unique(y[fold.train]).size < 2:
            raise LabelError(f"{fold.name}: training bags hold a single class")
        head = ABMILHead(max_epochs=max_epochs, seed=seed, device=device)
        validation = None
        if fold.val is not None:
            seen = set(y[fold.train].tolist())
            v = [i for i in fold.val.tolist() if y[i] in seen]
            validation = ([bags[i] for i in v], y[v]) if v else None
        head.fit([bags[i] for i in fold.train], y[fold.train], validation=validation)
        test_bags = [bags[i] for i in fold.test]
        p = head.predict_proba(test_bags)
        full = np.zeros((fold.test.size, len(classes)))
        for j, c in enumerate(head.classes_.tolist()):
            full[:, col[c]] = p[:, j]
        proba_oof[fold.test] = full
        fold_of[fold.test] = f_i
        for i, att in zip(fold.test.tolist(), head.attention(test_bags), strict=True):
            attention_oof[i] = att
        pred = np.asarray(classes)[full.argmax(1)]
        m = classification_metrics(y[fold.test], pred, classes)
        fold_reports.append(
            {
                "name": fold.name,
                "n_train": int(fold.train.size),
                "n_test": int(fold.test.size),
                "best_epoch": int(head.best_epoch_),
            }
            | {k: m[k] for k in METRICS}
            | {"auroc": auroc_ovr(y[fold.test], full, classes)}
        )
        best_epochs.append(int(head.best_epoch_))
        if progress is not None:
            progress(f_i + 1, n_steps)
    tested = np.flatnonzero(fold_of >= 0)
    y_pred = np.asarray(classes)[proba_oof[tested].argmax(1)]
    report: dict[str, Any] = aggregate(
        fold_reports,
        y[tested],
        y_pred,
        classes,
        proba=proba_oof[tested],
        ci=True,
        n_boot=n_boot,
        seed=seed,
    )
    report["folds"] = fold_reports
    report["n_bags"] = len(bags)
    report["n_train"] = int(round(np.mean([f["n_train"] for f in fold_reports])))
    report["n_test"] = int(tested.size)
    report["excluded"] = excluded

    epochs = max(1, int(np.median(best_epochs)))
    final = ABMILHead(max_epochs=epochs, early_stopping=False, seed=seed, device=device)
    final.fit(bags, y)
    if progress is not None:
        progress(n_steps, n_steps)
    folder = head_dir(st, name)
    counts = report["confusion"]["counts"]
    title = f"{name}: {label} per {bag} (out-of-fold)"
    report.update(
        {
            "head": name,
            "kind": "abmil",
            "model": model,
            "label": label,
            "bag": bag,
            "split": split_name,
            "classes": classes,
            "refit_epochs": epochs,
            "confusion_png": str(folder / "confusion.png"),
        }
    )
    meta = {
        "kind": "abmil",
        "model": model,
        "label": label,
        "bag": bag,
        "where": where,
        "classes": classes,
        "n_features": int(X.shape[1]),
        "trained_bags": [list(k) for k in keys],
        "weights_sha256": weights_of(st, model),
        "cli": [
            ["--model", model],
            ["--bag", bag],
            ["--label", label],
            ["--where", where],
            ["--folds", None if split is not None else folds],
            ["--split", split],
            ["--min-bag-size", min_bag_size],
            ["--max-epochs", max_epochs],
            ["--seed", seed],
        ],
    }
    att_cells, att_ds, att_bag, att_val, att_fold = [], [], [], [], []
    for i, att in attention_oof.items():
        att_cells.append(cells.ids[rows[i]])
        att_ds += [keys[i][0]] * rows[i].size
        att_bag += [keys[i][1]] * rows[i].size
        att_val.append(att)
        att_fold.append(np.full(rows[i].size, fold_of[i]))
    probabilities = [
        json.dumps({c: round(float(p), 6) for c, p in zip(classes, row, strict=True)})
        for row in proba_oof[tested]
    ]

    def write_rows() -> None:
        write_attention(
            st,
            head=name,
            cell_id=np.concatenate(att_cells) if att_cells else [],
            dataset=att_ds,
            patient_id=att_bag,
            attention=np.concatenate(att_val) if att_val else [],
            fold=np.concatenate(att_fold) if att_fold else [],
            replace_head=True,
        )
        write_patient_predictions(
            st,
            head=name,
            dataset=[keys[i][0] for i in tested],
            patient_id=[keys[i][1] for i in tested],
            label=y_pred.tolist(),
            probability=proba_oof[tested].max(1),
            probabilities=probabilities,
            fold=fold_of[tested],
            true_label=y[tested].tolist(),
            replace_head=True,
        )

    report["attention_rows"] = int(sum(a.size for a in att_val))
    report["patient_prediction_rows"] = int(tested.size)
    # the out-of-fold rows commit with the head's row, after its folder is in place
    save_head(
        st,
        name,
        final,
        meta,
        report,
        extras=lambda tmp: confusion_png(
            counts, classes, tmp / "confusion.png", title=title
        ),
        catalog_rows=write_rows,
    )
    logger.info("mil %s: balanced accuracy %.4f", name, report["balanced_accuracy"])
    return report
