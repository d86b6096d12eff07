"""Curation tables (m036): writers replace one run only, readers, rm and withdrawal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytostore.errors import HasDependentsError, InvalidArgumentError, NotFoundError
from cytostore.store import (
    Store,
    curation_runs,
    delete_curation_run,
    read_label_issues,
    read_map,
    read_selection,
    write_label_issues,
    write_map,
    write_selection,
)


@pytest.fixture
def six_cells(tmp_store: Store) -> Store:
    tmp_store.upsert_dataset("d", "folder", tmp_store.root, 0.1)
    tmp_store.upsert_patients("d", [{"patient_id": "P0"}, {"patient_id": "P1"}])
    tmp_store.add_cells(
        [
            {
                "dataset": "d",
                "path": f"{i}.png",
                "label": "A",
                "patient_id": f"P{i % 2}",
            }
            for i in range(6)
        ]
    )
    return tmp_store


def _issues(store: Store, run: str, ids: list[int], model: str = "ssl") -> int:
    n = len(ids)
    return write_label_issues(
        store,
        run,
        model=model,
        label_column="label",
        params={"k": 5},
        cell_ids=ids,
        given_label=["A"] * n,
        suggested_label=["B"] * n,
        score=np.linspace(1, 0, n),
        rank=np.arange(1, n + 1),
        neighbor_agreement=[float("nan")] + [0.5] * (n - 1),
        is_issue=[True] + [False] * (n - 1),
    )


def test_write_label_issues__second_run_replaces_only_its_rows(
    six_cells: Store,
) -> None:
    assert _issues(six_cells, "a", [1, 2, 3, 4]) == 4
    assert _issues(six_cells, "b", [5, 6]) == 2
    assert _issues(six_cells, "a", [2, 3]) == 2
    got = six_cells.sql(
        "SELECT run, cell_id, rank FROM label_issues ORDER BY run, cell_id"
    ).rows
    assert got == [("a", 2, 1), ("a", 3, 2), ("b", 5, 1), ("b", 6, 2)]
    rows = read_label_issues(six_cells, "a").dicts()
    assert rows[0]["neighbor_agreement"] is None and rows[0]["is_issue"] is True
    assert rows[1]["neighbor_agreement"] == 0.5
    assert [
        r["cell_id"] for r in read_label_issues(six_cells, "a", limit=1).dicts()
    ] == [2]
    runs = {(r["kind"], r["run"]): r for r in curation_runs(six_cells)}
    assert runs[("audit", "a")]["rows"] == 2 and runs[("audit", "a")]["params"] == {
        "k": 5
    }


def test_write_selection_and_map__round_trip(six_cells: Store) -> None:
    write_selection(
        six_cells,
        "s",
        model="ssl",
        strategy="diversity",
        params=None,
        cell_ids=[4, 1],
        rank=[1, 2],
        score=[0.9, 0.1],
    )
    assert read_selection(six_cells, "s").rows == [
        (4, 1, "diversity", 0.9),
        (1, 2, "diversity", 0.1),
    ]
    write_map(six_cells, "m", "ssl", {"method": "pca"}, [3, 1], [0.5, 1.0], [2.0, 3.0])
    ids, xy = read_map(six_cells, "m")
    assert ids.tolist() == [1, 3] and xy.tolist() == [[1.0, 3.0], [0.5, 2.0]]
    assert xy.dtype == np.float32
    assert [r["kind"] for r in curation_runs(six_cells, "map")] == ["map"]
    assert delete_curation_run(six_cells, "map", "m") == 2
    assert six_cells.sql("SELECT count(*) FROM maps").rows == [(0,)]


def test_writers__bad_input_changes_nothing(six_cells: Store) -> None:
    _issues(six_cells, "a", [1, 2])
    before = six_cells.sql("SELECT * FROM label_issues ORDER BY cell_id").rows
    with pytest.raises(InvalidArgumentError, match="run name"):
        _issues(six_cells, "bad name; DROP", [1])
    with pytest.raises(InvalidArgumentError, match="twice"):
        _issues(six_cells, "a", [1, 1])
    with pytest.raises(InvalidArgumentError, match="different lengths"):
        write_map(six_cells, "a", "ssl", None, [1, 2], [0.0], [0.0, 1.0])
    assert six_cells.sql("SELECT * FROM label_issues ORDER BY cell_id").rows == before
    assert six_cells.sql("SELECT count(*) FROM maps").rows == [(0,)]
    assert [r["run"] for r in curation_runs(six_cells)] == ["a"]


def test_readers__unknown_run_names_the_known_ones(six_cells: Store) -> None:
    _issues(six_cells, "ssl-label", [1])
    with pytest.raises(NotFoundError, match="did you mean 'ssl-label'"):
        read_label_issues(six_cells, "ssl-labels")
    with pytest.raises(NotFoundError, match="no select run 'x'"):
        read_selection(six_cells, "x")


def test_withdraw_patient__removes_its_rows_from_curation_tables(
    six_cells: Store,
) -> None:
    _issues(six_cells, "a", [1, 2, 3, 4, 5, 6])
    write_map(six_cells, "m", "ssl", None, [1, 2], [0.0, 1.0], [0.0, 1.0])
    six_cells.remove("patient", "P0")  # cells 1, 3, 5
    assert six_cells.sql("SELECT cell_id FROM label_issues ORDER BY 1").rows == [
        (2,),
        (4,),
        (6,),
    ]
    assert six_cells.sql("SELECT cell_id FROM maps").rows == [(2,)]


def test_rm_model__curation_runs_are_dependents(
    six_cells: Store, tmp_path: Path
) -> None:
    es = six_cells.create_embedding_set("ssl", 2)
    with six_cells.vector_writer(es) as w:
        w.append([1, 2], [[1.0, 0.0], [0.0, 1.0]])
    _issues(six_cells, "a", [1, 2])
    _issues(six_cells, "other", [3], model="dino")
    with pytest.raises(HasDependentsError, match="curation runs audit a"):
        six_cells.remove("model", "ssl")
    report = six_cells.remove("model", "ssl", cascade=True)
    assert report["removed"]["curation_runs"] == ["audit a"]
    assert report["rows"]["label_issues"] == 2
    assert [r["run"] for r in curation_runs(six_cells)] == ["other"]
    assert six_cells.sql("SELECT run FROM label_issues").rows == [("other",)]
