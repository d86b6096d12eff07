"""Every command's ``--help`` example runs against a store built like the demo's.

The store is built as ``scripts/demo.sh`` builds ``demo-out/store`` (same names:
models ``tiny-simclr`` and ``tiny-random``, heads ``bm-linear`` and ``subtype``,
neighbour table ``nn_simclr``; same synth seed and patients per subtype, so the same
patient ids), only smaller and with untrained (``--method none``) models. Each test
runs in a folder holding a fresh copy as ``demo-out/store`` (and the images as
``demo-out/data``), so the examples run verbatim, in their order.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cytostore.cli import main

#: Commands whose examples are not run here, and why.
NOT_RUN = {
    "pretrain": "trains a backbone (minutes)",
    "embed": "embeds every cell again",
    "merge": "needs sharded embedding runs",
    "synth": "writes thousands of images",
    "mil": "trains attention-MIL heads over folds",
    "probe": "trains heads over folds",
    "compare": "trains heads over folds for each model",
    "import-model": "needs a downloaded checkpoint (tests/embedder/test_import_model)",
    "serve": "runs a web server until stopped (tests/serve)",
}
#: Example lines that cannot run here (matched by a substring), and why.
NOT_RUN_LINES = {
    "exports/": "a lab's own export",
    "my_cell.png": "the user's own image",
    "/mnt/data/lmu": "the images must have moved there first",
    "second_opinion.csv": "the annotator's own file",
}


def _examples(command: click.Command) -> list[str]:
    """Return the command lines of the ``Example:`` block of ``command``'s help."""
    text = (command.help or "").split("Example:", 1)
    assert len(text) == 2, f"{command.name}: its help has no 'Example:' block"
    lines: list[str] = []
    for raw in text[1].splitlines():
        line = raw.strip()
        if line == "\b":
            continue
        if lines and (lines[-1].endswith("\\") or not _complete(lines[-1])):
            lines[-1] = lines[-1].removesuffix("\\").rstrip() + " " + line
        elif line:
            lines.append(line)
        elif lines:
            break  # the block ends at its first blank line
    return lines


def _complete(line: str) -> bool:
    """Whether ``line`` closes its quotes (a quoted SQL may span lines)."""
    try:
        shlex.split(line, comments=True)
    except ValueError:
        return False
    return True


def _commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(main)
    assert isinstance(main, click.Group)
    found = [("cytostore", main)]
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        found.append((name, cmd))
    return found


def _cases() -> list[object]:
    cases: list[object] = []
    for name, cmd in _commands():
        for i, line in enumerate(_examples(cmd)):
            marks = []
            argv = shlex.split(line, comments=True)
            why = NOT_RUN.get(argv[1] if len(argv) > 1 else "")
            why = why or next((w for s, w in NOT_RUN_LINES.items() if s in line), None)
            if argv[0] != "cytostore":
                why = f"not a cytostore command ({argv[0]})"
            if why:
                marks.append(pytest.mark.skip(reason=why))
            cases.append(pytest.param(name, i, line, id=f"{name}-{i}", marks=marks))
    return cases


@pytest.fixture(scope="session")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``demo-out/data`` and ``demo-out/store``, named as the demo."""
    from cytostore.heads import mil

    base = tmp_path_factory.mktemp("demo_like")
    store = "demo-out/store"
    steps = [
        "synth demo-out/data --cells-per-dataset 100 --patients-per-subtype 5 --seed 0",
        f"ingest {store} demo-out/data --workers 1",
        f"pretrain {store} --name tiny-simclr --method none --backbone tiny "
        "--crop-px 32",
        f"pretrain {store} --name tiny-random --method none --backbone tiny "
        "--crop-px 32 --seed 1",
        f"embed {store} --model tiny-simclr --device cpu",
        f"embed {store} --model tiny-random --device cpu",
        f"probe {store} --model tiny-simclr --label label --where \"dataset = 'bm'\" "
        "--min-count 2 --name bm-linear --device cpu",
        f"neighbors {store} --model tiny-simclr -k 10 --into nn_simclr",
    ]
    cwd = Path.cwd()
    os.chdir(base)
    try:
        for step in steps:
            result = CliRunner().invoke(main, shlex.split(step))
            assert result.exit_code == 0, (step, result.output, result.exception)
        # The demo's `mil ... --folds 5`, cheaper (few epochs, few bootstrap draws).
        mil(store, "tiny-simclr", folds=2, max_epochs=2, n_boot=10, name="subtype")
    finally:
        os.chdir(cwd)
    return base


@pytest.fixture
def demo_dir(demo_like: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo-like store as ``./demo-out/store`` (cwd)."""
    shutil.copytree(demo_like / "demo-out" / "store", tmp_path / "demo-out" / "store")
    (tmp_path / "demo-out" / "data").symlink_to(demo_like / "demo-out" / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_help_examples__every_command_has_some(
    demo_like: Path,
) -> None:
    for name, cmd in _commands():
        examples = _examples(cmd)
        assert examples, f"{name}: an empty Example block"
        for line in examples:
            argv = shlex.split(line, comments=True)
            if argv[0] == "cytostore" and not any(s in line for s in NOT_RUN_LINES):
                assert "demo-store" not in line and "my-store" not in line, line


@pytest.mark.parametrize(("command", "index", "line"), _cases())
def test_help_examples__run_on_the_demo_store(
    demo_dir: Path, command: str, index: int, line: str
) -> None:
    cmd = dict(_commands())[command]
    runner = CliRunner()
    # Earlier lines of the same block run first: they set up what a line relies on
    # (e.g. `tag --add review` before the search over tags).
    for before in _examples(cmd)[:index]:
        argv = shlex.split(before, comments=True)
        if argv[0] == "cytostore" and argv[1] not in NOT_RUN:
            runner.invoke(main, argv[1:])
    argv = shlex.split(line, comments=True)
    result = runner.invoke(main, argv[1:])
    assert result.exit_code == 0, (line, result.output, result.exception)
