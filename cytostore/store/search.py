"""k-nearest-neighbour search over an embedding set, optionally within a ``--where``.

The filter is applied *before* the search: the selected cell ids become a FAISS
``IDSelectorBatch`` passed in ``SearchParameters(sel=...)``, so the answer is the top-k
within the subset. Where an approximate index (HNSW, IVF) returns fewer hits than the
subset allows, those queries are answered by exact search over the subset's rows, so
a filter never shortens a result. Rows committed after the index was last written are
searched exactly and merged in.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    DimensionMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
    StoreCorruptError,
)
from cytostore.store.index import faiss_metric, load_index
from cytostore.store.vectors import EmbeddingSet, get_set, normalize_rows, read_vectors

if TYPE_CHECKING:
    from cytostore.store.catalog import Store

__all__ = ["search", "Searcher"]

logger = logging.getLogger(__name__)

_EXACT_CHUNK_ROWS = 65_536


class Searcher:
    """A prepared search over one set and one selection, reused for many queries.

    Args:
        store: The store.
        set_or_model: Set id or model name (``None``: the only set).
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
        set_or_model: str | int | None = None,
        where: str | None = None,
    ) -> None:
        import faiss

        with store.connect(read_only=True):  # one short catalog visit
            self.es: EmbeddingSet = get_set(store, set_or_model)
            chosen = store.where_ids(where) if where else None
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
        self._idx_pos = np.nonzero(in_subset[:n_idx])[0]
        self._tail_pos = n_idx + np.nonzero(in_subset[n_idx:])[0]
        self._metric = faiss_metric(self.es.metric)
        self._exact = self.index is not None and isinstance(
            faiss.downcast_index(self.index.index), faiss.IndexFlat
        )

    @property
    def larger_is_closer(self) -> bool:
        """True for cosine similarity, false for L2 distance."""
        return self.es.metric == "cosine"

    def vector_of(self, cell_ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return the stored vectors of ``cell_ids`` as float32 ``(m, dim)``.

        Raises:
            InvalidArgumentError: If a cell has no vector in the set.
        """
        want = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
        order = np.argsort(self.ids, kind="stable")
        at = np.searchsorted(self.ids, want, sorter=order)
        at = np.minimum(at, self.ids.size - 1)
        pos = order[at]
        missing = want[self.ids[pos] != want]
        if missing.size:
            raise InvalidArgumentError(
                f"cells {missing[:5].tolist()} have no vector in set {self.es.name!r}: "
                "check the id, or embed new cells with 'cytostore embed'"
            )
        return np.asarray(self.matrix[pos], dtype=np.float32)

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
        if self._sel is not None and not self._exact and not _filterable(self.index):
            return self._exact_knn(q, self._idx_pos, k)
        params = _search_parameters(self.index, self.es.search_params, self._sel)
        dist, ids = self.index.search(q, k, params=params)
        want = min(k, self._idx_pos.size)
        short = np.nonzero((ids >= 0).sum(axis=1) < want)[0]
        if short.size:
            logger.info(
                "%d queries fell back to exact search in the subset", short.size
            )
            d2, i2 = self._exact_knn(q[short], self._idx_pos, k)
            dist[short], ids[short] = d2, i2
        return dist, ids

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

    inner = faiss.downcast_index(index.index)
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVF | faiss.IndexHNSW)


def _search_parameters(index: Any, params: dict[str, Any], sel: Any) -> Any:
    """Return typed FAISS SearchParameters for the index's inner type."""
    import faiss as _faiss

    faiss: Any = _faiss
    inner = faiss.downcast_index(index.index)
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


def search(
    store: Store,
    query: npt.ArrayLike | int,
    k: int = 10,
    *,
    where: str | None = None,
    set_or_model: str | int | None = None,
    include_self: bool = False,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Return the ``k`` nearest cells to a vector, a batch of vectors, or a cell.

    Args:
        store: The store.
        query: A ``(dim,)`` or ``(nq, dim)`` float vector, or an int cell id (its
            stored vector is the query).
        k: Neighbours per query.
        where: SQL filter over ``cell_meta``: only matching cells are candidates,
            and the answer is the exact top-k within them for exact indexes.
        set_or_model: Set id or model name (``None``: the store's only set).
        include_self: For a cell query, keep the cell itself among the hits.

    Returns:
        ``(distances, ids)``, float32 and int64, each ``(nq, k)``, best first:
        cosine similarity for metric ``cosine``, squared L2 for ``l2``; ids are
        cell ids, -1 (distance NaN) where fewer than ``k`` candidates exist.

    Raises:
        InvalidArgumentError: If ``k`` < 1 or the cell has no vector.
        DimensionMismatchError: If a query vector has the wrong width.
        UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError,
        StoreCorruptError: See :class:`Searcher`.
    """
    if int(k) < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    searcher = Searcher(store, set_or_model, where)
    if isinstance(query, int | np.integer):
        q = searcher.vector_of([int(query)])
        exclude = None if include_self else np.asarray([int(query)], np.int64)
        return searcher.knn(searcher.prepare(q), int(k), exclude)
    return searcher.knn(searcher.prepare(query), int(k))
