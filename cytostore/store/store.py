"""The store: a catalog plus embedding sets, vectors, indexes, search and tags.

:class:`Store` is what users open. It builds on :class:`~cytostore.store.catalog.
Catalog` (connections, transactions, migrations, SQL) and hands out what the modules
below it do: ``vectors`` (sets and files), ``index`` (FAISS), ``search``,
``neighbors``, ``merge``, ``export`` and ``tags``. Those modules work on a
:class:`~cytostore.store.catalog.Catalog` and never import this one, so the package
has no import circle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import EmptySelectionError
from cytostore.store import gc as _gc
from cytostore.store import index as _index
from cytostore.store import inventory as _inventory
from cytostore.store import relocate as _relocate
from cytostore.store import remove as _remove
from cytostore.store import search as _search
from cytostore.store import tags as _tags
from cytostore.store import vectors as _vectors
from cytostore.store import verify as _verify
from cytostore.store.catalog import Catalog

__all__ = ["Store", "EmbeddingSetHandle"]


@dataclass(frozen=True, eq=False)
class EmbeddingSetHandle(_vectors.EmbeddingSet):
    """An embedding set's catalog row bound to its store, with the set's verbs.

    A snapshot of the row: counts do not change under it; :meth:`refresh` reads the
    row again. Compared as a row (the store is not part of equality).

    Attributes:
        store: The store the set belongs to.
    """

    store: Store | None = field(default=None, compare=False, repr=False)

    def __eq__(self, other: object) -> bool:
        """Equal to any row (bound or not) with the same values."""
        if not isinstance(other, _vectors.EmbeddingSet):
            return NotImplemented
        names = [f.name for f in fields(_vectors.EmbeddingSet)]
        return all(getattr(self, n) == getattr(other, n) for n in names)

    __hash__ = _vectors.EmbeddingSet.__hash__

    @classmethod
    def bind(cls, store: Store, es: _vectors.EmbeddingSet) -> EmbeddingSetHandle:
        """Return ``es`` bound to ``store``."""
        values = {f.name: getattr(es, f.name) for f in fields(_vectors.EmbeddingSet)}
        return cls(**values, store=store)

    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("this embedding set is not bound to a store")
        return self.store

    def refresh(self) -> EmbeddingSetHandle:
        """Return the set's row read again from the catalog."""
        return self._store().embedding_set(self.set_id)

    def vectors(
        self, where: str | None = None
    ) -> tuple[npt.NDArray[np.int64], np.ndarray]:
        """Return ``(ids, matrix)`` of this set; see :meth:`Store.vectors`."""
        return self._store().vectors(self.set_id, where)

    def search(
        self,
        query: npt.ArrayLike | int,
        k: int = 10,
        *,
        where: str | None = None,
        include_self: bool = False,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Return ``(distances, ids)`` of the k nearest cells in this set."""
        return self._store().search(
            query, k, where=where, model=self.set_id, include_self=include_self
        )

    def build_index(
        self,
        index: str | None = None,
        *,
        search_params: dict[str, Any] | None = None,
        rebuild: bool = False,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> _vectors.EmbeddingSet:
        """Bring this set's index up to date; see :meth:`Store.build_index`."""
        return self._store().build_index(
            self.set_id,
            index,
            search_params=search_params,
            rebuild=rebuild,
            seed=seed,
            progress=progress,
        )

    def writer(self) -> _vectors.VectorWriter:
        """Return a writer appending to this set (a context manager)."""
        return self._store().vector_writer(self)


class Store(Catalog):
    """A cytostore store on disk: the catalog and its vectors, indexes and models.

    Use :meth:`open` (or :meth:`create`) rather than the constructor. A store is
    safe to share between threads: each thread gets its own catalog connection,
    and loaded embedding sets are shared through a thread-safe cache.

    Attributes:
        root: The store folder.
        busy_timeout_s: How long an operation waits for a writer to release the catalog.

    Examples:
        >>> import tempfile
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> store.sql("SELECT count(*) AS n FROM cells").rows
        [(0,)]
    """

    def __init__(
        self, root: str | os.PathLike[str], busy_timeout_s: float | None = None
    ) -> None:
        super().__init__(Path(root), busy_timeout_s)
        self._searchers = _search.SearcherCache()

    def embedding_sets(self) -> list[_vectors.EmbeddingSet]:
        """Return every embedding set, by ``set_id``."""
        return _vectors.list_sets(self)

    def embedding_set(self, model: str | int | None = None) -> EmbeddingSetHandle:
        """Return one set by id, model name (``MODEL@i/n``: a shard), or the only one.

        The set's catalog row, bound to this store: ``.vectors()``, ``.search()``,
        ``.build_index()`` and ``.writer()`` act on it (like sqlite-utils'
        ``db["table"]``).

        Raises:
            UnknownEmbeddingSetError: If no set (or more than one) matches.

        Examples:
            >>> import tempfile, numpy as np
            >>> store = Store.create(tempfile.mkdtemp() + "/s")
            >>> es = store.create_embedding_set("m", 2)
            >>> with store.embedding_set("m").writer() as w:
            ...     _ = w.append([1, 2], [[1, 0], [0, 1]])
            >>> m = store.embedding_set("m")
            >>> m.n_vectors, m.search([1.0, 0.1], k=1)[1].tolist()
            (2, [[1]])
        """
        return EmbeddingSetHandle.bind(self, _vectors.get_set(self, model))

    def create_embedding_set(
        self,
        model: str,
        dim: int,
        *,
        dtype: str = "float32",
        metric: str = "cosine",
        index_factory: str = "Flat",
        shard: str | None = None,
        preprocessing: dict[str, Any] | None = None,
        weights_sha256: str | None = None,
    ) -> _vectors.EmbeddingSet:
        """Register the set of ``(model, shard)`` or return the existing one.

        See :func:`cytostore.store.vectors.create_set` for the checks it makes.
        """
        return _vectors.create_set(
            self,
            model,
            dim,
            dtype=dtype,
            metric=metric,
            index_factory=index_factory,
            shard=shard,
            preprocessing=preprocessing,
            weights_sha256=weights_sha256,
        )

    def vector_writer(
        self, model: _vectors.EmbeddingSet | str | int | None = None
    ) -> _vectors.VectorWriter:
        """Return a :class:`~cytostore.store.vectors.VectorWriter` (a context manager).

        Raises:
            StoreBusyError: If another process writes the same set.
        """
        es = (
            model
            if isinstance(model, _vectors.EmbeddingSet)
            else _vectors.get_set(self, model)
        )
        return _vectors.VectorWriter(self, es)

    def vectors(
        self, model: str | int | None = None, where: str | None = None
    ) -> tuple[npt.NDArray[np.int64], np.ndarray]:
        """Return the cell ids and vectors of a set, optionally only those in ``where``.

        Args:
            model: Set id or model name (``None``: the store's only set).
            where: SQL filter over ``cell_meta``; ``None`` returns every vector.

        Returns:
            ``(ids, matrix)``: int64 ``(n,)`` and ``(n, dim)`` in the stored dtype,
            in the set's row order. Without ``where`` both are read-only views of
            the memory-mapped files (no copy); with it, copies of the chosen rows.

        Raises:
            UnknownEmbeddingSetError: If the set does not exist.
            InvalidWhereError: If ``where`` is not valid SQL over ``cell_meta``.
            EmptySelectionError: If ``where`` selects no vector of the set.
            StoreCorruptError: If the files are shorter than the catalog says.

        Examples:
            >>> import tempfile, numpy as np
            >>> from cytostore.store import Store
            >>> store = Store.create(tempfile.mkdtemp() + "/s")
            >>> es = store.create_embedding_set("m", 4)
            >>> with store.vector_writer(es) as w:
            ...     _ = w.append([1, 2], np.eye(2, 4) * 3)
            >>> ids, x = store.vectors("m")
            >>> ids.tolist(), x.tolist()
            ([1, 2], [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        """
        es = _vectors.get_set(self, model)
        ids, mat = _vectors.read_vectors(self, es)
        if where is None:
            return ids, mat
        mask = np.isin(ids, self.where_ids(where))
        if not mask.any():
            raise EmptySelectionError(
                f"--where {where!r} selects no cell with a vector in set {es.name!r}: "
                "loosen the filter or embed those cells"
            )
        return ids[mask], mat[mask]

    def searcher(
        self, model: str | int | None = None, where: str | None = None
    ) -> _search.Searcher:
        """Return a prepared :class:`~cytostore.store.search.Searcher` over a set.

        The loaded set (its ids, memory-mapped vectors and index) is kept in this
        store object and reused by later calls while its files and catalog row are
        unchanged, so a loop of searches pays the loading once; without ``where``
        a repeated call does not open the catalog at all. See
        :class:`~cytostore.store.search.SearcherCache`.

        Args:
            model: Set id or model name (``None``: the store's only set).
            where: SQL filter over ``cell_meta`` restricting the candidates.

        Raises:
            UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError,
            StoreCorruptError: See :class:`~cytostore.store.search.Searcher`.
        """
        return self._searchers.get(self, model, where)

    def search(
        self,
        query: npt.ArrayLike | int,
        k: int = 10,
        *,
        where: str | None = None,
        model: str | int | None = None,
        include_self: bool = False,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Return ``(distances, ids)`` of the k nearest cells; see :func:`~cytostore.store.search.search`."""  # noqa: E501
        return _search.search(
            self,
            query,
            k,
            cache=self._searchers,
            where=where,
            model=model,
            include_self=include_self,
        )

    def build_index(
        self,
        model: str | int | None = None,
        index: str | None = None,
        *,
        search_params: dict[str, Any] | None = None,
        rebuild: bool = False,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> _vectors.EmbeddingSet:
        """Bring a set's FAISS index up to date; see :func:`~cytostore.store.index.build_index`."""  # noqa: E501
        return _index.build_index(
            self,
            model,
            index,
            search_params=search_params,
            rebuild=rebuild,
            seed=seed,
            progress=progress,
        )

    def neighbors(
        self,
        into: str,
        k: int = 10,
        *,
        model: str | int | None = None,
        where: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write every selected cell's k nearest neighbours into a catalog table.

        See :func:`cytostore.store.neighbors.neighbors`.
        """
        from cytostore.store.neighbors import neighbors

        return neighbors(self, into, k, model=model, where=where, progress=progress)

    def merge(
        self,
        model: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        when_ready: bool = False,
    ) -> dict[str, Any]:
        """Join a model's shard sets into its full set; see :func:`cytostore.store.merge.merge`."""  # noqa: E501
        from cytostore.store.merge import merge

        return merge(self, model, progress=progress, when_ready=when_ready)

    def export(
        self,
        out: str | Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write the catalog and every set as Parquet; see :func:`cytostore.store.export.export`."""  # noqa: E501
        from cytostore.store.export import export

        return export(self, out, progress=progress)

    def add_tags(
        self,
        where: str | None,
        tags: Sequence[str],
        *,
        ids: Sequence[int] | None = None,
    ) -> int:
        """Tag the cells ``where`` selects; see :func:`cytostore.store.tags.add_tags`.

        Returns:
            The number of (cell, tag) pairs added.

        Examples:
            >>> import tempfile
            >>> store = Store.create(tempfile.mkdtemp() + "/s")
            >>> store.add_cells([{"dataset": "d", "path": "a.png", "label": "BLA"}])
            array([1])
            >>> store.add_tags("label = 'BLA'", ["review"])
            1
            >>> store.sql("SELECT cell_id, tags FROM cell_meta").rows
            [(1, ['review'])]
        """
        return _tags.add_tags(self, where, tags, ids=ids)

    def tag(
        self,
        where: str | None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        *,
        ids: Sequence[int] | None = None,
    ) -> dict[str, int]:
        """Add and remove tags in one go; see :func:`cytostore.store.tags.tag`.

        Returns:
            ``{"cells", "added", "removed"}`` counts.
        """
        return _tags.tag(self, where, add, remove, ids=ids)

    def remove_tags(
        self,
        where: str | None,
        tags: Sequence[str],
        *,
        ids: Sequence[int] | None = None,
    ) -> int:
        """Untag cells; see :func:`cytostore.store.tags.remove_tags`.

        Returns:
            The number of (cell, tag) pairs removed.
        """
        return _tags.remove_tags(self, where, tags, ids=ids)

    # ------------------------------------------------------------- maintenance
    def verify(
        self,
        images: bool = False,
        repair: bool = False,
        *,
        grace_s: float = _gc.GC_GRACE_S,
    ) -> _verify.VerifyReport:
        """Check catalog and files agree; see :func:`cytostore.store.verify.verify`.

        Returns:
            The problems found (and those repaired), each with its fix.
        """
        return _verify.verify(self, images=images, repair=repair, grace_s=grace_s)

    def ls(self, what: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """List models, sets, heads and tables; see :func:`cytostore.store.ls`.

        Returns:
            ``{group: rows}`` with sizes, counts and disk use.
        """
        return _inventory.ls(self, what)

    def gc(
        self,
        dry_run: bool = False,
        cache: bool = False,
        *,
        all_caches: bool = False,
        grace_s: float = _gc.GC_GRACE_S,
    ) -> _gc.GcReport:
        """Remove orphaned and temporary files; see :func:`cytostore.store.gc`.

        Returns:
            What was (or, with ``dry_run``, would be) removed and kept.
        """
        return _gc.gc(self, dry_run, cache, all_caches=all_caches, grace_s=grace_s)

    def relocate(
        self,
        dataset: str,
        new_root: str | os.PathLike[str],
        sample: int = 20,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Point a dataset at its images' new folder; see :func:`cytostore.store.relocate`.

        Returns:
            ``dataset``, ``old_root``, ``new_root``, ``checked``, ``cells``.
        """  # noqa: E501
        return _relocate.relocate(self, dataset, new_root, sample=sample, seed=seed)

    def remove(
        self,
        kind: str,
        name: str,
        *,
        dataset: str | None = None,
        cascade: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Remove a model, set, head, patient or dataset; see :func:`cytostore.store.remove`.

        Returns:
            What was removed: catalog rows per table, files and bytes.
        """  # noqa: E501
        return _remove.remove(
            self, kind, name, dataset=dataset, cascade=cascade, dry_run=dry_run
        )
