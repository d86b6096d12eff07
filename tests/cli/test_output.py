"""Every command's output: quiet stderr off a terminal, one JSON document, formats.

The subprocess test runs each command as a user would, stdout and stderr pipes (not a
terminal), at the default verbosity: stderr may hold cytostore's ``warning:`` lines
and closing summaries, never a progress frame, a third-party warning, tip or INFO
line; ``--format json`` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from cytostore.cli import main
from cytostore.cli._common import (
    FORMATS,
    format_number,
    render_report,
    render_rows,
)
from cytostore.store import Store

#: What a third party (tqdm, Lightning, torch, Python's warnings) writes to stderr.
_NOISE = [
    ("a progress frame", re.compile(r"\r|\d+%\|")),
    ("a log line of another library", re.compile(r"^(INFO|DEBUG|WARNING)\b", re.M)),
    ("Lightning's advert", re.compile(r"Tip:|litlogger")),
    ("a Python warning", re.compile(r"\w+Warning\b|\.py:\d+: |warnings\.warn")),
    ("a traceback", re.compile(r"Traceback|site-packages")),
]


def _noise(stderr: str) -> list[str]:
    """The kinds of third-party noise found in ``stderr`` (empty: quiet)."""
    return [what for what, pattern in _NOISE if pattern.search(stderr)]


def test_noise__flags_what_the_issue_saw() -> None:
    seen = (
        "\rsynth:   0%|          | 0/1200 [00:00<?, ?image/s]\r\n"
        "INFO pytorch_lightning.utilities.rank_zero: GPU available: False\n"
        "INFO pytorch_lightning.utilities.rank_zero: 💡 Tip: try litlogger\n"
        ".venv/lib/python3.11/site-packages/pytorch_lightning/utilities/_pytree.py:21:"
        " `isinstance(treespec, LeafSpec)` is deprecated\n"
    )
    assert _noise(seen) == [what for what, _ in _NOISE]
    assert _noise("warning: bm: 3 images unreadable\nembedded 36 cells\n") == []


@pytest.fixture(scope="module")
def stores(
    embedded_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """A writable copy of the embedded store, and a folder for new things."""
    work = tmp_path_factory.mktemp("output")
    (work / "notes.csv").write_text("cell_id,note\n1,blurry\n2,ok\n")
    yield {
        "S": Path(shutil.copytree(embedded_store, work / "S")),
        "T": work / "T",
        "data": work / "data",
        "parquet": work / "parquet",
        "weights": _timm_weights(work / "test_vit.pth"),
        "notes": work / "notes.csv",
        "map_png": work / "map.png",
    }


def _timm_weights(path: Path) -> Path:
    """A tiny timm ViT's own state dict, for import-model."""
    import timm
    import torch

    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), path)
    return path


def _chains(p: dict[str, Path]) -> list[list[list[str]]]:
    """Every command once, in two chains (on two stores) that can run side by side.

    Within a chain each command finds what the ones before it made.
    """
    s, t = str(p["S"]), str(p["T"])
    (lmu_root,) = (
        Store.open(p["S"])
        .sql("SELECT root FROM datasets WHERE dataset = 'lmu'")
        .rows[0]
    )
    cpu = ["--device", "cpu"]
    new_store = [
        ["synth", str(p["data"]), "--cells-per-dataset", "21"],
        ["ingest", t, str(p["data"]), "--workers", "1"],
        [
            "pretrain",
            t,
            "--name",
            "ssl",
            "--method",
            "simclr",
            "--backbone",
            "tiny",
            "--crop-px",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--monitor-cells",
            "0",
            *cpu,
        ],
        [
            "import-model",
            t,
            "--name",
            "vit",
            "--weights",
            str(p["weights"]),
            "--arch",
            "timm:test_vit",
            "--input-px",
            "32",
        ],  # fmt: skip
        ["embed", t, "--model", "ssl", "--shard", "1/1", *cpu],
        ["merge", t, "--model", "ssl"],
        ["build-index", t],
        ["search", t, "--cell", "1", "-k", "3"],
        ["neighbors", t, "-k", "3", "--into", "knn3"],
        ["tag", t, "--where", "cell_id < 5", "--add", "review"],
        ["export", t, str(p["parquet"])],
        ["verify", t],
        ["gc", t, "--dry-run"],
    ]
    embedded_store = [
        ["probe", s, "--label", "cell_type", "--kind", "knn", "--min-count", "3",
         "--name", "knn-ct", *cpu],
        ["predict", s, "--head", "knn-ct", "--where", "dataset = 'bm'"],
        ["explain", s, "--cell", "1", "--head", "knn-ct"],
        ["mil", s, "--where", "dataset = 'mll_helmholtz'", "--folds", "2",
         "--max-epochs", "2", "--name", "mil-bag", *cpu],
        ["compare", s, "--model", "random-tiny", "--label", "label", "--where",
         "dataset = 'mll_helmholtz'", "--folds", "2",
         "--png", str(p["T"].with_name("compare.png")), *cpu],
        ["sql", s, "SELECT * FROM heads"],
        ["map", s, "--model", "random-tiny", "--method", "pca", "--out",
         str(p["map_png"])],
        ["annotate", s, str(p["notes"])],
        ["audit", s, "--model", "random-tiny", "--label", "label", "--folds", "2",
         "--montage", str(p["T"].with_name("audit.png")), *cpu],
        ["select", s, "--model", "random-tiny", "-n", "5", "--strategy",
         "diversity", "--csv", str(p["T"].with_name("select.csv")), "--montage",
         str(p["T"].with_name("select.png"))],
        ["info", s],
        ["models", s],
        ["ls", s],
        ["relocate", s, "lmu", lmu_root],
        ["rm", s, "head", "knn-ct"],
    ]  # fmt: skip
    return [new_store, embedded_store]


def _run_chain(chain: list[list[str]]) -> list[str]:
    """Run each command with ``--format json``; return what was wrong."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failures = []
    for args in chain:
        run = subprocess.run(
            [sys.executable, "-m", "cytostore", *args, "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        if run.returncode != 0:
            failures.append(f"{args[0]}: exit {run.returncode}: {run.stderr[-800:]}")
            continue
        if noise := _noise(run.stderr):
            failures.append(f"{args[0]}: {', '.join(noise)} in {run.stderr!r}")
        try:
            json.loads(run.stdout)
        except json.JSONDecodeError as exc:
            failures.append(f"{args[0]}: stdout is not one JSON document: {exc}")
    return failures


def test_every_command__quiet_stderr_and_one_json_document(
    stores: dict[str, Path],
) -> None:
    chains = _chains(stores)
    listed = set(main.list_commands(click.Context(main))) - SERVERS
    assert {c[0] for chain in chains for c in chain} == listed, "a command is missing"
    with ThreadPoolExecutor(len(chains)) as pool:
        failures = [f for found in pool.map(_run_chain, chains) for f in found]
    assert not failures, "\n\n".join(failures)


#: Commands that run until stopped and print no result: tested in tests/serve.
SERVERS = {"serve"}


@pytest.mark.parametrize(
    "name", sorted(set(main.list_commands(click.Context(main))) - SERVERS)
)
def test_format_option__every_command_offers_the_four_formats(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    (fmt,) = [p for p in command.params if p.name == "fmt"]
    assert isinstance(fmt.type, click.Choice)
    assert tuple(fmt.type.choices) == FORMATS == ("table", "csv", "json", "jsonl")


def test_format_number__no_exponent_below_1e12() -> None:
    got = [format_number(x) for x in (45000.0, 123456789.0, -0.5, 1e12, 1 / 3)]
    assert got == ["45000", "123456789", "-0.5", "1e+12", "0.3333"]


def test_render_rows__table_folds_and_cuts_cells_csv_keeps_them() -> None:
    long = '{"classes": [' + ", ".join(f'"C{i}"' for i in range(40)) + "]}"
    rows = [[1, 45000.0, "two\nlines"], [2, 0.12345, long]]
    table = render_rows(["id", "n", "doc"], rows, "table").splitlines()
    assert table[:3] == [
        "id  n       doc",
        "--  ------  " + "-" * 64,
        "1   45000   two lines",
    ]
    assert table[3] == "2   0.1235  " + long[:63] + "…"
    csv_lines = render_rows(["id", "n", "doc"], rows, "csv").splitlines()
    assert csv_lines[0] == "id,n,doc" and csv_lines[-1].endswith(
        long.replace('"', '""') + '"'
    )
    assert "45000.0" in render_rows(["id", "n", "doc"], rows, "csv")


def test_render_report__four_formats_of_one_object() -> None:
    report = {"model": "m", "shard": None, "loss": float("nan"), "n": 45000,
              "data": {"bm": 60, "lmu": 60, "mean": [1, 2]}, "tags": [],
              "mean": [0.5, 0.25]}  # fmt: skip
    assert render_report(report, "table").splitlines() == [
        "model  m",
        "n      45000",
        "data   bm=60, lmu=60, mean=[1, 2]",
        "mean   0.5, 0.25",
    ]
    assert render_report(report, "csv").splitlines() == [
        "model,shard,loss,n,data,tags,mean",
        'm,,,45000,"{""bm"": 60, ""lmu"": 60, ""mean"": [1, 2]}",[],"[0.5, 0.25]"',
    ]
    (line,) = render_report(report, "jsonl").splitlines()
    assert json.loads(line) == json.loads(render_report(report, "json"))
    assert json.loads(line)["loss"] is None
