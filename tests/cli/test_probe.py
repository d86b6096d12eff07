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
    assert "160 rows written to predictions" in result.stderr
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


def test_predict_cli__unknown_head_exits_2(store: Path) -> None:
    result = CliRunner().invoke(main, ["predict", str(store), "--head", "nope"])
    assert result.exit_code == 2
    assert "no head named 'nope'" in result.stderr
