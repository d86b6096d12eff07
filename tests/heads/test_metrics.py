"""Metrics against scikit-learn as the oracle; bootstrap intervals; report pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from cytostore.heads.evaluate import CVResult, FoldResult
from cytostore.heads.metrics import (
    METRICS,
    _fast_metrics,
    auroc_ovr,
    bootstrap_ci,
    classification_metrics,
)
from cytostore.heads.report import confusion_png, format_report


def _random_labels(
    seed: int, n: int = 200, k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = np.asarray([f"c{i}" for i in range(k)])
    y = classes[rng.integers(0, k, n)]
    noisy = rng.random(n) < 0.4
    p = np.where(
        noisy, classes[rng.integers(0, k - 1, n)], y
    )  # class c4 rarely predicted
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics__match_sklearn(seed: int) -> None:
    y, p = _random_labels(seed)
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, p, average="weighted"))
    labels = sorted(set(y))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(
        y, p, labels=labels, zero_division=0
    )
    for i, lab in enumerate(labels):
        assert m["per_class"][lab]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][lab]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][lab]["f1"] == pytest.approx(f1[i])
        assert m["per_class"][lab]["support"] == sup[i]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_metrics__the_bootstrap_inner_loop_matches_sklearn(seed: int) -> None:
    y, p = _random_labels(seed)
    vocab = {c: i for i, c in enumerate(sorted(set(y) | set(p)))}
    fast = _fast_metrics(
        np.asarray([vocab[v] for v in y]), np.asarray([vocab[v] for v in p]), 5
    )
    slow = classification_metrics(y, p)
    for name in METRICS:
        assert fast[name] == pytest.approx(slow[name])


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_ovr__matches_sklearn_macro_ovr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.asarray(["a", "b", "c"])[rng.integers(0, 3, 120)]
    proba = rng.dirichlet([1, 1, 1], 120)
    proba[y == "a", 0] += 0.5
    proba /= proba.sum(1, keepdims=True)
    expected = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert auroc_ovr(y, proba, ["a", "b", "c"]) == pytest.approx(expected)


def test_auroc_ovr__binary_with_ties_counts_half() -> None:
    # hand-checked: pairs (pos, neg): (0.5 vs 0.5) tie -> 0.5, (0.9 vs 0.5) -> 1
    y = ["p", "n", "p"]
    proba = np.array([[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    assert auroc_ovr(y, proba, ["n", "p"]) == pytest.approx(0.75)


def test_bootstrap_ci__contains_the_point_estimate_and_is_seeded() -> None:
    y, p = _random_labels(4, n=80, k=3)
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1, 1], y.size)
    ci = bootstrap_ci(y, p, proba, ["c0", "c1", "c2"], n_boot=300, seed=1)
    point = classification_metrics(y, p)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        lo, hi = ci[name]
        assert lo <= point[name] <= hi and hi - lo > 0
    lo, hi = ci["auroc"]
    assert lo <= auroc_ovr(y, proba, ["c0", "c1", "c2"]) <= hi
    assert bootstrap_ci(y, p, n_boot=50, seed=1) == bootstrap_ci(
        y, p, n_boot=50, seed=1
    )


def _cv(folds: list[dict[str, float]], y: list[str], pred: list[str]) -> CVResult:
    proba = np.asarray([[1.0, 0.0] if v == "a" else [0.0, 1.0] for v in pred])
    results = [
        FoldResult(f"fold {i}", 2, 2, {k: m[k] for k in (*METRICS, "auroc") if k in m})
        for i, m in enumerate(folds)
    ]
    rows = np.arange(len(y), dtype=np.int64)
    return CVResult(["a", "b"], results, rows, rows // 2, np.asarray(y), proba)


def test_summarise__mean_and_sample_sd_over_folds_and_pooled_confusion() -> None:
    folds = [
        classification_metrics(["a", "b"], ["a", "b"]),
        classification_metrics(["a", "b"], ["a", "a"]),
    ]
    out = _cv(folds, ["a", "b", "a", "b"], ["a", "b", "a", "a"]).summarise().to_dict()
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["accuracy_sd"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert out["per_class"]["b"]["support"] == 2
    assert out["confusion"]["counts"] == [[2, 0], [1, 1]]
    assert out["pooled"]["balanced_accuracy"] == pytest.approx(0.75)
    single = _cv(folds[:1], ["a", "b"], ["a", "b"]).summarise().to_dict()
    assert single["accuracy_sd"] is None and "accuracy_ci" not in single


def test_summarise__auroc_and_intervals_on_request() -> None:
    folds = [classification_metrics(["a", "b"], ["a", "b"]) | {"auroc": 1.0}] * 2
    cv = _cv(folds, ["a", "b", "a", "b"], ["a", "b", "a", "b"])
    out = cv.summarise(auroc=True, ci=True, n_boot=50).to_dict()
    assert out["auroc"] == 1.0 and out["pooled"]["auroc"] == 1.0
    assert out["auroc_ci"] == [1.0, 1.0] and len(out["balanced_accuracy_ci"]) == 2


def test_confusion_png__writes_a_png_atomically(tmp_path: Path) -> None:
    out = confusion_png([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", title="t")
    assert out.exists() and not (tmp_path / "cm.png.tmp").exists()
    assert Image.open(out).format == "PNG"


def test_format_report__lists_metrics_and_classes() -> None:
    folds = [classification_metrics(["a", "b"], ["a", "b"])]
    rep = _cv(folds, ["a", "b"], ["a", "b"]).summarise().to_dict()
    text = format_report(
        rep | {"n_train": 8, "n_test": 2, "excluded": {"missing_label": 1}}
    )
    assert "balanced_accuracy  1.000" in text
    assert "excluded: {'missing_label': 1}" in text
    assert any(line.startswith("b ") for line in text.splitlines())
