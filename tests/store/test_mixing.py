"""The neighbourhood mixing score: against a brute-force reference, planted cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytostore.errors import InvalidArgumentError, UnknownColumnError
from cytostore.store import Store, mixing_score, store_mixing_score


def _reference(
    x: np.ndarray, groups: dict[str, list], k: int, metric: str = "cosine"
) -> dict[str, dict]:
    """Brute force: full distance matrix, argsort, the formula of the docs."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = -(x @ x.T)
    else:
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    n = x.shape[0]
    out: dict[str, dict] = {}
    for term, values in groups.items():
        vals = np.asarray(values, dtype=object)
        has = np.asarray([v is not None for v in values])
        o = np.full(n, np.nan)
        e = np.full(n, np.nan)
        for i in np.flatnonzero(has):
            o[i] = np.mean([vals[j] == vals[i] for j in nn[i]])
            e[i] = (np.sum(vals[has] == vals[i]) - 1) / (n - 1)
        out[term] = {"o": o, "e": e}
    return out


def _s(o: np.ndarray, e: np.ndarray) -> float:
    ok = ~np.isnan(o)
    return float((o[ok].sum() - e[ok].sum()) / (1 - e[ok]).sum())


def _blobs(seed: int = 0) -> tuple[np.ndarray, list, list, list]:
    """90 cells: 3 types (strong signal), 3 datasets (weak shift), 9 patients."""
    rng = np.random.default_rng(seed)
    types = np.repeat(["a", "b", "c"], 30)
    datasets = np.tile(["d1", "d2", "d3"], 30)
    centres = {t: rng.normal(0, 4, 8) for t in "abc"}
    shift = {d: rng.normal(0, 0.7, 8) for d in ("d1", "d2", "d3")}
    x = np.stack(
        [
            centres[t] + shift[d] + rng.normal(0, 1, 8)
            for t, d in zip(types, datasets, strict=True)
        ]
    ).astype(np.float32)
    patients = [f"{d}/p{i % 3}" for i, d in enumerate(datasets)]
    labels = [None if i % 17 == 0 else t for i, t in enumerate(types)]
    return x, datasets.tolist(), patients, labels


def test_mixing_score__matches_brute_force_reference() -> None:
    x, datasets, patients, labels = _blobs()
    got = mixing_score(x, datasets, patients=patients, labels=labels, k=5)
    ref = _reference(
        x, {"dataset": datasets, "patient": patients, "label": labels}, k=5
    )
    for term in ("dataset", "patient", "label"):
        assert got[term] == pytest.approx(_s(ref[term]["o"], ref[term]["e"]), abs=1e-4)
    for row in got["per_dataset"]:
        sel = np.asarray(datasets) == row["dataset"]
        r = ref["dataset"]
        assert row["score"] == pytest.approx(_s(r["o"][sel], r["e"][sel]), abs=1e-4)
        assert row["same_dataset"] == pytest.approx(r["o"][sel].mean(), abs=1e-4)
    for row in got["per_label"]:
        sel = np.asarray([v == row["label"] for v in labels])
        r = ref["label"]
        assert row["label_score"] == pytest.approx(
            _s(r["o"][sel], r["e"][sel]), abs=1e-4
        )
        assert row["cells"] == sel.sum()
    assert got["cells"] == got["pool"] == 90 and got["k"] == 5


def test_mixing_score__l2_metric_matches_reference() -> None:
    x, datasets, _, labels = _blobs(seed=3)
    got = mixing_score(x, datasets, labels=labels, k=4, metric="l2")
    ref = _reference(x, {"dataset": datasets, "label": labels}, k=4, metric="l2")
    assert got["dataset"] == pytest.approx(
        _s(ref["dataset"]["o"], ref["dataset"]["e"]), abs=1e-4
    )
    assert got["patient"] is None


def test_mixing_score__hand_checked_tiny_case() -> None:
    # Two tight pairs, far apart; k = 1: each cell's neighbour is its pair-mate.
    x = np.array([[0, 1], [0.01, 1], [1, 0], [1, 0.01]], dtype=np.float32)
    # Pairs are (a, a) and (a, b): o = 1, 1, 0, 0; e = 2/3, 2/3, 2/3, 0.
    got = mixing_score(x, ["a", "a", "a", "b"], k=1)
    assert got["dataset"] == pytest.approx((2 - 2) / (1 / 3 + 1 / 3 + 1 / 3 + 1))
    rows = {r["dataset"]: r for r in got["per_dataset"]}
    assert rows["a"]["score"] == pytest.approx((2 - 2) / 1)
    assert rows["b"]["score"] == pytest.approx(0.0)
    assert rows["a"]["same_dataset"] == pytest.approx(2 / 3, abs=1e-4)


def test_mixing_score__separated_datasets_score_1_shuffled_near_0() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (300, 16)).astype(np.float32)
    datasets = np.repeat(["a", "b", "c"], 100)
    x_sep = x + np.repeat(np.eye(3, 16) * 50, 100, axis=0).astype(np.float32)
    assert mixing_score(x_sep, datasets.tolist(), k=10, metric="l2")["dataset"] == 1.0
    shuffled = mixing_score(x, rng.permutation(datasets).tolist(), k=10)
    assert abs(shuffled["dataset"]) < 0.1


def test_mixing_score__one_dataset_has_no_dataset_term() -> None:
    x, _, _, labels = _blobs()
    got = mixing_score(x, ["pbc"] * 90, labels=labels, k=5)
    assert got["dataset"] is None
    assert got["per_dataset"][0]["score"] is None
    assert got["label"] is not None and got["label"] > 0.5  # types form blobs


def test_mixing_score__sample_limits_the_queries_not_the_pool() -> None:
    x, datasets, _, _ = _blobs()
    got = mixing_score(x, datasets, k=3, sample=20, seed=0)
    assert got["cells"] == 20 and got["pool"] == 90
    again = mixing_score(x, datasets, k=3, sample=20, seed=0)
    assert again == got


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be"),
        ({"sample": 0}, "sample must"),
        ({"metric": "ip"}, "metric"),
    ],
)
def test_mixing_score__bad_arguments(kwargs: dict, match: str) -> None:
    x, datasets, _, _ = _blobs()
    with pytest.raises(InvalidArgumentError, match=match):
        mixing_score(x, datasets, **kwargs)


def _planted_store(root: Path) -> tuple[Store, np.ndarray, list, list, list]:
    x, datasets, patients, labels = _blobs()
    store = Store.create(root)
    for d in ("d1", "d2", "d3"):
        store.upsert_dataset(d, "folder", root, 0.1)
    ids = store.add_cells(
        [
            {
                "dataset": d,
                "path": f"c{i}.png",
                "patient_id": p.split("/")[1],
                "cell_type": t,
            }
            for i, (d, p, t) in enumerate(zip(datasets, patients, labels, strict=True))
        ]
    )
    es = store.create_embedding_set("m", x.shape[1])
    with store.vector_writer(es) as w:
        w.append(ids, x)
    return store, x, datasets, patients, labels


def test_store_mixing_score__equals_the_in_memory_score(tmp_path: Path) -> None:
    store, x, datasets, patients, labels = _planted_store(tmp_path / "s")
    got = store_mixing_score(store, "m", k=5)
    want = mixing_score(x, datasets, patients=patients, labels=labels, k=5)
    for key in ("dataset", "patient", "label", "per_dataset", "per_label", "cells"):
        assert got[key] == want[key], key
    assert got["label_column"] == "cell_type" and got["model"] == "m"


def test_store_mixing_score__where_restricts_the_pool(tmp_path: Path) -> None:
    store, x, datasets, _, labels = _planted_store(tmp_path / "s")
    got = store_mixing_score(store, "m", where="dataset <> 'd3'", label=None, k=5)
    keep = np.asarray(datasets) != "d3"
    want = mixing_score(x[keep], np.asarray(datasets)[keep].tolist(), k=5)
    assert got["pool"] == 60 and got["dataset"] == want["dataset"]
    assert got["per_label"] == [] and got["label"] is None


def test_store_mixing_score__unknown_label_column(tmp_path: Path) -> None:
    store, *_ = _planted_store(tmp_path / "s")
    with pytest.raises(UnknownColumnError, match="'celltype' is not a column"):
        store_mixing_score(store, "m", label="celltype")
