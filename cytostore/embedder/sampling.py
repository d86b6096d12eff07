"""Which cached rows go into each training batch: domain-balanced or as the data lies.

With ``balance="dataset"`` every dataset (domain) is equally likely in every draw, so
a 200k-cell dataset does not drown a 3k-cell one: rows are drawn with replacement
with weight ``1 / (n_domains * n_cells_in_its_domain)``. With ``balance="none"``
each epoch is a random permutation of all rows (each row once).

An epoch is always ``n`` draws (``n`` = rows selected for training), however many
processes share it: the draw is cut into ``steps * world_size`` batches of nearly
equal size (at most ``batch_size``, sizes differing by at most one), and under DDP
each process takes every ``world_size``-th batch of the same seeded draw. So the
processes see disjoint batches, each takes the same number of steps (DDP needs
that), nothing is dropped or padded, and with ``balance="none"`` every row is seen
exactly once per epoch across all processes. Lightning's ``DistributedSampler``
wrapper is switched off (``use_distributed_sampler=False``): it would pad ranks with
repeated rows and lose the domain balance, which this sampler keeps per draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, Sampler

from cytostore.errors import InvalidArgumentError

__all__ = ["BALANCES", "balanced_weights", "BatchSampler", "CachedRows"]

#: Valid values of ``balance``.
BALANCES = ("dataset", "none")


def balanced_weights(
    domains: Sequence[str] | npt.NDArray[np.str_],
) -> npt.NDArray[np.float64]:
    """Return per-row sampling weights giving every domain the same total weight.

    Args:
        domains: The domain (dataset name) of each row.

    Returns:
        float64 (n,) weights summing to 1; each domain's weights sum to
        ``1 / n_domains``.

    Examples:
        >>> balanced_weights(["a", "a", "a", "b"]).round(3).tolist()
        [0.167, 0.167, 0.167, 0.5]
    """
    _, inverse, counts = np.unique(
        np.asarray(domains), return_inverse=True, return_counts=True
    )
    return (1.0 / (len(counts) * counts[inverse])).astype(np.float64)


class BatchSampler(Sampler[list[int]]):
    """Yield batches of row indices, domain-balanced or a permutation, seeded per epoch.

    Args:
        domains: Domain of each row (length n).
        batch_size: Most rows per batch (per process).
        balance: ``"dataset"`` (each domain equally likely) or ``"none"``.
        seed: Base seed; epoch ``e`` uses ``seed + e``.
        rank: This process's global rank under DDP.
        world_size: Number of processes.

    Attributes:
        steps: Batches per epoch on each process:
            ``ceil(n / (world_size * batch_size))``.

    Raises:
        InvalidArgumentError: If ``balance`` is unknown, the batch size is not
            between 1 and n, or there are fewer than 2 rows per process.

    Examples:
        >>> s = BatchSampler(["a"] * 6 + ["b"] * 3, 4, balance="none", seed=0)
        >>> [len(b) for b in s], sorted(i for b in s for i in b) == list(range(9))
        ([3, 3, 3], True)
        >>> r1 = BatchSampler(["a"] * 9, 4, balance="none", rank=1, world_size=2)
        >>> len(r1), [len(b) for b in r1]
        (2, [2, 2])
    """

    def __init__(
        self,
        domains: Sequence[str] | npt.NDArray[np.str_],
        batch_size: int,
        balance: str = "dataset",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if balance not in BALANCES:
            raise InvalidArgumentError(
                f"unknown balance {balance!r}: choose one of {', '.join(BALANCES)}"
            )
        n = len(domains)
        if batch_size < 1 or n < batch_size:
            raise InvalidArgumentError(
                f"batch size {batch_size} does not fit {n} rows: use a batch size "
                f"between 1 and {n}"
            )
        if not 0 <= rank < world_size or n < 2 * world_size:
            raise InvalidArgumentError(
                f"{n} rows cannot be shared by {world_size} processes (rank {rank}): "
                "each process needs at least 2 cells per batch; use fewer devices "
                "or select more cells"
            )
        self.n = n
        self.batch_size = batch_size
        self.balance = balance
        self.seed = seed
        self.weights = balanced_weights(domains) if balance == "dataset" else None
        self.steps = -(-n // (world_size * batch_size))
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(
                torch.from_numpy(self.weights), self.n, replacement=True, generator=g
            )
        else:
            idx = torch.randperm(self.n, generator=g)
        batches = torch.tensor_split(idx, self.steps * self.world_size)
        for b in batches[self.rank :: self.world_size]:
            yield b.tolist()


class CachedRows(Dataset[torch.Tensor]):
    """Rows of a uint8 (n, h, w, 3) array (a memmap), fetched a whole batch at a time.

    Use with ``DataLoader(CachedRows(a), sampler=BatchSampler(...), batch_size=None)``:
    each item is a list of row indices and comes back as one uint8 tensor (b, h, w, 3).

    Args:
        images_u8: The cached cells, uint8 (n, h, w, 3).
        rows: Optional mapping from sampler index to row of ``images_u8`` (int64).
    """

    def __init__(
        self,
        images_u8: npt.NDArray[np.uint8],
        rows: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.images_u8 = images_u8
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.images_u8)

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        idx = np.asarray(index, dtype=np.int64)
        if self.rows is not None:
            idx = self.rows[idx]
        order = np.argsort(idx, kind="stable")
        batch = np.empty((len(idx), *self.images_u8.shape[1:]), dtype=np.uint8)
        batch[order] = self.images_u8[idx[order]]  # sorted reads from the memmap
        return torch.from_numpy(batch)
