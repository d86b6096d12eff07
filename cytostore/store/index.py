"""FAISS indexes over embedding sets: ``STORE/indexes/<set_id>.faiss``.

An index is any FAISS factory string (``Flat``, ``HNSW32``, ``IVF1024,Flat``,
``IVF4096,PQ48``...) whose ids are catalog cell ids: a compressed IVF index
(``IVF…,PQ…``, ``IVF…,SQ…``) stores them in its lists itself; any other is wrapped
in ``IndexIDMap2``, whose id map and reverse map cost ~50 bytes a vector in RAM
(more than PQ codes, so compressed IVF indexes are spared them).
Indexes that need training are trained on a seeded sample of the set. The catalog
records the factory, the search parameters and how many rows the index holds
(``n_indexed``); the index is extended with the rows embedded since, or rebuilt
when the factory changes. Rows committed after the last index write are still
searched (exactly), so an index that lags behind a running ``embed`` never hides
vectors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, StoreCorruptError
from cytostore.store.checksums import record_file, sha256_file
from cytostore.store.faults import fault_point
from cytostore.store.locks import file_lock
from cytostore.store.vectors import EmbeddingSet, get_set, ids_path, vector_path

if TYPE_CHECKING:
    import faiss

    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "build_index",
    "check_factory",
    "load_index",
    "index_path",
    "default_search_params",
    "faiss_metric",
    "RECOMMENDED_FACTORIES",
    "DEFAULT_K_FACTOR",
    "is_lossy",
    "inner_index",
]

logger = logging.getLogger(__name__)

#: Factories the docs recommend, by store size (see ``docs/store-format.md``).
RECOMMENDED_FACTORIES = {
    "up to ~500k cells (exact)": "Flat",
    "0.5M-5M cells, recall >= 0.95, vectors in RAM": "IVF1024,Flat",
    "5M+ cells, compressed": "IVF4096,PQ48",
    "graph, no training, more RAM": "HNSW32",
}
#: Candidates per wanted neighbour that a search of a compressed (PQ, SQ) index
#: re-ranks exactly from the memory-mapped float rows (search parameter
#: ``k_factor``). At 10M cells with ``IVF4096,PQ32`` recall@10 was 0.755 with 8,
#: 0.973 with 32 and 0.998 with 64, at 6.6, 7.3 and 12.1 ms a query (nprobe 64);
#: a wider nprobe changed nothing (bench/bench_scale.py).
DEFAULT_K_FACTOR = 32
_ADD_CHUNK_ROWS = 16_384
_cache_lock = threading.Lock()
_cache: dict[Path, tuple[tuple[int, int], Any]] = {}


def index_path(store: Store, es: EmbeddingSet) -> Path:
    """Return the path of the set's FAISS index file."""
    return store.root / "indexes" / f"{es.set_id}.faiss"


def faiss_metric(metric: str) -> int:
    """Return the FAISS metric constant for a set's ``metric``."""
    import faiss

    return int(faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2)


def default_search_params(index: faiss.Index) -> dict[str, Any]:
    """Return search parameters suited to a freshly built index.

    IVF: ``nprobe = max(8, nlist // 64)``; HNSW: ``efSearch = 128``; others: none.
    Indexes of compressed codes (PQ, SQ) also get ``k_factor`` (exact re-ranking of
    ``k_factor * k`` candidates, see :mod:`cytostore.store.search`).
    """
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        params: dict[str, Any] = {
            "nprobe": int(min(inner.nlist, max(8, inner.nlist // 64)))
        }
        if is_lossy(inner):
            params["k_factor"] = DEFAULT_K_FACTOR
        return params
    if isinstance(inner, faiss.IndexHNSW):
        return {"efSearch": 128}
    return {}


def inner_index(index: Any) -> Any:
    """Return the index under an ``IndexIDMap2`` wrapper, or ``index`` itself.

    Examples:
        >>> import faiss
        >>> type(inner_index(faiss.IndexIDMap2(faiss.IndexFlatIP(4)))).__name__
        'IndexFlatIP'
    """
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap):
        return faiss.downcast_index(inner.index)
    return inner


def is_lossy(index: Any) -> bool:
    """Return whether ``index`` gives approximate distances (PQ/SQ codes, PCA...).

    Examples:
        >>> import faiss
        >>> is_lossy(faiss.index_factory(16, "IVF4,PQ4"))
        True
        >>> is_lossy(faiss.IndexIDMap2(faiss.IndexFlatIP(16)))
        False
    """
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexPreTransform):
        return True  # PCA, OPQ...: distances in a transformed space
    exact = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat)
    if isinstance(inner, exact):
        return False
    if isinstance(inner, faiss.IndexHNSW):
        return is_lossy(inner.storage)
    return True


def check_factory(dim: int, factory: str, metric: str = "cosine") -> None:
    """Raise if ``factory`` is not a FAISS factory string usable at width ``dim``.

    Raises:
        InvalidArgumentError: With FAISS's reason and examples of valid strings.

    Examples:
        >>> check_factory(64, "HNSW32")
    """
    import faiss

    try:
        faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as exc:
        raise InvalidArgumentError(
            f"invalid FAISS index factory {factory!r}: {str(exc).splitlines()[0]} "
            "(try Flat, HNSW32, IVF1024,Flat or IVF4096,PQ48)"
        ) from None


def _read_rows(
    store: Store, es: EmbeddingSet, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read rows ``[start, stop)`` with plain reads (no mapping stays resident)."""
    n = stop - start
    with open(vector_path(store, es), "rb") as f:
        f.seek(start * es.row_bytes)
        x = np.fromfile(f, dtype=es.np_dtype, count=n * es.dim).reshape(n, es.dim)
    with open(ids_path(store, es), "rb") as f:
        f.seek(start * 8)
        ids = np.fromfile(f, dtype="<i8", count=n)
    return ids.astype(np.int64), np.ascontiguousarray(x, dtype=np.float32)


def _train(
    index: faiss.Index, store: Store, es: EmbeddingSet, factory: str, seed: int
) -> None:
    import faiss

    inner = faiss.downcast_index(index)
    nlist = int(getattr(inner, "nlist", 0))
    want = min(es.n_vectors, max(50 * nlist, 20_000))
    if es.n_vectors < max(nlist, 1):
        raise InvalidArgumentError(
            f"index {factory!r} needs at least {nlist} vectors to train but set "
            f"{es.name!r} has {es.n_vectors}: use 'Flat' or a smaller IVF list count"
        )
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(es.n_vectors, size=want, replace=False))
    sample = _read_sample(store, es, rows)
    ivf: Any = _ivf_of(index)
    if isinstance(ivf, faiss.IndexIVFPQ):  # the stubs lack this attribute
        # Polysemous codes only serve polysemous_ht filtering, which search never
        # turns on; their training is most of an IVF-PQ build (110 of 127 s on
        # 51k vectors).
        setattr(ivf, "do_polysemous_training", False)  # noqa: B010
    logger.info("training %s on %d vectors", factory, len(sample))
    index.train(sample)


def _ivf_of(index: Any) -> Any:
    """Return the IndexIVF inside ``index`` (IDMap, PreTransform), or ``None``."""
    import faiss

    inner = faiss.downcast_index(index)
    for _ in range(3):
        if isinstance(inner, faiss.IndexIVF):
            return inner
        sub = getattr(inner, "index", None)
        if sub is None:
            return None
        inner = faiss.downcast_index(sub)
    return None


def _read_sample(
    store: Store, es: EmbeddingSet, rows: np.ndarray
) -> npt.NDArray[np.float32]:
    """Read the sorted ``rows`` with positioned reads (nothing mapped stays resident).

    Fancy-indexing the memory map would leave every touched page in this
    process's resident set: a 200k-row sample of a 10M-row file touches ~800 MB.
    """
    out = np.empty((rows.size, es.dim), dtype=np.float32)
    row_bytes = es.row_bytes
    fd = os.open(vector_path(store, es), os.O_RDONLY)
    try:
        for j, r in enumerate(rows.tolist()):
            buf = os.pread(fd, row_bytes, r * row_bytes)
            out[j] = np.frombuffer(buf, dtype=es.np_dtype)
    finally:
        os.close(fd)
    return out


def build_index(
    store: Store,
    model: str | int | None = None,
    index: str | None = None,
    *,
    search_params: dict[str, Any] | None = None,
    rebuild: bool = False,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddingSet:
    """Bring a set's FAISS index up to date with its vectors.

    The existing index is extended with rows embedded since it was written; it is
    rebuilt from the vector file when ``index`` names another factory, when
    ``rebuild`` is set, or when it is missing. The file is replaced atomically and
    the catalog records the factory, search parameters and row count.

    Args:
        store: The store.
        model: The set id or model name (``None``: the only set).
        index: A FAISS factory string; ``None`` keeps the set's factory.
        search_params: e.g. ``{"nprobe": 32}`` or ``{"efSearch": 256}``;
            ``None`` keeps the recorded ones, or picks defaults for a new factory.
        rebuild: Rebuild even if the index could be extended.
        seed: Seed of the training sample.
        progress: Called with ``(rows added, rows to add)``.

    Returns:
        The updated set.

    Raises:
        UnknownEmbeddingSetError: If the set does not exist.
        InvalidArgumentError: If the factory string is invalid or cannot be
            trained on this many vectors.
        StoreBusyError: If another writer holds the set (an ``embed``, another
            ``build-index``) for longer than the store's busy timeout.
    """
    es = get_set(store, model)
    # The set's lock (the one VectorWriter holds): two index writes of one set,
    # in two processes or two threads, run one after the other.
    busy = (
        f"another process or thread is writing embedding set {es.name!r} (embed, "
        "merge or build-index): wait for it to finish, then rerun"
    )
    lock = store.root / "vectors" / f"{es.set_id}.lock"
    with file_lock(lock, busy, wait_s=store.busy_timeout_s):
        return _build_locked(
            store,
            get_set(store, es.set_id),
            index,
            search_params,
            rebuild,
            seed,
            progress,
        )


def _build_locked(
    store: Store,
    es: EmbeddingSet,
    index: str | None,
    search_params: dict[str, Any] | None,
    rebuild: bool,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> EmbeddingSet:
    """:func:`build_index` once the set's lock is held and ``es`` read under it."""
    import faiss

    factory = index or es.index_factory
    path = index_path(store, es)
    idx: Any = None
    fresh = False
    _remove_temporaries(path)  # a killed writer's (we hold the set's lock)
    if not rebuild and factory == es.index_factory and path.exists():
        idx = load_index(store, es)
        if idx is not None and int(idx.ntotal) < es.n_vectors:
            # The loaded index is shared with this process's searchers: extend a copy.
            idx = faiss.clone_index(idx)
    if idx is None:
        try:
            base = faiss.index_factory(es.dim, factory, faiss_metric(es.metric))
        except RuntimeError as exc:
            raise InvalidArgumentError(
                f"invalid FAISS index factory {factory!r}: {str(exc).splitlines()[0]} "
                "(try Flat, HNSW32, IVF1024,Flat or IVF4096,PQ48)"
            ) from None
        if not base.is_trained:
            try:
                _train(base, store, es, factory, seed)
            except RuntimeError as exc:
                raise InvalidArgumentError(
                    f"cannot train index {factory!r} on set {es.name!r}: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
        # A compressed IVF index keeps the cell ids in its lists: IndexIDMap2's
        # maps (~50 B a vector in RAM) would outweigh its codes (e.g. 40 B).
        native = isinstance(base, faiss.IndexIVF) and is_lossy(base)
        idx = base if native else faiss.IndexIDMap2(base)
        fresh = True
        params = (
            search_params if search_params is not None else default_search_params(base)
        )
    else:
        params = search_params if search_params is not None else es.search_params
    start, total = int(idx.ntotal), es.n_vectors
    if fresh and isinstance(inner_index(idx), faiss.IndexFlat):
        _fill_flat(idx, store, es, progress)
    for lo in range(int(idx.ntotal), total, _ADD_CHUNK_ROWS):
        hi = min(lo + _ADD_CHUNK_ROWS, total)
        ids, x = _read_rows(store, es, lo, hi)
        idx.add_with_ids(x, ids)
        del ids, x
        if progress is not None:
            progress(hi - start, total - start)
    changed = (
        fresh
        or int(idx.ntotal) != es.n_indexed
        or factory != es.index_factory
        or params != es.search_params
        or not path.exists()
    )
    if not changed:
        return es
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    faiss.write_index(idx, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    digest = (tmp.stat().st_size, sha256_file(tmp))
    fault_point("index.before_replace")  # new index in its temp file only
    os.replace(tmp, path)
    fault_point("index.before_catalog")  # new index in place, catalog not updated
    with store.transaction() as con:
        record_file(store, f"indexes/{path.name}", "index", es.set_id, digest=digest)
        con.execute(
            "UPDATE embedding_sets SET n_indexed = ?, index_factory = ?, "
            "search_params = ?, updated_at = now() WHERE set_id = ?",
            [int(idx.ntotal), factory, json.dumps(params), es.set_id],
        )
        updated = get_set(store, es.set_id)  # same connection: no second open
    _remember(path, idx)
    logger.info("index %s of set %s holds %d vectors", factory, es.name, idx.ntotal)
    return updated


def _remove_temporaries(path: Path) -> None:
    """Delete temp files a killed write of this index left (``<name>.*tmp``)."""
    for tmp in path.parent.glob(f"{path.name}.*tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fill_flat(
    idx: Any,
    store: Store,
    es: EmbeddingSet,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Fill a new ``IndexIDMap2(IndexFlat)`` in place, sized once.

    ``add_with_ids`` chunk by chunk grows FAISS's code vector by doubling, which
    briefly holds old and new buffers (up to ~2x the vectors); sizing it once keeps
    the peak at the index itself plus one chunk. The result equals adding every row
    with ``add_with_ids`` (same codes, ids and reverse map).
    """
    import faiss

    flat: Any = faiss.downcast_index(idx.index)
    total, dim = es.n_vectors, es.dim
    flat.codes.resize(total * dim * 4)
    codes = faiss.rev_swig_ptr(flat.codes.data(), total * dim * 4)
    matrix = np.frombuffer(codes, dtype=np.float32).reshape(total, dim)
    idx.id_map.resize(total)
    id_map = faiss.rev_swig_ptr(idx.id_map.data(), total)
    for lo in range(0, total, _ADD_CHUNK_ROWS):
        hi = min(lo + _ADD_CHUNK_ROWS, total)
        ids, x = _read_rows(store, es, lo, hi)
        matrix[lo:hi] = x
        id_map[lo:hi] = ids
        del ids, x  # before the next chunk is read
        if progress is not None:
            progress(hi, total)
    flat.ntotal = total
    idx.ntotal = total
    idx.construct_rev_map()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _remember(path: Path, idx: Any) -> None:
    with _cache_lock:
        _cache.clear()  # keep one index in memory per process
        _cache[path] = (_stamp(path), idx)


def load_index(store: Store, es: EmbeddingSet) -> Any:
    """Load the set's index (cached per process while the file is unchanged).

    Returns:
        The index (an ``IndexIVF``, or an ``IndexIDMap2`` over any other kind;
        its ids are cell ids), or ``None`` when the set has no index file yet.
        Its ``ntotal`` lies between the catalog's ``n_indexed`` and ``n_vectors``
        (a killed writer may have replaced the file but not updated the catalog).

    Raises:
        StoreCorruptError: If the file cannot be read or its size disagrees.
    """
    import faiss

    path = index_path(store, es)
    if not path.exists():
        if es.n_indexed > 0:
            raise StoreCorruptError(
                f"index {path} of set {es.name!r} is missing but the catalog records "
                f"{es.n_indexed} indexed vectors: rebuild it with 'cytostore "
                f"build-index STORE --model {es.model} --rebuild'"
            )
        return None
    stamp = _stamp(path)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        idx = hit[1]
    else:
        try:
            idx = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise StoreCorruptError(
                f"cannot read index {path}: {str(exc).splitlines()[0]}; rebuild it "
                f"with 'cytostore build-index STORE --model {es.model} --rebuild'"
            ) from None
        _remember(path, idx)
    if not es.n_indexed <= idx.ntotal <= es.n_vectors or idx.d != es.dim:
        raise StoreCorruptError(
            f"index {path} holds {idx.ntotal} vectors of dim {idx.d} but the catalog "
            f"records {es.n_indexed} of dim {es.dim} for set {es.name!r}: rebuild it "
            f"with 'cytostore build-index STORE --model {es.model} --rebuild'"
        )
    return idx
