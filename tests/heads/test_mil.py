"""mil() on a small store of planted-signal patients: OOF tables, refit, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from heads_helpers import build_mil_store

from cytostore.errors import EmptySelectionError, LabelError, SplitError
from cytostore.heads.explain import explain
from cytostore.heads.mil import mil
from cytostore.heads.predict import predict
from cytostore.store import Store


def test_mil__oof_tables_report_and_attention_on_planted_cells(
    mil_store: tuple[Store, dict[str, np.ndarray]],
) -> None:
    store, key_cells = mil_store
    report = mil(store, "tiny", folds=4, name="ab", n_boot=200).to_dict()
    assert (
        report["n_bags"] == 20 and report["n_test"] == 20 and len(report["folds"]) == 4
    )
    assert report["balanced_accuracy"] >= 0.8 and report["auroc"] >= 0.8
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auroc"):
        lo, hi = report[f"{name}_ci"]
        assert lo <= report["pooled"][name] <= hi
        assert report[f"{name}_sd"] is not None
    assert (
        store.sql("SELECT count(*) FROM attention WHERE head = 'ab'").rows[0][0] == 500
    )
    pp = store.sql(
        "SELECT count(*), count(DISTINCT fold), sum(CAST(label = true_label AS INT)) "
        "FROM patient_predictions WHERE head = 'ab'"
    ).rows[0]
    assert pp[0] == 20 and pp[1] == 4
    assert pp[2] == round(report["pooled"]["accuracy"] * 20)  # the rows are the OOF
    # each patient's attention comes from the fold that tested it
    mismatch = store.sql(
        "SELECT count(*) FROM attention a JOIN patient_predictions p "
        "ON p.patient_id = a.patient_id AND p.head = a.head WHERE a.fold <> p.fold"
    ).rows[0][0]
    assert mismatch == 0
    sums = store.sql("SELECT sum(attention) FROM attention GROUP BY patient_id").rows
    np.testing.assert_allclose([s[0] for s in sums], 1.0, rtol=1e-5)
    top = store.sql(
        "SELECT patient_id, cell_id FROM (SELECT *, row_number() OVER (PARTITION BY "
        "patient_id ORDER BY attention DESC) AS r FROM attention) WHERE r <= 3"
    ).rows
    positives = {p for p, c in key_cells.items() if c.size}
    hits = [c in set(key_cells[p].tolist()) for p, c in top if p in positives]
    assert np.mean(hits) >= 0.5  # chance: 3 planted cells of 25 = 0.12
    mass = store.sql(
        "SELECT patient_id, sum(attention) FROM attention WHERE cell_id IN "
        f"(SELECT unnest({sorted(int(c) for v in key_cells.values() for c in v)})) "
        "GROUP BY patient_id"
    ).rows
    assert np.mean([m for _, m in mass]) >= 0.4


def test_mil__predict_applies_the_refit_head_to_new_patients_only(tmp_path) -> None:
    store, _ = build_mil_store(tmp_path / "s", n_bags=22)
    mil(
        store,
        "tiny",
        folds=3,
        name="ab",
        where="patient_id NOT IN ('PT20', 'PT21')",
        n_boot=50,
    )
    out = predict(store, "ab")
    assert out["n_predicted"] == 2 and out["skipped_trained_patients"] == 20
    rows = store.sql(
        "SELECT patient_id, label, fold FROM patient_predictions "
        "WHERE head = 'ab' AND fold IS NULL ORDER BY 1"
    ).rows
    assert rows == [("PT20", "control", None), ("PT21", "NPM1", None)]
    with pytest.raises(EmptySelectionError, match="used to train"):
        predict(store, "ab", where="patient_id = 'PT00'")


def test_mil__explain_patient_lists_top_attention_cells_and_neighbours(
    mil_store: tuple[Store, dict[str, np.ndarray]], tmp_path
) -> None:
    store, key_cells = mil_store
    mil(store, "tiny", folds=2, name="ab", n_boot=20, max_epochs=20)
    out = explain(store, "ab", patient="PT01", k=3, top=3, montage=tmp_path / "m.png")
    assert (
        out["patient"] == "mll_helmholtz/PT01" and out["prediction"]["label"] == "NPM1"
    )
    assert out["out_of_fold"]["fold"] is not None and out["trained_on"]
    assert len(out["top_cells"]) == 3
    atts = [c["attention"] for c in out["top_cells"]]
    assert atts == sorted(atts, reverse=True)
    for c in out["top_cells"]:
        assert len(c["neighbors"]) == 3
        assert all(nb["patient_id"] != "PT01" for nb in c["neighbors"])
        sim = [nb["similarity"] for nb in c["neighbors"]]
        assert sim == sorted(sim, reverse=True)  # higher is closer, best first
    assert (tmp_path / "m.png").is_file()


def test_mil__bag_with_mixed_labels_is_a_label_error(tmp_path) -> None:
    store, _ = build_mil_store(tmp_path / "s")
    with pytest.raises(LabelError, match="different 'label' values"):
        # cells keep their own label column; make one patient mixed via a where-free bag
        mil(store, "tiny", bag="dataset", label="label", folds=2)


def test_mil__patient_in_two_bags_is_a_split_error(tmp_path) -> None:
    store, _ = build_mil_store(tmp_path / "s")
    with pytest.raises(SplitError, match="patients are in two or more bags"):
        # bag by file name: every patient is spread over 25 bags
        mil(store, "tiny", bag="path", label="label", folds=2)


def test_mil__bags_of_one_cell_are_excluded_and_counted(tmp_path) -> None:
    store, _ = build_mil_store(tmp_path / "s")
    report = mil(
        store,
        "tiny",
        folds=3,
        n_boot=20,
        max_epochs=3,
        where="patient_id NOT IN ('PT00', 'PT01') OR path LIKE '%/image_0.tif'",
    ).to_dict()
    assert report["excluded"] == {"bags_smaller_than_2": 2}
    assert report["n_bags"] == 18


def test_mil__fewer_bags_than_folds_in_a_class_names_the_fix(tmp_path) -> None:
    store, _ = build_mil_store(tmp_path / "s", n_bags=8)
    with pytest.raises(LabelError, match="fewer members than folds"):
        mil(store, "tiny", folds=5)


def test_mil__genbloom_style_split_folder(tmp_path) -> None:
    store, _ = build_mil_store(tmp_path / "s")
    folder = tmp_path / "rot"
    folder.mkdir()
    ids = [f"PT{i:02d}" for i in range(20)] + ["GHOST"]
    for r in range(2):
        order = np.random.default_rng(r).permutation(21)
        parts = {"test": order[:6], "val": order[6:10], "train": order[10:]}
        for part, rows in parts.items():
            text = "patient_name,labels\n" + "".join(f"{ids[i]},0\n" for i in rows)
            (folder / f"data_fold_{r}__{part}.csv").write_text(text)
    report = mil(store, "tiny", split=str(folder), n_boot=20, max_epochs=3).to_dict()
    assert [f["name"] for f in report["folds"]] == ["data_fold_0", "data_fold_1"]
    assert report["excluded"]["split_unmatched_entries"] == 2


def test_mil__report_carries_the_mean_pooling_baseline_on_the_same_folds(
    mil_store: tuple[Store, dict[str, np.ndarray]],
) -> None:
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    from cytostore.heads import LinearProbe
    from cytostore.heads._data import load_cells

    store, _ = mil_store
    report = mil(store, "tiny", folds=4, name="ab", n_boot=20, max_epochs=3)
    base = report.baseline.to_dict()
    assert base["method"] == "mean pooling + LinearProbe"
    assert [f["name"] for f in base["folds"]] == [f.name for f in report.folds]
    assert [f["n_test"] for f in base["folds"]] == [f.n_test for f in report.folds]
    # oracle: the baseline by hand, on the same stratified folds of the same bags
    cells = load_cells(store, "tiny", None, ["patient_id", "bag_label", "dataset"])
    keys = sorted(
        {
            (d, p)
            for d, p in zip(
                cells.meta["dataset"], cells.meta["patient_id"], strict=True
            )
        }
    )
    X = np.asarray(cells.X, np.float32)
    means, y = [], []
    for d, p in keys:
        rows = (cells.meta["dataset"] == d) & (cells.meta["patient_id"] == p)
        means.append(X[rows].mean(0))
        y.append(str(cells.meta["bag_label"][rows][0]))
    means_arr, y_arr = np.stack(means), np.asarray(y)
    pred = np.empty(y_arr.size, dtype=object)
    cv = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    for tr, te in cv.split(means_arr, y_arr):
        pred[te] = (
            LinearProbe(seed=0).fit(means_arr[tr], y_arr[tr]).predict(means_arr[te])
        )
    expected = balanced_accuracy_score(y_arr, pred.astype(str))
    assert base["pooled"]["balanced_accuracy"] == pytest.approx(expected)
    side = report.to_dict()["attention_vs_baseline"]
    assert side["balanced_accuracy"]["baseline"] == pytest.approx(expected)
    assert set(side) == {"balanced_accuracy", "auroc"}
    assert 0.0 <= side["auroc"]["baseline"] <= 1.0
