"""The exit-code house rules (docs/cli-conventions.md), over every command.

- a well-formed name the store lacks (model, head, set, cell, patient, column,
  dataset, the store itself) exits 1 with one ``Error:`` line that says what to do
  and suggests the close match, and no usage line;
- malformed or refused input exits 2 with the *subcommand's* usage line and one
  ``Error:`` line;
- no command leaves a store folder behind when the store did not exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main

MODEL = "random-tiny"


@pytest.fixture(scope="module")
def store(embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded synthetic store plus a linear head ``lin`` (module-scoped)."""
    path = Path(shutil.copytree(embedded_store, tmp_path_factory.mktemp("err") / "s"))
    result = CliRunner().invoke(
        main,
        ["probe", str(path), "--label", "label", "--min-count", "5", "--name", "lin"],
    )
    assert result.exit_code == 0, result.output
    return path


#: (command line after STORE, what the one Error line must contain).
NOT_FOUND = {
    "search-model": (
        ["search", "{s}", "--cell", "1", "--model", "random-tiyn"],
        "did you mean 'random-tiny'?",
    ),
    "search-cell": (["search", "{s}", "--cell", "99999"], "no cell 99999"),
    "search-where-column": (
        ["search", "{s}", "--cell", "1", "--where", "lable = 'BAS'"],
        "Candidate bindings",
    ),
    "embed-model": (
        ["embed", "{s}", "--model", "random-tin", "--device", "cpu"],
        "no model 'random-tin' in",
    ),
    "neighbors-model": (
        ["neighbors", "{s}", "--into", "knn", "--model", "randomtiny"],
        "did you mean 'random-tiny'?",
    ),
    "predict-head": (["predict", "{s}", "--head", "lni"], "did you mean 'lin'?"),
    "explain-head": (
        ["explain", "{s}", "--head", "lin2", "--cell", "1"],
        "did you mean 'lin'?",
    ),
    "explain-cell": (
        ["explain", "{s}", "--head", "lin", "--cell", "99999"],
        "no cell 99999",
    ),
    "explain-pixels-cell": (
        ["explain", "{s}", "--head", "lin", "--cell", "99999", "--pixels"],
        "no cell 99999",
    ),
    "probe-column": (
        ["probe", "{s}", "--label", "lable"],
        "no column 'lable'; did you mean 'label'?",
    ),
    "sql-column": (
        ["sql", "{s}", "SELECT lable FROM cells"],
        "Candidate bindings",
    ),
    "sql-table": (["sql", "{s}", "SELECT * FROM cell"], "Did you mean"),
    "rm-model": (
        ["rm", "{s}", "model", "random-tin", "--dry-run"],
        "did you mean 'random-tiny'?",
    ),
    "rm-head": (["rm", "{s}", "head", "lim", "--dry-run"], "did you mean 'lin'?"),
    "map-model": (
        ["map", "{s}", "--model", "random-tiyn", "--method", "pca"],
        "did you mean 'random-tiny'?",
    ),
    "relocate-dataset": (
        ["relocate", "{s}", "lmx", "{s}"],
        "no dataset 'lmx'; did you mean 'lmu'?",
    ),
    "audit-label": (
        ["audit", "{s}", "--model", MODEL, "--label", "lable"],
        "no column 'lable'; did you mean 'label'?",
    ),
    "select-balance-column": (
        [
            "select",
            "{s}",
            "--model",
            MODEL,
            "-n",
            "3",
            "--strategy",
            "diversity",
            "--balance-by",
            "datset",
        ],
        "no column 'datset'; did you mean 'dataset'?",
    ),  # fmt: skip
    "compare-model": (
        [
            "compare",
            "{s}",
            "--model",
            MODEL,
            "--model",
            "random-tiyn",
            "--label",
            "label",
        ],
        "did you mean 'random-tiny'?",
    ),  # fmt: skip
}

#: (command line, the subcommand whose usage line must be printed).
MALFORMED = {
    "search-bad-int": (["search", "{s}", "--cell", "x"], "search"),
    "search-where-syntax": (["search", "{s}", "--cell", "1", "--where", ")"], "search"),
    "search-neither": (["search", "{s}"], "search"),
    "sql-write": (["sql", "{s}", "DELETE FROM cells"], "sql"),
    "sql-syntax": (["sql", "{s}", "SELEC 1"], "sql"),
    "probe-name": (["probe", "{s}", "--label", "x y"], "probe"),
    "neighbors-into": (["neighbors", "{s}", "--into", "cells"], "neighbors"),
    "explain-neither": (["explain", "{s}", "--head", "lin"], "explain"),
    "explain-method-without-pixels": (
        ["explain", "{s}", "--head", "lin", "--cell", "1", "--method", "ig"],
        "explain",
    ),
    "embed-shard": (
        ["embed", "{s}", "--model", MODEL, "--shard", "3/2", "--device", "cpu"],
        "embed",
    ),
    "rm-kind": (["rm", "{s}", "thing", "x"], "rm"),
    "map-method": (["map", "{s}", "--model", MODEL, "--method", "tsne"], "map"),
    "audit-name": (
        ["audit", "{s}", "--model", MODEL, "--label", "label", "--name", "a b"],
        "audit",
    ),
    "select-too-many": (
        ["select", "{s}", "--model", MODEL, "-n", "99999", "--strategy", "diversity"],
        "select",
    ),
    "select-no-head": (
        ["select", "{s}", "--model", MODEL, "-n", "3", "--strategy", "uncertainty"],
        "select",
    ),
    "annotate-no-file": (["annotate", "{s}", "{s}/no-such.csv"], "annotate"),
    "import-model-arch": (
        [
            "import-model",
            "{s}",
            "--name",
            "x",
            "--weights",
            __file__,
            "--arch",
            "dinobloom-xl",
        ],
        "import-model",
    ),  # fmt: skip
    "import-model-file": (
        [
            "import-model",
            "{s}",
            "--name",
            "x",
            "--weights",
            __file__,
            "--arch",
            "dinobloom-s",
        ],
        "import-model",
    ),  # fmt: skip
    "compare-twice": (
        ["compare", "{s}", "--model", MODEL, "--model", MODEL, "--label", "label"],
        "compare",
    ),
}

#: Every command that opens an existing store, with arguments that would run.
OPENS_STORE = {
    "annotate": ["annotate", "{s}", "{out}"],
    "audit": ["audit", "{s}", "--model", MODEL, "--label", "label"],
    "build-index": ["build-index", "{s}"],
    "compare": ["compare", "{s}", "--model", MODEL, "--label", "label"],
    "embed": ["embed", "{s}", "--model", MODEL],
    "explain": ["explain", "{s}", "--head", "lin", "--cell", "1"],
    "export": ["export", "{s}", "{out}"],
    "gc": ["gc", "{s}"],
    "import-model": [
        "import-model",
        "{s}",
        "--name",
        "x",
        "--weights",
        __file__,
        "--arch",
        "dinobloom-s",
    ],  # fmt: skip
    "info": ["info", "{s}"],
    "ls": ["ls", "{s}"],
    "map": ["map", "{s}", "--model", MODEL, "--method", "pca"],
    "merge": ["merge", "{s}"],
    "mil": ["mil", "{s}"],
    "models": ["models", "{s}"],
    "neighbors": ["neighbors", "{s}", "--into", "knn"],
    "predict": ["predict", "{s}", "--head", "lin"],
    "pretrain": ["pretrain", "{s}", "--name", "p", "--epochs", "1"],
    "probe": ["probe", "{s}", "--label", "label"],
    "relocate": ["relocate", "{s}", "lmu", "{out}"],
    "rm": ["rm", "{s}", "model", MODEL],
    "search": ["search", "{s}", "--cell", "1"],
    "select": ["select", "{s}", "--model", MODEL, "-n", "3", "--strategy", "diversity"],
    "serve": ["serve", "{s}", "--port", "0"],
    "sql": ["sql", "{s}", "SELECT 1"],
    "tag": ["tag", "{s}", "--where", "cell_id = 1", "--add", "x"],
    "verify": ["verify", "{s}"],
}


def _run(args: list[str], store: Path, out: Path | None = None):  # noqa: ANN202
    argv = [a.format(s=store, out=out) for a in args]
    return CliRunner().invoke(main, argv, prog_name="cytostore")


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error")]


@pytest.mark.parametrize("case", sorted(NOT_FOUND))
def test_cli__unknown_name_exits_1_with_one_line_and_a_suggestion(
    store: Path, case: str
) -> None:
    args, expect = NOT_FOUND[case]
    result = _run(args, store)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and expect in lines[0], result.stderr
    assert "Usage:" not in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_cli__malformed_input_exits_2_with_the_subcommand_usage(
    store: Path, case: str
) -> None:
    args, command = MALFORMED[case]
    result = _run(args, store)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Usage: cytostore {command} [OPTIONS]")
    assert f"Try 'cytostore {command} --help' for help." in result.stderr
    assert len(_error_lines(result.stderr)) == 1
    assert result.stdout == "" and "Traceback" not in result.output


@pytest.mark.parametrize("command", sorted(OPENS_STORE))
def test_cli__missing_store_exits_1_and_creates_nothing(
    tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "no-store"
    result = _run(OPENS_STORE[command], missing, tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = _error_lines(result.stderr)
    assert lines == [
        f"Error: no store at {str(missing)!r} (no catalog.duckdb): create one with "
        f"'cytostore ingest {missing} DATA_PATH'"
    ]
    assert not missing.exists()


def test_cli__every_store_command_is_checked_for_a_missing_store() -> None:
    opens = set(main.commands) - {"ingest", "synth"}  # these two create what they fill
    assert opens == set(OPENS_STORE)
