from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cytostore.cli import main
from cytostore.store import Store


def _img(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A BM-shaped tree (3 cells, one hidden file) and an LMU-shaped one (2 cells)."""
    root = tmp_path / "downloads"
    bm = root / "bm zip.download" / "BM_cytomorphology_data"
    _img(bm / "BLA" / "0001-1000" / "BLA_00001.jpg", 1)
    _img(bm / "BLA" / "0001-1000" / "BLA_00002.jpg", 2)
    _img(bm / "ABE" / "ABE_00003.jpg", 3)
    (bm / "ABE" / ".DS_Store").write_bytes(b"\0")
    lmu = root / "PKG - AML-Cytomorphology_LMU"
    _img(lmu / "NGS" / "NGS_0001.tiff", 4)
    _img(lmu / "MYO" / "MYO_0001.tiff", 5)
    return root


def test_ingest_cli__table_summary_and_rerun(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    result = CliRunner().invoke(
        main, ["ingest", str(store), str(tree), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "dataset  layout  found  added  existing  skipped  expected\n"
        "-------  ------  -----  -----  --------  -------  --------\n"
        "lmu      lmu     2      2      0         0        18365\n"
        "bm       bm      4      3      0         1        171374\n"
    )
    assert result.stderr.splitlines()[-1] == (
        f"ingested 5 new cells (1 skipped) into {store}"
    )
    assert "warning: lmu: annotations.dat not found" in result.stderr
    # the count mismatches are the table's column expected: one line, not one each
    assert "cells catalogued" not in result.stderr
    assert (
        "warning: lmu, bm: the cell count differs from the published one (column "
        "expected): a partial or modified download?" in result.stderr.splitlines()
    )
    again = CliRunner().invoke(main, ["ingest", str(store), str(tree)])
    assert again.exit_code == 0
    assert again.stderr.splitlines()[-1] == (
        f"ingested 0 new cells (1 skipped) into {store}"
    )
    assert Store.open(store).sql("SELECT count(*) FROM cells").rows == [(5,)]


def test_ingest_cli__json_report(tmp_path: Path, tree: Path) -> None:
    result = CliRunner().invoke(
        main, ["ingest", str(tmp_path / "s"), str(tree), "--format", "json"]
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert (doc["found"], doc["added"], doc["skipped"]) == (6, 5, 1)
    assert [d["dataset"] for d in doc["datasets"]] == ["lmu", "bm"]


def test_ingest_cli__folder_pattern_patients_um_per_px(tmp_path: Path) -> None:
    root = tmp_path / "export"
    _img(root / "P1" / "lymphocyte" / "a.png", 1)
    _img(root / "P2" / "ig" / "b.png", 2)
    patients = tmp_path / "p.csv"
    patients.write_text("patient_id,diagnosis,age\nP1,NPM1,70\nP2,control,41\n")
    store = tmp_path / "s"
    result = CliRunner().invoke(
        main,
        [
            "ingest",
            str(store),
            str(root),
            "--pattern",
            "{patient_id}/{label}/*.png",
            "--patients",
            str(patients),
            "--bag-column",
            "diagnosis",
            "--dataset-name",
            "ward7",
            "--um-per-px",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = (
        Store.open(store)
        .sql(
            "SELECT dataset, patient_id, label, cell_type, bag_label, age, um_per_px "
            "FROM cell_meta ORDER BY cell_id"
        )
        .rows
    )
    assert rows == [
        ("ward7", "P1", "lymphocyte", "lymphocyte", "NPM1", 70.0, 0.1),
        ("ward7", "P2", "ig", "immature_granulocyte", "control", 41.0, 0.1),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nowhere"], "does not exist"),
        (["{tmp}/flat"], "no known dataset layout"),
        (["{tmp}/flat", "--layout", "lmu"], "no lmu dataset found"),
        (["{tmp}/flat", "--workers", "0"], "--workers must be at least 1"),
        (["{tmp}/flat", "--layout", "bm", "--pattern", "x"], "only apply to --layout"),
    ],
)
def test_ingest_cli__bad_input_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    _img(tmp_path / "flat" / "a.png")
    argv = ["ingest", str(tmp_path / "s"), *(a.format(tmp=tmp_path) for a in args)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()  # a failed first ingest leaves no store


def test_ingest_cli__fifo_and_non_utf8_name_skipped_in_a_real_process(
    tmp_path: Path, tree: Path
) -> None:
    chunk = tree / "bm zip.download" / "BM_cytomorphology_data" / "BLA" / "0001-1000"
    os.mkfifo(chunk / "BLA_00009.jpg")  # opening it would hang the command
    try:
        with open(os.path.join(os.fsencode(chunk), b"BLA_\xff0008.jpg"), "wb") as fh:
            fh.write((chunk / "BLA_00001.jpg").read_bytes())
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOSTORE_FAULT")}
    done = subprocess.run(
        [sys.executable, "-m", "cytostore", "ingest", str(store), str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"ingested 5 new cells (3 skipped) into {store}"
    )
    skipped = dict(Store.open(store).sql("SELECT path, reason FROM skipped").rows)
    assert "FIFO" in skipped["BLA/0001-1000/BLA_00009.jpg"]
    assert "not valid UTF-8" in skipped["BLA/0001-1000/BLA_\\xff0008.jpg"]


def test_ingest_cli__help_has_example() -> None:
    result = CliRunner().invoke(main, ["ingest", "--help"])
    assert result.exit_code == 0
    assert (
        "  Example:\n      cytostore ingest demo-out/store demo-out/data\n"
        in result.output
    )
