"""The heads are scikit-learn estimators: clone, Pipeline, GridSearchCV, CV scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from heads_helpers import gaussian_classes, planted_bags
from sklearn.base import clone, is_classifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cytostore.errors import InvalidArgumentError
from cytostore.heads import ABMILHead, KNNHead, LinearProbe, MLPHead

CELL_HEADS: list[Callable[[], Any]] = [
    lambda: LinearProbe(l2=1e-3, seed=0),
    lambda: KNNHead(k=5),
    lambda: MLPHead(max_epochs=5, seed=0),
]
CELL_IDS = ["linear", "knn", "mlp"]


def _cells() -> tuple[np.ndarray, np.ndarray]:
    return gaussian_classes(20, dim=8, n_classes=3, seed=0)


@pytest.mark.parametrize("make", [*CELL_HEADS, lambda: ABMILHead(max_epochs=2)])
def test_head__clone_gives_an_unfitted_equal_head(make: Callable[[], Any]) -> None:
    head = make()
    twin = clone(head)
    assert type(twin) is type(head) and twin is not head
    assert twin.get_params() == head.get_params()
    assert is_classifier(head)
    assert not hasattr(twin, "classes_")


def test_head__repr_is_sklearns_and_names_changed_parameters() -> None:
    assert repr(KNNHead(k=3)) == "KNNHead(k=3)"
    assert repr(LinearProbe(l2=0.5)) == "LinearProbe(l2=0.5)"


@pytest.mark.parametrize("make", CELL_HEADS, ids=CELL_IDS)
def test_head__cross_val_score_matches_a_hand_written_loop(
    make: Callable[[], Any],
) -> None:
    X, y = _cells()
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(make(), X, y, cv=cv, scoring="balanced_accuracy")
    by_hand = []
    for tr, te in cv.split(X, y):
        pred = make().fit(X[tr], y[tr]).predict(X[te])
        recalls = [np.mean(pred[y[te] == c] == c) for c in np.unique(y[te])]
        by_hand.append(np.mean(recalls))
    np.testing.assert_allclose(scores, by_hand, rtol=1e-6)
    assert scores.mean() > 0.9  # well-separated blobs


@pytest.mark.parametrize("make", CELL_HEADS, ids=CELL_IDS)
def test_head__works_as_the_last_step_of_a_pipeline(make: Callable[[], Any]) -> None:
    X, y = _cells()
    pipe = make_pipeline(StandardScaler(), make()).fit(X, y)
    assert pipe.score(X, y) > 0.9
    assert pipe.predict_proba(X).shape == (y.size, 3)


def test_knn__grid_search_picks_k_and_refits() -> None:
    X, y = _cells()
    y = y.copy()
    y[::7] = np.roll(y, 1)[::7]  # label noise: k=1 memorises it, k=9 votes it out
    grid = GridSearchCV(KNNHead(), {"k": [1, 9]}, cv=3, scoring="accuracy").fit(X, y)
    assert grid.best_params_ in ({"k": 1}, {"k": 9})
    assert set(grid.cv_results_["param_k"].tolist()) == {1, 9}
    assert isinstance(grid.best_estimator_, KNNHead)
    assert grid.best_estimator_.k == grid.best_params_["k"]


def test_linear__grid_search_over_l2_sets_the_parameter() -> None:
    X, y = _cells()
    grid = GridSearchCV(LinearProbe(seed=0), {"l2": [1e-2, 1e-4]}, cv=2).fit(X, y)
    assert grid.best_estimator_.l2 in (1e-2, 1e-4)
    assert grid.best_estimator_.l2_ == grid.best_estimator_.l2  # one candidate


def test_head__set_params_then_fit_validates_with_sklearn_rules() -> None:
    X, y = _cells()
    head = KNNHead().set_params(weighting="cosine")
    assert head.weighting == "cosine"
    with pytest.raises(InvalidArgumentError, match="weighting.*temperature"):
        head.fit(X, y)
    with pytest.raises(ValueError, match="Invalid parameter"):
        KNNHead().set_params(neighbours=3)


def test_abmil__get_set_params_and_cross_val_score_on_a_list_of_bags() -> None:
    bags, y, _ = planted_bags(16, 12, 3, 8, seed=0)
    head = ABMILHead(max_epochs=15, seed=0)
    assert head.set_params(hidden=32) is head and head.get_params()["hidden"] == 32
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    scores = cross_val_score(head, bags, y, cv=cv)
    by_hand = []
    for tr, te in cv.split(np.zeros(len(y)), y):
        fitted = clone(head).fit([bags[i] for i in tr], y[tr])
        by_hand.append(np.mean(fitted.predict([bags[i] for i in te]) == y[te]))
    np.testing.assert_allclose(scores, by_hand)
    assert not hasattr(head, "classes_")  # cross_val_score fitted clones
