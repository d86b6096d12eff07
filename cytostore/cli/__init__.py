"""The ``cytostore`` command line: thin click commands over the Python API."""

from __future__ import annotations

import logging

import click

from cytostore.cli._common import CytostoreGroup
from cytostore.cli.build_index import build_index
from cytostore.cli.embed import embed
from cytostore.cli.explain import explain
from cytostore.cli.export import export
from cytostore.cli.info import info
from cytostore.cli.ingest import ingest
from cytostore.cli.maintenance import gc, ls, relocate, verify
from cytostore.cli.merge import merge
from cytostore.cli.mil import mil
from cytostore.cli.models import models
from cytostore.cli.neighbors import neighbors
from cytostore.cli.predict import predict
from cytostore.cli.pretrain import pretrain
from cytostore.cli.probe import probe
from cytostore.cli.rm import rm
from cytostore.cli.search import search
from cytostore.cli.sql import sql
from cytostore.cli.synth import synth
from cytostore.cli.tag import tag

__all__ = ["main"]


@click.group(
    cls=CytostoreGroup, context_settings={"help_option_names": ["-h", "--help"]}
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
        cytostore synth demo-data --cells-per-dataset 600 --seed 0
        cytostore ingest demo-store demo-data
        cytostore info demo-store
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _command in (
    build_index,
    embed,
    explain,
    export,
    gc,
    info,
    ingest,
    ls,
    merge,
    mil,
    models,
    neighbors,
    predict,
    pretrain,
    probe,
    relocate,
    rm,
    search,
    sql,
    synth,
    tag,
    verify,
):
    main.add_command(_command)
