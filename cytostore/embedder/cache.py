"""The preprocessed-cell cache: every cell decoded and preprocessed once, memory-mapped.

Decoding ~270k TIFF/JPEG files costs far more than a training step needs, so each
cell is decoded and run through one :class:`~cytostore.embedder.Preprocessing` once
and kept under ``STORE/cache/``, keyed by its ``prep_id``:

- ``<prep_id>.u8``: raw uint8 rows, C order, shape ``(n, crop_px, crop_px, 3)``
  (RGB, no header; memory-mappable with ``np.memmap``);
- ``<prep_id>.ids.npy``: int64 cell ids, one per row, in row order. This file
  decides how many rows are valid: rows are appended to ``.u8`` *before* the ids file
  is atomically replaced, so a crash leaves a consistent prefix (any bytes past
  ``len(ids)`` rows are overwritten by the next build);
- ``<prep_id>.json``: header ``{"prep": ..., "shape": [...], "dtype": "uint8"}``.

Every epoch, ``embed`` and later models with the same preprocessing reuse it; new
cells are appended. Cells whose file vanished or no longer decodes are recorded in the
catalog's ``skipped`` table and left out.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import json
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.embedder.preprocess import Preprocessing
from cytostore.errors import InvalidArgumentError, StoreCorruptError
from cytostore.store import Store

__all__ = ["CellCache", "build_cache", "CACHE_DIR"]

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
_CHUNK = 64
_COMMIT_EVERY_S = 5.0

#: One cell to preprocess: ``(cell_id, absolute path, um_per_px or None)``.
_Item = tuple[int, str, float | None]


class CellCache:
    """Preprocessed uint8 cells of one preprocessing, memory-mapped from the store.

    Use :func:`build_cache` (builds missing rows) or :meth:`open` (reads what exists).

    Attributes:
        prep: The preprocessing the rows were made with.
        root: The store's ``cache`` folder.
        ids: int64 cell ids, one per row, in row order.
        skipped: int64 ids that the last :func:`build_cache` could not read.
    """

    def __init__(
        self,
        root: Path,
        prep: Preprocessing,
        ids: npt.NDArray[np.int64],
        skipped: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.root = root
        self.prep = prep
        self.ids = ids
        self.skipped = np.zeros(0, dtype=np.int64) if skipped is None else skipped
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        self._array: npt.NDArray[np.uint8] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickle (e.g. into DataLoader workers) without the mapped pixels: each
        # process maps the file again instead of copying gigabytes.
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"CellCache(prep_id={self.prep.prep_id!r}, n={len(self)}, "
            f"crop_px={self.prep.crop_px}, root={str(self.root)!r})"
        )

    # ------------------------------------------------------------------ files
    @staticmethod
    def paths(root: Path, prep: Preprocessing) -> tuple[Path, Path, Path]:
        """Return the ``.u8``, ``.ids.npy`` and ``.json`` paths under ``root``."""
        base = root / prep.prep_id
        return (
            base.with_suffix(".u8"),
            base.with_name(f"{prep.prep_id}.ids.npy"),
            base.with_suffix(".json"),
        )

    @classmethod
    def open(cls, store: Store, prep: Preprocessing) -> CellCache:
        """Open the cache of ``prep`` in ``store`` as it is (empty if never built).

        Raises:
            StoreCorruptError: If the rows file is shorter than its ids say.
        """
        root = store.root / CACHE_DIR
        data_path, ids_path, _ = cls.paths(root, prep)
        ids = (
            np.load(ids_path).astype(np.int64, copy=False)
            if ids_path.is_file()
            else np.zeros(0, dtype=np.int64)
        )
        cache = cls(root, prep, ids)
        size = data_path.stat().st_size if data_path.is_file() else 0
        if size < len(ids) * cache.row_bytes:
            raise StoreCorruptError(
                f"cache {str(data_path)!r} holds {size // cache.row_bytes} rows but "
                f"its ids file lists {len(ids)}: delete {str(root)!r}/"
                f"{prep.prep_id}.* and it will be rebuilt"
            )
        return cache

    @property
    def row_bytes(self) -> int:
        """Bytes per cell: ``crop_px * crop_px * 3``."""
        return self.prep.crop_px * self.prep.crop_px * 3

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(n, crop_px, crop_px, 3)``."""
        c = self.prep.crop_px
        return (len(self.ids), c, c, 3)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def array(self) -> npt.NDArray[np.uint8]:
        """All rows, memory-mapped read-only: uint8 ``(n, crop_px, crop_px, 3)``."""
        if self._array is None:
            if len(self.ids) == 0:
                self._array = np.zeros(self.shape, dtype=np.uint8)
            else:
                data_path = self.paths(self.root, self.prep)[0]
                self._array = np.memmap(data_path, np.uint8, "r", shape=self.shape)
        return self._array

    # ---------------------------------------------------------------- lookups
    def index_of(
        self, ids: npt.ArrayLike, missing_ok: bool = False
    ) -> npt.NDArray[np.int64]:
        """Return the row of each cell id.

        Args:
            ids: Cell ids.
            missing_ok: Give -1 for ids not in the cache instead of raising.

        Returns:
            int64 row numbers, in the order of ``ids``.

        Raises:
            InvalidArgumentError: If an id is not cached and ``missing_ok`` is false.
        """
        want = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(self._sorted) == 0:
            hit = np.zeros(len(want), dtype=bool)
            rows = np.full(len(want), -1, dtype=np.int64)
        else:
            pos = np.searchsorted(self._sorted, want).clip(0, len(self._sorted) - 1)
            hit = self._sorted[pos] == want
            rows = np.where(hit, self._order[pos], -1).astype(np.int64)
        if not missing_ok and not hit.all():
            absent = want[~hit][:5].tolist()
            raise InvalidArgumentError(
                f"{int((~hit).sum())} cells are not in cache {self.prep.prep_id} "
                f"(e.g. {absent}): run build_cache(store, prep, ids) first"
            )
        return rows

    def contains(self, ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Return whether each id has a cached row."""
        return self.index_of(ids, missing_ok=True) >= 0

    def rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Return the preprocessed pixels of cells.

        Returns:
            uint8 ``(len(ids), crop_px, crop_px, 3)``, a copy, in the order of ``ids``.

        Raises:
            InvalidArgumentError: If an id is not cached.
        """
        idx = self.index_of(ids)
        if len(idx) == 0:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        step = np.diff(idx)
        if (step == 1).all():  # consecutive rows (embedding in cache order): one slice
            return np.array(self.array[idx[0] : idx[0] + len(idx)])
        if (step > 0).all():  # ascending: one gather, front to back
            return self.array[idx]
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        out[order] = self.array[idx[order]]  # read the file front to back
        return out


def build_cache(
    store: Store,
    prep: Preprocessing,
    ids: npt.ArrayLike | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CellCache:
    """Decode and preprocess the cells not yet cached for ``prep``, in parallel.

    Rows already cached are reused untouched; new ones are appended. Cells whose file
    vanished or does not decode are recorded in the ``skipped`` table, left out, and
    listed in ``CellCache.skipped``. Concurrent builds of one cache wait for each
    other (a lock file).

    Args:
        store: The store.
        prep: The preprocessing to cache.
        ids: Cell ids to make sure are cached; ``None``: every cell in the catalog.
        workers: Decoding processes; ``None``: ``min(8, cpu_count)``; ``0`` or ``1``:
            decode in this process.
        progress: Called with ``(done, total)`` cells of this build.

    Returns:
        The cache, holding every requested cell that could be read (and any
        cached before).

    Raises:
        InvalidArgumentError: If ``ids`` names cells not in the catalog.
        StoreCorruptError: If the cache files disagree with each other.
    """
    root = store.root / CACHE_DIR
    root.mkdir(parents=True, exist_ok=True)
    want = (
        store.where_ids(None, empty_ok=True)
        if ids is None
        else np.unique(np.asarray(ids, dtype=np.int64))
    )
    with _locked(root / f"{prep.prep_id}.lock"):
        cache = CellCache.open(store, prep)
        todo = want[~cache.contains(want)] if len(want) else want
        if len(todo) == 0:
            if progress is not None:
                progress(0, 0)
            return cache
        items = _items(store, todo)
        started = time.monotonic()
        added, skipped = _append(cache, items, workers, progress)
        if skipped:
            store.add_skipped([(d, p, r) for _, d, p, r in skipped])
            logger.warning(
                "cache %s: %d cells could not be read and were skipped (see the "
                "skipped table)",
                prep.prep_id,
                len(skipped),
            )
        logger.info(
            "cache %s: %d rows added in %.1f s (%d in all)",
            prep.prep_id,
            added,
            time.monotonic() - started,
            added + len(cache),
        )
        out = CellCache.open(store, prep)
        out.skipped = np.asarray([s[0] for s in skipped], dtype=np.int64)
        return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _items(store: Store, ids: npt.NDArray[np.int64]) -> list[tuple[_Item, str, str]]:
    """Return ``((id, abs path, um_per_px), dataset, rel path)`` for each id."""
    res = store.cell_meta(ids, ["cell_id", "dataset", "path", "um_per_px"])
    if len(res.rows) != len(ids):
        found = {r[0] for r in res.rows}
        missing = [int(i) for i in ids if int(i) not in found][:5]
        raise InvalidArgumentError(
            f"unknown cell ids {missing}: list ids with "
            "'cytostore sql STORE \"SELECT cell_id FROM cells\"'"
        )
    roots = store.dataset_roots()
    out = []
    for cid, dataset, path, um in res.rows:
        um_f = None if um is None or not math.isfinite(um) else float(um)
        out.append(((int(cid), str(roots[dataset] / path), um_f), dataset, path))
    return out


def _process_chunk(
    prep_doc: dict[str, Any], items: Sequence[_Item]
) -> tuple[list[int], npt.NDArray[np.uint8], list[tuple[int, str]]]:
    """Decode and preprocess ``items`` (runs in a worker process).

    Returns:
        ``(ok ids, uint8 rows (len(ok), c, c, 3), [(failed id, reason)])``.
    """
    from cytostore.data.images import load_rgb_image

    prep = Preprocessing.from_dict(prep_doc)
    c = prep.crop_px
    rows = np.empty((len(items), c, c, 3), dtype=np.uint8)
    ok: list[int] = []
    failed: list[tuple[int, str]] = []
    for cid, path, um in items:
        try:
            rows[len(ok)] = prep.apply(load_rgb_image(path), um)
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the job
            if not os.path.exists(path):
                reason = "file not found (moved or deleted after ingest)"
            else:
                text = str(exc).splitlines()[0] if str(exc) else ""
                reason = f"cannot preprocess ({type(exc).__name__}): {text}"
            failed.append((cid, reason))
            continue
        ok.append(cid)
    return ok, rows[: len(ok)], failed


def _pool(workers: int) -> cf.ProcessPoolExecutor:
    # fork starts workers in milliseconds; they only use numpy and Pillow.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return cf.ProcessPoolExecutor(workers, mp_context=mp.get_context(method))


def _append(
    cache: CellCache,
    items: list[tuple[_Item, str, str]],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, list[tuple[int, str, str, str]]]:
    """Append rows for ``items`` to the cache files; return (added, skipped)."""
    prep = cache.prep
    data_path, ids_path, header_path = CellCache.paths(cache.root, prep)
    n_workers = min(8, os.cpu_count() or 1) if workers is None else max(0, workers)
    meta = {it[0][0]: (it[1], it[2]) for it in items}
    chunks = [
        [it[0] for it in items[i : i + _CHUNK]] for i in range(0, len(items), _CHUNK)
    ]
    all_ids = [int(i) for i in cache.ids]
    n_valid = len(all_ids)
    skipped: list[tuple[int, str, str, str]] = []
    done = 0
    last_commit = time.monotonic()
    if progress is not None:
        progress(0, len(items))

    def results() -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
        if n_workers <= 1 or len(chunks) == 1:
            for chunk in chunks:
                yield _process_chunk(prep.to_dict(), chunk)
            return
        with _pool(min(n_workers, len(chunks))) as pool:
            # map keeps chunk order, so the file order is deterministic.
            yield from pool.map(_process_chunk, [prep.to_dict()] * len(chunks), chunks)

    mode = "r+b" if data_path.exists() else "w+b"
    with open(data_path, mode) as fh:
        fh.truncate(n_valid * cache.row_bytes)  # drop rows of a crashed build
        fh.seek(n_valid * cache.row_bytes)
        for ok, rows, failed in results():
            fh.write(np.ascontiguousarray(rows).tobytes())
            all_ids.extend(ok)
            skipped.extend((cid, *meta[cid], reason) for cid, reason in failed)
            done += len(ok) + len(failed)
            if progress is not None:
                progress(done, len(items))
            if time.monotonic() - last_commit > _COMMIT_EVERY_S:
                _commit(fh, all_ids, prep, ids_path, header_path)
                last_commit = time.monotonic()
        _commit(fh, all_ids, prep, ids_path, header_path)
    return len(all_ids) - n_valid, skipped


def _commit(
    fh: Any, ids: list[int], prep: Preprocessing, ids_path: Path, header_path: Path
) -> None:
    """Make the rows written so far durable, then publish their ids atomically."""
    fh.flush()
    os.fsync(fh.fileno())
    arr = np.asarray(ids, dtype=np.int64)
    tmp = ids_path.with_name(ids_path.name + ".tmp")
    with open(tmp, "wb") as out:
        np.save(out, arr)
    os.replace(tmp, ids_path)
    c = prep.crop_px
    header = {
        "format": "cytostore-cache-1",
        "prep": prep.to_dict(),
        "shape": [len(arr), c, c, 3],
        "dtype": "uint8",
        "order": "C",
        "ids": ids_path.name,
    }
    tmp = header_path.with_name(header_path.name + ".tmp")
    tmp.write_text(json.dumps(header, indent=2))
    os.replace(tmp, header_path)
