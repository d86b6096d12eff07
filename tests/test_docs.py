"""Every command has help, an example, and is documented in docs/cli.md and README."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cytostore.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_command__has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    command = main.commands[name]
    assert command.help and command.help.strip().splitlines()[0].endswith(".")
    assert "Example:" in result.output
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{name} {param.opts} has no help text"


@pytest.mark.parametrize("name", COMMANDS)
def test_command__is_in_the_cli_reference(name: str) -> None:
    assert f"## cytostore {name}\n" in (ROOT / "docs" / "cli.md").read_text()


def test_readme__first_screen_shows_the_two_commands() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen
