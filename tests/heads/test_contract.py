"""One contract test over every head (sklearn-style: sklearn/tests/test_common.py)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from heads_helpers import gaussian_classes, planted_bags

from cytostore.errors import InvalidArgumentError, LabelError, NotFittedError
from cytostore.heads import ABMILHead, KNNHead, LinearProbe, MLPHead
from cytostore.heads.registry import HEAD_CLASSES, load_head, save_head
from cytostore.store import Store


def _cells(seed: int = 0) -> tuple[Any, Any]:
    X, y = gaussian_classes(30, dim=8, n_classes=3, seed=seed)
    return X, y


def _bags(seed: int = 0) -> tuple[Any, Any]:
    bags, y, _ = planted_bags(12, 15, 3, 8, seed)
    return bags, y


HEADS: list[tuple[Callable[[], Any], Callable[[int], tuple[Any, Any]]]] = [
    (lambda: LinearProbe(seed=0), _cells),
    (lambda: KNNHead(k=5), _cells),
    (lambda: MLPHead(max_epochs=5, seed=0), _cells),
    (lambda: ABMILHead(max_epochs=3, seed=0), _bags),
]
IDS = ["linear", "knn", "mlp", "abmil"]


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__fit_returns_self_and_sets_sorted_classes(make: Any, data: Any) -> None:
    X, y = data(0)
    head = make()
    assert head.fit(X, y) is head
    assert head.classes_.tolist() == sorted(set(np.asarray(y).tolist()))


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__predict_before_fit_raises_not_fitted(make: Any, data: Any) -> None:
    X, _ = data(0)
    with pytest.raises(NotFittedError, match="not fitted"):
        make().predict(X)
    with pytest.raises(AttributeError):  # NotFittedError is also an AttributeError
        make().predict_proba(X)


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__proba_rows_sum_to_one_in_classes_order(make: Any, data: Any) -> None:
    X, y = data(0)
    head = make().fit(X, y)
    proba = head.predict_proba(X)
    assert proba.shape == (len(y), head.classes_.size)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (head.predict(X) == head.classes_[proba.argmax(1)]).all()
    assert head.score(X, y) == pytest.approx(np.mean(head.predict(X) == y))


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__pickle_round_trip_predicts_the_same(make: Any, data: Any) -> None:
    X, y = data(0)
    head = make().fit(X, y)
    again = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))


def test_heads__the_contract_covers_every_head_that_can_be_saved() -> None:
    assert {type(make()).__name__ for make, _ in HEADS} == set(HEAD_CLASSES)


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__state_is_numeric_arrays_and_rebuilds_an_equal_head(
    make: Any, data: Any
) -> None:
    X, y = data(0)
    head = make().fit(X, y)
    arrays, doc = head.get_state()
    assert arrays and all(a.dtype.kind in "biuf" for a in arrays.values())
    again = type(head).from_state(arrays, doc)
    assert again.get_params() == head.get_params()
    assert again.classes_.dtype == head.classes_.dtype
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__save_load_round_trip_predicts_the_same(
    make: Any, data: Any, tmp_path: Path
) -> None:
    X, y = data(0)
    head = make().fit(X, y)
    store = Store.create(tmp_path / "s")
    meta = {"kind": type(head).__name__, "model": None, "label": "label"}
    folder = save_head(store, "h", head, meta, {"n": 1})
    assert sorted(p.name for p in folder.iterdir()) == [
        "head.json",
        "head.npz",
        "report.json",
    ]
    with np.load(folder / "head.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype.kind in "biuf" for k in npz.files)
    again, meta_again = load_head(store, "h")
    assert type(again) is type(head) and meta_again["label"] == "label"
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(again.predict(X), head.predict(X))


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["b", "a", "c"] * 30),
        np.array(["b", "a", "c"] * 30, dtype=object),
        np.array([3, 1, 2] * 30),
        np.array([0.5, 1.5, 2.5] * 30),
    ],
    ids=["str", "object", "int", "float"],
)
def test_head__state_keeps_the_classes_dtype(labels: np.ndarray) -> None:
    X, _ = _cells()
    head = KNNHead(k=3).fit(X, labels)
    again = KNNHead.from_state(*head.get_state())
    assert again.classes_.dtype == head.classes_.dtype
    assert again.classes_.tolist() == head.classes_.tolist()
    np.testing.assert_array_equal(again.predict(X), head.predict(X))


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__same_seed_gives_same_model(make: Any, data: Any) -> None:
    X, y = data(0)
    a = make().fit(X, y).predict_proba(X)
    b = make().fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__init_only_stores_params(make: Any, data: Any) -> None:
    head = make()
    params = head.get_params()
    assert params and not [k for k in vars(head) if k.endswith("_")]
    # each keyword is kept as given, unvalidated and uncopied, under its own name
    marks = {k: object() for k in params}
    marked = type(head)(**marks)
    assert {k: getattr(marked, k) for k in params} == marks
    assert marked.get_params() == marks


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__single_class_is_a_label_error(make: Any, data: Any) -> None:
    X, y = data(0)
    with pytest.raises(LabelError, match="at least two classes"):
        make().fit(X, np.full(len(y), "x"))


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__invalid_param_is_rejected_at_fit(make: Any, data: Any) -> None:
    X, y = data(0)
    head = make()
    name = next(iter(head.get_params()))
    head.set_params(**{name: -1})
    with pytest.raises(InvalidArgumentError, match=name):
        head.fit(X, y)


@pytest.mark.parametrize(("make", "data"), HEADS, ids=IDS)
def test_head__x_and_y_of_different_lengths_are_rejected(make: Any, data: Any) -> None:
    X, y = data(0)
    with pytest.raises(InvalidArgumentError, match="one label per"):
        make().fit(X, np.asarray(y)[:-1])


def test_abmil__rejects_a_matrix_instead_of_bags() -> None:
    X, y = _cells()
    with pytest.raises(InvalidArgumentError, match="bags"):
        ABMILHead(max_epochs=1).fit(X, y)
