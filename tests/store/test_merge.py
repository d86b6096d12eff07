from __future__ import annotations

import numpy as np
import pytest
from vec_helpers import random_vectors

from cytostore.errors import (
    ConfigMismatchError,
    InvalidArgumentError,
    UnknownEmbeddingSetError,
)
from cytostore.store import Store
from cytostore.store.merge import parse_shard


def _embed_shard(
    store: Store,
    i: int,
    n: int,
    x: np.ndarray,
    dtype: str = "float16",
    weights: str | None = None,
) -> None:
    ids = store.where_ids()
    es = store.create_embedding_set(
        "m", x.shape[1], dtype=dtype, shard=f"{i}/{n}", weights_sha256=weights
    )
    mine = (ids - 1) % n == i - 1
    with store.vector_writer(es) as w:
        w.append(ids[mine], x[ids[mine] - 1])


def test_merge__equals_unsharded_set_bit_for_bit(cells_store: Store) -> None:
    x = random_vectors(2000, 12, seed=2)
    for i in (1, 2, 3):
        _embed_shard(cells_store, i, 3, x)
    assert cells_store.embedding_set("m@2/3").shard == "2/3"
    report = cells_store.merge()
    assert report["added"] == 2000 and report["shards"] == ["1/3", "2/3", "3/3"]
    assert [s.name for s in cells_store.embedding_sets()] == ["m"]
    ids, got = cells_store.vectors("m")
    assert np.unique(ids).size == 2000 and got.dtype == np.float16
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    np.testing.assert_array_equal(got, want[ids - 1])
    assert cells_store.embedding_set().n_indexed == 2000
    assert not any(
        p.name.startswith(("1.", "2.", "3."))
        for p in (cells_store.root / "vectors").iterdir()
    )


def test_merge__in_two_rounds(cells_store: Store) -> None:
    x = random_vectors(2000, 8, seed=4)
    _embed_shard(cells_store, 1, 2, x, "float32")
    assert cells_store.merge("m")["added"] == 1000
    _embed_shard(cells_store, 2, 2, x, "float32")
    assert cells_store.merge("m")["n_vectors"] == 2000
    assert np.unique(cells_store.vectors("m")[0]).size == 2000


def test_merge__errors(cells_store: Store) -> None:
    with pytest.raises(UnknownEmbeddingSetError, match="no shard sets"):
        cells_store.merge()
    _embed_shard(cells_store, 1, 2, random_vectors(2000, 8), "float32")
    _embed_shard(cells_store, 2, 2, random_vectors(2000, 8), "float16")
    with pytest.raises(ConfigMismatchError, match="embedded differently"):
        cells_store.merge()


def test_merge__refuses_shards_of_different_weights(cells_store: Store) -> None:
    x = random_vectors(2000, 8, seed=5)
    _embed_shard(cells_store, 1, 2, x, "float32", weights="a" * 64)
    _embed_shard(cells_store, 2, 2, x, "float32", weights="b" * 64)
    with pytest.raises(ConfigMismatchError, match="different weights") as info:
        cells_store.merge()
    assert "\n" not in str(info.value) and "--model NEW" in str(info.value)
    names = sorted(s.name for s in cells_store.embedding_sets())
    assert names == ["m@1/2", "m@2/2"]  # nothing merged, nothing dropped


def test_merge__full_set_keeps_the_weights_and_refuses_others(
    cells_store: Store,
) -> None:
    x = random_vectors(2000, 8, seed=6)
    _embed_shard(cells_store, 1, 2, x, "float32", weights="a" * 64)
    _embed_shard(cells_store, 2, 2, x, "float32")  # no fingerprint: not compared
    assert cells_store.merge()["added"] == 2000
    assert cells_store.embedding_set("m").weights_sha256 == "a" * 64
    _embed_shard(cells_store, 1, 2, x, "float32", weights="b" * 64)
    with pytest.raises(ConfigMismatchError, match="'m@1/2' .* and 'm' "):
        cells_store.merge()
    assert cells_store.embedding_set("m").n_vectors == 2000


@pytest.mark.parametrize("bad", ["0/4", "5/4", "a/b", "3"])
def test_parse_shard__rejects(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="--shard"):
        parse_shard(bad)
