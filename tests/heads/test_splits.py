"""Splits: stratified, patient-grouped (never leaking), published split files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytostore.errors import LabelError, SplitError
from cytostore.heads.splits import (
    assign_split,
    grouped_folds,
    inner_validation_split,
    read_split_specs,
    stratified_folds,
)


def _labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.asarray(["a", "b", "c"])[rng.integers(0, 3, 300)]
    groups = np.asarray([f"P{i}" for i in rng.integers(0, 30, 300)])
    return y, groups


def test_stratified_folds__partition_rows_and_keep_class_shares() -> None:
    y, _ = _labels()
    folds = stratified_folds(y, folds=5, seed=0)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(y.size))
    for f in folds:
        assert np.intersect1d(f.train, f.test).size == 0
        share = np.mean(y[f.test] == "a")
        assert abs(share - np.mean(y == "a")) < 0.05


def test_stratified_folds__single_split_has_the_test_size() -> None:
    y, _ = _labels()
    (fold,) = stratified_folds(y, None, test_size=0.2, seed=0)
    assert fold.test.size == 60 and fold.train.size == 240


@pytest.mark.parametrize("folds", [None, 3, 5])
def test_grouped_folds__never_put_a_patient_in_train_and_test(
    folds: int | None,
) -> None:
    y, groups = _labels(1)
    for f in grouped_folds(y, groups, folds, seed=0):
        assert not set(groups[f.train]) & set(groups[f.test])
        assert f.test.size > 0


def test_grouped_folds__too_few_patients_is_a_split_error() -> None:
    y = np.asarray(["a", "b"] * 4)
    with pytest.raises(SplitError, match="2 patients cannot make 5"):
        grouped_folds(y, np.asarray(["P1", "P2"] * 4), folds=5)


def test_stratified_folds__class_smaller_than_folds_names_the_fix() -> None:
    y = np.asarray(["a"] * 10 + ["b"] * 10 + ["rare"] * 2)
    with pytest.raises(LabelError, match=r"'rare': 2.*--min-count 5"):
        stratified_folds(y, folds=5)


def test_stratified_folds__one_class_is_a_label_error() -> None:
    with pytest.raises(LabelError, match="single class"):
        stratified_folds(np.asarray(["a"] * 10), folds=2)


def test_inner_validation_split__keeps_singletons_in_train() -> None:
    y = np.asarray([0] * 10 + [1] * 10 + [2])
    tr, va = inner_validation_split(y, 0.2, 0)
    assert 20 in tr and np.intersect1d(tr, va).size == 0 and tr.size + va.size == 21


def test_read_split_specs__split_column_file(tmp_path: Path) -> None:
    f = tmp_path / "mysplit.csv"
    f.write_text("patient_id,split\nP1,train\nP2,train\nP3,test\nP9,test\n")
    (spec,) = read_split_specs(f)
    fold, counts = assign_split(spec, None, ["P1", "P2", "P3", "P4"])
    assert fold.train.tolist() == [0, 1] and fold.test.tolist() == [2]
    assert counts == {"unmatched_entries": 1, "rows_not_in_split": 1}


def test_assign_split__no_match_is_a_split_error(tmp_path: Path) -> None:
    f = tmp_path / "x_test.tsv"
    f.write_text("nothing/here.jpg\tBAS\n")
    (spec,) = read_split_specs(f)
    with pytest.raises(SplitError, match="1 of 1 entries match no selected cell"):
        assign_split(spec, ["BAS/BAS_0001.tiff"], None)


def test_read_split_specs__missing_path_is_a_split_error(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="does not exist"):
        read_split_specs(tmp_path / "nope.tsv")


def test_read_split_specs__lmu_train_and_test_files_pair_up(shared_dir: Path) -> None:
    splits = shared_dir / "datasets" / "splits"
    (spec,) = read_split_specs(splits / "lmu_dinobloom_test.tsv")
    assert len(spec.parts["train"]) == 14692 and len(spec.parts["test"]) == 3673
    assert spec.complement is None
    paths = [
        "PKG - AML-Cytomorphology_LMU/" + p
        for p in spec.parts["test"][:30] + spec.parts["train"][:70]
    ] + ["PKG - AML-Cytomorphology_LMU/XXX/XXX_0001.tiff"]
    fold, counts = assign_split(spec, paths, None)
    assert fold.test.tolist() == list(range(30)) and fold.train.size == 70
    assert counts["unmatched_entries"] == 14692 + 3673 - 100
    assert counts["rows_not_in_split"] == 1


def test_read_split_specs__bm_test_file_makes_train_the_complement(
    shared_dir: Path,
) -> None:
    (spec,) = read_split_specs(
        shared_dir / "datasets" / "splits" / "bm_dinobloom_test.tsv"
    )
    assert spec.complement == "train" and len(spec.parts["test"]) == 34266
    name = spec.parts["test"][0]
    cls = name.split("_")[0]
    paths = [
        f"BM_cytomorphology_data/{cls}/0001-1000/{name}",
        "BM_cytomorphology_data/ART/ART_99999.jpg",
    ]
    fold, _ = assign_split(spec, paths, None)
    assert fold.test.tolist() == [0] and fold.train.tolist() == [1]


def test_read_split_specs__genbloom_folder_is_five_rotations(shared_dir: Path) -> None:
    specs = read_split_specs(shared_dir / "datasets" / "splits" / "genbloom_aml_hehr")
    assert len(specs) == 5
    for spec in specs:
        assert set(spec.parts) == {"train", "val", "test"}
        assert len(spec.parts["test"]) == 43
        parts = [set(v) for v in spec.parts.values()]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    patients = sorted(set().union(*(specs[0].parts.values())))
    fold, counts = assign_split(specs[0], None, patients)
    assert fold.val is not None and fold.test.size == 43
    assert counts["unmatched_entries"] == 0
