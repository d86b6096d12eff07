"""Embedding sets: memory-mappable vector files registered in ``embedding_sets``.

A set holds one vector per cell for one model (or one shard of it). Its rows live in
``STORE/vectors/<set_id>.f32`` (or ``.f16``), raw little-endian row-major, and the
cell id of each row in ``STORE/vectors/<set_id>.ids`` (raw little-endian int64). The
catalog's ``n_vectors`` is the truth: rows beyond it are an uncommitted tail (a writer
running now, or one that was killed) that readers ignore and the next writer truncates.
A file *shorter* than the catalog says is corruption and raises
:class:`~cytostore.errors.StoreCorruptError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    AmbiguousSetError,
    ConfigMismatchError,
    DimensionMismatchError,
    InvalidArgumentError,
    StoreBusyError,
    StoreCorruptError,
    StoreWriteError,
    UnknownEmbeddingSetError,
)
from cytostore.store.checksums import PrefixHasher, forget_files, record_file
from cytostore.store.faults import fault_point

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "EmbeddingSet",
    "VectorWriter",
    "DTYPES",
    "METRICS",
    "list_sets",
    "get_set",
    "create_set",
    "read_vectors",
    "vector_path",
    "ids_path",
    "normalize_rows",
]

logger = logging.getLogger(__name__)

#: Stored dtypes and their file suffixes.
DTYPES = {"float32": ".f32", "float16": ".f16"}
#: ``cosine``: inner product of L2-normalised vectors; ``l2``: squared L2 distance.
METRICS = ("cosine", "l2")
_SET_COLUMNS = (
    "set_id, model, shard, dim, dtype, metric, index_factory, search_params, "
    "preprocessing, n_vectors, n_indexed, created_at, updated_at, weights_sha256"
)


@dataclass(frozen=True)
class EmbeddingSet:
    """One row of ``embedding_sets``.

    Attributes:
        set_id: Integer id, naming ``vectors/<set_id>.*``, ``indexes/<set_id>.faiss``.
        model: Name of the model the vectors come from.
        shard: ``"i/n"`` for one shard of a sharded run, ``None`` for the full set.
        dim: Vector width.
        dtype: ``float32`` or ``float16`` (the stored values).
        metric: ``cosine`` (inner product on unit vectors) or ``l2``.
        index_factory: FAISS factory string of the index (``Flat``, ``HNSW32``, ...).
        search_params: FAISS search parameters recorded with the index (``nprobe``...).
        preprocessing: The model's preprocessing, as recorded when embedding.
        n_vectors: Committed rows of the vector file.
        n_indexed: Rows added to the index file when it was last written.
        weights_sha256: sha256 of the model weights the vectors come from (the model
            card's ``sha256``), recorded by ``embed``; ``None``: not known (a set
            written before it was recorded, or vectors not from a registered model).
    """

    set_id: int
    model: str
    shard: str | None
    dim: int
    dtype: str
    metric: str
    index_factory: str
    search_params: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] | None = None
    n_vectors: int = 0
    n_indexed: int = 0
    created_at: Any = None
    updated_at: Any = None
    weights_sha256: str | None = None

    @property
    def name(self) -> str:
        """``model`` for a full set, ``model@i/n`` for a shard."""
        return self.model if self.shard is None else f"{self.model}@{self.shard}"

    @property
    def np_dtype(self) -> np.dtype[Any]:
        """The little-endian numpy dtype of the stored values."""
        return np.dtype("<f4" if self.dtype == "float32" else "<f2")

    @property
    def row_bytes(self) -> int:
        """Bytes per stored vector."""
        return self.dim * self.np_dtype.itemsize

    def as_dict(self) -> dict[str, Any]:
        """Return the set as a plain dict (for reports and JSON)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _row_to_set(row: tuple[Any, ...]) -> EmbeddingSet:
    (sid, model, shard, dim, dtype, metric, factory, params, prep, n, ni, c, u, w) = row
    return EmbeddingSet(
        set_id=int(sid),
        model=model,
        shard=shard,
        dim=int(dim),
        dtype=dtype,
        metric=metric,
        index_factory=factory,
        search_params=json.loads(params) if params else {},
        preprocessing=json.loads(prep) if prep else None,
        n_vectors=int(n),
        n_indexed=int(ni),
        created_at=c,
        updated_at=u,
        weights_sha256=w,
    )


def vector_path(store: Store, es: EmbeddingSet) -> Path:
    """Return the path of the set's vector file."""
    return store.root / "vectors" / f"{es.set_id}{DTYPES[es.dtype]}"


def ids_path(store: Store, es: EmbeddingSet) -> Path:
    """Return the path of the set's row-order file (int64 cell ids)."""
    return store.root / "vectors" / f"{es.set_id}.ids"


def list_sets(store: Store) -> list[EmbeddingSet]:
    """Return every embedding set of the store, by ``set_id``."""
    rows = store.sql(f"SELECT {_SET_COLUMNS} FROM embedding_sets ORDER BY set_id").rows
    return [_row_to_set(r) for r in rows]


def get_set(store: Store, model: str | int | None = None) -> EmbeddingSet:
    """Resolve a set id, a model name (its full, unsharded set) or ``None``.

    ``None`` means the only full set of the store (or its only set).

    Raises:
        UnknownEmbeddingSetError: If nothing matches (the message suggests close
            names, or says to embed a model that has no vectors yet).
        AmbiguousSetError: If ``model`` is None and the store has several sets.
    """
    sets = list_sets(store)
    names = ", ".join(s.name for s in sets) or "none"
    if model is None:
        full = [s for s in sets if s.shard is None] or sets
        if len(full) == 1:
            return full[0]
        if full:
            raise AmbiguousSetError(
                f"the store has {len(full)} embedding sets ({names}): pick one with "
                "--model NAME"
            )
        raise UnknownEmbeddingSetError(
            "the store has no embedding sets: run "
            "'cytostore embed STORE --model NAME' first"
        )
    if isinstance(model, int) or str(model).isdigit():
        for s in sets:
            if s.set_id == int(model):
                return s
    else:
        model, _, shard = str(model).partition("@")
        for s in sets:
            if s.model == model and s.shard == (shard or None):
                return s
        if any(s.model == model for s in sets):
            raise UnknownEmbeddingSetError(
                f"model {model!r} has only shard sets: join them with "
                "'cytostore merge STORE' (or name one as MODEL@i/n)"
            )
    models = {str(r[0]) for r in store.sql("SELECT name FROM models").rows}
    if model in models:
        raise UnknownEmbeddingSetError(
            f"model {model!r} has no embedding set yet: embed it with "
            f"'cytostore embed STORE --model {model}'"
        )
    raise UnknownEmbeddingSetError.for_name(
        "embedding set",
        model,
        {s.name for s in sets} | models,
        "name a model with vectors, a shard as MODEL@i/n, or a set id (see "
        "'cytostore ls STORE sets'); register new weights with 'cytostore pretrain'",
    )


def create_set(
    store: Store,
    model: str,
    dim: int,
    *,
    dtype: str = "float32",
    metric: str = "cosine",
    index_factory: str = "Flat",
    shard: str | None = None,
    preprocessing: dict[str, Any] | None = None,
    search_params: dict[str, Any] | None = None,
    weights_sha256: str | None = None,
) -> EmbeddingSet:
    """Return the set of ``(model, shard)``, registering it if it does not exist.

    An existing set must agree with the arguments: it keeps its vectors, and more
    vectors are added to it.

    Args:
        store: The store.
        model: Name of the model the vectors come from.
        dim: Vector width.
        dtype: ``float32`` or ``float16``.
        metric: ``cosine`` or ``l2``.
        index_factory: FAISS factory string of the set's index.
        shard: ``"i/n"`` for one shard of a sharded run, ``None`` for the full set.
        preprocessing: The model's preprocessing (``None``: not recorded/checked).
        search_params: FAISS search parameters of the index.
        weights_sha256: sha256 of the model weights (``None``: not recorded/checked).

    Raises:
        InvalidArgumentError: If ``dtype`` or ``metric`` is unknown, or ``dim`` < 1.
        DimensionMismatchError: If the existing set has another dimension.
        ConfigMismatchError: If the existing set has another dtype, metric,
            index factory, preprocessing or weights.
    """
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if metric not in METRICS:
        raise InvalidArgumentError(f"metric {metric!r} is not one of {list(METRICS)}")
    if dim < 1:
        raise InvalidArgumentError(f"dim must be >= 1, got {dim}")
    prep = json.loads(json.dumps(preprocessing)) if preprocessing is not None else None
    with store.transaction() as con:
        rows = con.execute(
            f"SELECT {_SET_COLUMNS} FROM embedding_sets WHERE model = ? "
            "AND shard IS NOT DISTINCT FROM ?",
            [model, shard],
        ).fetchall()
        if rows:
            es = _row_to_set(rows[0])
            _check_same(es, dim, dtype, metric, index_factory, prep, weights_sha256)
            return es
        set_id = int(
            con.execute(
                "SELECT coalesce(max(set_id), 0) + 1 FROM embedding_sets"
            ).fetchall()[0][0]
        )
        con.execute(
            f"INSERT INTO embedding_sets ({_SET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, "
            "?, ?, ?, 0, 0, now(), now(), ?)",
            [
                set_id,
                model,
                shard,
                dim,
                dtype,
                metric,
                index_factory,
                json.dumps(search_params or {}),
                json.dumps(prep) if prep is not None else None,
                weights_sha256,
            ],
        )
        # A reused set id must not inherit the checksums of the files it clears.
        suffixes = (*DTYPES.values(), ".ids")
        forget_files(store, [f"vectors/{set_id}{s}" for s in suffixes])
        forget_files(store, [f"indexes/{set_id}.faiss"])
    (store.root / "vectors").mkdir(exist_ok=True)
    es = get_set(store, set_id)
    # A set id can be reused after a merge dropped shard sets: clear leftovers.
    stale = store.root / "indexes" / f"{set_id}.faiss"
    for path in (vector_path(store, es), ids_path(store, es), stale):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    logger.info("registered embedding set %d for model %s", set_id, model)
    return es


def _check_same(
    es: EmbeddingSet,
    dim: int,
    dtype: str,
    metric: str,
    factory: str,
    prep: dict[str, Any] | None,
    weights: str | None,
) -> None:
    if es.dim != dim:
        raise DimensionMismatchError(
            f"model {es.model!r} gives {dim}-d vectors but its embedding set "
            f"{es.set_id} holds {es.dim}-d ones: register the new model under "
            "another name"
        )
    for what, have, want in (
        ("dtype", es.dtype, dtype),
        ("metric", es.metric, metric),
        ("index", es.index_factory, factory),
    ):
        if have != want:
            fix = (
                f"'cytostore build-index STORE --model {es.model} --index {want}'"
                if what == "index"
                else f"--{what} {have}"
            )
            raise ConfigMismatchError(
                f"embedding set {es.name!r} has {what} {have!r}, not {want!r}: "
                f"rerun with {fix}"
            )
    if prep is not None and es.preprocessing is not None and prep != es.preprocessing:
        raise ConfigMismatchError(
            f"model {es.model!r} now preprocesses differently than when set "
            f"{es.set_id} was embedded: register the new model under another name"
        )
    if weights and es.weights_sha256 and weights != es.weights_sha256:
        raise ConfigMismatchError(
            f"model {es.model!r} now has other weights (sha256 {weights[:12]}) than "
            f"set {es.name!r} was embedded with ({es.weights_sha256[:12]}); it was "
            "re-registered since: register the new weights under another name"
        )


def _check_sizes(store: Store, es: EmbeddingSet) -> None:
    for path, row in ((vector_path(store, es), es.row_bytes), (ids_path(store, es), 8)):
        have = path.stat().st_size if path.exists() else 0
        if have < es.n_vectors * row:
            raise StoreCorruptError(
                f"{path} holds {have // row} rows but the catalog records "
                f"{es.n_vectors} for embedding set {es.name!r}: the file was "
                "truncated or replaced; re-embed into a new store, or restore it"
            )


def read_vectors(
    store: Store, es: EmbeddingSet
) -> tuple[npt.NDArray[np.int64], np.ndarray]:
    """Return the committed ids and rows of a set, memory-mapped read-only.

    Returns:
        ``(ids, matrix)``: int64 ``(n,)`` in row order and ``(n, dim)`` in the
        stored dtype; empty arrays for an empty set.

    Raises:
        StoreCorruptError: If a file holds fewer rows than the catalog records.
    """
    _check_sizes(store, es)
    n = es.n_vectors
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, es.dim), es.np_dtype)
    ids = np.memmap(ids_path(store, es), dtype="<i8", mode="r", shape=(n,))
    mat = np.memmap(
        vector_path(store, es), dtype=es.np_dtype, mode="r", shape=(n, es.dim)
    )
    return np.asarray(ids), np.asarray(mat)


def normalize_rows(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Return float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def _write_all(f: BinaryIO, data: bytes | memoryview) -> None:
    """Write ``data`` fully (a seam the disk-full test replaces)."""
    f.write(data)


class VectorWriter:
    """Append vectors to one set; each :meth:`append` is committed on its own.

    Holds an exclusive lock file ``vectors/<set_id>.lock`` (released on close or when
    the process dies). On open, rows beyond the committed count (a killed writer's
    tail) are truncated. Each append writes rows and ids, fsyncs both, then records
    the new count in one catalog transaction, so a crash at any step leaves the
    committed prefix intact. Use as a context manager: ``with store.vector_writer(es)
    as w: w.append(ids, vectors)``.

    Raises:
        StoreBusyError: If another process is writing the same set.
        StoreCorruptError: If the files are shorter than the catalog records.
    """

    def __init__(self, store: Store, es: EmbeddingSet) -> None:
        self.store = store
        self.es = get_set(store, es.set_id)
        folder = store.root / "vectors"
        folder.mkdir(exist_ok=True)
        self._lock = open(folder / f"{es.set_id}.lock", "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreBusyError(
                f"another process is writing embedding set {self.es.name!r}: wait for "
                "it to finish (or give each machine its own --shard i/n)"
            ) from None
        try:
            _check_sizes(store, self.es)
            self._n = self.es.n_vectors
            self._vec = open(vector_path(store, self.es), "a+b")  # noqa: SIM115
            self._ids = open(ids_path(store, self.es), "a+b")  # noqa: SIM115
            self._sums = (  # running sha256 of the committed prefixes (checksums)
                PrefixHasher(vector_path(store, self.es)),
                PrefixHasher(ids_path(store, self.es)),
            )
            self._truncate()
            ids, _ = read_vectors(store, self.es)
            self._seen = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=bool)
            self._seen[ids] = True
        except BaseException:
            self.close()
            raise

    @property
    def n_vectors(self) -> int:
        """Committed rows."""
        return self._n

    def _truncate(self) -> None:
        for f, row in ((self._vec, self.es.row_bytes), (self._ids, 8)):
            f.truncate(self._n * row)
            f.flush()
            os.fsync(f.fileno())

    def contains(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Return which ``ids`` already have a committed vector in this set."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < self._seen.size)
        out = np.zeros(ids.shape, dtype=bool)
        out[inside] = self._seen[ids[inside]]
        return out

    def append(
        self, ids: npt.ArrayLike, vectors: npt.ArrayLike, *, normalize: bool = True
    ) -> int:
        """Append and commit rows; for metric ``cosine`` they are L2-normalised first.

        Args:
            ids: int64 cell ids ``(m,)``, none already in the set.
            vectors: ``(m, dim)`` floats.
            normalize: Set false to store rows that are already normalised values
                of this set's dtype bit for bit (merging shards).

        Returns:
            The committed row count after the append.

        Raises:
            DimensionMismatchError: If ``vectors`` is not ``(m, dim)``.
            InvalidArgumentError: If an id repeats or is already in the set, or a
                vector is not finite.
            StoreWriteError: If a file write fails (disk full...): nothing of this
                append is committed and the files are rolled back where possible.
        """
        ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] != self.es.dim or x.shape[0] != ids_arr.size:
            raise DimensionMismatchError(
                f"expected ({ids_arr.size}, {self.es.dim}) vectors for set "
                f"{self.es.name!r}, got {x.shape}"
            )
        if ids_arr.size == 0:
            return self._n
        if ids_arr.min() < 1:
            raise InvalidArgumentError(
                f"cell ids must be catalog ids (>= 1), got {int(ids_arr.min())}"
            )
        if np.unique(ids_arr).size != ids_arr.size or self.contains(ids_arr).any():
            dup = ids_arr[self.contains(ids_arr)][:5].tolist()
            raise InvalidArgumentError(
                f"cell ids {dup or 'repeated in the batch'} already have vectors in "
                f"set {self.es.name!r}: append only new cells"
            )
        if not np.isfinite(x).all():
            raise InvalidArgumentError(
                f"non-finite values in vectors for set {self.es.name!r}: check the "
                "model"
            )
        if normalize and self.es.metric == "cosine":
            x = normalize_rows(x)
        rows = np.ascontiguousarray(x, dtype=self.es.np_dtype)
        n_new = self._n + ids_arr.size
        ids_le = ids_arr.astype("<i8")
        try:
            for f, data in ((self._vec, rows), (self._ids, ids_le)):
                f.seek(0, os.SEEK_END)
                _write_all(f, data.tobytes())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._truncate()
            why = "the disk is full" if exc.errno == errno.ENOSPC else str(exc)
            raise StoreWriteError(
                f"writing vectors of set {self.es.name!r} failed ({why}); nothing was "
                "committed: free space and rerun, it continues where it stopped"
            ) from exc
        fault_point("vectors.before_commit")  # rows and ids on disk, not committed
        sums = (
            self._sums[0].peek(self._n * self.es.row_bytes, rows),
            self._sums[1].peek(self._n * 8, ids_le),
        )
        with self.store.transaction() as con:
            have = con.execute(
                "SELECT n_vectors FROM embedding_sets WHERE set_id = ?",
                [self.es.set_id],
            ).fetchall()
            if not have or int(have[0][0]) != self._n:
                raise StoreCorruptError(
                    f"embedding set {self.es.name!r} changed under this writer "
                    f"(catalog has {have[0][0] if have else None}, writer {self._n}): "
                    "rerun the command"
                )
            con.execute(
                "UPDATE embedding_sets SET n_vectors = ?, updated_at = now() "
                "WHERE set_id = ?",
                [n_new, self.es.set_id],
            )
            sid = self.es.set_id
            for path, kind, digest in (
                (vector_path(self.store, self.es), "vectors", sums[0]),
                (ids_path(self.store, self.es), "ids", sums[1]),
            ):
                record_file(
                    self.store, f"vectors/{path.name}", kind, sid, digest=digest
                )
        fault_point("vectors.after_commit")
        for hasher in self._sums:
            hasher.commit()
        if int(ids_arr.max()) >= self._seen.size:
            grown = np.zeros(max(int(ids_arr.max()) + 1, 2 * self._seen.size), bool)
            grown[: self._seen.size] = self._seen
            self._seen = grown
        self._seen[ids_arr] = True
        self._n = n_new
        return n_new

    def close(self) -> None:
        """Close the files and release the lock."""
        for name in ("_vec", "_ids", "_lock"):
            f = getattr(self, name, None)
            if f is not None and not f.closed:
                f.close()

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def open_writer(store: Store, es: EmbeddingSet) -> Iterator[VectorWriter]:
    """Yield a :class:`VectorWriter` for ``es``, closed when the block ends."""
    writer = VectorWriter(store, es)
    try:
        yield writer
    finally:
        writer.close()
