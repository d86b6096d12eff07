"""User annotation columns: written all or nothing, joined into cell_meta."""

from __future__ import annotations

from pathlib import Path

import pytest

from cytostore.errors import InvalidArgumentError, NotFoundError
from cytostore.store import (
    Store,
    annotation_columns,
    browse_cells,
    drop_annotations,
    find_cells,
    write_annotations,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Six cells in two datasets; two cells of ``bm`` have a patient."""
    st = Store.create(tmp_path / "s")
    for d in ("lmu", "bm"):
        st.upsert_dataset(d, "folder", tmp_path, 0.1)
    st.add_cells(
        [
            {"dataset": d, "path": f"{c}/{c}_{i}.png", "label": c, "patient_id": p}
            for i, (d, c, p) in enumerate(
                [
                    ("lmu", "BAS", None),
                    ("lmu", "EOS", None),
                    ("lmu", "LYT", None),
                    ("bm", "BLA", "P1"),
                    ("bm", "BLA", "P2"),
                    ("bm", "NGS", None),
                ]
            )
        ]
    )
    return st


def _snapshot(st: Store) -> tuple:
    return (
        st.columns("cell_meta"),
        st.sql("SELECT * FROM annotations ORDER BY cell_id").rows,
        st.sql("SELECT name, type, source FROM annotation_columns ORDER BY name").rows,
    )


def test_write_annotations__columns_join_cell_meta_with_inferred_types(
    store: Store,
) -> None:
    report = write_annotations(
        store,
        [1, 2, 4],
        {
            "expert": ["BAS", "LYT", None],
            "score": ["1", "2", "3"],
            "conf": ["0.5", "1", None],
        },
        source="a.csv",
    )
    assert report == {
        "rows": 3,
        "cells": 3,
        "columns": ["expert", "score", "conf"],
        "new_columns": ["expert", "score", "conf"],
        "added": 7,
        "changed": 0,
        "unchanged": 0,
    }
    rows = store.sql(
        "SELECT cell_id, expert, score, conf FROM cell_meta ORDER BY cell_id"
    ).rows
    assert rows == [
        (1, "BAS", 1, 0.5),
        (2, "LYT", 2, 1.0),
        (3, None, None, None),
        (4, None, 3, None),
        (5, None, None, None),
        (6, None, None, None),
    ]
    types = dict(
        store.sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'cell_meta' "
            "AND column_name IN ('expert', 'score', 'conf')"
        ).rows
    )
    assert types == {"expert": "VARCHAR", "score": "BIGINT", "conf": "DOUBLE"}
    assert store.where_ids("score >= 2").tolist() == [2, 4]
    assert [c["name"] for c in annotation_columns(store)] == ["conf", "expert", "score"]
    assert {c["name"]: c["cells"] for c in annotation_columns(store)} == {
        "conf": 2,
        "expert": 2,
        "score": 3,
    }


def test_write_annotations__browse_and_patient_columns_keep_working(
    store: Store,
) -> None:
    write_annotations(store, [4, 5], {"second": ["BLA", "PMO"]})
    total, page = browse_cells(store, where="second = 'PMO'")
    assert total == 1 and page.dicts()[0]["cell_id"] == 5
    # A later patient upsert rebuilds cell_meta: the annotation column stays.
    store.upsert_patients("bm", [{"patient_id": "P1", "age": 61}])
    assert store.sql("SELECT second, age FROM cell_meta WHERE cell_id = 4").rows == [
        ("BLA", 61.0)
    ]


@pytest.mark.parametrize("name", ["label", "LABEL", "dataset", "tags", "layout", "sex"])
def test_write_annotations__a_cell_meta_name_is_refused(
    store: Store, name: str
) -> None:
    store.upsert_patients("bm", [{"patient_id": "P1", "sex": "f"}])
    before = _snapshot(store)
    with pytest.raises(InvalidArgumentError, match="cell_meta already has column"):
        write_annotations(store, [1], {name: ["x"]})
    assert _snapshot(store) == before


def test_write_annotations__bad_rows_name_their_lines_and_change_nothing(
    store: Store,
) -> None:
    write_annotations(store, [1, 2], {"expert": ["BAS", "EOS"], "n": ["1", "2"]})
    before = _snapshot(store)
    with pytest.raises(InvalidArgumentError) as err:
        write_annotations(
            store,
            [3, 2, 3, 99, 1],
            {
                "expert": ["LYT", "LYT", "LYT", "x", "BAS"],
                "n": ["5", None, None, None, "x"],
            },
            lines=[2, 3, 4, 5, 6],
            source="b.csv",
        )
    msg = str(err.value)
    assert msg.startswith("b.csv: 4 bad rows, nothing imported (")
    assert "line 3: expert 'LYT' conflicts with the stored 'EOS' of cell 2" in msg
    assert "line 4: cell 3 again (first on line 2)" in msg
    assert "line 5: no cell 99 in the store" in msg
    assert "line 6: n 'x' is not a bigint" in msg
    assert "--replace" in msg and "\n" not in msg
    assert _snapshot(store) == before


def test_write_annotations__reimport_merges_and_replace_overwrites(
    store: Store,
) -> None:
    write_annotations(store, [1, 2], {"expert": ["BAS", "EOS"]})
    same = write_annotations(store, [1, 3], {"expert": ["BAS", "LYT"]})
    assert (same["added"], same["changed"], same["unchanged"]) == (1, 0, 1)
    assert same["new_columns"] == []
    changed = write_annotations(store, [2, 1], {"expert": ["MON", None]}, replace=True)
    assert (changed["added"], changed["changed"], changed["unchanged"]) == (0, 1, 0)
    got = store.sql(
        "SELECT cell_id, expert FROM cell_meta WHERE expert IS NOT NULL ORDER BY 1"
    ).rows
    assert got == [(1, "BAS"), (2, "MON"), (3, "LYT")]  # an empty value changes nothing


def test_write_annotations__case_of_an_imported_name_is_the_stored_one(
    store: Store,
) -> None:
    write_annotations(store, [1], {"Expert": ["BAS"]})
    report = write_annotations(store, [2], {"expert": ["EOS"]})
    assert report["columns"] == ["Expert"] and report["new_columns"] == []
    assert store.where_ids("expert IS NOT NULL").tolist() == [1, 2]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({}, "no column to import"),
        ({"a b": ["x"]}, "not a valid table/column name"),
        ({"x": ["1"], "X": ["2"]}, "given twice"),
        ({"x": ["1", "2"]}, "2 values for 1 rows"),
    ],
)
def test_write_annotations__malformed_calls(
    store: Store, values: dict, match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        write_annotations(store, [1], values)
    assert annotation_columns(store) == []


def test_drop_annotations__removes_the_column_everywhere(store: Store) -> None:
    write_annotations(store, [1], {"expert": ["BAS"], "note": ["blurry"]})
    assert drop_annotations(store, ["NOTE"]) == ["note"]
    assert "note" not in store.columns("cell_meta")
    assert [c["name"] for c in annotation_columns(store)] == ["expert"]
    with pytest.raises(
        NotFoundError, match="no annotation column 'exprt'; did you mean"
    ):
        drop_annotations(store, ["exprt"])


def test_find_cells__by_id_and_by_dataset_path(store: Store) -> None:
    assert find_cells(store, cell_ids=[6, 7, 1]).tolist() == [6, -1, 1]
    got = find_cells(
        store,
        datasets=["bm", "lmu", "bm"],
        paths=["BLA/BLA_3.png", "BLA/BLA_3.png", "NGS/NGS_5.png"],
    )
    assert got.tolist() == [4, -1, 6]
    with pytest.raises(InvalidArgumentError):
        find_cells(store)


def test_annotations__rows_go_with_a_removed_dataset(store: Store) -> None:
    write_annotations(store, [1, 4], {"expert": ["BAS", "BLA"]})
    store.remove("dataset", "bm")
    assert store.sql("SELECT cell_id FROM annotations ORDER BY 1").rows == [(1,)]
