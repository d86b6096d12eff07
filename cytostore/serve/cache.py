"""Catalog reads kept in memory while the catalog is unchanged.

Opening a catalog connection costs ~15 ms on a 200k-cell store, more than the
queries of a grid page, and a browser asks for the same pages (and, for each of
the page's 100 thumbnails, whether the cell is catalogued) again and again.
:class:`CatalogCache` keeps each result under the
:func:`~cytostore.store.catalog_stamp` taken *before* it was read: any committed
write, by this server (tags) or by another process (``cytostore tag``, ``ingest``,
``rm``), changes the stamp, so every kept result misses and is read again. A
catalog changed within the last second has no stamp: it is read afresh and
nothing is kept. The memo is :func:`functools.lru_cache` (bounded; results kept
under an old stamp age out).

:class:`HitColumns` is one such result: the catalog columns that a neighbour
list shows, for every cell, so that answering ``/api/cells/{id}/neighbors`` opens
no catalog connection (the search itself reuses the loaded set).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cytostore.store import Store, catalog_stamp

__all__ = ["CatalogCache", "HitColumns", "hit_columns"]

T = TypeVar("T")

#: Results kept (grid pages, counts, column lists, the catalogued ids).
MAX_ENTRIES = 512
_LOCK_STRIPES = 64
#: Most cells whose neighbour-list columns are kept in memory (~50-80 bytes a
#: cell, mostly its path: ~150 MB at this size); a larger store answers each
#: neighbour list from the catalog.
MAX_HIT_CELLS = 2_000_000


class CatalogCache:
    """Results of catalog reads of one store, kept while its catalog is unchanged.

    Safe to share between threads. Kept results are shared: callers must not
    change them.

    Args:
        store: The store.
        max_entries: Most results kept.
        settle_s: Seconds a catalog file must be unchanged before results read
            from it are kept (see :func:`~cytostore.store.catalog_stamp`).
    """

    def __init__(
        self, store: Store, max_entries: int = MAX_ENTRIES, settle_s: float = 1.0
    ) -> None:
        self.store = store
        self.settle_s = settle_s
        self._memo = functools.lru_cache(maxsize=max_entries)(self._read)
        self._ids: tuple[Any, np.ndarray] = (None, np.zeros(0, np.int64))
        # One reader per result: threads missing the same result at once wait for
        # the first one's read instead of each reading it (16 first requests read
        # every cell's columns 16 times). Striped locks: bounded, whatever the args.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._ids_lock = threading.Lock()

    def get(self, read: Callable[..., T], *args: Hashable) -> T:
        """Return ``read(store, *args)``, kept while the catalog is unchanged.

        ``read`` must be a module-level function reading only the catalog (its
        result is keyed by the function, ``args`` and the catalog's stamp).
        """
        stamp = catalog_stamp(self.store, self.settle_s)
        if stamp is None:  # changed just now: read, keep nothing
            return read(self.store, *args)
        with self._locks[hash((read, args)) % _LOCK_STRIPES]:
            result: T = self._memo(stamp, read, args)
        return result

    def _read(self, stamp: Any, read: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return read(self.store, *args)

    def catalogued(self, cell_id: int, visit: bool = True) -> bool | None:
        """Return whether a cell id is in the catalog (no visit while kept).

        Args:
            cell_id: The cell's id.
            visit: Read the ids from the catalog when none are kept for its
                current state (``False``: answer ``None`` instead, never blocking,
                for callers on the event loop).
        """
        stamp = catalog_stamp(self.store, self.settle_s)
        kept_stamp, ids = self._ids
        if stamp is None or stamp != kept_stamp:
            if not visit:
                return None
            with self._ids_lock:
                kept_stamp, ids = self._ids  # another thread may have read them
                if stamp is None or stamp != kept_stamp:
                    ids = _cell_ids(self.store)
                    if stamp is not None:
                        self._ids = (stamp, ids)  # one tuple: swapped whole
        at = int(np.searchsorted(ids, int(cell_id)))
        return at < ids.size and int(ids[at]) == int(cell_id)

    def clear(self) -> None:
        """Forget every kept result."""
        self._memo.cache_clear()
        self._ids = (None, np.zeros(0, np.int64))


def _cell_ids(store: Store) -> np.ndarray:
    ids: np.ndarray = store.where_ids(None, empty_ok=True)
    return ids


class HitColumns:
    """Some ``cell_meta`` columns of every cell, looked up by cell id in memory.

    Arrow columns (one buffer of strings, not a Python object per value), with
    the repetitive ones dictionary-encoded. Immutable once built.

    Args:
        table: The columns, ``cell_id`` first; rows in ascending ``cell_id``.
    """

    def __init__(self, table: pa.Table) -> None:
        self.ids: npt.NDArray[np.int64] = (
            table.column(0).to_numpy().astype(np.int64, copy=False)
        )
        self.names = table.column_names[1:]
        self.table = table.drop_columns([table.column_names[0]])

    @property
    def nbytes(self) -> int:
        """Bytes held (ids and columns)."""
        return int(self.ids.nbytes + self.table.nbytes)

    def rows(self, cell_ids: npt.ArrayLike) -> dict[int, tuple[Any, ...]]:
        """Return ``{cell_id: (column values...)}`` for the ids it holds."""
        want = np.asarray(cell_ids, dtype=np.int64).ravel()
        at = np.minimum(np.searchsorted(self.ids, want), max(self.ids.size - 1, 0))
        found = self.ids.size > 0
        hit = want[(self.ids[at] == want)] if found else want[:0]
        pos = at[(self.ids[at] == want)] if found else at[:0]
        picked = self.table.take(pa.array(pos, pa.int64())).to_pydict()
        cols = [picked[name] for name in self.names]
        return {int(cid): tuple(col[i] for col in cols) for i, cid in enumerate(hit)}


def hit_columns(store: Store, names: tuple[str, ...]) -> HitColumns | None:
    """Read ``names`` of ``cell_meta`` for every cell (``None``: too many cells).

    For :meth:`CatalogCache.get`, which keeps the result while the catalog is
    unchanged. ``names`` must be columns of ``cell_meta`` (the caller's constant
    list, never user input).
    """
    select = ", ".join(f'"{n}"' for n in ("cell_id", *names))
    with store.connect(read_only=True) as con:
        count = con.execute("SELECT count(*) FROM cells").fetchall()[0][0]
        if int(count) > MAX_HIT_CELLS:
            return None
        table = con.sql(
            f"SELECT {select} FROM cell_meta ORDER BY cell_id"
        ).to_arrow_table()
    columns = [table.column(0)]
    for name in names:  # few distinct values (all but the path): dictionary-encoded
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            distinct = pc.count_distinct(col).as_py()
            if distinct * 4 < max(len(col), 1):
                col = pc.dictionary_encode(col)
        columns.append(col)
    return HitColumns(pa.table(columns, names=table.column_names).combine_chunks())
