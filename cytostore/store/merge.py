"""Join the shard sets of a sharded ``embed --shard i/n`` run into the model's full set.

Each machine embeds one shard into its own set (``model@i/n``). ``merge`` appends the
shards' rows bit for bit to the full set (cells already there are skipped), extends the
index, and then removes the shard sets in one transaction. It can be run after some
shards only, and again when the rest are done; a killed merge is rerun safely. Shards
still being written (an ``embed --shard`` holds their lock) are left for a later
merge, so every task of a job array can run ``embed --shard`` then ``merge``: the
shards are merged as they finish.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cytostore.errors import (
    ConfigMismatchError,
    StoreBusyError,
    UnknownEmbeddingSetError,
)
from cytostore.store.checksums import forget_files
from cytostore.store.faults import fault_point
from cytostore.store.index import build_index, index_path
from cytostore.store.locks import file_lock
from cytostore.store.trash import finish_interrupted, rm_lock
from cytostore.store.vectors import (
    EmbeddingSet,
    VectorWriter,
    create_set,
    ids_path,
    list_sets,
    read_vectors,
    vector_path,
)

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["merge", "parse_shard"]

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 65_536


def parse_shard(shard: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (1-based) into ``(i, n)``.

    Raises:
        InvalidArgumentError: If it is not two integers with ``1 <= i <= n``.

    Examples:
        >>> parse_shard("2/8")
        (2, 8)
    """
    from cytostore.errors import InvalidArgumentError

    head, _, tail = shard.partition("/")
    if not (head.strip().isdigit() and tail.strip().isdigit()):
        raise InvalidArgumentError(f"--shard {shard!r} must look like I/N, e.g. 1/4")
    i, n = int(head), int(tail)
    if not 1 <= i <= n:
        raise InvalidArgumentError(f"--shard {shard!r} needs 1 <= I <= N")
    return i, n


def merge(
    store: Store,
    model: str | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    when_ready: bool = False,
) -> dict[str, Any]:
    """Append every shard set of ``model`` to its full set, then drop the shards.

    Args:
        store: The store.
        model: The model whose shards to join; ``None``: the only model with shards.
        progress: Called with ``(rows done, rows)``.
        when_ready: Merge what is ready and return a report with nothing merged
            when no shard is (all being written, or merged by another process
            meanwhile) instead of raising: what each task of a job array wants,
            as the busy shards are merged by a later merge.

    Returns:
        A report: ``model``, ``set_id``, ``shards`` merged, ``added`` rows,
        ``skipped`` rows (cells already in the full set), ``n_vectors``, and
        ``busy``: shards left for a later merge because they were being written.

    Raises:
        UnknownEmbeddingSetError: If there are no shard sets (of ``model``).
        ConfigMismatchError: If the shards disagree on dim, dtype, metric, index
            or preprocessing, or on the shard count; or if they (or the full set)
            were embedded with different model weights.
        StoreBusyError: If every shard is being written (unless ``when_ready``).
    """
    _remove_dropped_files(store)  # left by a merge killed while deleting shards
    sets = list_sets(store)
    shards = [s for s in sets if s.shard is not None]
    models = sorted({s.model for s in shards})
    if model is None and len(models) > 1:
        raise UnknownEmbeddingSetError(
            f"shards of several models exist ({', '.join(models)}): pick one with "
            "--model"
        )
    model = model or (models[0] if models else None)
    shards = [s for s in shards if s.model == model]
    done_before = [s for s in sets if s.shard is None and s.model == model]
    if not shards and model is not None and done_before:
        logger.info("no shard sets of %s left: already merged", model)
        return _report(done_before[0], [], 0, 0)
    if not shards:
        raise UnknownEmbeddingSetError(
            f"no shard sets to merge{f' for model {model!r}' if model else ''}: embed "
            "with 'cytostore embed STORE --model NAME --shard I/N' first"
        )
    with contextlib.ExitStack() as held:
        free, busy = [], []
        for s in shards:  # an embed still writing a shard, or another merge: skip
            try:
                held.enter_context(
                    file_lock(
                        store.root / "vectors" / f"{s.set_id}.lock",
                        f"shard set {s.name!r} is being written",
                    )
                )
                free.append(s)
            except StoreBusyError:
                busy.append(s)
        if not free and when_ready:
            return _nothing_ready(model, done_before, busy)
        if not free:
            raise StoreBusyError(
                f"every shard of model {model!r} is being written (an 'embed --shard' "
                "or another 'merge' is running): rerun merge when one has finished"
            )
        # Read the shards again under their locks: the counts are final now.
        fresh = {s.set_id: s for s in list_sets(store)}
        shards = [fresh[s.set_id] for s in free if s.set_id in fresh]
        if not shards and when_ready:
            return _nothing_ready(model, done_before, busy)
        if not shards:
            raise UnknownEmbeddingSetError(
                f"the shard sets of model {model!r} were merged by another process "
                "meanwhile: nothing left to merge"
            )
        if busy:
            logger.info(
                "left %d shard(s) being written for a later merge: %s",
                len(busy),
                ", ".join(s.shard or "" for s in busy),
            )
        report = _merge_locked(store, shards, sets, progress)
        report["busy"] = sorted(s.shard or "" for s in busy)
        return report


def _merge_locked(
    store: Store,
    shards: list[EmbeddingSet],
    sets: list[EmbeddingSet],
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Append ``shards`` (locked by the caller) to their full set, then drop them."""
    first = shards[0]
    for s in shards[1:]:
        a = (s.dim, s.dtype, s.metric, s.index_factory, s.preprocessing)
        b = (
            first.dim,
            first.dtype,
            first.metric,
            first.index_factory,
            first.preprocessing,
        )
        if a != b or parse_shard(s.shard or "")[1] != parse_shard(first.shard or "")[1]:
            raise ConfigMismatchError(
                f"shards {first.name!r} and {s.name!r} were embedded differently "
                "(dim, dtype, metric, index, preprocessing or shard count): re-embed "
                "the odd one with the same options"
            )
    merged = [s for s in sets if s.shard is None and s.model == first.model]
    weights = _same_weights(shards, merged[0] if merged else None)
    full = create_set(
        store,
        first.model,
        first.dim,
        dtype=first.dtype,
        metric=first.metric,
        index_factory=first.index_factory,
        preprocessing=first.preprocessing,
        weights_sha256=weights,
    )
    total = sum(s.n_vectors for s in shards)
    skipped = done = 0
    with VectorWriter(store, full) as writer:
        before = writer.n_vectors
        for s in shards:
            ids, mat = read_vectors(store, s)
            for lo in range(0, ids.size, _CHUNK_ROWS):
                chunk = np.asarray(ids[lo : lo + _CHUNK_ROWS])
                new = ~writer.contains(chunk)
                if new.any():
                    rows = np.asarray(mat[lo : lo + _CHUNK_ROWS])[new]
                    writer.append(chunk[new], rows, normalize=False)
                skipped += int((~new).sum())
                done += chunk.size
                if progress is not None:
                    progress(done, total)
            fault_point("merge.after_shard")  # this shard's rows committed
        added = writer.n_vectors - before  # rows this merge committed
    full = build_index(store, full.set_id)
    fault_point("merge.before_drop")  # full set complete and indexed, shards kept
    _drop_sets(store, shards)
    logger.info("merged %d shards of %s: %d rows added", len(shards), full.model, added)
    return _report(full, shards, added, skipped)


def _nothing_ready(
    model: str | None, done_before: list[EmbeddingSet], busy: list[EmbeddingSet]
) -> dict[str, Any]:
    """The report of a ``when_ready`` merge that found no shard to merge."""
    logger.info("no shard of %s ready to merge: %d being written", model, len(busy))
    full = done_before[0] if done_before else None
    return {
        "model": model,
        "set_id": None if full is None else full.set_id,
        "shards": [],
        "added": 0,
        "skipped": 0,
        "n_vectors": 0 if full is None else full.n_vectors,
        "busy": sorted(s.shard or "" for s in busy),
    }


def _report(
    full: EmbeddingSet, shards: list[EmbeddingSet], added: int, skipped: int
) -> dict[str, Any]:
    return {
        "model": full.model,
        "set_id": full.set_id,
        "shards": sorted(s.shard or "" for s in shards),
        "added": added,
        "skipped": skipped,
        "n_vectors": full.n_vectors,
        "busy": [],
    }


def _remove_dropped_files(store: Store) -> None:
    """Delete files of set ids the catalog does not list (a killed merge's shards).

    Done by :func:`~cytostore.store.trash.finish_interrupted` under the store's
    ``rm`` lock, which a withdrawal holds while its new set files are not yet
    registered; while an ``rm`` runs this is skipped (it finishes leftovers itself).
    """
    try:
        with rm_lock(store):
            done = finish_interrupted(store)
    except StoreBusyError:
        return
    if done:
        logger.info("removed %d files of dropped sets: %s", len(done), done)


def _same_weights(shards: list[EmbeddingSet], full: EmbeddingSet | None) -> str | None:
    """Return the weights fingerprint the shards share (``None``: none recorded).

    Sets without a fingerprint (written before it was recorded, or not by
    ``embed``) cannot be compared and are let through, with a warning.

    Raises:
        ConfigMismatchError: If two shards, or a shard and the model's full set,
            record different weights.
    """
    known = [s for s in shards if s.weights_sha256]
    if not known:
        return None
    for s in shards:
        if not s.weights_sha256:
            logger.warning(
                "shard %s records no weights fingerprint (written by an older "
                "cytostore, or not by 'embed'): its weights cannot be compared",
                s.name,
            )
    ref, want = known[0], known[0].weights_sha256 or ""
    for other in [*known[1:], *([full] if full and full.weights_sha256 else [])]:
        have = other.weights_sha256 or ""
        if have != want:
            raise ConfigMismatchError(
                f"{ref.name!r} (weights sha256 {want[:12]}) and {other.name!r} "
                f"({have[:12]}) were embedded with different weights of model "
                f"{ref.model!r}, which was re-registered between the runs: register "
                "the weights you want under a new name and embed every shard with "
                "it ('cytostore embed STORE --model NEW --shard I/N')"
            )
    return ref.weights_sha256


def _drop_sets(store: Store, sets: list[EmbeddingSet]) -> None:
    """Delete the sets' rows and checksums in one transaction, then their files.

    A kill between the two leaves files of sets the catalog no longer lists; the
    next merge removes them (:func:`_remove_dropped_files`).
    """
    with store.transaction() as con:
        con.execute(
            "DELETE FROM embedding_sets WHERE set_id IN (SELECT unnest(?))",
            [[s.set_id for s in sets]],
        )
        for s in sets:
            forget_files(
                store,
                [
                    f"vectors/{vector_path(store, s).name}",
                    f"vectors/{ids_path(store, s).name}",
                    f"indexes/{index_path(store, s).name}",
                ],
            )
    for s in sets:
        lock = store.root / "vectors" / f"{s.set_id}.lock"
        for path in (
            vector_path(store, s),
            ids_path(store, s),
            index_path(store, s),
            lock,
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fault_point("merge.mid_drop")  # shard rows gone, some files left
