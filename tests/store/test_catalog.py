from __future__ import annotations

import threading
from pathlib import Path

import pytest
from lock_holder import catalog_locked

from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    InvalidWhereError,
    ReadOnlyError,
    StoreBusyError,
    StoreNotFoundError,
    UnknownColumnError,
)
from cytostore.store import Store
from cytostore.store.migrations import MIGRATIONS


def _cells(dataset: str, names: list[str]) -> list[dict[str, object]]:
    return [{"dataset": dataset, "path": n, "label": n[:3]} for n in names]


def test_store_open__missing_store_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="cytostore ingest"):
        Store.open(tmp_path / "nope")


def test_store_create__applies_every_migration_once(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    Store.open(tmp_path / "s")  # re-open: nothing re-applied
    ids = store.sql("SELECT id FROM schema_migrations ORDER BY id").column("id")
    assert ids == [m[0] for m in MIGRATIONS]


def test_add_cells__ids_are_1_to_n_and_readding_is_a_no_op(tmp_store: Store) -> None:
    first = tmp_store.add_cells(_cells("lmu", ["BAS_1", "EOS_1", "EOS_2"]))
    assert first.tolist() == [1, 2, 3]
    again = tmp_store.add_cells(_cells("lmu", ["EOS_2", "NEW_1", "BAS_1"]))
    assert again.tolist() == [3, 4, 1]
    assert tmp_store.sql("SELECT count(*) FROM cells").rows == [(4,)]
    # the same path in another dataset is another cell
    other = tmp_store.add_cells(_cells("bm", ["BAS_1"]))
    assert other.tolist() == [5]


def test_add_cells__clears_a_previous_skip_of_that_path(tmp_store: Store) -> None:
    tmp_store.add_skipped([("lmu", "BAS_1", "truncated")])
    tmp_store.add_cells(_cells("lmu", ["BAS_1"]))
    assert tmp_store.sql("SELECT count(*) FROM skipped").rows == [(0,)]


def test_upsert_patients__metadata_columns_reach_cell_meta(tmp_store: Store) -> None:
    tmp_store.add_cells(
        [
            {"dataset": "mll", "path": "a.tif", "patient_id": "AQK", "label": "NPM1"},
            {
                "dataset": "mll",
                "path": "b.tif",
                "patient_id": "BHG",
                "label": "control",
            },
        ]
    )
    tmp_store.upsert_patients(
        "mll",
        [
            {
                "patient_id": "AQK",
                "bag_label": "NPM1",
                "age": 71.5,
                "sex": "F",
                "pb_myeloblast": 60.0,
                "label": "clash",
            },
            {
                "patient_id": "BHG",
                "bag_label": "control",
                "age": 40.0,
                "sex": "M",
                "pb_myeloblast": 0.0,
                "label": "clash",
            },
        ],
    )
    assert tmp_store.where_ids("age > 60").tolist() == [1]
    assert tmp_store.where_ids("pb_myeloblast = 0 AND sex = 'M'").tolist() == [2]
    # a metadata column named like a cells column is kept under patient_<name>
    assert "patient_label" in tmp_store.columns("cell_meta")
    assert tmp_store.cell_meta([2, 1], ["label"]).rows == [("control",), ("NPM1",)]


def test_where_ids__invalid_sql_and_missing_column_are_one_line_errors(
    tmp_store: Store,
) -> None:
    tmp_store.add_cells(_cells("lmu", ["BAS_1"]))
    with pytest.raises(UnknownColumnError, match="DESCRIBE cell_meta") as info:
        tmp_store.where_ids("no_such_column > 1")
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidWhereError):
        tmp_store.where_ids("label = = 'x'")
    with pytest.raises(EmptySelectionError, match="selects no cells"):
        tmp_store.where_ids("label = 'XYZ'")
    assert tmp_store.where_ids("label = 'XYZ'", empty_ok=True).size == 0


def test_sql__refuses_writes(tmp_store: Store) -> None:
    tmp_store.add_cells(_cells("lmu", ["BAS_1"]))
    for statement in (
        "DELETE FROM cells",
        "CREATE TABLE x (a INT)",
        "DROP TABLE cells",
    ):
        with pytest.raises(ReadOnlyError, match="read-only"):
            tmp_store.sql(statement)
    assert tmp_store.sql("SELECT count(*) FROM cells").rows == [(1,)]


def test_transaction__an_error_rolls_everything_back(tmp_store: Store) -> None:
    with pytest.raises(RuntimeError):
        with tmp_store.transaction() as con:
            con.execute("INSERT INTO skipped VALUES ('x', 'y', 'z', now())")
            raise RuntimeError("crash")
    assert tmp_store.sql("SELECT count(*) FROM skipped").rows == [(0,)]


def test_info__counts_per_dataset(tmp_store: Store, tmp_path: Path) -> None:
    tmp_store.upsert_dataset("lmu", "lmu", tmp_path, 0.07072, 18365)
    tmp_store.add_cells(_cells("lmu", ["BAS_1", "EOS_1"]))
    tmp_store.add_skipped([("lmu", ".DS_Store", "hidden file")])
    info = tmp_store.info()
    assert info["cells"] == 2 and info["skipped"] == 1
    (row,) = info["datasets"]
    assert (row["dataset"], row["cells"], row["labels"], row["skipped"]) == (
        "lmu",
        2,
        2,
        1,
    )


def test_cell_paths__joins_dataset_root(tmp_store: Store, tmp_path: Path) -> None:
    tmp_store.upsert_dataset("lmu", "lmu", tmp_path, 0.07072)
    ids = tmp_store.add_cells(_cells("lmu", ["BAS/BAS_0001.tiff"]))
    assert tmp_store.cell_paths(ids) == [tmp_path.resolve() / "BAS/BAS_0001.tiff"]


def test_connect__reader_reports_busy_while_a_writer_holds_the_catalog(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "s")
    impatient = Store(store.root, busy_timeout_s=0.3)
    with catalog_locked(store.catalog_path):
        with pytest.raises(StoreBusyError, match="busy") as info:
            impatient.sql("SELECT 1")
        assert "\n" not in str(info.value)
        assert "CYTOSTORE_BUSY_TIMEOUT_S" in str(info.value)  # the fix
    assert impatient.sql("SELECT 42").rows == [(42,)]  # released: works again


@pytest.mark.parametrize(
    ("holder", "want", "message"),
    [
        ("write", "read", "another process is writing to it"),
        ("write", "write", "another process is writing to it"),
        ("read", "write", "another process is reading"),
    ],
)
def test_connect__busy_error_says_whether_a_reader_or_a_writer_holds_it(
    tmp_path: Path, holder: str, want: str, message: str
) -> None:
    store = Store.create(tmp_path / "s")
    impatient = Store(store.root, busy_timeout_s=0.3)
    with catalog_locked(store.catalog_path, holder):
        with pytest.raises(StoreBusyError, match=message):
            if want == "read":
                impatient.sql("SELECT 1")
            else:
                impatient.upsert_dataset("d", "folder", tmp_path, None)


def test_connect__patient_reader_gets_through_once_the_writer_lets_go(
    tmp_path: Path,
) -> None:
    """A reader started while the catalog is locked answers after the release."""
    store = Store.create(tmp_path / "s")
    patient = Store(store.root, busy_timeout_s=60)
    answers: list[object] = []
    with catalog_locked(store.catalog_path):
        reader = threading.Thread(
            target=lambda: answers.append(patient.sql("SELECT 42").rows)
        )
        reader.start()  # waits (or has not started yet): either way it must succeed
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert answers == [[(42,)]]


def test_upsert_patients__text_in_a_number_column_is_a_clear_error(
    tmp_store: Store,
) -> None:
    tmp_store.upsert_patients("d", [{"patient_id": "p1", "age": 61, "blasts": 0.4}])
    with pytest.raises(InvalidArgumentError, match="'age' holds numbers.*'unknown'"):
        tmp_store.upsert_patients("d", [{"patient_id": "p2", "age": "unknown"}])
    tmp_store.upsert_patients("d", [{"patient_id": "p3", "age": "", "blasts": None}])
    rows = tmp_store.sql("SELECT patient_id, age FROM patients ORDER BY 1").rows
    assert rows == [("p1", 61.0), ("p3", None)]
