"""audit: planted label errors come first, neighbours from other patients, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from curate_blobs import FLIPPED, N_PATIENTS, build_blob_store

from cytostore.cli import main
from cytostore.curate import audit, score_label_issues
from cytostore.curate._common import groups_of, other_group_neighbors
from cytostore.errors import LabelError, UnknownColumnError
from cytostore.heads._data import load_cells
from cytostore.store import Store, curation_runs, read_label_issues


def _rows(store: Store) -> list[tuple]:
    return store.sql("SELECT * FROM label_issues ORDER BY run, cell_id").rows


def test_audit__planted_errors_rank_first(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    result = audit(blob_store, "m", "label", montage=tmp_path / "a.png", top=4)
    assert result.n_cells == 160 and result.split == "patient"
    rows = read_label_issues(blob_store, "label-m").dicts()
    assert [r["rank"] for r in rows] == list(range(1, 161))
    top = {r["cell_id"] - 1 for r in rows[: len(FLIPPED)]}
    assert top == set(FLIPPED)
    flipped = [r for r in rows if r["cell_id"] - 1 in FLIPPED]
    # confident learning estimates how many there are: most, not all, flagged here
    assert sum(r["is_issue"] for r in flipped) >= 6
    assert all((r["score"] > 0.5) == r["is_issue"] for r in rows)
    assert not any(r["is_issue"] for r in rows if r["cell_id"] - 1 not in FLIPPED)
    # the suggested label is the true class (the next class back)
    classes = ["BAS", "EOS", "LYT", "MON"]
    for r in flipped:
        assert (
            classes.index(r["suggested_label"])
            == (classes.index(r["given_label"]) - 1) % 4
        )
        assert r["neighbor_agreement"] < 0.2
    scores = [r["score"] for r in rows]
    assert (
        scores == sorted(scores, reverse=True) and 0 <= min(scores) <= max(scores) <= 1
    )
    assert (tmp_path / "a.png").stat().st_size > 0 and len(result.top) == 4


def test_audit__rerun_replaces_its_run_only(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    audit(blob_store, "m", "label", name="one", where="patient_id <> 'P0'", folds=2)
    audit(blob_store, "m", "label", name="two", folds=2)
    before_two = [r for r in _rows(blob_store) if r[0] == "two"]
    audit(blob_store, "m", "label", name="one", folds=2)
    runs = {r["run"]: r["rows"] for r in curation_runs(blob_store, "audit")}
    assert runs == {"one": 160, "two": 160}
    assert [r for r in _rows(blob_store) if r[0] == "two"] == before_two


def test_audit__neighbours_come_from_other_patients(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    cells = load_cells(blob_store, "m", None, ["dataset", "patient_id"])
    groups = groups_of(cells)
    _, nb = other_group_neighbors(blob_store, "m", cells.ids, groups, 5)
    patient = dict(zip(cells.ids.tolist(), groups.tolist(), strict=True))
    for cid, row in zip(cells.ids.tolist(), nb.tolist(), strict=True):
        assert len(row) == 5 and all(patient[n] != patient[cid] for n in row)


def test_audit__one_patient_cells_have_no_neighbours(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    cells = load_cells(blob_store, "m", "patient_id = 'P1'", ["dataset", "patient_id"])
    sim, nb = other_group_neighbors(blob_store, "m", cells.ids, groups_of(cells), 3)
    assert (nb == -1).all() and np.isnan(sim).all()
    assert N_PATIENTS == 8


def test_score_label_issues__rows_permute_with_the_input() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 30)
    p = rng.dirichlet(np.ones(3), 30)
    nb = rng.integers(-1, 3, (30, 4))
    sim = rng.random((30, 4))
    a = score_label_issues(y, p, nb, sim)
    perm = rng.permutation(30)
    b = score_label_issues(y[perm], p[perm], nb[perm], sim[perm])
    np.testing.assert_allclose(a.score[perm], b.score)
    np.testing.assert_array_equal(a.suggested[perm], b.suggested)
    np.testing.assert_allclose(a.neighbor_agreement[perm], b.neighbor_agreement)


def test_score_label_issues__no_neighbours_means_probe_alone() -> None:
    y = np.array([0, 1, 1])
    p = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    s = score_label_issues(y, p, -np.ones((3, 2), int), np.full((3, 2), np.nan))
    # quality = mean of p(given) and (p(given) - p(other) + 1) / 2: 0.8, 0.7, 0.4
    np.testing.assert_allclose(s.score, (s.is_issue + np.array([0.2, 0.3, 0.6])) / 2)
    np.testing.assert_allclose(s.pred_probs, p)
    assert np.isnan(s.neighbor_agreement).all()


def test_audit__bad_input_changes_nothing(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    audit(blob_store, "m", "label", name="keep", folds=2)
    before = _rows(blob_store)
    with pytest.raises(UnknownColumnError, match="did you mean 'label'"):
        audit(blob_store, "m", "lable", name="keep")
    with pytest.raises(LabelError, match="needs two"):
        audit(blob_store, "m", "label", where="label = 'BAS'", name="keep")
    assert _rows(blob_store) == before


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_audit_cli__prints_top_and_summary(tmp_path: Path, fmt: str) -> None:
    blob_store = build_blob_store(tmp_path)
    out = tmp_path / "m.png"
    res = CliRunner().invoke(
        main,
        [
            "audit",
            str(blob_store.root),
            "--model",
            "m",
            "--label",
            "label",
            "--top",
            "3",
            "--montage",
            str(out),
            "--format",
            fmt,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "audit 'label-m': 160 cells scored (patient folds)" in res.stderr
    if fmt == "json":
        doc = json.loads(res.stdout)
        assert doc["n_cells"] == 160 and len(doc["top"]) == 3
    else:
        assert res.stdout.splitlines()[0].split() == [
            "rank",
            "cell_id",
            "given_label",
            "suggested_label",
            "score",
            "neighbor_agreement",
            "is_issue",
        ]
    assert out.is_file()


def test_audit_cli__unknown_label_is_one_line_exit_1(tmp_path: Path) -> None:
    blob_store = build_blob_store(tmp_path)
    res = CliRunner().invoke(
        main,
        ["audit", str(blob_store.root), "--model", "m", "--label", "nope"],
    )
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no column 'nope'")
    assert blob_store.sql("SELECT count(*) FROM label_issues").rows == [(0,)]
