"""CLI: probe, predict and explain --cell on a small embedded store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from heads.heads_helpers import build_store

from cytostore.cli import main


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return build_store(tmp_path / "s").root


def test_probe_cli__json_report_is_one_document(store: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "probe",
            str(store),
            "--model",
            "tiny",
            "--label",
            "label",
            "--kind",
            "knn",
            "--name",
            "k",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["head"] == "k" and report["kind"] == "knn"
    assert report["excluded"] == {"missing_label": 3}
    assert set(report["per_class"]) == {"BAS", "EOS", "LYT", "MON"}
    assert "head 'k' saved: balanced accuracy" in result.stderr


def test_probe_cli__table_report_lists_metrics_and_classes(store: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "probe",
            str(store),
            "--label",
            "cell_type",
            "--split",
            "stratified",
            "--folds",
            "3",
            "--kind",
            "knn",
            "--by",
            "dataset",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["metric", "value", "sd", "95%", "CI"]
    assert lines[2].startswith("balanced_accuracy")
    assert any(line.startswith("LYT ") for line in lines)
    assert "by dataset:" in result.stdout and "split: stratified" in result.stdout


def test_probe_cli__one_class_exits_2_with_the_fix(store: Path) -> None:
    result = CliRunner().invoke(
        main, ["probe", str(store), "--label", "label", "--where", "label = 'BAS'"]
    )
    assert result.exit_code == 2
    assert "single class" in result.stderr and "widen --where" in result.stderr


def test_predict_and_explain_cli__cell(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert (
        runner.invoke(
            main,
            ["probe", str(store), "--label", "label", "--kind", "knn", "--name", "k"],
        ).exit_code
        == 0
    )
    result = runner.invoke(
        main, ["predict", str(store), "--head", "k", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_predicted"] == 160
    assert json.loads(result.stdout)["kept_out_of_fold"] == 32  # the probe's test part
    assert (
        "128 rows written to predictions (32 cells kept their out-of-fold "
        "predictions)" in result.stderr
    )
    png = tmp_path / "m.png"
    result = runner.invoke(
        main,
        [
            "explain",
            str(store),
            "--cell",
            "50",
            "--head",
            "k",
            "-k",
            "3",
            "--montage",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("cell 50: predicted EOS")
    assert len(result.stdout.strip().splitlines()) == 1 + 2 + 3
    assert png.is_file()


def test_predict_cli__unknown_head_exits_1(store: Path) -> None:
    result = CliRunner().invoke(main, ["predict", str(store), "--head", "nope"])
    assert result.exit_code == 1
    assert "no head 'nope'" in result.stderr


# ------------------------------------------------- a real published split
_LMU_CLASSES = ("NGS", "LYT", "MYO", "MON")


def _split_entries(path: Path, per_class: int) -> list[tuple[str, str]]:
    """The first ``per_class`` (path, label) rows of each of ``_LMU_CLASSES``."""
    taken: dict[str, list[tuple[str, str]]] = {c: [] for c in _LMU_CLASSES}
    for line in path.read_text().splitlines():
        entry, label = line.split("\t")[:2]
        if label in taken and len(taken[label]) < per_class:
            taken[label].append((entry, label))
    return [e for c in _LMU_CLASSES for e in taken[c]]


def test_probe_cli__published_lmu_split_file_decides_train_and_test(
    shared_dir: Path, tmp_path: Path
) -> None:
    """Cells named like the real LMU files follow lmu_dinobloom_{train,test}.tsv."""
    import numpy as np

    from cytostore.store import Store

    splits = shared_dir / "datasets" / "splits"
    test_file = splits / "lmu_dinobloom_test.tsv"
    if not (test_file.is_file() and (splits / "lmu_dinobloom_train.tsv").is_file()):
        pytest.skip(f"published split files absent under {splits}")
    test_rows = _split_entries(test_file, 6)
    train_rows = _split_entries(splits / "lmu_dinobloom_train.tsv", 15)
    assert len(test_rows) == 24 and len(train_rows) == 60
    store = Store.create(tmp_path / "s")
    rows = [{"dataset": "lmu", "path": p, "label": lab} for p, lab in train_rows]
    rows += [{"dataset": "lmu", "path": p, "label": lab} for p, lab in test_rows]
    # bm cells with a real test file name: --where must keep them out of the split
    rows += [{"dataset": "bm", "path": f"x/{p}", "label": lab} for p, lab in test_rows]
    ids = store.add_cells(rows)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (len(_LMU_CLASSES), 8))
    labels = [r["label"] for r in rows]
    x = np.stack([centres[_LMU_CLASSES.index(lab)] for lab in labels])
    x = (x + rng.normal(0, 1, x.shape)).astype(np.float32)
    with store.vector_writer(store.create_embedding_set("tiny", 8)) as w:
        w.append(ids, x)
    result = CliRunner().invoke(
        main,
        [
            "probe", str(store.root), "--label", "label", "--kind", "knn",
            "-k", "5", "--where", "dataset = 'lmu'", "--split", str(test_file),
            "--format", "json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["n_train"], report["n_test"]) == (60, 24)
    assert report["balanced_accuracy"] == 1.0  # separated classes: split is honest
    assert set(report["per_class"]) == set(_LMU_CLASSES)
    assert [f["name"] for f in report["folds"]] == ["lmu_dinobloom"]
    # 14,692 + 3,673 published entries, 84 of them in this store
    assert report["excluded"] == {"split_unmatched_entries": 18_365 - 84}
