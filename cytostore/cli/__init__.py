"""The ``cytostore`` command line: thin click commands over the Python API.

Commands are registered by name and imported on first use (click's lazy-loading
pattern): ``cytostore sql`` imports ``cytostore.cli.sql`` and what it needs, never
the modules of ``pretrain`` or ``embed`` and the deep-learning libraries behind them.
``cytostore --help`` imports every command module for its one-line help; those
modules keep their heavy imports inside the command functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import click

from cytostore.cli._common import CytostoreGroup, configure_output

__all__ = ["main", "COMMANDS"]

#: Every command: its name → ``"module:attribute"`` of its click command.
COMMANDS: dict[str, str] = {
    "audit": "cytostore.cli.audit:audit",
    "annotate": "cytostore.cli.annotate:annotate",
    "build-index": "cytostore.cli.build_index:build_index",
    "compare": "cytostore.cli.compare:compare",
    "embed": "cytostore.cli.embed:embed",
    "explain": "cytostore.cli.explain:explain",
    "export": "cytostore.cli.export:export",
    "gc": "cytostore.cli.maintenance:gc",
    "import-model": "cytostore.cli.import_model:import_model",
    "info": "cytostore.cli.info:info",
    "ingest": "cytostore.cli.ingest:ingest",
    "ls": "cytostore.cli.maintenance:ls",
    "map": "cytostore.cli.map:map_command",
    "merge": "cytostore.cli.merge:merge",
    "mil": "cytostore.cli.mil:mil",
    "models": "cytostore.cli.models:models",
    "neighbors": "cytostore.cli.neighbors:neighbors",
    "predict": "cytostore.cli.predict:predict",
    "pretrain": "cytostore.cli.pretrain:pretrain",
    "probe": "cytostore.cli.probe:probe",
    "relocate": "cytostore.cli.maintenance:relocate",
    "rm": "cytostore.cli.rm:rm",
    "search": "cytostore.cli.search:search",
    "select": "cytostore.cli.select:select",
    "serve": "cytostore.cli.serve:serve",
    "sql": "cytostore.cli.sql:sql",
    "synth": "cytostore.cli.synth:synth",
    "tag": "cytostore.cli.tag:tag",
    "verify": "cytostore.cli.maintenance:verify",
}


class _LazyCommands(MutableMapping[str, click.Command]):
    """The group's ``commands``: names known up front, modules imported on access.

    ``click.Group`` reads its commands only through this mapping (``get_command``
    looks one up, ``list_commands`` sorts the names), so listing the commands or
    reporting an unknown one imports nothing, and running one imports its module
    alone. ``main.commands[name]`` keeps working for tests and docs.
    """

    def __init__(self, spec: dict[str, str]) -> None:
        self._spec = dict(spec)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module_name, _, attr = self._spec[name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self._spec[name]} is not a click command")
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._spec.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._spec and name not in self._loaded:
            raise KeyError(name)
        self._spec.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._spec.keys() | self._loaded.keys()))

    def __len__(self) -> int:
        return len(self._spec.keys() | self._loaded.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._spec or name in self._loaded


@click.group(
    cls=CytostoreGroup,
    commands=_LazyCommands(COMMANDS),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="cytostore")
@click.option(
    "-v", "--verbose", is_flag=True, help="Log what the library does (stderr)."
)
def main(verbose: bool) -> None:
    """cytostore: a self-supervised feature store for leukaemia cytomorphology.

    Turn folders of single-cell images into a store of embeddings with SQL over all
    metadata, similarity search, linear probes and attention-MIL heads.

    \b
    Example:
        cytostore synth demo-out/data --cells-per-dataset 400 --patients-per-subtype 5
        cytostore ingest demo-out/store demo-out/data
        cytostore info demo-out/store
    """
    configure_output(verbose)
