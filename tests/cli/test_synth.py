from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def _images(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".masks" not in p.parts
    }


def test_synth_cli__masks_line_up_with_the_images(tmp_path: Path) -> None:
    from PIL import Image

    from cytostore.data._draw import MASK_BITS

    args = ["--datasets", "bm", "--cells-per-dataset", "40", "--format", "json"]
    plain = CliRunner().invoke(main, ["synth", str(tmp_path / "a"), *args])
    masked = CliRunner().invoke(main, ["synth", str(tmp_path / "b"), *args, "--masks"])
    assert plain.exit_code == 0 and masked.exit_code == 0, masked.output
    assert json.loads(plain.stdout)["n_masks"] == 0
    assert json.loads(masked.stdout)["n_masks"] == 40
    assert "wrote 40 synthetic cells to" in plain.stderr
    assert "wrote 40 synthetic cells and 40 structure masks (in " in masked.stderr
    assert not (tmp_path / "a" / ".masks").exists()
    assert _images(tmp_path / "a") == _images(tmp_path / "b")  # the same bytes
    bm = tmp_path / "b" / "bm"
    images = sorted(bm.rglob("*.jpg"))
    assert len(images) == 40
    planted = {"FGC": 0, "PMO": 0}  # faggot cells carry rods, promyelocytes granules
    for image in images:
        rel = image.relative_to(bm)
        with Image.open(tmp_path / "b" / ".masks" / "bm" / f"{rel}.png") as im:
            assert im.mode == "L" and im.size == Image.open(image).size
            mask = np.asarray(im)
        assert (mask & MASK_BITS["cell"]).any()
        cls = image.name.split("_")[0]
        if cls == "FGC":
            planted[cls] += int((mask & MASK_BITS["auer_rods"]).any())
        if cls == "PMO":
            planted[cls] += int((mask & MASK_BITS["granules"]).any())
    n_class = {c: sum(p.name.startswith(c + "_") for p in images) for c in planted}
    assert planted == n_class and min(n_class.values()) >= 1
