"""The store's boundary under attack: user SQL and every --where, --label, --by.

Each attack must end in exit 2 with one line naming what is allowed, no traceback,
and the store's file tree byte-for-byte unchanged (and no file written outside it).
The counts of attacks tried are module constants the Reliability benchmark reads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.store import Store

MODEL = "random-tiny"
# Targets an attack would write to or read from, outside the store.
OUTSIDE = "/tmp/cytostore-attack-out"

#: SQL typed into ``cytostore sql`` (and the web page's query box later).
SQL_ATTACKS = [
    f"COPY (SELECT * FROM cells) TO '{OUTSIDE}.csv'",
    f"COPY cells TO '{OUTSIDE}.parquet' (FORMAT PARQUET)",
    "SELECT content FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    f"ATTACH '{OUTSIDE}.duckdb' AS x (READ_WRITE)",
    f"EXPORT DATABASE '{OUTSIDE}-dir'",
    "SET memory_limit = '100GB'",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT 1; COPY (SELECT 42) TO 'vectors/1.ids'",
    "SELECT 1; SELECT 2",
    "COPY (SELECT 42) TO 'vectors/1.ids'",
    "DROP TABLE cells",
    "DELETE FROM cells",
    "UPDATE cells SET label = 'x'",
    "INSERT INTO tags VALUES (1, 'x', now())",
    "CREATE TABLE t AS SELECT 1",
    "CREATE MACRO m() AS 1",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "SELECT * FROM 'catalog.duckdb'",
    "SELECT * FROM read_parquet('/etc/passwd')",
    "WITH x AS (SELECT 1) SELECT * FROM read_text('/etc/passwd')",
]

#: Filters given to every --where option.
WHERE_ATTACKS = [
    f"1=1); COPY (SELECT * FROM cells) TO '{OUTSIDE}.csv'; SELECT cell_id FROM "
    "cell_meta WHERE (1=1",
    "1=1); DROP TABLE heads; --",
    "1=1) UNION SELECT cell_id FROM cells WHERE (1=1",
    "1=1; DELETE FROM cells",
    "label = 'BLA'; CREATE TABLE pwn (x INT)",
    "(SELECT count(*) FROM read_text('/etc/passwd')) > 0",
    "EXISTS (SELECT * FROM read_csv('/etc/passwd'))",
    "cell_id IN (SELECT 1 FROM glob('/etc/*'))",
    f"1 = (COPY cells TO '{OUTSIDE}.csv')",
    "1=1 /* an unterminated comment",
    "   ",
    ")",
]

#: Column-name options (not filters): an identifier or nothing.
NAME_ATTACKS = ['label"; DROP TABLE cells; --', "label) OR (1=1", "x y"]

WHERE_COMMANDS = {
    "search": ["search", "{store}", "--cell", "1", "-k", "3", "--where"],
    "probe": ["probe", "{store}", "--label", "label", "--where"],
    "probe-train": [
        "probe",
        "{store}",
        "--label",
        "label",
        "--test-where",
        "dataset = 'bm'",
        "--train-where",
    ],
    "mil": ["mil", "{store}", "--where"],
    "embed": ["embed", "{store}", "--model", MODEL, "--where"],
    "neighbors": ["neighbors", "{store}", "--into", "knn3", "-k", "3", "--where"],
    "predict": ["predict", "{store}", "--head", "h", "--where"],
    "pretrain": ["pretrain", "{store}", "--name", "p", "--epochs", "1", "--where"],
    "tag": ["tag", "{store}", "--add", "x", "--where"],
}


def _tree(root: Path) -> dict[str, str]:
    """Return ``{relative path: sha256}`` of every file under ``root``."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _outside_files() -> list[str]:
    return [p for p in ("/tmp",) for p in os.listdir(p) if "cytostore-attack" in p]


@pytest.fixture(scope="module")
def attack_store(
    embedded_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The embedded synthetic store plus a linear head ``h`` (module-scoped)."""
    path = Path(
        shutil.copytree(embedded_store, tmp_path_factory.mktemp("attack") / "s")
    )
    result = CliRunner().invoke(
        main,
        ["probe", str(path), "--label", "label", "--min-count", "5", "--name", "h"],
    )
    assert result.exit_code == 0, result.output
    return path


def _assert_refused(store: Path, args: list[str]) -> None:
    before = _tree(store)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (args, result.output)
    assert "Traceback" not in result.output
    error_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
    assert len(error_lines) == 1, result.stderr
    assert result.stdout == ""
    assert _tree(store) == before
    assert _outside_files() == []


@pytest.mark.parametrize("query", SQL_ATTACKS)
def test_sql__attack_is_refused_and_changes_nothing(
    attack_store: Path, query: str
) -> None:
    _assert_refused(attack_store, ["sql", str(attack_store), query])


@pytest.mark.parametrize("where", WHERE_ATTACKS)
@pytest.mark.parametrize("command", sorted(WHERE_COMMANDS))
def test_where__attack_is_refused_and_changes_nothing(
    attack_store: Path, command: str, where: str
) -> None:
    args = [a.format(store=attack_store) for a in WHERE_COMMANDS[command]]
    _assert_refused(attack_store, [*args, where])


@pytest.mark.parametrize("name", NAME_ATTACKS)
@pytest.mark.parametrize("option", ["--label", "--by"])
def test_column_option__attack_is_refused(
    attack_store: Path, option: str, name: str
) -> None:
    args = ["probe", str(attack_store), "--label", "label", option, name]
    if option == "--label":
        args = ["probe", str(attack_store), "--label", name]
    _assert_refused(attack_store, args)


def test_sql__allowed_query_kinds_run(attack_store: Path) -> None:
    store = Store.open(attack_store)
    assert store.sql("SELECT count(*) FROM cells").rows == [(360,)]
    assert store.sql("VALUES (1), (2)").rows == [(1,), (2,)]
    assert ("cell_id",) == store.sql("DESCRIBE cells").rows[0][:1]
    assert store.sql("SHOW TABLES").rows
    assert store.sql("SUMMARIZE cells").rows
    assert store.sql("EXPLAIN SELECT 1").rows
    pivot = store.sql("PIVOT (SELECT dataset FROM cells) ON dataset USING count(*)")
    assert sorted(pivot.columns) == ["bm", "lmu", "mll_helmholtz"]
    assert pivot.rows == [(120, 120, 120)]


def test_sql__planted_view_and_macro_cannot_reach_files(
    embedded_store_copy: Path,
) -> None:
    """A shared catalog may carry views that read files: they fail, nothing leaks."""
    import duckdb

    con = duckdb.connect(str(embedded_store_copy / "catalog.duckdb"))
    con.execute("CREATE VIEW evil AS SELECT * FROM read_text('/etc/passwd')")
    con.execute("CREATE MACRO leak() AS TABLE SELECT * FROM read_text('/etc/passwd')")
    con.execute(
        "CREATE OR REPLACE VIEW cell_meta AS SELECT c.*, "
        "(SELECT count(*) FROM read_text('/etc/passwd')) AS n FROM cells c"
    )
    con.close()
    store = Store.open(embedded_store_copy)  # opening runs nothing from it
    for query in ("SELECT * FROM evil", "SELECT * FROM leak()"):
        result = CliRunner().invoke(main, ["sql", str(embedded_store_copy), query])
        assert result.exit_code == 2 and "disabled by configuration" in result.stderr
    # The planted cell_meta fails the same way instead of reading the file.
    result = CliRunner().invoke(
        main, ["search", str(embedded_store_copy), "--cell", "1", "--where", "1=1"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert store.search(1, k=2)[1].shape == (1, 2)  # no filter: still searchable


def test_cell_paths__planted_outside_path_is_refused(
    synthetic_store_copy: Path,
) -> None:
    import duckdb

    from cytostore.errors import StoreCorruptError

    con = duckdb.connect(str(synthetic_store_copy / "catalog.duckdb"))
    con.execute("UPDATE cells SET path = '/etc/passwd' WHERE cell_id = 1")
    con.execute("UPDATE cells SET path = '../../../../etc/passwd' WHERE cell_id = 2")
    con.close()
    store = Store.open(synthetic_store_copy)
    for cell in (1, 2):
        with pytest.raises(StoreCorruptError, match="outside|not a relative path"):
            store.cell_paths([cell])
    assert store.cell_paths([3])[0].is_file()


def test_where__is_one_expression_not_text(attack_store: Path) -> None:
    """A filter that closes its parenthesis cannot widen or chain the query."""
    from cytostore.errors import InvalidWhereError

    store = Store.open(attack_store)
    with pytest.raises(InvalidWhereError, match="not one SQL expression"):
        store.where_ids("dataset = 'bm') OR (1=1")
    assert store.where_ids("dataset = 'bm'").size == 120
