"""k-nearest-neighbour search over an embedding set, optionally within a ``--where``.

The filter is applied *before* the search: the selected cell ids become a FAISS
``IDSelectorBatch`` passed in ``SearchParameters(sel=...)``, so the answer is the top-k
within the subset. Where an approximate index (HNSW, IVF) returns fewer hits than the
subset allows, those queries are answered by exact search over the subset's rows, so
a filter never shortens a result. Rows committed after the index was last written are
searched exactly and merged in. An index that stores compressed codes (``PQ``, ``SQ``)
is asked for ``k_factor * k`` candidates (search parameter ``k_factor``, default
:data:`~cytostore.store.index.DEFAULT_K_FACTOR`; 1 turns it off), which are re-ranked
by their exact distances to the float rows read from the memory-mapped vector file, as
FAISS's ``IndexRefine`` does, without holding the float matrix in memory.

A :class:`SearcherCache` (one per :class:`~cytostore.store.Store`) keeps loaded sets
between searches. A search without ``where`` on a cached set only looks at the
inode, size and mtime of the catalog, vector and index files and opens nothing when
none changed; any change (a commit, an append, a rebuilt index, a truncated file)
sends it back to the catalog, which reloads what changed. No catalog connection stays
open between calls.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    DimensionMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
    StoreCorruptError,
    UnknownCellError,
)
from cytostore.store.index import (
    DEFAULT_K_FACTOR,
    faiss_metric,
    index_path,
    inner_index,
    is_lossy,
    load_index,
)
from cytostore.store.vectors import (
    EmbeddingSet,
    get_set,
    ids_path,
    normalize_rows,
    read_vectors,
    vector_path,
)

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["search", "Searcher", "SearcherCache", "to_similarity"]

logger = logging.getLogger(__name__)

_EXACT_CHUNK_ROWS = 65_536
#: A filtered search of an approximate index answers exactly over the selection when
#: the selected rows take at most this many bytes as float32 (gathered from the
#: memory map once per cached filter): an IVF list holds ~1 % of a 1 %-selective
#: filter's cells, so the index with an ID selector would miss most neighbours.
_EXACT_SUBSET_BYTES = 256 * 2**20
#: A catalog written less than this long before a search looked at it is read again
#: by the next search: file times are coarse (a clock tick, up to 2 s on some file
#: systems), so two writes that close together can leave the same stamp.
_RACY_NS = 2_000_000_000
#: Loaded sets a :class:`SearcherCache` keeps (each holds its index in memory).
_CACHED_SETS = 2
#: Filters whose selections a SearcherCache remembers.
_CACHED_FILTERS = 8
#: SQL that gives another answer each time: never remembered.
_VOLATILE = re.compile(
    r"\b(random|now|uuid|gen_random_uuid|setseed|today|get_current_time|"
    r"current_date|current_time|current_timestamp|current_localtime|"
    r"current_localtimestamp|transaction_timestamp)\b",
    re.IGNORECASE,
)

_Stamp = tuple[int, int, int] | None


class Searcher:
    """A prepared search over one set and one selection, reused for many queries.

    Args:
        store: The store.
        model: Set id or model name (``None``: the only set).
        where: SQL filter over ``cell_meta`` restricting the candidates.

    Attributes:
        es: The embedding set searched.
        ids: int64 cell id of each committed row, ``(n,)``.
        matrix: The committed rows, ``(n, dim)``, stored dtype (memory-mapped).
        subset: Sorted int64 ids of the selected cells with a vector, or ``None``.

    Raises:
        UnknownEmbeddingSetError: If the set does not exist.
        InvalidWhereError: If ``where`` is not valid SQL over ``cell_meta``.
        EmptySelectionError: If the set or the selection holds no vectors.
        StoreCorruptError: If the files disagree with the catalog.
    """

    def __init__(
        self,
        store: Store,
        model: str | int | None = None,
        where: str | None = None,
    ) -> None:
        with store.connect(read_only=True):  # one short catalog visit
            es = get_set(store, model)
            chosen = store.where_ids(where) if where else None
        self._load(store, es)
        self._select(chosen, where)

    @classmethod
    def of_set(cls, store: Store, es: EmbeddingSet) -> Searcher:
        """Load a searcher over every committed row of ``es``, as the catalog gave it.

        The catalog is opened only if the index turns out newer than ``es``.

        Raises:
            EmptySelectionError: If the set holds no vectors.
            StoreCorruptError: If the files disagree with ``es``.
        """
        self = cls.__new__(cls)
        self._load(store, es)
        self._select(None, None)
        return self

    def restricted(self, chosen: npt.NDArray[np.int64], where: str) -> Searcher:
        """Return a searcher over the same loaded set, limited to the cells ``chosen``.

        Args:
            chosen: Sorted int64 cell ids selected by ``where``.
            where: The filter that chose them (for messages).

        Raises:
            EmptySelectionError: If none of ``chosen`` has a vector in the set.
        """
        out = copy.copy(self)
        out._select(chosen, where)
        return out

    def _load(self, store: Store, es: EmbeddingSet) -> None:
        import faiss

        self.es: EmbeddingSet = es
        self.ids, self.matrix = read_vectors(store, self.es)
        if self.ids.size == 0:
            raise EmptySelectionError(
                f"embedding set {self.es.name!r} holds no vectors yet: run "
                f"'cytostore embed STORE --model {self.es.model}'"
            )
        try:
            self.index = load_index(store, self.es)
        except StoreCorruptError:
            # A writer may have extended the index since we read the catalog.
            self.es = get_set(store, self.es.set_id)
            self.index = load_index(store, self.es)
        self.n_indexed = int(self.index.ntotal) if self.index is not None else 0
        self._metric = faiss_metric(self.es.metric)
        self._exact = self.index is not None and isinstance(
            inner_index(self.index), faiss.IndexFlat
        )
        self._k_factor = 1
        if self.index is not None and is_lossy(self.index):
            params = self.es.search_params or {}
            self._k_factor = max(1, int(params.get("k_factor", DEFAULT_K_FACTOR)))
        self._memo: dict[str, Any] = {}  # per loaded set, shared with its copies

    def _select(self, chosen: npt.NDArray[np.int64] | None, where: str | None) -> None:
        import faiss

        self.subset: npt.NDArray[np.int64] | None = None
        self._sel: Any = None
        in_subset = np.ones(self.ids.size, dtype=bool)
        if chosen is not None:
            in_subset = np.isin(self.ids, chosen)
            if not in_subset.any():
                raise EmptySelectionError(
                    f"--where {where!r} selects {chosen.size} cells but none has a "
                    f"vector in set {self.es.name!r}: embed them first, or loosen "
                    "the filter"
                )
            self.subset = np.sort(self.ids[in_subset])
            self._sel = faiss.IDSelectorBatch(self.subset)
        n_idx = min(self.n_indexed, self.ids.size)
        self._gathered: npt.NDArray[np.float32] | None = None
        self._idx_pos = np.nonzero(in_subset[:n_idx])[0]
        self._tail_pos = n_idx + np.nonzero(in_subset[n_idx:])[0]

    @property
    def larger_is_closer(self) -> bool:
        """True for cosine similarity, false for L2 distance."""
        return self.es.metric == "cosine"

    def vector_of(self, cell_ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return the stored vectors of ``cell_ids`` as float32 ``(m, dim)``.

        Raises:
            UnknownCellError: If a cell is not catalogued or has no vector in the set.
        """
        want = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
        pos = self._positions(want)
        missing = want[self.ids[pos] != want]
        if missing.size:
            shown = ", ".join(str(i) for i in missing[:5].tolist())
            raise UnknownCellError(
                f"no cell {shown} in embedding set {self.es.name!r}: "
                "check the ids ('cytostore sql STORE \"SELECT cell_id FROM cells\"'), "
                "or embed new cells with 'cytostore embed'"
            )
        return np.asarray(self.matrix[pos], dtype=np.float32)

    def _positions(self, want: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """Row of each id in ``want`` (some row, not that id, where it is absent)."""
        if "order" not in self._memo:  # once per loaded set; embed writes in order
            ascending = bool(np.all(self.ids[1:] > self.ids[:-1]))
            self._memo["order"] = (
                None if ascending else np.argsort(self.ids, kind="stable")
            )
        sorter: npt.NDArray[np.intp] | None = self._memo["order"]
        at = np.searchsorted(self.ids, want, sorter=sorter)
        at = np.minimum(at, self.ids.size - 1)
        return at if sorter is None else sorter[at]

    def prepare(self, queries: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return queries as contiguous float32 ``(nq, dim)``, unit length for cosine.

        Raises:
            DimensionMismatchError: If the width is not the set's ``dim``.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.es.dim:
            raise DimensionMismatchError(
                f"query vectors have shape {q.shape} but set {self.es.name!r} holds "
                f"{self.es.dim}-d vectors"
            )
        if self.es.metric == "cosine":
            q = normalize_rows(q)
        return np.ascontiguousarray(q)

    def knn(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        exclude: npt.NDArray[np.int64] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Return ``(distances, ids)`` of the ``k`` nearest candidates per query.

        Args:
            queries: float32 ``(nq, dim)`` from :meth:`prepare`.
            k: Neighbours per query.
            exclude: One cell id per query to leave out (the query cell itself).

        Returns:
            float32 ``(nq, k)`` similarities (cosine) or squared L2 distances, best
            first, NaN where fewer than ``k`` candidates exist; int64 ``(nq, k)`` cell
            ids, -1 there.
        """
        k_ask = k + (1 if exclude is not None else 0)
        parts = []
        if self._idx_pos.size:
            parts.append(self._index_knn(queries, k_ask))
        if self._tail_pos.size:
            parts.append(self._exact_knn(queries, self._tail_pos, k_ask))
        dist, ids = _merge(parts, k_ask, self.larger_is_closer)
        if exclude is not None:
            dist, ids = _drop(dist, ids, np.asarray(exclude, np.int64), k)
        return dist[:, :k], ids[:, :k]

    def _index_knn(
        self, q: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self._sel is not None and not self._exact:
            if self._idx_pos.size * self.es.dim * 4 <= _EXACT_SUBSET_BYTES:
                return self._exact_gathered(q, k)
            if not _filterable(self.index):
                return self._exact_knn(q, self._idx_pos, k)
        params = _search_parameters(self.index, self.es.search_params, self._sel)
        dist, ids = self.index.search(q, k * self._k_factor, params=params)
        if self._k_factor > 1:
            dist, ids = self._rerank(q, ids, k)
        want = min(k, self._idx_pos.size)
        short = np.nonzero((ids >= 0).sum(axis=1) < want)[0]
        if short.size:
            logger.info(
                "%d queries fell back to exact search in the subset", short.size
            )
            d2, i2 = self._exact_knn(q[short], self._idx_pos, k)
            dist[short], ids[short] = d2, i2
        return dist, ids

    def _exact_gathered(
        self, q: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Exact top-k over the selected indexed rows, gathered once as float32."""
        import faiss

        if self._gathered is None:
            self._gathered = np.ascontiguousarray(
                self.matrix[self._idx_pos], dtype=np.float32
            )
        kk = min(k, self._idx_pos.size)
        d, i = faiss.knn(q, self._gathered, kk, metric=self._metric)
        ids = np.where(i >= 0, self.ids[self._idx_pos][np.maximum(i, 0)], -1)
        return _merge([(d, ids)], k, self.larger_is_closer)

    def _rerank(
        self, q: npt.NDArray[np.float32], cand: npt.NDArray[np.int64], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Exact distances of the candidate ids (from the mapped rows); best ``k``."""
        nq, kc = cand.shape
        valid = cand >= 0
        dist = np.full((nq, kc), np.nan, np.float32)
        for lo in range(0, nq, 256):  # bounded gather: 256 x kc rows at a time
            c, v = cand[lo : lo + 256], valid[lo : lo + 256]
            pos = self._positions(np.where(v, c, self.ids[0]).reshape(-1))
            rows = np.asarray(self.matrix[pos], dtype=np.float32)
            rows = rows.reshape(c.shape[0], kc, -1)
            qq = q[lo : lo + 256, None, :]
            if self.larger_is_closer:
                d = np.einsum("qkd,qkd->qk", rows, np.broadcast_to(qq, rows.shape))
            else:
                d = ((rows - qq) ** 2).sum(axis=-1)
            dist[lo : lo + 256] = np.where(v, d, np.nan)
        return _merge([(dist, np.where(valid, cand, -1))], k, self.larger_is_closer)

    def _exact_knn(
        self, q: npt.NDArray[np.float32], pos: npt.NDArray[np.intp], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        import faiss

        parts = []
        contiguous = pos.size and pos[-1] - pos[0] + 1 == pos.size
        for lo in range(0, pos.size, _EXACT_CHUNK_ROWS):
            chunk = pos[lo : lo + _EXACT_CHUNK_ROWS]
            if contiguous:
                rows = self.matrix[chunk[0] : chunk[-1] + 1]
            else:
                rows = self.matrix[chunk]
            xb = np.ascontiguousarray(rows, dtype=np.float32)
            kk = min(k, xb.shape[0])
            d, i = faiss.knn(q, xb, kk, metric=self._metric)
            parts.append((d, np.where(i >= 0, self.ids[chunk][np.maximum(i, 0)], -1)))
        return _merge(parts, k, self.larger_is_closer)


def _filterable(index: Any) -> bool:
    import faiss

    inner = inner_index(index)
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVF | faiss.IndexHNSW)


def _search_parameters(index: Any, params: dict[str, Any], sel: Any) -> Any:
    """Return typed FAISS SearchParameters for the index's inner type."""
    import faiss as _faiss

    faiss: Any = _faiss
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexIVF):
        p: Any = faiss.SearchParametersIVF()
        p.nprobe = int(params.get("nprobe", 1))
    elif isinstance(inner, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW()
        p.efSearch = int(params.get("efSearch", 16))
    elif isinstance(inner, faiss.IndexPreTransform) and params:
        sub = faiss.downcast_index(inner.index)
        p = faiss.SearchParametersPreTransform()
        if isinstance(sub, faiss.IndexIVF):
            p.index_params = faiss.SearchParametersIVF(
                nprobe=int(params.get("nprobe", 1))
            )
    else:
        p = faiss.SearchParameters()
    if sel is not None:
        p.sel = sel
    return p


def _merge(
    parts: list[tuple[np.ndarray, np.ndarray]], k: int, larger_is_closer: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    if not parts:
        raise EmptySelectionError("nothing to search: the selection holds no vectors")
    nq = parts[0][0].shape[0]
    dist = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
    ids = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
    dist = np.where(ids >= 0, dist, np.nan).astype(np.float32)
    key = -dist if larger_is_closer else dist
    order = np.argsort(np.where(np.isnan(key), np.inf, key), axis=1, kind="stable")
    dist = np.take_along_axis(dist, order, axis=1)[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)[:, :k]
    if dist.shape[1] < k:
        pad = k - dist.shape[1]
        dist = np.hstack([dist, np.full((nq, pad), np.nan, np.float32)])
        ids = np.hstack([ids, np.full((nq, pad), -1, np.int64)])
    return dist, ids


def _drop(
    dist: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    exclude: npt.NDArray[np.int64],
    k: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Remove each row's excluded id, shifting later hits left."""
    keep = ids != exclude[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")
    ids = np.where(
        np.take_along_axis(keep, order, 1), np.take_along_axis(ids, order, 1), -1
    )
    dist = np.where(ids >= 0, np.take_along_axis(dist, order, 1), np.nan)
    return dist[:, :k].astype(np.float32), ids[:, :k]


def _stat(path: Path) -> _Stamp:
    """Return ``(inode, size, mtime_ns)`` of ``path``, or ``None`` if it is absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _catalog_stamp(store: Store) -> tuple[_Stamp, _Stamp]:
    """Stamp ``catalog.duckdb`` and its WAL: every DuckDB commit changes one of them."""
    path = store.catalog_path
    return _stat(path), _stat(path.with_name(path.name + ".wal"))


def _file_stamp(store: Store, es: EmbeddingSet) -> tuple[_Stamp, _Stamp, _Stamp]:
    return (
        _stat(vector_path(store, es)),
        _stat(ids_path(store, es)),
        _stat(index_path(store, es)),
    )


@dataclass(frozen=True)
class _Entry:
    searcher: Searcher
    files: tuple[_Stamp, _Stamp, _Stamp]
    catalog: tuple[_Stamp, _Stamp] | None  # None: too fresh to trust, re-read


class SearcherCache:
    """The loaded embedding sets of one store, reused while their files are unchanged.

    :meth:`get` without ``where`` returns the cached :class:`Searcher` of a set
    when the catalog (``catalog.duckdb`` and its WAL), the vector, ids and index
    files all have the inode, size and mtime they had when the set was loaded, so
    no catalog is opened and nothing is read. A ``where`` asked again while those
    stamps hold is answered from its remembered selection too (the last
    :data:`_CACHED_FILTERS` filters; never one that calls a volatile function such
    as ``random()`` or ``now()``). Otherwise it opens the catalog once (the set's
    row, the filter) and reuses the loaded vectors and index only if the row and the
    files are unchanged. A set that
    grew, an index that was rebuilt, a file that was truncated or replaced, or a
    store that gained a second set is therefore never answered from stale state, and
    a catalog written less than 2 s before it was checked is read again next time.

    Args:
        max_sets: Loaded sets kept, least recently used dropped first (each holds
            its index in memory).

    Examples:
        >>> import tempfile, numpy as np
        >>> from cytostore.store import Store
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> with store.vector_writer(store.create_embedding_set("m", 2)) as w:
        ...     _ = w.append([1, 2], [[1, 0], [0, 1]])
        >>> cache = SearcherCache()
        >>> cache.get(store, "m") is cache.get(store, "m")
        True
    """

    def __init__(self, max_sets: int = _CACHED_SETS) -> None:
        self.max_sets = max_sets
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        self._sets: OrderedDict[int, _Entry] = OrderedDict()
        self._names: dict[str | None, tuple[int, tuple[_Stamp, _Stamp]]] = {}
        # (set key, where) -> (the catalog stamp it was evaluated at, the full
        # searcher it restricts, the restriction)
        self._filtered: OrderedDict[
            tuple[str | None, str], tuple[tuple[_Stamp, _Stamp], Searcher, Searcher]
        ] = OrderedDict()

    def get(
        self,
        store: Store,
        model: str | int | None = None,
        where: str | None = None,
    ) -> Searcher:
        """Return a searcher over a set, restricted to ``where`` when given.

        Args:
            store: The store this cache belongs to.
            model: Set id or model name (``None``: the only set).
            where: SQL filter over ``cell_meta`` restricting the candidates.

        Raises:
            UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError,
            StoreCorruptError: See :class:`Searcher`.
        """
        key = None if model is None else str(model)
        catalog = _catalog_stamp(store)
        checked_ns = time.time_ns()
        reusable = where is not None and not _VOLATILE.search(where)
        if where is None or reusable:
            hit = self._lookup(store, key, catalog)
            if hit is not None and where is None:
                return hit
            if hit is not None:
                with self._lock:
                    known = self._filtered.get((key, str(where)))
                    if known is not None and known[0] == catalog and known[1] is hit:
                        self._filtered.move_to_end((key, str(where)))
                        return known[2]
        with store.connect(read_only=True):  # one short catalog visit
            es = get_set(store, model)
            chosen = store.where_ids(where) if where else None
        files = _file_stamp(store, es)
        quiet = all(s is None or s[2] < checked_ns - _RACY_NS for s in catalog)
        # One thread loads a set; others asking for it meanwhile wait and reuse it
        # (16 first searches at once used to load 16 copies of its index).
        with self._loading_lock(es.set_id):
            with self._lock:
                old = self._sets.get(es.set_id)
            if old is not None and old.searcher.es == es and old.files == files:
                searcher = old.searcher
            else:
                searcher = Searcher.of_set(store, es)
            with self._lock:
                entry = _Entry(searcher, files, catalog if quiet else None)
                self._sets[es.set_id] = entry
                self._sets.move_to_end(es.set_id)
                while len(self._sets) > self.max_sets:
                    self._sets.popitem(last=False)
                self._names = {
                    k: v for k, v in self._names.items() if v[0] in self._sets
                }
                if quiet:
                    self._names[key] = (es.set_id, catalog)
                else:
                    self._names.pop(key, None)
        if chosen is None:
            return searcher
        restricted = searcher.restricted(chosen, where or "")
        if quiet and reusable:
            with self._lock:
                self._filtered[(key, str(where))] = (catalog, searcher, restricted)
                while len(self._filtered) > _CACHED_FILTERS:
                    self._filtered.popitem(last=False)
        return restricted

    def _loading_lock(self, set_id: int) -> threading.Lock:
        """The lock held while set ``set_id`` is loaded (one per set)."""
        with self._lock:
            return self._loading.setdefault(set_id, threading.Lock())

    def _lookup(
        self, store: Store, key: str | None, catalog: tuple[_Stamp, _Stamp]
    ) -> Searcher | None:
        with self._lock:
            name = self._names.get(key)
            entry = self._sets.get(name[0]) if name is not None else None
            if entry is None or name is None:
                return None
            self._sets.move_to_end(name[0])
        if not (name[1] == entry.catalog == catalog):
            return None
        if _file_stamp(store, entry.searcher.es) != entry.files:
            return None
        return entry.searcher

    def clear(self) -> None:
        """Forget every loaded set (their indexes are freed once unused)."""
        with self._lock:
            self._sets.clear()
            self._names.clear()
            self._filtered.clear()


def to_similarity(values: npt.ArrayLike, metric: str) -> npt.NDArray[np.float32]:
    """Return search scores as similarities: higher is closer, for every metric.

    This is what every table and report calls ``similarity`` (``search``, the
    neighbour tables, ``explain``, montage captions): the cosine similarity for
    ``cosine`` sets, minus the squared L2 distance for ``l2`` sets. NaN (no hit)
    stays NaN.

    Args:
        values: What :func:`search` returned as distances (any shape).
        metric: The set's metric, ``cosine`` or ``l2``.

    Returns:
        float32 array of the same shape.

    Examples:
        >>> to_similarity([0.5, 2.0], "l2").tolist()
        [-0.5, -2.0]
    """
    out = np.asarray(values, dtype=np.float32)
    return out.copy() if metric == "cosine" else -out


def search(
    store: Store,
    query: npt.ArrayLike | int,
    k: int = 10,
    *,
    where: str | None = None,
    model: str | int | None = None,
    include_self: bool = False,
    cache: SearcherCache | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Return the ``k`` nearest cells to a vector, a batch of vectors, or a cell.

    Args:
        store: The store.
        query: A ``(dim,)`` or ``(nq, dim)`` float vector, or an int cell id (its
            stored vector is the query).
        k: Neighbours per query.
        where: SQL filter over ``cell_meta``: only matching cells are candidates,
            and the answer is the exact top-k within them for exact indexes.
        model: Set id or model name (``None``: the store's only set).
        include_self: For a cell query, keep the cell itself among the hits.
        cache: Loaded sets to reuse (a :class:`~cytostore.store.Store` passes its
            own); ``None`` loads the set for this call.

    Returns:
        ``(distances, ids)``, float32 and int64, each ``(nq, k)``, best first:
        cosine similarity for metric ``cosine``, squared L2 for ``l2``; ids are
        cell ids, -1 (distance NaN) where fewer than ``k`` candidates exist.

    Raises:
        InvalidArgumentError: If ``k`` < 1.
        UnknownCellError: If the cell has no vector in the set.
        DimensionMismatchError: If a query vector has the wrong width.
        UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError,
        StoreCorruptError: See :class:`Searcher`.
    """
    if int(k) < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    searcher = (cache if cache is not None else SearcherCache()).get(
        store, model, where
    )
    if isinstance(query, int | np.integer):
        q = searcher.vector_of([int(query)])
        exclude = None if include_self else np.asarray([int(query)], np.int64)
        return searcher.knn(searcher.prepare(q), int(k), exclude)
    return searcher.knn(searcher.prepare(query), int(k))
