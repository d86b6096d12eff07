from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main


def test_synth_cli__writes_the_datasets_and_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a short relative root: table cells are cut at 64
    out = Path("demo")
    args = ["synth", str(out), "--cells-per-dataset", "21", "--seed", "3"]
    result = CliRunner().invoke(main, [*args, "--patients-per-subtype", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "dataset", "classes", "cells", "patients", "um_per_px", "root"
    ]  # fmt: skip
    assert lines[2].split() == ["lmu", "15", "21", "0.07072", str(out / "lmu")]
    assert lines[3].split() == [
        "mll_helmholtz", "5", "21", "10", "0.1725", str(out / "mll_helmholtz")
    ]  # fmt: skip
    assert lines[4].split() == ["bm", "21", "21", "0.086", str(out / "bm")]
    assert "wrote 63 synthetic cells" in result.stderr
    assert len(list((out / "bm").rglob("*.jpg"))) == 21


def test_synth_cli__json_and_dataset_choice(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["synth", str(tmp_path), "--datasets", "bm", "--cells-per-dataset", "30",
         "--bm-chunk-size", "2", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_cells"] == 30 and report["seed"] == 0
    (bm,) = report["datasets"]
    assert bm["name"] == "bm" and sum(bm["counts"].values()) == 30
    assert (tmp_path / "bm/BM_cytomorphology_data/NGS/0001-0002").is_dir()


def test_synth_cli__non_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bm").mkdir()
    (tmp_path / "bm" / "x.jpg").write_bytes(b"")
    result = CliRunner().invoke(
        main, ["synth", str(tmp_path), "--datasets", "bm", "--cells-per-dataset", "21"]
    )
    assert result.exit_code == 2
    assert (
        "already exists and is not empty: choose a new output folder" in result.output
    )


def test_synth_cli__too_few_cells_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["synth", str(tmp_path), "--cells-per-dataset", "10"]
    )
    assert result.exit_code == 2
    assert "use at least 15 cells per dataset" in result.output
