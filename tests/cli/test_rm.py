"""CLI: rm of heads, models (refused, then --cascade) and patients (consent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.store import Store

MODEL = "random-tiny"
PATIENT, DATASET = "KFP", "mll_helmholtz"  # 18 cells in the synthetic tree


def _run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def _template(embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded store plus a kNN head ``k`` with predictions and ``knn5``."""
    import torch

    torch.set_num_threads(1)
    root = Path(shutil.copytree(embedded_store, tmp_path_factory.mktemp("rm") / "s"))
    for args in (
        ("probe", root, "--model", MODEL, "--label", "label", "--kind", "knn"),
        ("predict", root, "--head", "k"),
        ("neighbors", root, "--into", "knn5", "-k", 5),
    ):
        extra = (
            "--name",
            "k",
            "--where",
            "dataset != 'mll_helmholtz'",
            "--min-count",
            2,
        )
        code, _, err = _run(*args, *(extra if args[0] == "probe" else ()))
        assert code == 0, err
    return root


@pytest.fixture
def store(_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(_template, tmp_path / "s"))


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_rm_patient__gone_from_sql_search_and_vectors(store: Path, fmt: str) -> None:
    st = Store.open(store)
    gone = set(
        st.sql(
            "SELECT cell_id FROM cells WHERE patient_id = ? AND dataset = ?",
            [PATIENT, DATASET],
        ).column("cell_id")
    )
    ids0, x0 = (np.array(a) for a in st.vectors(MODEL))
    code, out, err = _run("rm", store, "patient", PATIENT, "--format", fmt)
    assert code == 0, err
    assert err.startswith(
        f"removed patient '{PATIENT}' of dataset '{DATASET}': 18 cells, "
    )
    if fmt == "json":
        report = json.loads(out)
        assert report["cells"] == 18 and report["rows"]["cells"] == 18
        assert report["rows"]["predictions"] == 18 and report["rows"]["patients"] == 1
        assert report["sets"][0]["rows_removed"] == 18
    else:
        lines = out.splitlines()
        assert lines[0].split() == ["removed", "name", "count"]
        assert ["rows", "cells", "18"] in [line.split() for line in lines]
        assert ["rows", "patients", "1"] in [line.split() for line in lines]
    st = Store.open(store)
    for query in (
        "SELECT count(*) FROM cell_meta WHERE patient_id = 'KFP'",
        "SELECT count(*) FROM predictions WHERE cell_id IN (SELECT unnest(?))",
        "SELECT count(*) FROM knn5 WHERE neighbor_id IN (SELECT unnest(?))",
    ):
        params = [sorted(gone)] if "?" in query else None
        assert st.sql(query, params).rows == [(0,)]
    code, out, err = _run("search", store, "--cell", 1, "-k", 400, "--format", "json")
    assert code == 0, err
    hits = {d["cell_id"] for d in json.loads(out)}
    assert len(hits) == 360 - 18 - 1 and not hits & gone
    ids, x = st.vectors(MODEL)
    keep = ~np.isin(ids0, sorted(gone))
    assert ids.tolist() == ids0[keep].tolist() and x.tobytes() == x0[keep].tobytes()
    assert st.embedding_set(MODEL).n_indexed == 342
    code, out, _ = _run("verify", store)
    assert code == 0 and out.startswith("ok: ")


def test_rm_head__removes_its_predictions_and_folder(store: Path) -> None:
    code, out, err = _run("rm", store, "head", "k", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["removed"]["heads"] == ["k"] and report["files"] == ["heads/k"]
    assert report["rows"]["predictions"] == 360 and report["rows"]["heads"] == 1
    assert not (store / "heads" / "k").exists()
    assert Store.open(store).sql("SELECT count(*) FROM predictions").rows == [(0,)]
    assert err.startswith("removed head 'k': 361 catalog rows, 1 files, ")


def test_rm_model__refused_while_used_then_cascade(store: Path) -> None:
    code, out, err = _run("rm", store, "model", MODEL)
    assert code == 1 and out == ""
    assert err == (
        f"Error: model '{MODEL}' is used by embedding sets {MODEL} (set 1); heads k; "
        "neighbour tables knn5: remove those first, or rerun with --cascade to "
        "remove them too\n"
    )
    assert (store / "models" / MODEL).is_dir()
    code, out, err = _run("rm", store, "model", MODEL, "--cascade", "--dry-run")
    assert code == 0 and err.startswith(f"would remove model '{MODEL}': ")
    assert (store / "models" / MODEL).is_dir()
    code, out, err = _run("rm", store, "model", MODEL, "--cascade")
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert ["model", MODEL] in lines and ["table", "knn5"] in lines
    assert not (store / "models" / MODEL).exists()
    st = Store.open(store)
    assert st.embedding_sets() == [] and st.sql("SELECT count(*) FROM heads").rows == [
        (0,)
    ]
    assert sorted(p.name for p in (store / "vectors").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("thing", "x"), 2, "Invalid value for 'KIND'"),
        (("head", "nope"), 1, "Error: no head 'nope' in "),
        (("set", "nope"), 1, "Error: no embedding set 'nope' in "),
        (("patient", "nope"), 1, "Error: no patient 'nope' in "),
        (("dataset", "nope"), 1, "Error: no dataset 'nope' in "),
    ],
)
def test_rm__bad_kind_or_unknown_name_is_one_line(
    store: Path, args: tuple[str, str], code: int, message: str
) -> None:
    exit_code, out, err = _run("rm", store, *args)
    assert exit_code == code and out == ""
    assert message in err and "Traceback" not in err
    if code == 1:
        assert err.count("\n") == 1
