"""Kill matrix: each long command is SIGKILLed at each of its fault points, then rerun.

The real CLI runs in a child process with ``CYTOSTORE_FAULT=<point>[:N]`` (see
:mod:`cytostore.store.faults`): it dies exactly there, as under ``kill -9``. The same
command is then run again normally (``pretrain`` with ``--resume``) and must succeed
and leave the store as a clean run leaves it: every selected cell exactly once, the
same vectors bit for bit (same model, same seed), an index holding exactly the
committed rows, no temporary file left, and ``verify`` finding no problem.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytostore.store import Store

MODEL = "random-tiny"
KILLED = -signal.SIGKILL
EMBED = ["embed", "--model", MODEL, "--device", "cpu"]
MERGE = ["merge", "--model", MODEL]
NEIGHBORS = ["neighbors", "--model", MODEL, "-k", "5", "--into", "knn"]


def _cli(
    *args: str | Path, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cytostore ARGS`` in a child, dying at ``fault`` if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOSTORE_FAULT")}
    env["OMP_NUM_THREADS"] = "1"  # as in this process (see _one_torch_thread)
    if fault is not None:
        env["CYTOSTORE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "cytostore", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread here and in the children: bit-equal results need the same
    thread count on both sides (and other test modules may leave it at 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _kill(args: list[str | Path], fault: str) -> None:
    died = _cli(*args, fault=fault)
    assert died.returncode == KILLED, (
        f"{fault} was not reached (exit {died.returncode}): {died.stderr[-2000:]}"
    )


def _rerun(args: list[str | Path]) -> None:
    """Run the command again, normally (in this process: a child adds ~2 s)."""
    from click.testing import CliRunner

    from cytostore.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def _copy(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


def _checked(root: Path) -> Store:
    """Open the store after asserting no temporary is left and ``verify`` is clean."""
    from cytostore.store.verify import verify

    left = [str(p.relative_to(root)) for p in root.rglob("*.tmp")]
    assert left == []
    store = Store.open(root)
    assert [p.as_dict() for p in verify(store).problems] == []
    return store


def _set_rows(root: Path, model: str = MODEL) -> tuple[np.ndarray, np.ndarray]:
    """Assert one set's invariants; return its ids and rows, sorted by cell id."""
    import faiss

    store = _checked(root)
    es = store.embedding_set(model)
    ids, rows = store.vectors(model)
    assert np.unique(ids).size == ids.size == es.n_vectors
    suffix = ".f32" if es.dtype == "float32" else ".f16"
    for name, width in ((".ids", 8), (suffix, es.row_bytes)):
        size = (root / "vectors" / f"{es.set_id}{name}").stat().st_size
        assert size == es.n_vectors * width  # no uncommitted tail
    idx = faiss.read_index(str(root / "indexes" / f"{es.set_id}.faiss"))
    assert idx.ntotal == es.n_indexed == es.n_vectors
    assert np.array_equal(np.sort(faiss.vector_to_array(idx.id_map)), np.sort(ids))
    order = np.argsort(ids)
    return ids[order], np.asarray(rows)[order]


@pytest.fixture(scope="module")
def model_template(
    synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The 360-cell synthetic store with ``random-tiny`` (crop 32, seed 0), cached."""
    from cytostore.embedder import register_random_model
    from cytostore.embedder.cache import build_cache

    root = _copy(synthetic_store, tmp_path_factory.mktemp("kill") / "model")
    store = Store.open(root)
    card = register_random_model(store, MODEL, backbone="tiny", crop_px=32, seed=0)
    build_cache(store, card.preprocessing, store.where_ids(), workers=1)
    return root


@pytest.fixture(scope="module")
def clean_embedded(
    model_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """:func:`model_template` after one uninterrupted ``embed`` (the reference)."""
    from cytostore.embedder import embed

    root = _copy(model_template, tmp_path_factory.mktemp("kill") / "clean")
    embed(Store.open(root), MODEL, device="cpu")
    return root


@pytest.fixture(scope="module")
def reference(clean_embedded: Path) -> tuple[np.ndarray, np.ndarray]:
    """Ids and rows of the clean run; every cell of the store is selected."""
    ids, rows = _set_rows(clean_embedded)
    assert np.array_equal(ids, Store.open(clean_embedded).where_ids())
    return ids, rows


EMBED_POINTS = [
    "embed.before_append",  # batches embedded, nothing written
    "vectors.before_commit",  # rows and ids on disk, catalog not committed
    "vectors.after_commit",  # rows committed, index not touched
    "embed.before_index",  # writer closed, index not updated
    "index.before_replace",  # new index in its temp file
    "index.before_catalog",  # new index in place, n_indexed not recorded
]


@pytest.mark.parametrize("point", EMBED_POINTS)
def test_embed__killed_at_point_then_rerun_is_complete(
    point: str,
    model_template: Path,
    reference: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    root = _copy(model_template, tmp_path / "store")
    args: list[str | Path] = [EMBED[0], root, *EMBED[1:]]
    _kill(args, point)
    _rerun(args)
    ids, rows = _set_rows(root)
    assert np.array_equal(ids, reference[0])
    assert np.array_equal(rows, reference[1])  # bit for bit


@pytest.fixture(scope="module")
def shard_template(
    model_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """:func:`model_template` with shards 1/2 and 2/2 embedded, not merged."""
    from cytostore.embedder import embed

    root = _copy(model_template, tmp_path_factory.mktemp("kill") / "shards")
    for shard in ("1/2", "2/2"):
        embed(Store.open(root), MODEL, shard=shard, device="cpu")
    return root


MERGE_POINTS = [
    "vectors.before_commit:2",  # second shard's rows written, not committed
    "merge.after_shard",  # first shard committed to the full set
    "index.before_catalog",  # full index written, n_indexed not recorded
    "merge.before_drop",  # full set complete and indexed, shards still listed
    "merge.mid_drop:2",  # shard rows dropped, some shard files left
]


@pytest.mark.parametrize("point", MERGE_POINTS)
def test_merge__killed_at_point_then_rerun_is_complete(
    point: str,
    shard_template: Path,
    reference: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    root = _copy(shard_template, tmp_path / "store")
    args: list[str | Path] = [MERGE[0], root, *MERGE[1:]]
    _kill(args, point)
    _rerun(args)
    ids, rows = _set_rows(root)
    assert np.array_equal(ids, reference[0])
    assert np.array_equal(rows, reference[1])
    store = Store.open(root)
    (full,) = store.embedding_sets()
    assert full.shard is None
    names = {
        p.name.split(".")[0]
        for d in ("vectors", "indexes")
        for p in (root / d).iterdir()
    }
    assert names == {str(full.set_id)}  # every shard file is gone


def _neighbor_rows(root: Path) -> list[tuple[object, ...]]:
    return Store.open(root).sql("SELECT * FROM knn ORDER BY cell_id, rank").rows


@pytest.fixture(scope="module")
def knn_template(
    clean_embedded: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The clean embedded store holding an older 3-neighbour table ``knn``."""
    root = _copy(clean_embedded, tmp_path_factory.mktemp("kill") / "knn")
    Store.open(root).neighbors("knn", 3, model=MODEL)
    return root


@pytest.fixture(scope="module")
def clean_knn(
    knn_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[object, ...]]:
    """The 5-neighbour table an uninterrupted run writes."""
    root = _copy(knn_template, tmp_path_factory.mktemp("kill") / "knn_clean")
    Store.open(root).neighbors("knn", 5, model=MODEL)
    return _neighbor_rows(root)


NEIGHBOR_POINTS = [
    ("neighbors.before_write", 3),  # found, nothing written: old table intact
    ("neighbors.in_transaction", 3),  # table replaced inside an open transaction
    ("neighbors.after_commit", 5),  # committed: the new table
]


@pytest.mark.parametrize(("point", "k_after_kill"), NEIGHBOR_POINTS)
def test_neighbors__killed_at_point_then_rerun_is_complete(
    point: str,
    k_after_kill: int,
    knn_template: Path,
    clean_knn: list[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    root = _copy(knn_template, tmp_path / "store")
    args: list[str | Path] = [NEIGHBORS[0], root, *NEIGHBORS[1:]]
    _kill(args, point)
    store = Store.open(root)
    n_cells = store.embedding_set(MODEL).n_vectors
    # the kill leaves the old table or the new one, whole, never a mix
    assert store.sql(
        "SELECT k, n_rows FROM neighbor_tables WHERE name = 'knn'"
    ).rows == [(k_after_kill, k_after_kill * n_cells)]
    assert store.sql("SELECT count(*) FROM knn").rows == [(k_after_kill * n_cells,)]
    _rerun(args)
    _checked(root)
    rows = _neighbor_rows(root)
    assert rows == clean_knn
    per_cell = (
        Store.open(root)
        .sql(
            "SELECT count(*), count(DISTINCT cell_id), min(n), max(n) FROM "
            "(SELECT cell_id, count(*) AS n FROM knn GROUP BY cell_id)"
        )
        .rows
    )
    assert per_cell == [(n_cells, n_cells, 5, 5)]


PRETRAIN_OPTIONS = [
    "--name", "ssl", "--method", "simclr", "--backbone", "tiny", "--epochs", "2",
    "--crop-px", "32", "--batch-size", "32", "--device", "cpu", "--precision",
    "fp32", "--monitor-cells", "0", "--where", "dataset = 'lmu'", "--seed", "0",
]  # fmt: skip


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def clean_pretrained(
    model_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], list[float]]:
    """The weights and per-epoch losses of an uninterrupted 2-epoch run."""
    import torch

    from cytostore.embedder import load_card

    root = _copy(model_template, tmp_path_factory.mktemp("kill") / "pretrained")
    _rerun(["pretrain", root, *PRETRAIN_OPTIONS])
    weights = torch.load(root / "models" / "ssl" / "backbone.pt", weights_only=True)
    return dict(weights), load_card(Store.open(root), "ssl").extra["loss_history"]


# (point, whether the kill comes after the last epoch's checkpoint: then the resume
# trains no more and registers the checkpointed run unchanged)
PRETRAIN_POINTS = [
    ("pretrain.after_checkpoint", False),  # epoch 1 checkpointed
    ("pretrain.before_checkpoint_replace:2", False),  # epoch 2 in .tmp only
    ("pretrain.before_register", True),  # trained, nothing registered
    ("register.after_weights", True),  # backbone.pt written, no card, no row
    ("register.after_card", True),  # weights and card, no catalog row
]


@pytest.mark.parametrize(("point", "trained"), PRETRAIN_POINTS)
def test_pretrain_resume__killed_at_point_then_resume_registers_the_run(
    point: str,
    trained: bool,
    model_template: Path,
    clean_pretrained: tuple[dict[str, Any], list[float]],
    tmp_path: Path,
) -> None:
    import torch

    from cytostore.embedder import Encoder, load_card
    from cytostore.embedder.card import sha256_file

    root = _copy(model_template, tmp_path / "store")
    ckpt = root / "models" / "ssl" / "checkpoints" / "last.ckpt"
    _kill(["pretrain", root, *PRETRAIN_OPTIONS], point)
    assert Store.open(root).sql(
        "SELECT count(*) FROM models WHERE name = 'ssl'"
    ).rows == [(0,)]
    killed_ckpt = _sha256(ckpt)
    _rerun(["pretrain", root, *PRETRAIN_OPTIONS, "--resume"])
    store = _checked(root)
    rows = store.sql("SELECT name, sha256 FROM models WHERE name = 'ssl'").rows
    card = load_card(store, "ssl")
    weights = root / "models" / "ssl" / "backbone.pt"
    assert rows == [("ssl", card.sha256)] and card.sha256 == sha256_file(weights)
    assert card.epochs == 2 and len(card.extra["loss_history"]) == 2
    Encoder.load(store, "ssl", device="cpu")  # checks the weights against the card
    # after the last epoch the resume trains nothing; before it, it goes on
    assert (_sha256(ckpt) == killed_ckpt) is trained
    # same seed: the interrupted and resumed run ends where a clean run ends
    clean_weights, clean_losses = clean_pretrained
    assert card.extra["loss_history"] == clean_losses
    got = torch.load(weights, weights_only=True)
    assert got.keys() == clean_weights.keys()
    for key, value in got.items():
        assert torch.equal(value, clean_weights[key]), key
