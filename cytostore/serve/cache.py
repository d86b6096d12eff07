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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

from cytostore.store import Store, catalog_stamp

__all__ = ["CatalogCache"]

T = TypeVar("T")

#: Results kept (grid pages, counts, column lists, the catalogued ids).
MAX_ENTRIES = 512


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

    def get(self, read: Callable[..., T], *args: Hashable) -> T:
        """Return ``read(store, *args)``, kept while the catalog is unchanged.

        ``read`` must be a module-level function reading only the catalog (its
        result is keyed by the function, ``args`` and the catalog's stamp).
        """
        stamp = catalog_stamp(self.store, self.settle_s)
        if stamp is None:  # changed just now: read, keep nothing
            return read(self.store, *args)
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
            ids = _cell_ids(self.store)
            if stamp is not None:
                self._ids = (stamp, ids)  # one tuple: swapped whole, thread-safe
        at = int(np.searchsorted(ids, int(cell_id)))
        return at < ids.size and int(ids[at]) == int(cell_id)

    def clear(self) -> None:
        """Forget every kept result."""
        self._memo.cache_clear()
        self._ids = (None, np.zeros(0, np.int64))


def _cell_ids(store: Store) -> np.ndarray:
    ids: np.ndarray = store.where_ids(None, empty_ok=True)
    return ids
