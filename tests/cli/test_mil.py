"""CLI: mil, then predict and explain --patient with the saved head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from heads.heads_helpers import build_mil_store

from cytostore.cli import main


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_mil_cli__report_tables_and_explain(tmp_path: Path) -> None:
    store, _ = build_mil_store(tmp_path / "s", n_bags=12)
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "mil",
            str(store.root),
            "--model",
            "tiny",
            "--folds",
            "2",
            "--name",
            "ab",
            "--max-epochs",
            "10",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_bags"] == 12 and len(report["folds"]) == 2
    assert len(report["auroc_ci"]) == 2 and report["attention_rows"] == 12 * 25
    assert "attention rows" in result.stderr
    result = runner.invoke(
        main,
        [
            "explain",
            str(store.root),
            "--patient",
            "PT03",
            "--head",
            "ab",
            "-k",
            "2",
            "--top",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("patient mll_helmholtz/PT03: predicted")
    result = runner.invoke(
        main, ["explain", str(store.root), "--cell", "3", "--head", "ab"]
    )
    assert result.exit_code == 2 and "use --patient" in result.stderr


def test_mil_cli__fewer_bags_than_folds_exits_2(tmp_path: Path) -> None:
    store, _ = build_mil_store(tmp_path / "s", n_bags=6)
    result = CliRunner().invoke(main, ["mil", str(store.root), "--folds", "5"])
    assert result.exit_code == 2
    assert "fewer members than folds" in result.stderr
