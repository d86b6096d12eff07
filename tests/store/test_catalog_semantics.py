"""Catalog semantics to keep: patient upserts, SQL errors, transactions."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.errors import (
    InvalidArgumentError,
    InvalidWhereError,
    UnknownColumnError,
)
from cytostore.store import Store


def _patients(store: Store) -> list[tuple[object, ...]]:
    return store.sql("SELECT * FROM patients ORDER BY dataset, patient_id").rows


def _cells(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"dataset": "mll", "path": f"c{i}.tif", "patient_id": "A", "label": "x"}
        for i in range(start, start + n)
    ]


# ------------------------------------------------------------ upsert_patients
def test_upsert_patients__same_patient_replaces_its_row(tmp_store: Store) -> None:
    tmp_store.upsert_patients(
        "mll",
        [{"patient_id": "A", "bag_label": "NPM1", "age": 50, "bmi": 20.5, "note": "x"}],
    )
    tmp_store.upsert_patients("mll", [{"patient_id": "A", "age": 51, "bmi": 22}])
    res = tmp_store.sql("SELECT * FROM patients")
    assert res.columns == [
        "dataset", "patient_id", "bag_label", "age", "sex", "bmi", "note",
    ]  # fmt: skip
    # the fixed columns and the given extra columns are replaced (an absent fixed
    # column becomes NULL); an extra column absent from the new rows keeps its value
    assert res.rows == [("mll", "A", None, 51.0, None, 22.0, "x")]


def test_upsert_patients__same_id_in_another_dataset_is_another_patient(
    tmp_store: Store,
) -> None:
    tmp_store.upsert_patients("mll", [{"patient_id": "A", "age": 50}])
    tmp_store.upsert_patients("bm", [{"patient_id": "A", "age": 70}])
    rows = [(r[0], r[1], r[3]) for r in _patients(tmp_store)]
    assert rows == [("bm", "A", 70.0), ("mll", "A", 50.0)]


def test_upsert_patients__new_column_with_text_and_numbers_is_text(
    tmp_store: Store,
) -> None:
    tmp_store.upsert_patients(
        "mll", [{"patient_id": "A", "score": 1}, {"patient_id": "B", "score": "high"}]
    )
    tmp_store.upsert_patients("mll", [{"patient_id": "C", "score": 7.5}])
    types = dict(
        tmp_store.sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'patients'"
        ).rows
    )
    assert types["score"] == "VARCHAR" and types["age"] == "DOUBLE"
    got = tmp_store.sql("SELECT patient_id, score FROM patients ORDER BY 1").rows
    assert got == [("A", "1"), ("B", "high"), ("C", "7.5")]


def test_upsert_patients__text_in_a_number_column_rejects_the_whole_call(
    tmp_store: Store,
) -> None:
    tmp_store.upsert_patients("mll", [{"patient_id": "A", "age": 50, "bmi": 20.0}])
    before = _patients(tmp_store)
    with pytest.raises(InvalidArgumentError, match="'bmi' holds numbers.*'high'"):
        tmp_store.upsert_patients(
            "mll",
            [
                {"patient_id": "A", "age": 99, "ldh": 5},  # valid on its own
                {"patient_id": "B", "bmi": "high"},
            ],
        )
    assert _patients(tmp_store) == before
    assert "ldh" not in tmp_store.columns("patients")  # the ALTER rolled back too
    assert "ldh" not in tmp_store.columns("cell_meta")


def test_upsert_patients__bad_column_name_is_rejected(tmp_store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="not a valid"):
        tmp_store.upsert_patients("mll", [{"patient_id": "A", 'x"; DROP': 1}])
    assert _patients(tmp_store) == []
    assert tmp_store.columns("patients") == [
        "dataset", "patient_id", "bag_label", "age", "sex",
    ]  # fmt: skip


# ------------------------------------------------------------ SQL errors
@pytest.mark.parametrize(
    ("query", "error", "expect"),
    [
        ("SELEC 1", InvalidWhereError, "syntax error"),
        ("SELECT * FROM cell_meta WHERE (", InvalidWhereError, "syntax error"),
        ("SELECT 'a' + 1", InvalidWhereError, "candidate function"),
        ("SELECT no_such_column FROM cell_meta", UnknownColumnError, "no_such_column"),
        ("SELECT * FROM no_such_table", UnknownColumnError, "no_such_table"),
    ],
)
def test_sql__bad_query_is_a_one_line_error(
    tmp_store: Store, query: str, error: type[Exception], expect: str
) -> None:
    tmp_store.add_cells(_cells(1))
    with pytest.raises(error, match=expect) as info:
        tmp_store.sql(query)
    assert "\n" not in str(info.value)


def test_cli_sql__syntax_error_prints_one_line_and_no_traceback(
    tmp_store: Store,
) -> None:
    result = CliRunner().invoke(main, ["sql", str(tmp_store.root), "SELEC 1"])
    assert result.exit_code in (1, 2)  # refused input (2) or a store error (1)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "syntax error" in errors[0]
    assert "Traceback" not in result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit


# ------------------------------------------------------------ transactions
def test_transaction__read_inside_sees_the_uncommitted_write(
    tmp_store: Store,
) -> None:
    tmp_store.add_cells(_cells(2))
    with tmp_store.transaction():
        new = tmp_store.add_cells(_cells(3, start=2))  # joins the transaction
        tmp_store.upsert_patients("mll", [{"patient_id": "A", "age": 64}])
        assert new.tolist() == [3, 4, 5]
        assert tmp_store.sql("SELECT count(*) FROM cells").rows == [(5,)]
        got = tmp_store.sql("SELECT cell_id FROM cell_meta WHERE age = 64 ORDER BY 1")
        assert got.rows == [(1,), (2,), (3,), (4,), (5,)]
        assert tmp_store.where_ids().tolist() == [1, 2, 3, 4, 5]
    assert Store.open(tmp_store.root).where_ids("age = 64").size == 5


def test_transaction__an_exception_rolls_back_every_nested_write(
    tmp_store: Store,
) -> None:
    tmp_store.add_cells(_cells(2))
    with pytest.raises(RuntimeError, match="crash"):
        with tmp_store.transaction():
            tmp_store.add_cells(_cells(3, start=2))
            with tmp_store.transaction() as inner:
                tmp_store.upsert_patients("mll", [{"patient_id": "A", "ldh": 1.0}])
                inner.execute("DELETE FROM cells WHERE cell_id = 1")
                assert tmp_store.where_ids().tolist() == [2, 3, 4, 5]
                raise RuntimeError("crash")
    again = Store.open(tmp_store.root)
    assert again.where_ids().tolist() == [1, 2]
    assert _patients(again) == []
    assert "ldh" not in again.columns("cell_meta")
    assert not tmp_store.in_write_transaction()


def test_transaction__store_is_usable_after_a_rollback(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    with pytest.raises(ValueError, match="boom"):
        with store.transaction():
            store.add_cells(_cells(1))
            raise ValueError("boom")
    assert store.add_cells(_cells(1)).tolist() == [1]  # the id was not used up
    assert store.sql("SELECT count(*) FROM cells").rows == [(1,)]


def test_add_cells__ids_of_removed_cells_are_never_given_out_again(
    tmp_store: Store,
) -> None:
    rows = [{"dataset": "d", "path": f"{i}.png"} for i in range(3)]
    assert tmp_store.add_cells(rows).tolist() == [1, 2, 3]
    with tmp_store.transaction() as con:  # as `rm patient` does
        con.execute("DELETE FROM cells WHERE cell_id = 3")
    again = tmp_store.add_cells([{"dataset": "d", "path": "new.png"}])
    assert again.tolist() == [4]
    assert tmp_store.add_cells(rows[:2]).tolist() == [1, 2]  # re-ingest: no-op
