"""Planted-signal recovery of each head; the linear probe against sklearn's."""

from __future__ import annotations

import numpy as np
import pytest
from heads_helpers import gaussian_classes, planted_bags
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from cytostore.heads import ABMILHead, KNNHead, LinearProbe, MLPHead


def _train_test(seed: int = 0) -> tuple[np.ndarray, ...]:
    X, y = gaussian_classes(80, dim=12, n_classes=4, sep=1.0, seed=seed)
    rng = np.random.default_rng(seed)
    test = rng.random(y.size) < 0.3
    return X[~test], y[~test], X[test], y[test]


@pytest.mark.parametrize(
    "head",
    [
        LinearProbe(seed=0),
        KNNHead(k=10),
        KNNHead(k=1),
        KNNHead(weighting="uniform"),
        MLPHead(max_epochs=40, seed=0),
    ],
    ids=["linear", "knn", "knn1", "knn-majority", "mlp"],
)
def test_head__recovers_gaussian_classes(head: object) -> None:
    Xtr, ytr, Xte, yte = _train_test()
    head.fit(Xtr, ytr)  # type: ignore[attr-defined]
    assert head.score(Xte, yte) > 0.8  # type: ignore[attr-defined]


def test_linear_probe__matches_sklearn_logistic_regression() -> None:
    Xtr, ytr, Xte, yte = _train_test(1)
    ours = LinearProbe(class_weight=None, seed=0).fit(Xtr, ytr)
    ref = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
    ours_bacc = balanced_accuracy_score(yte, ours.predict(Xte))
    ref_bacc = balanced_accuracy_score(yte, ref.predict(Xte))
    assert abs(ours_bacc - ref_bacc) <= 0.03
    agree = np.mean(ours.predict(Xte) == ref.predict(Xte))
    assert agree > 0.9


def test_linear_probe__single_l2_and_raw_space_coefficients() -> None:
    Xtr, ytr, Xte, _ = _train_test(2)
    probe = LinearProbe(l2=1e-3, seed=0).fit(Xtr * 10 + 5, ytr)
    assert probe.l2_ == 1e-3 and probe.val_scores_ == {}
    logits = (Xte * 10 + 5) @ probe.coef_.T + probe.intercept_
    np.testing.assert_allclose(
        probe.decision_function(Xte * 10 + 5), logits, rtol=1e-4, atol=1e-3
    )


def test_knn__temperature_vote_hand_checked() -> None:
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    head = KNNHead(k=3, temperature=1.0).fit(X, ["a", "b", "b"])
    proba = head.predict_proba([[1.0, 0.0]])[0]
    w_a, w_b = np.exp(0.0), 2 * np.exp(-1.0)  # exp((cos - 1) / T)
    np.testing.assert_allclose(proba, [w_a / (w_a + w_b), w_b / (w_a + w_b)])
    majority = KNNHead(k=3, weighting="uniform").fit(X, ["a", "b", "b"])
    np.testing.assert_allclose(majority.predict_proba([[1.0, 0.0]])[0], [1 / 3, 2 / 3])


def test_abmil__attention_ranks_the_planted_cells_top() -> None:
    bags, y, keys = planted_bags(n_bags=30, n_cells=30, n_key=3, dim=16, seed=0)
    head = ABMILHead(max_epochs=40, seed=0).fit(bags, y)
    assert head.score(bags, y) == 1.0
    attention = head.attention(bags)
    recall, mass = [], []
    for att, rows in zip(attention, keys, strict=True):
        np.testing.assert_allclose(att.sum(), 1.0, rtol=1e-5)
        if rows.size:
            top = set(np.argsort(-att)[: rows.size].tolist())
            recall.append(len(top & set(rows.tolist())) / rows.size)
            mass.append(att[rows].sum())
    # 3 planted cells of 30 (10%) carry the label: they get most of the attention
    assert np.mean(recall) >= 0.8
    assert np.mean(mass) >= 0.8


def test_abmil__validation_bags_drive_early_stopping() -> None:
    bags, y, _ = planted_bags(n_bags=16, n_cells=10, seed=1)
    head = ABMILHead(max_epochs=30, patience=3, seed=0)
    head.fit(bags[:12], y[:12], validation=(bags[12:], y[12:]))
    assert 1 <= head.best_epoch_ <= head.n_epochs_ <= 30
