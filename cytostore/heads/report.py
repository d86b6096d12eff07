"""Reports of the heads: fold aggregation, per-group (bias) metrics, confusion PNG.

Every head's report has the same schema: top-level floats ``accuracy``,
``balanced_accuracy``, ``macro_f1``, ``weighted_f1`` (mean over folds) with
``<metric>_sd`` (sample sd over folds; ``None`` for a single split), ``per_class``
(pooled over folds), ``folds`` (per-fold metrics), ``n_train``, ``n_test`` and
``excluded``. MIL adds ``auroc`` and, for every metric, a bootstrap ``<metric>_ci``,
and ``baseline`` (mean pooling + linear probe on the same folds, the same metric
keys) with ``attention_vs_baseline`` (pooled balanced accuracy and AUROC of each).
The reports are built by :mod:`cytostore.heads.evaluate` (``Summary.to_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.heads.metrics import METRICS, classification_metrics

__all__ = ["by_group", "confusion_png", "format_report"]


def by_group(
    y_true: npt.NDArray[Any],
    y_pred: npt.NDArray[Any],
    groups: npt.NDArray[Any],
) -> dict[str, dict[str, Any]]:
    """Return the headline metrics per group value (a bias report, e.g. per sex).

    Missing group values are reported under ``"(missing)"``.

    Examples:
        >>> t, p = np.array(["a", "b"]), np.array(["a", "a"])
        >>> r = by_group(t, p, np.array(["f", "m"]))
        >>> r["f"]["accuracy"], r["m"]["accuracy"], r["m"]["n"]
        (1.0, 0.0, 1)
    """
    keys = np.asarray(["(missing)" if g is None else str(g) for g in groups.tolist()])
    out: dict[str, dict[str, Any]] = {}
    for g in sorted(set(keys.tolist())):
        mask = keys == g
        m = classification_metrics(y_true[mask], y_pred[mask])
        out[g] = {k: m[k] for k in METRICS} | {"n": int(mask.sum())}
    return out


def confusion_png(
    counts: Sequence[Sequence[int]] | npt.NDArray[np.int64],
    labels: Sequence[str],
    out: str | Path,
    title: str | None = None,
) -> Path:
    """Draw the row-normalised confusion matrix (recall per true class) as a PNG.

    The file is written as ``<out>.tmp`` and renamed, so it is never half-written.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(counts, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(labels)
    size = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels, rotation=90)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """Return a report as readable text: headline metrics, per-class table, extras.

    Examples:
        >>> print(format_report({"accuracy": 0.5, "accuracy_sd": None, "n_train": 4,
        ...     "n_test": 2, "per_class": {}}).splitlines()[0])
        metric    value  sd  95% CI
    """
    lines: list[str] = []
    names = [m for m in (*METRICS, "auroc") if m in report]
    rows = [
        [
            m,
            _fmt(report[m]),
            _fmt(report.get(f"{m}_sd")),
            (
                f"[{_fmt(report[f'{m}_ci'][0])}, {_fmt(report[f'{m}_ci'][1])}]"
                if report.get(f"{m}_ci")
                else "-"
            ),
        ]
        for m in names
    ]
    lines += _table(["metric", "value", "sd", "95% CI"], rows)
    per_class = report.get("per_class") or {}
    if per_class:
        lines.append("")
        lines += _table(
            ["class", "precision", "recall", "f1", "support"],
            [
                [
                    c,
                    _fmt(v["precision"]),
                    _fmt(v["recall"]),
                    _fmt(v["f1"]),
                    str(v["support"]),
                ]
                for c, v in per_class.items()
            ],
        )
    groups = report.get("by") or {}
    if groups:
        lines.append("")
        lines.append(f"by {report.get('by_column', 'group')}:")
        lines += _table(
            ["group", "n", *METRICS],
            [
                [g, str(v["n"]), *(_fmt(v[m]) for m in METRICS)]
                for g, v in groups.items()
            ],
        )
    tail = []
    for key in ("head", "kind", "model", "label", "split", "n_train", "n_test"):
        if key in report:
            tail.append(f"{key}: {_fmt(report[key])}")
    if report.get("classes_dropped"):
        tail.append(
            f"classes dropped (not in both train and test): {report['classes_dropped']}"
        )
    if report.get("excluded"):
        tail.append(f"excluded: {report['excluded']}")
    versus = report.get("attention_vs_baseline") or {}
    if versus:
        method = (report.get("baseline") or {}).get("method", "baseline")
        pairs = ", ".join(
            f"{m} {_fmt(v['attention'])} vs {_fmt(v['baseline'])}"
            for m, v in versus.items()
        )
        tail.append(f"attention vs {method} (pooled, same folds): {pairs}")
    if report.get("confusion_png"):
        tail.append(f"confusion matrix: {report['confusion_png']}")
    if tail:
        lines.append("")
        lines += tail
    return "\n".join(lines)


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for r in rows:
        out.append(
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        )
    return out
