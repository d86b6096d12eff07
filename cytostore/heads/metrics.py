"""Classification metrics (numpy), one-vs-rest AUROC, bootstrap confidence intervals.

Definitions follow scikit-learn's (tested against it): balanced accuracy is the mean
recall over classes present in ``y_true``; macro/weighted F1 average over the labels
present in ``y_true`` or ``y_pred``; the macro AUROC averages one-vs-rest AUROCs over
classes with both positives and negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "METRICS",
    "confusion_matrix",
    "classification_metrics",
    "auroc_ovr",
    "bootstrap_ci",
]

#: Headline metrics of every report, in order.
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")


def confusion_matrix(
    y_true: Sequence[Any] | npt.NDArray[Any],
    y_pred: Sequence[Any] | npt.NDArray[Any],
    labels: Sequence[Any],
) -> npt.NDArray[np.int64]:
    """Return counts ``C[i, j]`` of true ``labels[i]`` predicted as ``labels[j]``.

    Examples:
        >>> confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"]).tolist()
        [[1, 1], [0, 1]]
    """
    pos = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    t = np.asarray(
        [pos.get(v, -1) for v in np.asarray(y_true).tolist()], dtype=np.int64
    )
    p = np.asarray(
        [pos.get(v, -1) for v in np.asarray(y_pred).tolist()], dtype=np.int64
    )
    ok = (t >= 0) & (p >= 0)
    return (
        np.bincount(t[ok] * k + p[ok], minlength=k * k).reshape(k, k).astype(np.int64)
    )


def _safe_div(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


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
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    present = sorted(set(t.tolist()) | set(p.tolist()), key=str)
    all_labels = list(labels) if labels is not None else present
    for lab in present:
        if lab not in all_labels:
            all_labels.append(lab)
    cm = confusion_matrix(t, p, all_labels).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    in_union = np.asarray([lab in set(present) for lab in all_labels])
    has_support = support > 0
    n = t.size
    return {
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[has_support].mean())
        if has_support.any()
        else float("nan"),
        "macro_f1": float(f1[in_union].mean()) if in_union.any() else float("nan"),
        "weighted_f1": float((f1 * support).sum() / support.sum())
        if support.sum()
        else float("nan"),
        "per_class": {
            str(lab): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(all_labels)
            if labels is None or lab in set(labels) or in_union[i]
        },
        "n": int(n),
    }


def _binary_auroc(pos: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float:
    from scipy.stats import rankdata

    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_ovr(
    y_true: Sequence[Any] | npt.NDArray[Any],
    proba: npt.NDArray[np.floating[Any]],
    labels: Sequence[Any],
) -> float:
    """Return the macro one-vs-rest AUROC (Mann-Whitney, ties counted half).

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
    aucs = [
        _binary_auroc(t == lab, np.asarray(proba, dtype=np.float64)[:, j])
        for j, lab in enumerate(labels)
    ]
    valid = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def _fast_metrics(
    t: npt.NDArray[np.int64], p: npt.NDArray[np.int64], k: int
) -> dict[str, float]:
    """Headline metrics of integer-coded labels (the same definitions, vectorised)."""
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
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
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    names = list(METRICS) + (["auroc"] if proba is not None else [])
    draws: dict[str, list[float]] = {m: [] for m in names}
    vocab = {
        v: i for i, v in enumerate(sorted(set(t.tolist()) | set(p.tolist()), key=str))
    }
    ti = np.asarray([vocab[v] for v in t.tolist()], dtype=np.int64)
    pi = np.asarray([vocab[v] for v in p.tolist()], dtype=np.int64)
    k = len(vocab)
    n = t.size
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        for name, value in _fast_metrics(ti[idx], pi[idx], k).items():
            draws[name].append(value)
        if proba is not None and labels is not None:
            draws["auroc"].append(auroc_ovr(t[idx], np.asarray(proba)[idx], labels))
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for name, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            out[name] = (float("nan"), float("nan"))
        else:
            out[name] = (
                float(np.quantile(arr, alpha)),
                float(np.quantile(arr, 1 - alpha)),
            )
    return out
