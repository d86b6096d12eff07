"""Embed a store's cells with a registered model into an embedding set and its index.

The loop streams batches from :meth:`Encoder.iter_embed` (preprocessed cache, the
model's own preprocessing) into the store's vector writer, which commits every
``COMMIT_CELLS`` cells or ``COMMIT_EVERY_S`` seconds, whichever comes first (a commit
fsyncs the files and opens the catalog, so committing every batch costs ~5 %).
Rerunning embeds only cells without a vector, so ``embed`` continues after new cells
are ingested, after ``kill -9``, or after a failed write.
``shard="i/n"`` embeds the cells with ``(cell_id - 1) % n == i - 1`` into a shard
set; ``cytostore merge`` joins the shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cytostore.embedder.device import tune_allocator
from cytostore.embedder.encoder import Encoder
from cytostore.errors import DimensionMismatchError, UnknownEmbeddingSetError
from cytostore.store import DTYPES, Store, check_factory, fault_point, parse_shard

__all__ = ["embed"]

logger = logging.getLogger(__name__)

#: Commit the buffered vectors once this many cells are waiting ...
COMMIT_CELLS = 8192
#: ... or this many seconds after the last commit, whichever comes first.
COMMIT_EVERY_S = 5.0


def embed(
    store: Store,
    model: str,
    *,
    where: str | None = None,
    index: str = "Flat",
    dtype: str = "float32",
    batch_size: int = 256,
    shard: str | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Embed every selected cell that has no vector yet, then update the index.

    Args:
        store: The store.
        model: A registered model name.
        where: SQL filter over ``cell_meta`` (``None``: every cell).
        index: FAISS factory string of the set's index (``Flat``: exact cosine).
        dtype: Stored dtype, ``float32`` or ``float16``.
        batch_size: Cells per forward pass (commits gather several batches).
        shard: ``"i/n"``: embed only this shard of the cells, into its own set.
        device: Torch device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        progress: Called with ``(cells embedded, cells to embed)``.

    Returns:
        A report: ``model``, ``set_id``, ``shard``, ``selected`` cells,
        ``already`` embedded, ``embedded`` now, ``skipped`` (unreadable files,
        recorded in the ``skipped`` table), ``n_vectors``, ``n_indexed``,
        ``index``, ``dtype``, ``metric``, ``elapsed_s``.

    Raises:
        UnknownModelError: If the model is not registered.
        InvalidArgumentError: If ``dtype``, ``index``, ``shard`` or
            ``batch_size`` is invalid.
        InvalidWhereError, EmptySelectionError: If ``where`` is invalid or empty.
        DimensionMismatchError, ConfigMismatchError: If the model no longer fits
            its existing set (dimension, options, preprocessing, or weights: the
            set records the sha256 of the weights it was embedded with).
        StoreBusyError: If another process is embedding into the same set.
        StoreWriteError: If a write fails (committed batches are kept).
    """
    from cytostore.errors import InvalidArgumentError

    t0 = time.perf_counter()
    tune_allocator()  # reuse freed activation memory (glibc), see its docs
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be >= 1, got {batch_size}")
    part = parse_shard(shard) if shard is not None else None
    # The set-up reads and writes the catalog a few times: one transaction for all
    # of it (each open costs tens of ms), committed and closed before the loop.
    # The user's filter runs on a read connection before any write opens.
    ids = store.where_ids(where)
    with store.transaction():
        encoder = Encoder.load(store, model, device=device, batch_size=batch_size)
        check_factory(encoder.dim, index)
        prep = encoder.preprocessing.to_dict()
        full_ids = np.zeros(0, np.int64)
        if part is not None:
            i, n = part
            ids = ids[(ids - 1) % n == i - 1]
            shard = f"{i}/{n}"
            full_ids = _full_set_ids(store, model, encoder.dim)
        es = store.create_embedding_set(
            model,
            encoder.dim,
            dtype=dtype,
            index_factory=index,
            shard=shard,
            preprocessing=prep,
            weights_sha256=(encoder.card.sha256 or None) if encoder.card else None,
        )
    embedded = 0
    with store.vector_writer(es) as writer:
        todo = ids[~writer.contains(ids) & ~np.isin(ids, full_ids)]
        already = int(ids.size - todo.size)
        logger.info(
            "embedding %d of %d cells with %s (%d already done)",
            todo.size,
            ids.size,
            model,
            already,
        )
        if progress is not None:
            progress(0, int(todo.size))
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        last_commit = time.monotonic()
        for chunk, vecs in encoder.iter_embed(todo, batch_size):
            pending.append((chunk, vecs))
            n_pending = sum(c.size for c, _ in pending)
            if (
                n_pending >= COMMIT_CELLS
                or time.monotonic() - last_commit >= COMMIT_EVERY_S
            ):
                embedded += _commit(writer, pending)
                last_commit = time.monotonic()
                if progress is not None:
                    progress(embedded, int(todo.size))
        embedded += _commit(writer, pending)
        if progress is not None:
            progress(embedded, int(todo.size))
    fault_point("embed.before_index")  # every vector committed, index not updated
    es = store.build_index(es.set_id)
    return {
        "model": model,
        "set_id": es.set_id,
        "shard": es.shard,
        "selected": int(ids.size),
        "already": already,
        "embedded": embedded,
        "skipped": int(todo.size) - embedded,
        "n_vectors": es.n_vectors,
        "n_indexed": es.n_indexed,
        "index": es.index_factory,
        "dtype": es.dtype,
        "metric": es.metric,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }


def _commit(writer: Any, pending: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Append the pending batches in one durable commit; returns the cells written."""
    if not pending:
        return 0
    ids = np.concatenate([c for c, _ in pending])
    fault_point("embed.before_append")  # batches embedded, nothing written yet
    writer.append(ids, np.concatenate([v for _, v in pending]))
    pending.clear()
    return int(ids.size)


def _full_set_ids(store: Store, model: str, dim: int) -> np.ndarray:
    """Ids already in the model's merged set (a shard run leaves them out)."""
    try:
        es = store.embedding_set(model)
    except UnknownEmbeddingSetError:
        return np.zeros(0, np.int64)
    if es.dim != dim:
        raise DimensionMismatchError(
            f"model {model!r} gives {dim}-d vectors but its embedding set "
            f"{es.set_id} holds {es.dim}-d ones: register the new model under "
            "another name"
        )
    return np.asarray(store.vectors(es.set_id)[0])
