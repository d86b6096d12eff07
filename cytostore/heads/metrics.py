"""Metrics of the heads: ``sklearn.metrics`` in the report's schema, plus bootstrap CIs.

Every number comes from ``sklearn.metrics`` (accuracy, balanced accuracy, macro and
weighted F1, per-class precision/recall/F1, confusion matrix, ROC AUC). What
scikit-learn lacks, and is kept here (one line each):

- :func:`classification_metrics`: the report's ``{metric: float, "per_class": ...}``
  dict, sklearn's warnings about absent classes silenced (they are expected in folds);
- :func:`auroc_ovr`: macro one-vs-rest AUROC over the classes that have positives and
  negatives (sklearn raises when a fold or resample lacks a class);
- :func:`bootstrap_ci`: percentile bootstrap intervals (patients resampled for MIL);
  its resamples count confusion matrices with numpy (``_fast_metrics``, tested equal
  to sklearn) because 1000 resamples of sklearn's scorers take seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn import metrics as skm

__all__ = ["METRICS", "auroc_ovr", "bootstrap_ci", "classification_metrics"]

#: Headline metrics of every report, in order.
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence sklearn's warnings about classes absent from a fold."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def classification_metrics(
    y_true: Sequence[Any] | npt.NDArray[Any],
    y_pred: Sequence[Any] | npt.NDArray[Any],
    labels: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Return accuracy, balanced accuracy, macro/weighted F1 and per-class scores.

    Args:
        y_true: True labels, shape (n,).
        y_pred: Predicted labels, shape (n,).
        labels: Classes to report per class (default: sorted union of both).

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "weighted_f1": float,
        "per_class": {label: {"precision", "recall", "f1", "support"}}, "n": int}``.

    Examples:
        >>> m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
        >>> m["accuracy"], m["balanced_accuracy"], round(m["macro_f1"], 4)
        (0.75, 0.75, 0.7333)
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    present = sorted(set(t.tolist()) | set(p.tolist()), key=str)
    shown = list(labels) if labels is not None else present
    shown += [lab for lab in present if lab not in shown]
    if t.size == 0:
        nan = float("nan")
        return dict.fromkeys(METRICS, nan) | {"per_class": {}, "n": 0}
    with _quiet():
        prec, rec, f1, sup = skm.precision_recall_fscore_support(
            t, p, labels=shown, zero_division=0
        )
        out: dict[str, Any] = {
            "accuracy": float(skm.accuracy_score(t, p)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(t, p)),
            "macro_f1": float(skm.f1_score(t, p, average="macro", zero_division=0)),
            "weighted_f1": float(
                skm.f1_score(t, p, average="weighted", zero_division=0)
            ),
        }
    out["per_class"] = {
        str(lab): {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(sup[i]),
        }
        for i, lab in enumerate(shown)
    }
    out["n"] = int(t.size)
    return out


def auroc_ovr(
    y_true: Sequence[Any] | npt.NDArray[Any],
    proba: npt.NDArray[np.floating[Any]],
    labels: Sequence[Any],
) -> float:
    """Return the macro one-vs-rest AUROC (``sklearn.metrics.roc_auc_score``).

    Args:
        y_true: True labels, shape (n,).
        proba: Class probabilities, shape (n, len(labels)), columns in ``labels`` order.
        labels: The classes of the columns.

    Returns:
        The mean AUROC over classes with both positives and negatives (NaN if none).

    Examples:
        >>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> auroc_ovr(["a", "b", "b"], proba, ["a", "b"])
        1.0
    """
    t = np.asarray(y_true)
    scores = np.asarray(proba, dtype=np.float64)
    aucs = []
    for j, lab in enumerate(labels):
        pos = t == lab
        if pos.any() and not pos.all():
            aucs.append(float(skm.roc_auc_score(pos, scores[:, j])))
    return float(np.mean(aucs)) if aucs else float("nan")


def _fast_metrics(
    t: npt.NDArray[np.int64], p: npt.NDArray[np.int64], k: int
) -> dict[str, float]:
    """Headline metrics of integer-coded labels (sklearn's definitions, vectorised)."""
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    return {
        "accuracy": float(tp.sum() / t.size),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
    }


def bootstrap_ci(
    y_true: Sequence[Any] | npt.NDArray[Any],
    y_pred: Sequence[Any] | npt.NDArray[Any],
    proba: npt.NDArray[np.floating[Any]] | None = None,
    labels: Sequence[Any] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Return percentile bootstrap intervals of the headline metrics (and AUROC).

    Samples (patients, for MIL) are resampled with replacement ``n_boot`` times.

    Args:
        y_true: True labels, shape (n,).
        y_pred: Predicted labels, shape (n,).
        proba: Probabilities (n, len(labels)) to add ``"auroc"``; ``None`` skips it.
        labels: Column classes of ``proba``.
        n_boot: Bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling.

    Returns:
        ``{metric: (low, high)}`` for each of :data:`METRICS` (and ``"auroc"``).
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    scores = None if proba is None or labels is None else np.asarray(proba)
    names = list(METRICS) + (["auroc"] if scores is not None else [])
    draws: dict[str, list[float]] = {m: [] for m in names}
    vocab = {v: i for i, v in enumerate(sorted(set(t.tolist()) | set(p.tolist())))}
    ti = np.asarray([vocab[v] for v in t.tolist()], dtype=np.int64)
    pi = np.asarray([vocab[v] for v in p.tolist()], dtype=np.int64)
    for _ in range(n_boot):
        idx = rng.integers(0, t.size, t.size)
        for name, value in _fast_metrics(ti[idx], pi[idx], len(vocab)).items():
            draws[name].append(value)
        if scores is not None and labels is not None:
            draws["auroc"].append(auroc_ovr(t[idx], scores[idx], labels))
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for name, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        out[name] = (
            (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha)))
            if arr.size
            else (float("nan"), float("nan"))
        )
    return out
