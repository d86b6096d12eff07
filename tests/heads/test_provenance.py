"""Predictions know their provenance: training cells, folds, out-of-distribution scores.

Oracles: the probe's own report (fold sizes, held-out accuracy), a brute-force
numpy nearest-neighbour cosine similarity, and invariance of the threshold under
changes to cells that are not training cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from heads_helpers import gaussian_classes

from cytostore.cli import main
from cytostore.errors import StoreCorruptError
from cytostore.heads.predict import domain_shift_warning, predict
from cytostore.heads.probe import probe as _probe
from cytostore.heads.provenance import OOD_PERCENTILE, describe_training
from cytostore.store import Store

N_PER_CLASS = 30  # 4 classes: 120 labelled bm cells
N_FAR_BM = 10  # unlabelled bm cells far from the rest
N_OTHER = 40  # mll_helmholtz cells, far as well


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _build(root: Path, *, other_offset: float = 30.0, seed: int = 0) -> Store:
    """bm: 4 Gaussian classes plus unlabelled far cells; mll_helmholtz: far cells."""
    store = Store.create(root)
    X, y = gaussian_classes(N_PER_CLASS, dim=16, seed=seed)
    rng = np.random.default_rng(seed + 7)
    direction = _unit(rng.normal(0, 1, (1, 16)))[0]
    far_bm = rng.normal(0, 1, (N_FAR_BM, 16)) - 30.0 * direction
    other = rng.normal(0, 1, (N_OTHER, 16)) + other_offset * direction
    for ds in ("bm", "mll_helmholtz"):
        store.upsert_dataset(ds, "folder", root, 0.1)
    rows = [
        {"dataset": "bm", "path": f"c{i}.jpg", "label": lab}
        for i, lab in enumerate(y.tolist())
    ]
    rows += [
        {"dataset": "bm", "path": f"far{i}.jpg", "label": None} for i in range(N_FAR_BM)
    ]
    rows += [
        {"dataset": "mll_helmholtz", "path": f"o{i}.jpg", "label": None}
        for i in range(N_OTHER)
    ]
    ids = store.add_cells(rows)
    es = store.create_embedding_set("tiny", 16)
    with store.vector_writer(es) as w:
        w.append(ids, np.concatenate([X, far_bm, other]).astype(np.float32))
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return _build(tmp_path / "store")


def probe(store: Store, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``probe``'s report as a dict (a typed report's ``to_dict()``)."""
    report = _probe(store, *args, **kwargs)
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def _rows(store: Store, head: str) -> list[dict[str, Any]]:
    return store.sql(
        "SELECT p.cell_id, p.label, p.in_training, p.fold, p.train_similarity, "
        "p.out_of_distribution, c.label AS truth, c.dataset FROM predictions p "
        "JOIN cells c USING (cell_id) WHERE p.head = ? ORDER BY p.cell_id",
        [head],
    ).dicts()


def _train_ids(store: Store, head: str) -> np.ndarray:
    return np.load(store.root / "heads" / head / "train_ids.npy", allow_pickle=False)


def _reference_similarity(
    store: Store, train: np.ndarray, query: np.ndarray
) -> np.ndarray:
    """Brute-force cosine similarity of each query cell to its nearest other
    training cell."""
    ids, X = store.vectors("tiny")
    pos = {int(c): i for i, c in enumerate(ids.tolist())}
    T = _unit(X[[pos[int(c)] for c in train]])
    Q = _unit(X[[pos[int(c)] for c in query]])
    sim = Q @ T.T
    sim[query[:, None] == train[None, :]] = -np.inf  # itself excluded
    return sim.max(1)


def test_probe__single_split_marks_training_rows_and_held_out_fold(
    store: Store,
) -> None:
    report = probe(
        store, "tiny", "label", where="dataset = 'bm'", split="stratified", seed=0
    )
    rows = _rows(store, report["head"])
    train = _train_ids(store, report["head"])
    assert len(rows) == 4 * N_PER_CLASS  # unlabelled cells are not the probe's
    trained = [r for r in rows if r["in_training"]]
    held_out = [r for r in rows if not r["in_training"]]
    assert sorted(r["cell_id"] for r in trained) == train.tolist()
    assert all(r["fold"] is None for r in trained)
    assert {r["fold"] for r in held_out} == {0}
    assert len(held_out) == report["n_test"]
    accuracy = np.mean([r["label"] == r["truth"] for r in held_out])
    assert accuracy == pytest.approx(report["accuracy"])


def test_probe__cross_validation_rows_carry_their_fold(store: Store) -> None:
    report = probe(
        store, "tiny", "label", where="dataset = 'bm'", split="stratified", folds=3
    )
    rows = _rows(store, report["head"])
    folds = [r["fold"] for r in rows]
    assert [folds.count(i) for i in range(3)] == [f["n_test"] for f in report["folds"]]
    assert all(r["in_training"] for r in rows)  # the saved head is refit on all
    assert _train_ids(store, report["head"]).size == 4 * N_PER_CLASS


def test_predict__keeps_out_of_fold_rows_and_marks_training_cells(
    store: Store,
) -> None:
    report = probe(
        store, "tiny", "label", where="dataset = 'bm'", split="stratified", seed=0
    )
    before = {r["cell_id"]: r for r in _rows(store, report["head"])}
    result = predict(store, report["head"], where="dataset = 'bm'")
    after = {r["cell_id"]: r for r in _rows(store, report["head"])}
    assert result["kept_out_of_fold"] == report["n_test"]
    assert result["n_predicted"] == 4 * N_PER_CLASS + N_FAR_BM
    assert result["n_written"] == 4 * N_PER_CLASS + N_FAR_BM - report["n_test"]
    assert result["n_in_training"] == _train_ids(store, report["head"]).size
    for cid, row in before.items():
        if row["fold"] is not None:
            assert after[cid] == row
    new = [r for cid, r in after.items() if cid not in before]
    assert len(new) == N_FAR_BM
    assert all(r["in_training"] is False and r["fold"] is None for r in new)


def test_predict__other_dataset_warns_with_exact_count_and_stores_scores(
    store: Store,
) -> None:
    report = probe(store, "tiny", "label", where="dataset = 'bm'", split="stratified")
    head = report["head"]
    result = predict(store, head, where="dataset = 'mll_helmholtz'")
    shift = result["out_of_distribution"]
    assert shift["n"] == N_OTHER
    assert shift["unseen_datasets"] == {"mll_helmholtz": N_OTHER}
    assert shift["trained_on"] == {"bm": _train_ids(store, head).size}
    assert shift["warn"] is True
    message = domain_shift_warning(result)
    assert message is not None
    assert message.startswith(
        f"{N_OTHER} of {N_OTHER} cells are outside the head's training data "
        f"(dataset mll_helmholtz: {N_OTHER} cells; the head was trained on bm; "
    )
    rows = [r for r in _rows(store, head) if r["dataset"] == "mll_helmholtz"]
    ids = np.asarray([r["cell_id"] for r in rows])
    expected = _reference_similarity(store, _train_ids(store, head), ids)
    stored = np.asarray([r["train_similarity"] for r in rows])
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert all(r["out_of_distribution"] for r in rows)
    assert shift["below_threshold"] == int((expected < shift["threshold"]).sum())


def test_predict__far_cells_of_a_seen_dataset_are_flagged_by_score(
    store: Store,
) -> None:
    report = probe(store, "tiny", "label", where="dataset = 'bm'", split="stratified")
    result = predict(store, report["head"], where="dataset = 'bm' AND label IS NULL")
    shift = result["out_of_distribution"]
    assert shift["unseen_datasets"] == {}
    assert (shift["n"], shift["below_threshold"], shift["n_cells"]) == (
        N_FAR_BM,
        N_FAR_BM,
        N_FAR_BM,
    )
    assert domain_shift_warning(result) is not None


def test_predict__held_out_cells_of_the_training_data_raise_no_warning(
    store: Store,
) -> None:
    report = probe(store, "tiny", "label", where="dataset = 'bm'", split="stratified")
    result = predict(
        store, report["head"], where="dataset = 'bm' AND label IS NOT NULL"
    )
    assert result["out_of_distribution"]["warn"] is False
    assert domain_shift_warning(result) is None


def test_describe_training__threshold_from_training_cells_only(
    tmp_path: Path,
) -> None:
    near, far = (_build(tmp_path / n, other_offset=o) for n, o in [("a", 0), ("b", 30)])
    train = near.where_ids("dataset = 'bm' AND label IS NOT NULL")
    rec_near = describe_training(near, "tiny", train)
    rec_far = describe_training(far, "tiny", train)
    # mll_helmholtz cells sit among the training cells in one store and far away in
    # the other: a threshold that looked at them would differ.
    assert rec_near["ood"]["threshold"] == pytest.approx(rec_far["ood"]["threshold"])
    loo = _reference_similarity(near, train, train)
    assert rec_near["ood"]["threshold"] == pytest.approx(
        np.percentile(loo, OOD_PERCENTILE), abs=1e-5
    )
    assert rec_near["datasets"] == {"bm": 4 * N_PER_CLASS}


def test_predict__altered_training_ids_are_refused(store: Store) -> None:
    report = probe(store, "tiny", "label", where="dataset = 'bm'", split="stratified")
    path = store.root / "heads" / report["head"] / "train_ids.npy"
    np.save(path, np.arange(5, dtype=np.int64))
    with pytest.raises(StoreCorruptError, match="train_ids.npy differs"):
        predict(store, report["head"], where="dataset = 'bm'")


def test_predict_cli__prints_the_domain_shift_warning_on_stderr(store: Store) -> None:
    report = probe(store, "tiny", "label", where="dataset = 'bm'", split="stratified")
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(store.root),
            "--head",
            report["head"],
            "--where",
            "dataset = 'mll_helmholtz'",
        ],
    )
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"warning: {N_OTHER} of {N_OTHER} cells are outside the head's training data"
    )
    assert "warning" not in result.stdout
