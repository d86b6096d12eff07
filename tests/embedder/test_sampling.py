from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from cytostore.embedder.sampling import BatchSampler, CachedRows, balanced_weights
from cytostore.errors import InvalidArgumentError

DOMAINS = ["big"] * 900 + ["mid"] * 90 + ["small"] * 10


def _counts(sampler: BatchSampler, epochs: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            seen.update(DOMAINS[i] for i in batch)
    return seen


def test_balanced_weights__each_domain_sums_to_equal_share() -> None:
    w = balanced_weights(DOMAINS)
    d = np.asarray(DOMAINS)
    assert w.sum() == pytest.approx(1.0)
    for name in ("big", "mid", "small"):
        assert w[d == name].sum() == pytest.approx(1 / 3)


def test_batch_sampler__dataset_balance_makes_domains_equally_frequent() -> None:
    sampler = BatchSampler(DOMAINS, batch_size=50, balance="dataset", seed=0)
    seen = _counts(sampler, epochs=20)
    total = sum(seen.values())
    assert total == 20 * 20 * 50
    for name in ("big", "mid", "small"):
        assert seen[name] / total == pytest.approx(1 / 3, abs=0.02)


def test_batch_sampler__balance_none_follows_the_data() -> None:
    sampler = BatchSampler(DOMAINS, batch_size=50, balance="none", seed=0)
    sampler.set_epoch(3)
    rows = [i for batch in sampler for i in batch]
    assert sorted(rows) == list(range(1000))  # a permutation: every row once
    seen = Counter(DOMAINS[i] for i in rows)
    assert seen == Counter(DOMAINS)


def test_batch_sampler__seeded_per_epoch() -> None:
    a = BatchSampler(DOMAINS, batch_size=10, seed=7)
    b = BatchSampler(DOMAINS, batch_size=10, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_batch_sampler__ranks_split_one_draw_disjointly() -> None:
    whole = list(BatchSampler(DOMAINS, batch_size=10, balance="none", seed=1))
    parts = [
        list(BatchSampler(DOMAINS, 10, "none", seed=1, rank=r, world_size=2))
        for r in range(2)
    ]
    assert parts[0] == whole[0::2] and parts[1] == whole[1::2]
    assert len(parts[0]) == len(parts[1]) == 50


def test_batch_sampler__rejects_unknown_balance_and_oversized_batch() -> None:
    with pytest.raises(InvalidArgumentError, match="dataset, none"):
        BatchSampler(DOMAINS, 10, balance="patient")
    with pytest.raises(InvalidArgumentError, match="between 1 and 1000"):
        BatchSampler(DOMAINS, 1001)


def test_cached_rows__returns_rows_in_the_asked_order() -> None:
    images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    ds = CachedRows(images, rows=np.array([4, 3, 2, 1, 0]))
    batch = ds[[0, 3, 1]]
    assert batch.dtype == torch.uint8
    np.testing.assert_array_equal(batch.numpy(), images[[4, 1, 3]])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [37, 100, 1000])
def test_batch_sampler__ddp_ranks_see_every_row_once_per_epoch(
    world: int, n: int
) -> None:
    domains = ["a"] * (n - n // 3) + ["b"] * (n // 3)
    parts = [
        BatchSampler(domains, 8, "none", seed=3, rank=r, world_size=world)
        for r in range(world)
    ]
    for s in parts:
        s.set_epoch(2)
    batches = [list(s) for s in parts]
    assert len({len(b) for b in batches}) == 1  # same steps on every rank (DDP)
    assert all(len(b) == len(s) == s.steps for b, s in zip(batches, parts, strict=True))
    rows = sorted(i for b in batches for batch in b for i in batch)
    assert rows == list(range(n))  # nothing dropped, nothing repeated
    sizes = [len(batch) for b in batches for batch in b]
    assert max(sizes) <= 8 and max(sizes) - min(sizes) <= 1


def test_batch_sampler__ddp_keeps_the_dataset_balance_and_epoch_size() -> None:
    parts = [
        BatchSampler(DOMAINS, 32, "dataset", seed=0, rank=r, world_size=3)
        for r in range(3)
    ]
    seen: Counter[str] = Counter()
    for epoch in range(10):
        total = 0
        for s in parts:
            s.set_epoch(epoch)
            for batch in s:
                seen.update(DOMAINS[i] for i in batch)
                total += len(batch)
        assert total == len(DOMAINS)  # one epoch = as many draws as rows
    for name in ("big", "mid", "small"):
        assert seen[name] / sum(seen.values()) == pytest.approx(1 / 3, abs=0.02)


def test_batch_sampler__refuses_fewer_than_two_rows_per_process() -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be shared by 4 processes"):
        BatchSampler(["a"] * 7, 2, rank=0, world_size=4)
