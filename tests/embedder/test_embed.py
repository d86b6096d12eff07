from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from embedder_helpers import add_cells

from cytostore.embedder import Encoder, embed, register_random_model
from cytostore.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
    InvalidWhereError,
    StoreWriteError,
    UnknownColumnError,
    UnknownModelError,
)
from cytostore.store import Store
from cytostore.store import vectors as vectors_mod

embed_mod = importlib.import_module("cytostore.embedder.embed")

MODEL = "rnd"


@pytest.fixture
def model_store(cell_store: Store) -> Store:
    register_random_model(cell_store, MODEL, backbone="tiny", crop_px=32, seed=0)
    return cell_store


def _reference(store: Store) -> tuple[np.ndarray, np.ndarray]:
    ids = store.where_ids()
    x = Encoder.load(store, MODEL, device="cpu").embed(ids)
    return ids, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_embed__vectors_equal_encoder_output_and_index_ids_are_cells(
    model_store: Store,
) -> None:
    report = embed(model_store, MODEL, batch_size=5, device="cpu")
    assert (report["embedded"], report["n_vectors"], report["n_indexed"]) == (
        12,
        12,
        12,
    )
    ids, x = model_store.vectors(MODEL)
    want_ids, want = _reference(model_store)
    assert sorted(ids.tolist()) == want_ids.tolist()
    np.testing.assert_allclose(x, want[np.searchsorted(want_ids, ids)], atol=1e-5)
    es = model_store.embedding_set(MODEL)
    assert (es.index_factory, es.metric, es.dtype, es.dim) == (
        "Flat",
        "cosine",
        "float32",
        x.shape[1],
    )
    assert es.preprocessing is not None and es.preprocessing["crop_px"] == 32
    _, hits = model_store.search(int(ids[0]), k=3, include_self=True)
    assert hits[0, 0] == ids[0]


def test_embed__rerun_adds_only_new_cells(model_store: Store) -> None:
    embed(model_store, MODEL, where="dataset = 'fine'", device="cpu")
    assert model_store.embedding_set().n_vectors == 5
    new = add_cells(model_store, "fine", 2, seed=3)
    report = embed(model_store, MODEL, device="cpu")
    assert (report["already"], report["embedded"], report["n_vectors"]) == (5, 9, 14)
    assert embed(model_store, MODEL, device="cpu")["embedded"] == 0
    ids, _ = model_store.vectors()
    assert np.unique(ids).size == 14 and set(new.tolist()) <= set(ids.tolist())


def test_embed__float16_and_hnsw(model_store: Store) -> None:
    report = embed(model_store, MODEL, dtype="float16", index="HNSW32", device="cpu")
    _, x = model_store.vectors()
    assert x.dtype == np.float16 and report["index"] == "HNSW32"
    _, want = _reference(model_store)
    assert np.abs(np.asarray(x, np.float32) - want[:12]).max() < 2e-3


def test_embed__shards_then_merge_equal_one_run(
    model_store: Store, tmp_path: Path
) -> None:
    for i in (1, 2, 3):
        report = embed(model_store, MODEL, shard=f"{i}/3", device="cpu")
        assert report["shard"] == f"{i}/3" and report["embedded"] == 4
    model_store.merge(MODEL)
    ids, x = model_store.vectors(MODEL)
    want_ids, want = _reference(model_store)
    assert sorted(ids.tolist()) == want_ids.tolist()
    np.testing.assert_allclose(x, want[np.searchsorted(want_ids, ids)], atol=1e-5)
    assert embed(model_store, MODEL, shard="1/3", device="cpu")["embedded"] == 0


def test_embed__shards_of_re_registered_weights_are_not_merged(
    model_store: Store,
) -> None:
    first = embed(model_store, MODEL, shard="1/2", device="cpu")
    card = register_random_model(
        model_store, MODEL, backbone="tiny", crop_px=32, seed=1, overwrite=True
    )
    embed(model_store, MODEL, shard="2/2", device="cpu")
    sets = {s.shard: s for s in model_store.embedding_sets()}
    assert sets["2/2"].weights_sha256 == card.sha256
    assert sets["1/2"].weights_sha256 not in (None, card.sha256)
    with pytest.raises(ConfigMismatchError, match="different weights") as info:
        model_store.merge(MODEL)
    assert "\n" not in str(info.value)
    assert sorted(sets) == sorted(s.shard for s in model_store.embedding_sets())
    with pytest.raises(ConfigMismatchError, match="other weights"):
        embed(model_store, MODEL, shard="1/2", device="cpu")  # resuming it, too
    assert model_store.embedding_set(first["set_id"]).n_vectors == 6


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "nope"}, UnknownModelError, "nope"),
        ({"where": "dataset = "}, InvalidWhereError, "invalid --where"),
        ({"where": "no_col = 1"}, UnknownColumnError, "no_col"),
        ({"where": "dataset = 'none'"}, EmptySelectionError, "selects no cells"),
        ({"index": "IVF4,PQ7"}, InvalidArgumentError, "invalid FAISS index factory"),
        ({"dtype": "int8"}, InvalidArgumentError, "--dtype"),
        ({"shard": "4/3"}, InvalidArgumentError, "--shard"),
    ],
)
def test_embed__bad_input_is_one_line_error(
    model_store: Store, kwargs: dict, error: type, match: str
) -> None:
    args = {"model": MODEL, **kwargs}
    model = args.pop("model")
    with pytest.raises(error, match=match) as info:
        embed(model_store, model, device="cpu", **args)
    assert "\n" not in str(info.value)
    assert model_store.embedding_sets() == []


def test_embed__model_dimension_differs_from_existing_set(model_store: Store) -> None:
    es = model_store.create_embedding_set(MODEL, 7)
    assert es.dim == 7
    with pytest.raises(DimensionMismatchError, match="7-d"):
        embed(model_store, MODEL, device="cpu")


def test_embed__disk_full_midway_then_rerun_completes(
    model_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = vectors_mod._write_all
    calls = {"n": 0}

    def fail_on_third(f, data):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:  # third batch, vector rows
            real(f, data[: len(data) // 3])
            raise OSError(28, "No space left on device")
        real(f, data)

    monkeypatch.setattr(vectors_mod, "_write_all", fail_on_third)
    monkeypatch.setattr(embed_mod, "COMMIT_CELLS", 2)  # one commit per batch
    with pytest.raises(StoreWriteError, match="disk is full"):
        embed(model_store, MODEL, batch_size=2, device="cpu")
    assert model_store.embedding_set().n_vectors == 4
    monkeypatch.setattr(vectors_mod, "_write_all", real)
    assert embed(model_store, MODEL, batch_size=2, device="cpu")["embedded"] == 8
    ids, x = model_store.vectors()
    want_ids, want = _reference(model_store)
    assert sorted(ids.tolist()) == want_ids.tolist()
    np.testing.assert_allclose(x, want[np.searchsorted(want_ids, ids)], atol=1e-5)


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import importlib
    from cytostore.embedder import embed
    from cytostore.store import Store, vectors
    importlib.import_module("cytostore.embedder.embed").COMMIT_CELLS = 2
    store, when = Store.open(sys.argv[1]), sys.argv[2]
    real, n = vectors._write_all, {"writes": 0}
    def write(f, data):
        n["writes"] += 1
        if when == "mid-append" and n["writes"] == 3:  # batch 2 rows written, ids not
            real(f, data)
            os.kill(os.getpid(), signal.SIGKILL)
        real(f, data)
    vectors._write_all = write
    def progress(done, total):
        if when == "after-commit" and done >= 4:
            os.kill(os.getpid(), signal.SIGKILL)
    embed(store, "rnd", batch_size=2, device="cpu", progress=progress)
    """
)


@pytest.mark.parametrize(
    "when", [pytest.param("after-commit", marks=pytest.mark.slow), "mid-append"]
)
def test_embed__kill_9_then_rerun_has_every_cell_once(
    model_store: Store, when: str
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(model_store.root), when],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    partial = model_store.embedding_set().n_vectors
    assert 0 < partial < 12
    report = embed(model_store, MODEL, batch_size=2, device="cpu")
    assert report["already"] == partial and report["n_vectors"] == 12
    ids, x = model_store.vectors()
    want_ids, want = _reference(model_store)
    assert sorted(ids.tolist()) == want_ids.tolist()
    np.testing.assert_allclose(x, want[np.searchsorted(want_ids, ids)], atol=1e-5)
    assert model_store.search(int(ids[0]), k=11)[1].min() > 0


def test_embed__batches_are_gathered_into_fewer_commits(
    model_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    real = vectors_mod.VectorWriter.append

    def counting(self, ids, vectors):  # type: ignore[no-untyped-def]
        commits.append(len(ids))
        return real(self, ids, vectors)

    monkeypatch.setattr(vectors_mod.VectorWriter, "append", counting)
    monkeypatch.setattr(embed_mod, "COMMIT_CELLS", 5)
    monkeypatch.setattr(embed_mod, "COMMIT_EVERY_S", 1e9)  # cells decide, not time
    report = embed(model_store, MODEL, batch_size=2, device="cpu")
    assert report["embedded"] == 12 and sum(commits) == 12
    assert commits == [6, 6]  # 2+2+2 >= 5, then the rest at the end
