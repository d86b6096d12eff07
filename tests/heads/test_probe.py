"""probe() on a small embedded store: report schema, splits, bad input, saved heads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cytostore.errors import LabelError, SplitError, UnknownHeadError
from cytostore.heads.predict import predict
from cytostore.heads.probe import probe
from cytostore.heads.registry import load_head
from cytostore.store import Store

SCHEMA = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "accuracy_sd",
    "balanced_accuracy_sd",
    "macro_f1_sd",
    "weighted_f1_sd",
    "per_class",
    "folds",
    "n_train",
    "n_test",
    "excluded",
)


def test_probe__report_schema_and_planted_signal(probe_store: Store) -> None:
    report = probe(probe_store, "tiny", "label", name="lin").to_dict()
    assert all(k in report for k in SCHEMA)
    assert report["balanced_accuracy"] > 0.9
    assert report["split"] == "patient"  # the bm cells have patients
    assert report["excluded"] == {"missing_label": 3}
    assert set(report["per_class"]) == {"BAS", "EOS", "LYT", "MON"}
    assert report["n_train"] + report["n_test"] == 157
    assert Path(report["confusion_png"]).is_file()
    saved = json.loads((probe_store.root / "heads" / "lin" / "report.json").read_text())
    assert saved["balanced_accuracy"] == pytest.approx(report["balanced_accuracy"])
    head, meta = load_head(probe_store, "lin")
    assert meta["model"] == "tiny" and head.classes_.tolist() == [
        "BAS",
        "EOS",
        "LYT",
        "MON",
    ]


@pytest.mark.parametrize("kind", ["knn", "mlp"])
def test_probe__kfold_reports_mean_and_sd(probe_store: Store, kind: str) -> None:
    report = probe(
        probe_store, "tiny", "cell_type", kind=kind, folds=3, split="stratified"
    ).to_dict()
    assert len(report["folds"]) == 3
    values = [f["accuracy"] for f in report["folds"]]
    assert report["accuracy"] == pytest.approx(np.mean(values))
    assert report["accuracy_sd"] == pytest.approx(np.std(values, ddof=1))
    assert report["n_test"] == 160 and report["saved_head_trained_on"] == "all folds"


def test_probe__by_column_repeats_metrics_per_group(probe_store: Store) -> None:
    report = probe(probe_store, "tiny", "label", by="sex", split="stratified").to_dict()
    groups = report["by"]
    assert set(groups) <= {"f", "m", "(missing)"} and "(missing)" in groups
    assert sum(g["n"] for g in groups.values()) == report["n_test"]


def test_probe__transfer_keeps_shared_classes(probe_store: Store) -> None:
    report = probe(
        probe_store,
        "tiny",
        "label",
        kind="knn",
        train_where="dataset = 'bm'",
        test_where="dataset = 'lmu' AND label <> 'MON'",
    ).to_dict()
    assert report["classes_kept"] == ["BAS", "EOS", "LYT"]
    assert report["classes_dropped"] == {"MON": {"train": 20, "test": 0}}
    assert report["excluded"]["class_not_shared"] == 20
    assert set(report["per_class"]) == {"BAS", "EOS", "LYT"}


def test_probe__one_class_is_a_label_error(probe_store: Store) -> None:
    with pytest.raises(LabelError, match="single class"):
        probe(probe_store, "tiny", "label", where="label = 'BAS'")


def test_probe__rare_class_names_the_fix_and_min_count_excludes_it(
    probe_store: Store,
) -> None:
    where = "label <> 'EOS' OR cell_id IN (41, 42)"
    with pytest.raises(LabelError, match=r"'EOS': 2.*--min-count 5"):
        probe(
            probe_store, "tiny", "cell_type", where=where, folds=5, split="stratified"
        )
    report = probe(
        probe_store,
        "tiny",
        "cell_type",
        where=where,
        folds=5,
        split="stratified",
        min_count=5,
    ).to_dict()
    assert report["excluded"]["rare_class"] == {"EOS": 2}
    assert "EOS" not in report["per_class"]


def test_probe__patient_split_never_leaks_patients(probe_store: Store) -> None:
    report = probe(
        probe_store,
        "tiny",
        "label",
        where="dataset = 'bm'",
        folds=3,
        split="patient",
        kind="knn",
    ).to_dict()
    assert len(report["folds"]) == 3 and report["n_test"] == 79


def test_probe__split_file_counts_unmatched_entries(
    probe_store: Store, tmp_path: Path
) -> None:
    paths = [
        r[0] for r in probe_store.sql("SELECT path FROM cells ORDER BY cell_id").rows
    ]
    f = tmp_path / "my_test.tsv"
    f.write_text("".join(f"{p}\tX\n" for p in paths[3::4]) + "ghost/ghost_1.jpg\tX\n")
    report = probe(probe_store, "tiny", "label", kind="knn", split=str(f)).to_dict()
    assert report["excluded"]["split_unmatched_entries"] == 1
    assert report["n_test"] == len(paths[3::4])


def test_probe__split_file_matching_nothing_is_a_split_error(
    probe_store: Store, tmp_path: Path
) -> None:
    f = tmp_path / "x_test.tsv"
    f.write_text("ghost/ghost_1.jpg\tX\n")
    with pytest.raises(SplitError, match="match no selected cell"):
        probe(probe_store, "tiny", "label", split=str(f))


def test_predict__writes_one_row_per_selected_cell(probe_store: Store) -> None:
    probe(probe_store, "tiny", "label", kind="knn", name="k")
    out = predict(probe_store, "k", where="dataset = 'lmu'")
    assert out["n_predicted"] == 80
    rows = probe_store.sql(
        "SELECT count(*), min(probability), max(probability) FROM predictions "
        "WHERE head = 'k' AND cell_id IN (SELECT cell_id FROM cells WHERE "
        "dataset = 'lmu')"
    ).rows[0]
    assert rows[0] == 80 and 0 < rows[1] <= rows[2] <= 1
    agree = probe_store.sql(
        "SELECT avg(CAST(p.label = c.cell_type AS DOUBLE)) FROM predictions p "
        "JOIN cells c USING (cell_id)"
    ).rows[0][0]
    assert agree > 0.9
    total = probe_store.sql("SELECT count(*) FROM predictions").rows[0][0]
    predict(probe_store, "k", where="dataset = 'lmu'")  # rerun replaces, no duplicates
    assert probe_store.sql("SELECT count(*) FROM predictions").rows[0][0] == total


def test_predict__unknown_head_lists_known_ones(probe_store: Store) -> None:
    probe(probe_store, "tiny", "label", kind="knn", name="k")
    with pytest.raises(UnknownHeadError, match=r"no head 'nope'.*\(known: k\)"):
        predict(probe_store, "nope")


def test_probe__knn_nearest_neighbour_and_majority_vote(probe_store: Store) -> None:
    one = probe(probe_store, "tiny", "label", kind="knn", k=1, name="k1").to_dict()
    maj = probe(
        probe_store, "tiny", "label", kind="knn", vote="majority", name="km"
    ).to_dict()
    head, _ = load_head(probe_store, "k1")
    assert head.k == 1 and one["balanced_accuracy"] > 0.8
    head, _ = load_head(probe_store, "km")
    assert head.weighting == "uniform" and maj["balanced_accuracy"] > 0.8


@pytest.mark.parametrize("value", ["", "nan", "NaN", " ", None])
def test_missing_label__values_counted_as_missing(value: object) -> None:
    from cytostore.heads._data import missing_label

    assert missing_label(value) and missing_label(float("nan"))
    assert not missing_label("BAS")
