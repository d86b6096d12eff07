from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from cytostore.embedder.monitor import knn_accuracy, write_curves


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 120)
    centres = rng.normal(size=(3, 8))
    return (centres[labels] + rng.normal(scale=1.2, size=(120, 8))).astype(
        np.float32
    ), labels


def test_knn_accuracy__k1_matches_sklearn_leave_one_out() -> None:
    x, y = _data()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    hits = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        clf = KNeighborsClassifier(n_neighbors=1).fit(xn[keep], y[keep])
        hits.append(clf.predict(xn[i : i + 1])[0] == y[i])
    assert knn_accuracy(x, y, k=1) == pytest.approx(np.mean(hits))


def test_knn_accuracy__balanced_is_mean_recall_of_leave_one_out_1nn() -> None:
    x, y = _data(1)
    y = np.where(np.arange(120) < 100, 0, y)  # class 0 dominates: the two differ
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pred = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        clf = KNeighborsClassifier(n_neighbors=1).fit(xn[keep], y[keep])
        pred.append(clf.predict(xn[i : i + 1])[0])
    want = balanced_accuracy_score(y, pred)
    assert knn_accuracy(x, y, k=1, balanced=True) == pytest.approx(want)
    assert knn_accuracy(x, y, k=1) == pytest.approx(np.mean(np.asarray(pred) == y))
    assert want != pytest.approx(np.mean(np.asarray(pred) == y))


def test_knn_accuracy__clusters_beat_chance_and_shuffled_labels_do_not() -> None:
    x, y = _data(1)
    assert knn_accuracy(x, y, k=20) > 0.5  # separable clusters beat chance (1/3)
    shuffled = np.random.default_rng(0).permutation(y)
    assert knn_accuracy(x, shuffled, k=20) < 0.5


def test_write_curves__writes_a_png_without_knn(tmp_path: Path) -> None:
    epochs = [
        {"epoch": 1, "loss": 2.0, "knn": None},
        {"epoch": 2, "loss": 1.5, "knn": None},
    ]
    path = write_curves(epochs, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "c.png.tmp").exists()
