"""CLI: ``cytostore explain --pixels`` for a cell head and a MIL head."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.store import Store


def _ids(store: Path) -> tuple[int, str]:
    st = Store.open(store)
    cell = st.sql("SELECT min(cell_id) FROM cell_meta WHERE dataset = 'bm'").rows[0][0]
    pid = st.sql(
        "SELECT min(patient_id) FROM cell_meta WHERE patient_id IS NOT NULL"
    ).rows[0][0]
    return int(cell), str(pid)


def _tree(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith((".lock", ".wal"))
    }


def _invoke(args: list[str]):  # noqa: ANN202
    return CliRunner().invoke(main, args, prog_name="cytostore")


def test_explain_pixels_cli__cell_table(explain_store: Path) -> None:
    cell, _ = _ids(explain_store)
    before = _tree(explain_store)
    args = ["explain", str(explain_store), "--cell", str(cell), "--head", "lin"]
    result = _invoke([*args, "--pixels", "--method", "gradxinput", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert _tree(explain_store) == before  # nothing in the store changed
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"cell {cell}: predicted ")
    assert lines[0].endswith("gradxinput attribution to " + lines[0].split()[3])
    assert lines[1].split() == [
        "cell_id",
        "attention",
        "total_attribution",
        "peak_x",
        "peak_y",
        "completeness_error",
        "overlay",
    ]
    assert lines[3].split()[0] == str(cell)


def test_explain_pixels_cli__patient_json_is_quiet(
    explain_store: Path, tmp_path: Path
) -> None:
    _, pid = _ids(explain_store)
    montage = tmp_path / "px.png"
    proc = subprocess.run(
        [
            sys.executable, "-m", "cytostore", "explain", str(explain_store),
            "--patient", pid, "--head", "mil", "--pixels", "--cells", "2",
            "--steps", "4", "--montage", str(montage), "--format", "json",
            "--device", "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["patient"].endswith("/" + pid) and doc["kind"] == "abmil"
    assert doc["method"] == "ig" and doc["steps"] == 4
    assert len(doc["cells"]) == 2
    for c in doc["cells"]:
        assert set(c) >= {"cell_id", "attention", "total_attribution", "peak"}
        assert Path(c["overlay"]).is_file()
    assert doc["montage"] == str(montage) and montage.is_file()
    assert proc.stderr.strip() == f"montage written to {montage}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "ig"], "Error: --method needs --pixels"),
        (["--cells", "2"], "Error: --cells needs --pixels"),
        (["--class", "BLA"], "Error: --class needs --pixels"),
        (["--checks"], "Error: --checks needs --pixels"),
        (["--pixels", "--class", "NOPE"], "Error: --class 'NOPE' is not a class"),
        (["--pixels", "--method", "lrp"], "Error: Invalid value for '--method'"),
        (["--pixels", "--steps", "0"], "Error: steps and batch_size must be >= 1"),
    ],
)
def test_explain_pixels_cli__usage_errors_exit_2(
    explain_store: Path, extra: list[str], message: str
) -> None:
    cell, _ = _ids(explain_store)
    args = ["explain", str(explain_store), "--cell", str(cell), "--head", "lin"]
    result = _invoke([*args, *extra, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "Usage: cytostore explain" in result.output
    assert message in result.output


def test_explain_pixels_cli__knn_head_and_unknown_patient(explain_store: Path) -> None:
    cell, _ = _ids(explain_store)
    s = str(explain_store)
    knn = _invoke(["explain", s, "--cell", str(cell), "--head", "knn", "--pixels"])
    assert knn.exit_code == 2 and "kNN head, which has no gradient" in knn.output
    missing = _invoke(["explain", s, "--patient", "NOPE", "--head", "mil", "--pixels"])
    assert missing.exit_code == 1, missing.output
    assert missing.output.count("Error:") == 1 and "Usage" not in missing.output
