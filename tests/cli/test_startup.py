"""A command imports only what it uses: torch and Lightning stay out of light commands.

Each command runs in a fresh interpreter (``python -c``) that calls
``cytostore.cli.main`` in-process with ``standalone_mode=False`` and then prints
the deep-learning packages found in ``sys.modules``. Store and SQL commands import
none of them; ``embed`` and ``search --image`` import torch but not Lightning or
lightly; ``pretrain`` is the command that imports Lightning.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cytostore.store import Store

ROOT = Path(__file__).resolve().parents[2]
HEAVY = frozenset({"torch", "torchvision", "lightly", "pytorch_lightning", "lightning"})
LIGHTNING = frozenset({"lightly", "pytorch_lightning", "lightning"})

# Runs each argv list of sys.argv[1] (JSON) in this process, printing after each
# one line "HEAVY <json>": the heavy top-level packages imported so far.
_CHILD = f"""
import json, sys
from cytostore.cli import main
heavy = {sorted(HEAVY)!r}
for args in json.loads(sys.argv[1]):
    main.main(args, prog_name="cytostore", standalone_mode=False)
    found = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
    print("HEAVY " + json.dumps({{"args": args, "heavy": found}}), flush=True)
"""


def _heavy_imports(*commands: list[str]) -> list[set[str]]:
    """Return the heavy packages imported after each command, run in one new process."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(commands)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY ")]
    assert len(lines) == len(commands), proc.stdout[-3000:]
    return [set(json.loads(ln[len("HEAVY ") :])["heavy"]) for ln in lines]


@pytest.fixture(scope="module")
def store_dir(embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the embedded store (360 cells, one set) for this module."""
    dest = tmp_path_factory.mktemp("startup") / "store"
    return Path(shutil.copytree(embedded_store, dest))


LIGHT_COMMANDS = {
    "help": ["--help"],
    "search-cell": ["search", "{S}", "--cell", "1", "-k", "5"],
    "search-where": ["search", "{S}", "--cell", "1", "--where", "dataset = 'bm'"],
    "neighbors": ["neighbors", "{S}", "-k", "3", "--into", "knn3"],
    "sql": ["sql", "{S}", "SELECT count(*) FROM cells"],
    "info": ["info", "{S}"],
    "ls": ["ls", "{S}"],
    "models": ["models", "{S}"],
    "export": ["export", "{S}", "{OUT}"],
    "verify": ["verify", "{S}"],
    "gc": ["gc", "{S}", "--dry-run"],
    "tag": ["tag", "{S}", "--where", "cell_id = 1", "--add", "startup"],
    "rm": ["rm", "{S}", "model", "random-tiny", "--cascade", "--dry-run"],
    "select": [
        "select",
        "{S}",
        "--model",
        "random-tiny",
        "-n",
        "5",
        "--strategy",
        "typicality",
        "--csv",
        "{OUT}.csv",
        "--no-montage",
    ],
    "map": [
        "map",
        "{S}",
        "--model",
        "random-tiny",
        "--method",
        "pca",
        "--out",
        "{OUT}.png",
    ],
}


@pytest.mark.parametrize("name", sorted(LIGHT_COMMANDS))
def test_light_command__imports_no_torch_or_lightning(
    name: str, store_dir: Path, tmp_path: Path
) -> None:
    args = [
        a.format(S=store_dir, OUT=tmp_path / "parquet") for a in LIGHT_COMMANDS[name]
    ]
    (heavy,) = _heavy_imports(args)
    assert heavy == set(), f"cytostore {name} imported {sorted(heavy)}"


def test_embed_and_search_image__import_torch_but_not_lightning(
    embedded_store: Path, tmp_path: Path
) -> None:
    from cytostore.embedder import register_random_model

    path = Path(shutil.copytree(embedded_store, tmp_path / "store"))
    store = Store.open(path)
    register_random_model(store, "random-b", backbone="tiny", crop_px=32, seed=1)
    image = store.cell_paths([1])[0]
    after_embed, after_search = _heavy_imports(
        ["embed", str(path), "--model", "random-b", "--device", "cpu"],
        [
            "search",
            str(path),
            "--image",
            str(image),
            "--model",
            "random-tiny",
            "--device",
            "cpu",
            "-k",
            "3",
        ],
    )
    assert "torch" in after_embed
    assert after_search & LIGHTNING == set(), sorted(after_search)


def _imports(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """Yield ``(module imported, at module level?)`` for every import in ``tree``."""
    top = set(map(id, ast.iter_child_nodes(tree)))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            yield name, id(node) in top


def test_lightning__is_reached_only_from_inside_pretrain() -> None:
    package = ROOT / "cytostore"
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): (
            list(_imports(ast.parse(p.read_text())))
        )
        for p in package.rglob("*.py")
    }
    # Modules that import Lightning or lightly when they are imported ...
    heavy = {
        m
        for m, imports in modules.items()
        if any(at_top and n.split(".")[0] in LIGHTNING for n, at_top in imports)
    }
    assert heavy, "no module imports Lightning: the check below checks nothing"
    # ... and, transitively, the modules importing those at module level.
    while True:
        more = {
            m
            for m, imports in modules.items()
            if m not in heavy and any(t and n in heavy for n, t in imports)
        }
        if not more:
            break
        heavy |= more
    assert heavy <= {
        "cytostore.embedder.train",
        "cytostore.embedder.monitor",
        "cytostore.embedder.methods",
    }, sorted(heavy)
    # Outside them, only a function body of embedder.pretrain imports one.
    callers = {
        m
        for m, imports in modules.items()
        if m not in heavy
        and any(n in heavy or n.split(".")[0] in LIGHTNING for n, _ in imports)
    }
    assert callers == {"cytostore.embedder.pretrain"}, sorted(callers)


@pytest.mark.slow
def test_pretrain__is_the_command_that_imports_lightning(
    synthetic_store_copy: Path,
) -> None:
    (heavy,) = _heavy_imports(
        [
            "pretrain",
            str(synthetic_store_copy),
            "--name",
            "startup-simclr",
            "--backbone",
            "tiny",
            "--epochs",
            "1",
            "--crop-px",
            "32",
            "--batch-size",
            "32",
            "--device",
            "cpu",
        ]
    )
    assert {"torch", "lightly"} <= heavy
    assert heavy & {"pytorch_lightning", "lightning"}
