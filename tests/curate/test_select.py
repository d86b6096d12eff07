"""select: k-center against a brute-force reference, TypiClust, margins, the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from curate_blobs import CLASSES, N_PATIENTS, PER_CLASS, blob_vectors, build_blob_store

from cytostore.cli import main
from cytostore.curate import select
from cytostore.curate.select import (
    balanced_quotas,
    k_center_greedy,
    smallest_margin,
    typiclust,
)
from cytostore.errors import InvalidArgumentError, UnknownColumnError
from cytostore.store import read_selection


def _reference_k_center(X: np.ndarray, n: int, anchors: np.ndarray) -> list[int]:
    """Farthest-first by the definition, one pair of points at a time."""
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    A = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    centres = list(A)
    out: list[int] = []
    for _ in range(n):
        far, pick = -1.0, -1
        for i, u in enumerate(U):
            if i in out:
                continue
            d = min(1.0 - float(u @ c) for c in centres)
            if d > far + 1e-12:
                far, pick = d, i
        out.append(pick)
        centres.append(U[pick])
    return out


def test_k_center_greedy__matches_the_definition() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 5))
    rows, dist = k_center_greedy(X, 7, anchors=X[:2])
    assert rows.tolist() == _reference_k_center(X, 7, X[:2])
    assert np.all(np.diff(dist) <= 1e-9)  # covering radius never grows


def test_k_center_greedy__without_anchors_is_seeded() -> None:
    X = np.random.default_rng(0).normal(size=(40, 3))
    a, da = k_center_greedy(X, 5, seed=1)
    b, _ = k_center_greedy(X, 5, seed=1)
    assert a.tolist() == b.tolist() and np.isnan(da[0]) and len(set(a.tolist())) == 5


def test_typiclust__one_typical_cell_per_blob() -> None:
    X, y = blob_vectors()
    rows, score = typiclust(X, 4, seed=0)
    assert sorted(y[rows].tolist()) == [0, 1, 2, 3]
    # the pick is the most typical of its blob: closest to the blob's centre
    for r in rows.tolist():
        members = np.flatnonzero(y == y[r])
        U = X[members] / np.linalg.norm(X[members], axis=1, keepdims=True)
        centre = U.mean(axis=0)
        dist = np.linalg.norm(U - centre, axis=1)
        assert dist[members.tolist().index(r)] <= np.quantile(dist, 0.25)


def test_typiclust__labelled_blobs_are_covered_first() -> None:
    X, y = blob_vectors()
    anchors = np.r_[X[y == 0][:3], X[y == 1][:3]]  # blobs 0 and 1 labelled
    rows, _ = typiclust(X, 2, anchors=anchors, seed=0)
    assert sorted(y[rows].tolist()) == [2, 3]


def test_smallest_margin__hand_case() -> None:
    rows, score = smallest_margin([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [1, 0, 0]], 2)
    assert rows.tolist() == [1, 0] and np.allclose(score, [0.95, 0.7])


@pytest.mark.parametrize(
    ("sizes", "n"), [({"a": 1, "b": 9}, 6), ({"a": 3, "b": 3, "c": 30}, 20)]
)
def test_balanced_quotas__even_within_sizes(sizes: dict[str, int], n: int) -> None:
    q = balanced_quotas(sizes, n)
    assert sum(q.values()) == n and all(q[g] <= sizes[g] for g in sizes)
    open_ = [q[g] for g in sizes if q[g] < sizes[g]]
    assert max(open_) - min(open_) <= 1
    with pytest.raises(InvalidArgumentError, match="more than"):
        balanced_quotas(sizes, sum(sizes.values()) + 1)


def test_select__writes_table_csv_and_montage(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    out = select(
        blob_store,
        "m",
        8,
        "typicality",
        balance_by="patient_id",
        csv=tmp_path / "s.csv",
        montage=tmp_path / "s.png",
    )
    rows = read_selection(blob_store, "typicality-m").dicts()
    assert [r["rank"] for r in rows] == list(range(1, 9))
    assert {r["strategy"] for r in rows} == {"typicality"}
    patients = [r["patient_id"] for r in out.rows]
    assert sorted(patients) == [f"P{p}" for p in range(N_PATIENTS)]  # one each
    with open(tmp_path / "s.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [int(r["cell_id"]) for r in got] == [r["cell_id"] for r in rows]
    assert all(Path(r["image"]).is_file() for r in got)
    assert all(r["path"].endswith(".png") and r["dataset"] == "d" for r in got)
    assert (tmp_path / "s.png").stat().st_size > 0


def test_select__exclude_labelled_skips_and_anchors(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    out = select(blob_store, "m", 10, "diversity", exclude_labelled="cell_type")
    assert out.n_labelled == 16 and out.n_candidates == 144
    chosen = [r["cell_id"] for r in out.rows]
    assert all((c - 1) % 10 != 0 for c in chosen)


def test_select__uncertainty_uses_the_head(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    from cytostore.heads import probe

    probe(blob_store, "m", "label", kind="linear", name="lin", split="stratified")
    out = select(blob_store, "m", 5, "uncertainty", head="lin", balance_by="predicted")
    assert len(out.rows) == 5 and set(out.per_group) <= set(CLASSES)
    scores = [r["score"] for r in out.rows]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_select__bad_input_changes_nothing(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    select(blob_store, "m", 3, "diversity", name="keep")
    before = blob_store.sql("SELECT * FROM selections ORDER BY rank").rows
    csv_path = tmp_path / "x.csv"
    with pytest.raises(InvalidArgumentError, match="-n 161 is more than the 160"):
        select(blob_store, "m", 161, "diversity", name="keep", csv=csv_path)
    with pytest.raises(InvalidArgumentError, match="needs a saved head"):
        select(blob_store, "m", 3, "uncertainty", name="keep", csv=csv_path)
    with pytest.raises(UnknownColumnError):
        select(blob_store, "m", 3, "diversity", balance_by="nope", name="keep")
    assert blob_store.sql("SELECT * FROM selections ORDER BY rank").rows == before
    assert not csv_path.exists()
    assert PER_CLASS * len(CLASSES) == 160


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_select_cli__rows_summary_and_files(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob_store = build_blob_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        main,
        [
            "select",
            str(blob_store.root),
            "--model",
            "m",
            "-n",
            "4",
            "--strategy",
            "diversity",
            "--format",
            fmt,
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("select 'diversity-m': 4 of 160 cells by diversity")
    assert (tmp_path / "select-diversity-m.csv").is_file()
    assert (tmp_path / "select-diversity-m.png").is_file()
    if fmt == "json":
        assert len(json.loads(res.stdout)["rows"]) == 4
    else:
        assert res.stdout.splitlines()[0].split() == [
            "rank",
            "cell_id",
            "score",
            "dataset",
            "path",
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "500", "--strategy", "diversity"], "-n 500 is more than the 160"),
        (["-n", "5", "--strategy", "uncertainty"], "needs a saved head"),
    ],
)
def test_select_cli__refused_input_exits_2_and_writes_nothing(
    tmp_path: Path,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blob_store = build_blob_store(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = CliRunner().invoke(
        main, ["select", str(blob_store.root), "--model", "m", *args]
    )
    assert res.exit_code == 2
    error = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1 and message in error[0]
    assert list(cwd.iterdir()) == []
    assert blob_store.sql("SELECT count(*) FROM selections").rows == [(0,)]
