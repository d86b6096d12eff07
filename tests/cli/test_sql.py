from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.store import Store


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    store = Store.create(tmp_path / "s")
    store.upsert_dataset("lmu", "lmu", tmp_path, 0.07072)
    store.add_cells(
        [
            {"dataset": "lmu", "path": "BAS/BAS_0001.tiff", "label": "BAS"},
            {"dataset": "lmu", "path": "EOS/EOS_0001.tiff", "label": "EOS"},
        ]
    )
    return store.root


QUERY = "SELECT cell_id, label FROM cells ORDER BY cell_id"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("table", "cell_id  label\n-------  -----\n1        BAS\n2        EOS\n"),
        ("csv", "cell_id,label\n1,BAS\n2,EOS\n"),
        ("jsonl", '{"cell_id": 1, "label": "BAS"}\n{"cell_id": 2, "label": "EOS"}\n'),
    ],
)
def test_sql_cli__formats(small_store: Path, fmt: str, expected: str) -> None:
    result = CliRunner().invoke(main, ["sql", str(small_store), QUERY, "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.output == expected


def test_sql_cli__json_is_one_array_of_objects(small_store: Path) -> None:
    result = CliRunner().invoke(
        main, ["sql", str(small_store), QUERY, "--format", "json"]
    )
    assert result.exit_code == 0
    assert json.loads(result.output) == [
        {"cell_id": 1, "label": "BAS"},
        {"cell_id": 2, "label": "EOS"},
    ]


def test_sql_cli__write_refused_with_exit_2(small_store: Path) -> None:
    result = CliRunner().invoke(main, ["sql", str(small_store), "DELETE FROM cells"])
    assert result.exit_code == 2
    assert "read-only" in result.output
    assert "Traceback" not in result.output
    assert Store.open(small_store).sql("SELECT count(*) FROM cells").rows == [(2,)]


def test_sql_cli__missing_store_exit_1_and_no_folder_made(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sql", str(tmp_path / "nope"), "SELECT 1"])
    assert result.exit_code == 1
    assert "no store at" in result.output
    assert not (tmp_path / "nope").exists()


def test_info_cli__table_and_json(small_store: Path) -> None:
    result = CliRunner().invoke(main, ["info", str(small_store)])
    assert result.exit_code == 0
    assert result.output.splitlines()[2].split()[:5] == ["lmu", "lmu", "2", "0", "2"]
    assert "2 cells, 0 patients, 0 skipped" in result.stderr  # the summary line
    doc = json.loads(
        CliRunner().invoke(main, ["info", str(small_store), "--format", "json"]).stdout
    )
    assert doc["cells"] == 2 and doc["datasets"][0]["dataset"] == "lmu"


def test_sql__timeout_stops_a_long_query_with_one_line(synthetic_store: Path) -> None:
    query = "SELECT sum(hash(range)) FROM range(100000000000)"  # minutes of work
    result = CliRunner().invoke(
        main, ["sql", str(synthetic_store), query, "--timeout", "0.5"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: the query ran past 0.5 s and was stopped: narrow it (a WHERE, a "
        "LIMIT) or raise --timeout"
    )
