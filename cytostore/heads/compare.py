"""``compare``: several models' embeddings evaluated side by side on the same folds.

How a lab decides which model its store should use: for each model, a linear probe
and a kNN head are cross-validated on the cell label, and (when the cells have
patients and a patient label) an attention-MIL head on patient bags, all on the
*same* cells and the *same* folds, so that the differences are the models'. The
result is one table (mean ± sd over folds) and one PNG. Nothing is saved in the
store: ``probe`` and ``mil`` save heads, ``compare`` only measures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, LabelError
from cytostore.heads._data import Cells, load_cells, missing_label, open_store
from cytostore.heads.abmil import ABMILHead
from cytostore.heads.evaluate import FoldPlan, cross_validate, make_folds
from cytostore.heads.mil import make_bags
from cytostore.heads.probe import make_head
from cytostore.store import Store, safe_identifier

__all__ = ["CompareReport", "compare", "compare_png", "COMPARE_METRICS"]

logger = logging.getLogger(__name__)

#: Metrics of every row (mean and sd over folds).
COMPARE_METRICS = ("balanced_accuracy", "macro_f1", "accuracy")
_CELL_HEADS = ("linear", "knn")


@dataclass
class CompareReport:
    """What ``compare`` measured (``rows``: one per model and head).

    Attributes:
        models: The models, in the order given.
        label: The cell label column.
        split: ``patient`` (a patient never in train and test) or ``stratified``.
        folds: Folds per evaluation.
        n_cells: Cells every model embeds (with a label): the ones evaluated.
        n_bags: Patient bags of the MIL rows (0: no MIL).
        bag_label: The patient label column of the MIL rows (``None``: no MIL).
        rows: ``{"model", "head", "n", <metric>, <metric>_sd, ...}`` per row.
        excluded: Cells left out, by reason.
        mixing: The store's neighbourhood mixing score per model on the same cells:
            ``{model: {"dataset", "patient", "label"}}`` (batch effects: lower is
            better; label: higher is better); ``None`` where the store has none.
        png: The figure written (``None``: none asked).
    """

    models: list[str]
    label: str
    split: str
    folds: int
    n_cells: int
    n_bags: int
    bag_label: str | None
    rows: list[dict[str, Any]]
    excluded: dict[str, Any] = field(default_factory=dict)
    mixing: dict[str, dict[str, float | None]] | None = None
    png: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "models": self.models,
            "label": self.label,
            "split": self.split,
            "folds": self.folds,
            "n_cells": self.n_cells,
            "n_bags": self.n_bags,
            "bag_label": self.bag_label,
            "rows": self.rows,
            "excluded": self.excluded,
            "mixing": self.mixing,
            "png": self.png,
        }

    def best(self, head: str = "linear") -> str:
        """Return the model with the highest mean balanced accuracy for ``head``."""
        rows = [r for r in self.rows if r["head"] == head]
        if not rows:
            raise InvalidArgumentError(f"no {head!r} rows in this comparison")
        return str(max(rows, key=lambda r: r["balanced_accuracy"])["model"])


def compare(
    store: Store | str | os.PathLike[str],
    models: Sequence[str],
    label: str,
    *,
    where: str | None = None,
    folds: int = 5,
    k: int = 20,
    min_count: int | None = None,
    bag_label: str | None = "bag_label",
    mil_epochs: int = 20,
    min_bag_size: int = 2,
    seed: int = 0,
    device: str = "cpu",
    png: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompareReport:
    """Evaluate several models' embeddings with the same heads on the same folds.

    Args:
        store: The store (or its folder).
        models: Two or more model names (or one, to see its numbers alone).
        label: ``cell_meta`` column with the cell class (``label``, ``cell_type``).
        where: SQL filter over ``cell_meta`` selecting the cells.
        folds: K of the K-fold cross-validation (patient-grouped when the cells have
            patients, else stratified); the same folds for every model.
        k: Neighbours of the kNN head.
        min_count: Leave out classes with fewer cells (counted in ``excluded``).
        bag_label: Patient label column for the MIL rows; they are added when the
            cells have patients and this column exists (``None``: no MIL).
        mil_epochs: Upper bound on the MIL head's epochs per fold.
        min_bag_size: Patients with fewer cells are left out of MIL.
        seed: Seed of folds and heads.
        device: Torch device of the heads.
        png: Write the bar chart here (``None``: no figure).
        progress: ``progress(done, total)`` over the evaluations.

    Returns:
        The :class:`CompareReport`.

    Raises:
        InvalidArgumentError: No model, a model twice, bad folds.
        UnknownEmbeddingSetError: A model without vectors.
        LabelError: Too few labelled cells shared by every model.
    """
    st = open_store(store)
    names = [str(m) for m in models]
    if not names:
        raise InvalidArgumentError("name the models to compare: --model A --model B")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise InvalidArgumentError(f"--model {twice[0]} is given twice: name it once")
    if folds < 2:
        raise InvalidArgumentError(f"--folds must be >= 2, got {folds}")
    if k < 1:
        raise InvalidArgumentError(f"--k must be >= 1, got {k}")
    safe_identifier(label)
    columns = [label, "dataset", "patient_id"]
    if bag_label and bag_label in st.columns("cell_meta"):
        columns.append(bag_label)
    else:
        bag_label = None
    per_model = {m: load_cells(st, m, where, columns) for m in names}
    cells, excluded = _common_cells(per_model, label)
    y = np.asarray([str(v).strip() for v in cells[names[0]].meta[label]])
    if min_count is not None:
        classes, counts = np.unique(y, return_counts=True)
        rare = {str(c): int(n) for c, n in zip(classes, counts, strict=True)
                if n < min_count}  # fmt: skip
        if rare:
            excluded["rare_class"] = rare
            keep = ~np.isin(y, list(rare))
            cells = {m: c.take(keep) for m, c in cells.items()}
            y = y[keep]
    base = cells[names[0]]
    has_patients = any(p is not None for p in base.meta["patient_id"])
    groups = _groups(base) if has_patients else None
    plan: FoldPlan = make_folds(
        "patient" if has_patients else "stratified", y, groups, folds=folds, seed=seed
    )
    mil_parts = None
    if has_patients and bag_label is not None:
        mil_parts = _bags(base, bag_label, min_bag_size, folds, seed, excluded)
    n_steps = len(names) * (len(_CELL_HEADS) + (1 if mil_parts else 0))
    done = 0
    rows: list[dict[str, Any]] = []
    mixing: dict[str, dict[str, float | None]] = {}
    for m in names:
        X = np.asarray(cells[m].X, dtype=np.float32)
        mix = _mixing(X, base, y, groups, seed)
        if mix is not None:
            mixing[m] = mix
        for kind in _CELL_HEADS:
            factory = partial(make_head, kind, seed=seed, device=device, k=k)
            cv = cross_validate(factory, X, y, groups, plan.folds)
            rows.append(_row(m, kind, int(y.size), cv.summarise()))
            done += 1
            if progress is not None:
                progress(done, n_steps)
        if mil_parts is not None:
            bag_rows, y_bags, bag_plan = mil_parts
            bags = [X[r] for r in bag_rows]
            factory = partial(
                ABMILHead, max_epochs=mil_epochs, class_weight="balanced", seed=seed,
                device=device,
            )  # fmt: skip
            cv = cross_validate(factory, bags, y_bags, None, bag_plan.folds)
            rows.append(_row(m, "abmil", len(bags), cv.summarise()))
            done += 1
            if progress is not None:
                progress(done, n_steps)
    report = CompareReport(
        models=names,
        label=label,
        split=plan.name,
        folds=len(plan.folds),
        n_cells=int(y.size),
        n_bags=0 if mil_parts is None else len(mil_parts[0]),
        bag_label=bag_label if mil_parts is not None else None,
        rows=rows,
        excluded=excluded,
        mixing=mixing or None,
    )
    if png is not None:
        report.png = str(compare_png(report, png))
    for m in names:
        logger.info(
            "compare %s: %s",
            m,
            ", ".join(
                f"{r['head']} {r['balanced_accuracy']:.3f}"
                for r in rows
                if r["model"] == m
            ),
        )
    return report


def _common_cells(
    per_model: dict[str, Cells], label: str
) -> tuple[dict[str, Cells], dict[str, Any]]:
    """Restrict every model to the labelled cells all of them embed, in one order."""
    excluded: dict[str, Any] = {}
    sets = [set(c.ids.tolist()) for c in per_model.values()]
    union = set().union(*sets)
    common = np.asarray(sorted(set.intersection(*sets)), dtype=np.int64)
    if union and len(common) < len(union):
        excluded["not_embedded_by_every_model"] = len(union) - len(common)
    out: dict[str, Cells] = {}
    for m, c in per_model.items():
        order = np.argsort(c.ids, kind="stable")
        pos = order[np.searchsorted(c.ids[order], common)]
        out[m] = c.take(pos)
    first = next(iter(out.values()))
    miss = np.asarray([missing_label(v) for v in first.meta[label]], dtype=bool)
    if miss.any():
        excluded["missing_label"] = int(miss.sum())
        out = {m: c.take(~miss) for m, c in out.items()}
    n = len(next(iter(out.values())))
    if n < 4:
        raise LabelError(
            f"only {n} labelled cells are embedded by every model: embed the same "
            "cells with each model ('cytostore embed') or loosen --where"
        )
    return out, excluded


def _groups(cells: Cells) -> list[str | None]:
    ds, pid = cells.meta["dataset"], cells.meta["patient_id"]
    return [None if p is None else f"{d}/{p}" for d, p in zip(ds, pid, strict=True)]


def _bags(
    cells: Cells,
    bag_label: str,
    min_bag_size: int,
    folds: int,
    seed: int,
    excluded: dict[str, Any],
) -> tuple[list[npt.NDArray[np.int64]], npt.NDArray[np.str_], FoldPlan] | None:
    """Patient bags with a label, and their stratified folds (``None``: too few)."""
    bagged, _ = make_bags(cells, "patient_id", bag_label)
    keep = [
        i
        for i, (r, lab) in enumerate(zip(bagged.rows, bagged.labels, strict=True))
        if lab is not None and r.size >= min_bag_size
    ]
    y = np.asarray([bagged.labels[i] for i in keep], dtype=str)
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2 or counts.min() < folds:
        excluded["mil"] = (
            f"left out: {y.size} labelled patients in {classes.size} classes "
            f"(needs >= 2 classes of >= {folds} patients)"
        )
        return None
    plan = make_folds("stratified", y, folds=folds, seed=seed)
    return [bagged.rows[i] for i in keep], y, plan


def _row(model: str, head: str, n: int, summary: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "head": head, "n": n}
    for name in COMPARE_METRICS:
        row[name] = summary.mean[name]
        row[f"{name}_sd"] = summary.sd[name]
    return row


def _mixing(
    X: npt.NDArray[np.float32],
    cells: Cells,
    y: npt.NDArray[np.str_],
    groups: list[str | None] | None,
    seed: int,
) -> dict[str, float | None] | None:
    """The store's neighbourhood mixing score of one model (``None``: not in store).

    ``dataset`` and ``patient`` are batch effects (lower is better), ``label`` is
    biology (higher is better); see :mod:`cytostore.store` ``mixing_score``.
    """
    import cytostore.store as store_api

    fn = getattr(store_api, "mixing_score", None)
    if fn is None:  # the curation issue's score is not in this version of the store
        return None
    datasets = [str(d) for d in cells.meta["dataset"]]
    report = fn(X, datasets, patients=groups, labels=list(y), seed=seed)
    return {term: report.get(term) for term in ("dataset", "patient", "label")}


def compare_png(report: CompareReport, out: str | os.PathLike[str]) -> Path:
    """Draw mean balanced accuracy ± sd per model and head as a grouped bar chart.

    The file is written as ``<out>.tmp`` and renamed, so it is never half-written.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(dict.fromkeys(r["head"] for r in report.rows))
    n_m, n_h = len(report.models), len(heads)
    width = 0.8 / max(n_h, 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * n_m + 2.0), 3.6))
    for j, head in enumerate(heads):
        vals = [
            next(
                (r for r in report.rows if r["model"] == m and r["head"] == head),
                None,
            )
            for m in report.models
        ]
        xs = np.arange(n_m) + (j - (n_h - 1) / 2) * width
        means = [np.nan if v is None else v["balanced_accuracy"] for v in vals]
        sds = [0.0 if v is None else (v["balanced_accuracy_sd"] or 0.0) for v in vals]
        bars = ax.bar(xs, means, width, yerr=sds, capsize=3, label=head)
        for b, mean in zip(bars, means, strict=True):
            if np.isfinite(mean):
                ax.text(b.get_x() + b.get_width() / 2, mean + 0.01, f"{mean:.2f}",
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(n_m), report.models, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("balanced accuracy (mean ± sd)")
    ax.set_title(
        f"{report.label}: {report.n_cells} cells, {report.folds} folds "
        f"({report.split})",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
