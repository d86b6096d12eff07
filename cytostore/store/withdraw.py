"""Consent withdrawal: remove a patient or a dataset from every table and file.

Every row naming the cells goes: each base table with a ``cell_id`` or ``neighbor_id``
column (cells, predictions, attention, tags, neighbour tables, and tables added
later), each with the patient's ``(dataset, patient_id)`` (patients, patient
predictions) or, for a dataset, its ``dataset`` (datasets, skipped, ...). Files that
hold their data are rewritten without them, before the catalog commits:

- each embedding set holding one of the cells is written again under a **new set id**
  (vectors and ids bit for bit without those rows, ``.tmp`` + fsync + ``os.replace``;
  its FAISS index with those ids removed, or rebuilt where FAISS cannot remove ids,
  e.g. HNSW). The commit swaps the set's catalog row for the new one (neighbour
  tables, heads naming the set id and recorded checksums follow), so readers see the
  old store or the new one. The old files then go to trash and are deleted.
- each preprocessing cache (``cache/<prep_id>.*``: rows in the order of its
  ``.ids.npy``) is compacted in place: an empty ids file is published, the rows file
  replaced, then the new ids published, so a crash leaves an empty cache (rebuilt by
  the next ``embed``), never rows under wrong ids;
- thumbnails (``thumbnails/<cell_id>.*``) go to trash with the commit.

Cell ids of the remaining cells never change. A crash before the commit leaves the
store as it was (plus unregistered set files, deleted by the next ``rm`` or ``gc``);
after it, the next ``rm`` deletes the old files. Fault points: ``rm.mid_compaction``,
``rm.after_trash_move``, ``rm.before_commit``, ``rm.after_commit``,
``rm.after_old_trash``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, NotInStoreError, StoreBusyError
from cytostore.store.checksums import forget_files, record_file, sha256_file
from cytostore.store.faults import fault_point
from cytostore.store.index import faiss_metric, index_path
from cytostore.store.trash import (
    Query,
    commit_with_trash,
    count_rows,
    delete_path,
    finish_interrupted,
    path_size,
    quote,
    read_query,
    rel_path,
    run_deletes,
    set_lock,
    trash_name,
    write_kept_rows,
)
from cytostore.store.vectors import (
    EmbeddingSet,
    ids_path,
    list_sets,
    read_vectors,
    vector_path,
)

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["withdraw", "index_without", "set_files"]

logger = logging.getLogger(__name__)

_NOT_CELL_TABLES = ("embedding_sets", "neighbor_tables", "models", "heads", "files")


def withdraw(
    store: Store, kind: str, name: str, *, dataset: str | None, dry_run: bool
) -> dict[str, Any]:
    """Remove a patient (``kind="patient"``) or a dataset everywhere.

    Call it through :func:`cytostore.store.remove.remove`, which holds the store's
    ``rm`` lock.

    Args:
        store: The store.
        kind: ``patient`` or ``dataset``.
        name: The patient id or the dataset name.
        dataset: The patient's dataset (``None``: the only one with that id).
        dry_run: Report what would be removed and change nothing.

    Returns:
        A report: ``kind``, ``name``, ``dataset``, ``dry_run``, ``cells``, ``rows``
        (per table), ``sets`` (per rewritten set: ``model``, ``set_id``,
        ``new_set_id``, ``n_vectors``, ``n_indexed``, ``rows_removed``), ``caches``,
        ``files`` (store-relative paths deleted), ``bytes`` (freed).

    Raises:
        NotInStoreError: If the patient or dataset is not in the store.
        InvalidArgumentError: If the patient id is in several datasets and
            ``dataset`` does not pick one.
        StoreBusyError: If a writer holds a set or a cache build holds a cache.
    """
    ds, cells = _select_cells(store, kind, name, dataset)
    report: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "dataset": ds,
        "dry_run": dry_run,
        "cells": int(cells.size),
        "rows": {},
        "sets": [],
        "caches": [],
        "files": [],
        "bytes": 0,
    }
    with read_query(store) as query:
        deletes = _cell_deletes(query, kind, ds, name, cells)
        report["rows"] = count_rows(query, deletes)
    affected = []
    for es in list_sets(store):
        ids, _ = read_vectors(store, es)
        n_drop = int(np.isin(ids, cells).sum())
        if n_drop:
            affected.append((es, n_drop))
    thumbs = _thumbnails(store, cells)
    report["files"] = [rel_path(store, p) for p in thumbs]
    if dry_run:
        report["sets"] = [
            {"model": es.name, "set_id": es.set_id, "rows_removed": n}
            for es, n in affected
        ]
        report["caches"] = _compact_caches(store, cells, dry_run=True)
        report["bytes"] = sum(n * (es.row_bytes + 8) for es, n in affected)
        report["bytes"] += sum(c["bytes"] for c in report["caches"])
        report["bytes"] += sum(path_size(p) for p in thumbs)
        return report
    with contextlib.ExitStack() as locks:
        for es, _ in affected:
            locks.enter_context(set_lock(store, es))
        staged: list[_Staged] = []
        committed = False
        try:
            first = 1 + max((s.set_id for s in list_sets(store)), default=0)
            for i, (es, _) in enumerate(affected):
                staged.append(_stage_set(store, es, first + i, cells))
            report["caches"] = _compact_caches(store, cells, dry_run=False)
            report["bytes"] = sum(path_size(p) for p in thumbs)
            report["bytes"] += sum(c["bytes"] for c in report["caches"])
            report["rows"] = commit_with_trash(
                store, thumbs, lambda con: _swap_sets(store, con, staged, deletes)
            )
            committed = True
        finally:
            if not committed:
                for st in staged:
                    for path in set_files(store, st.new):
                        delete_path(path)
        old = [p for st in staged for p in set_files(store, st.old)]
        report["bytes"] += sum(path_size(p) for p in old)
        report["bytes"] -= sum(
            path_size(p) for st in staged for p in set_files(store, st.new)
        )
        moved = []
        for path in old:
            if os.path.lexists(path):
                moved.append(trash_name(path))
                os.rename(path, moved[-1])
                report["files"].append(rel_path(store, path))
        fault_point("rm.after_old_trash")
        for trash in moved:
            delete_path(trash)
    report["files"] += finish_interrupted(store)
    report["sets"] = [
        {
            "model": st.new.name,
            "set_id": st.old.set_id,
            "new_set_id": st.new.set_id,
            "n_vectors": st.new.n_vectors,
            "n_indexed": st.new.n_indexed,
            "rows_removed": st.removed,
        }
        for st in staged
    ]
    logger.info("withdrew %s %s: %d cells", kind, name, cells.size)
    return report


def _select_cells(
    store: Store, kind: str, name: str, dataset: str | None
) -> tuple[str, npt.NDArray[np.int64]]:
    """Return the dataset and the sorted cell ids of a patient or dataset.

    Raises:
        NotInStoreError: If the patient or dataset is not in the catalog.
        InvalidArgumentError: If the patient id is in several datasets and
            ``dataset`` does not pick one.
    """
    if kind == "dataset":
        found = store.sql(
            "SELECT (SELECT count(*) FROM datasets WHERE dataset = ?) + "
            "(SELECT count(*) FROM cells WHERE dataset = ?)",
            [name, name],
        ).rows[0][0]
        if not found:
            known = store.sql("SELECT dataset FROM datasets ORDER BY 1").rows
            raise NotInStoreError.for_name(
                "dataset",
                name,
                [r[0] for r in known],
                "check the name with 'cytostore info STORE'",
                where=str(store.root),
            )
        ds = name
        where, params = "dataset = ?", [name]
    else:
        datasets = [
            r[0]
            for r in store.sql(
                "SELECT dataset FROM patients WHERE patient_id = ? UNION "
                "SELECT dataset FROM cells WHERE patient_id = ? ORDER BY 1",
                [name, name],
            ).rows
        ]
        if dataset is not None:
            datasets = [d for d in datasets if d == dataset]
        if not datasets:
            of = f" of dataset {dataset!r}" if dataset else ""
            raise NotInStoreError(
                f"no patient {name!r}{of} in {store.root}: list patients with "
                "'cytostore sql STORE \"SELECT dataset, patient_id FROM patients\"'"
            )
        if len(datasets) > 1:
            raise InvalidArgumentError(
                f"patient id {name!r} is in datasets {', '.join(datasets)}, where it "
                "names different people: pick one with --dataset"
            )
        ds = datasets[0]
        where, params = "dataset = ? AND patient_id = ?", [ds, name]
    rows = store.sql(f"SELECT cell_id FROM cells WHERE {where} ORDER BY 1", params)
    return ds, np.asarray([r[0] for r in rows.rows], dtype=np.int64)


def _cell_deletes(
    query: Query, kind: str, ds: str, name: str, cells: npt.NDArray[np.int64]
) -> list[tuple[str, str, list[Any]]]:
    """Every table's rows naming the cells, the patient or the dataset.

    Tables are found by their columns, so tables added later (tags, annotations,
    neighbour tables, ...) are covered: ``cell_id`` or ``neighbor_id`` in the cells;
    ``(dataset, patient_id)`` the patient's; ``dataset`` the dataset.
    """
    columns: dict[str, set[str]] = {}
    for table, column in query(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_name = c.table_name "
        "AND t.table_schema = c.table_schema AND t.table_catalog = c.table_catalog "
        "WHERE t.table_type = 'BASE TABLE' ORDER BY 1",
        [],
    ):
        columns.setdefault(table, set()).add(column)
    ids = cells.tolist()
    out: list[tuple[str, str, list[Any]]] = []
    for table, cols in columns.items():
        if table in _NOT_CELL_TABLES or table == "schema_migrations":
            continue
        conds: list[str] = []
        params: list[Any] = []
        for col in ("cell_id", "neighbor_id"):
            if col in cols and ids:
                conds.append(f"{col} IN (SELECT unnest(?::BIGINT[]))")
                params.append(ids)
        if kind == "dataset" and "dataset" in cols:
            conds.append("dataset = ?")
            params.append(ds)
        if kind == "patient" and {"dataset", "patient_id"} <= cols:
            conds.append("(dataset = ? AND patient_id = ?)")
            params += [ds, name]
        if conds:
            out.append((table, " OR ".join(conds), params))
    return out


def set_files(store: Store, es: EmbeddingSet) -> list[Path]:
    """Return every file of a set: vectors, ids, index and lock files."""
    return [
        vector_path(store, es),
        ids_path(store, es),
        index_path(store, es),
        store.root / "vectors" / f"{es.set_id}.lock",
        store.root / "indexes" / f"{es.set_id}.lock",
    ]


@dataclasses.dataclass(frozen=True)
class _Staged:
    """A set rewritten without the cells, under a new set id, not yet catalogued."""

    old: EmbeddingSet
    new: EmbeddingSet
    removed: int
    digests: dict[str, tuple[int, str]]


def _stage_set(
    store: Store, es: EmbeddingSet, new_id: int, cells: npt.NDArray[np.int64]
) -> _Staged:
    """Write ``es`` without ``cells`` as set ``new_id`` (files only, not catalogued)."""
    new = dataclasses.replace(es, set_id=new_id)
    for path in set_files(store, new):
        delete_path(path)  # leftovers of an interrupted rm
    ids, mat = read_vectors(store, es)
    keep = ~np.isin(ids, cells)
    n, vec_digest = write_kept_rows(vector_path(store, new), mat, keep)
    fault_point("rm.mid_compaction")
    _, ids_digest = write_kept_rows(ids_path(store, new), ids, keep)
    new = dataclasses.replace(new, n_vectors=n)
    dropped = ids[~keep]
    n_indexed, idx_digest = index_without(store, es, new, keep, dropped)
    digests = {"vectors": vec_digest, "ids": ids_digest}
    if idx_digest is not None:
        digests["index"] = idx_digest
    new = dataclasses.replace(new, n_indexed=n_indexed)
    return _Staged(es, new, int(dropped.size), digests)


def _swap_sets(
    store: Store,
    con: Any,
    staged: Sequence[_Staged],
    deletes: Sequence[tuple[str, str, list[Any]]],
) -> dict[str, int]:
    """In the commit: delete the rows, and replace each set's row by its new one."""
    for st in staged:
        es, new = st.old, st.new
        have = con.execute(
            "SELECT n_vectors FROM embedding_sets WHERE set_id = ?", [es.set_id]
        ).fetchall()
        taken = con.execute(
            "SELECT count(*) FROM embedding_sets WHERE set_id = ?", [new.set_id]
        ).fetchall()[0][0]
        if not have or int(have[0][0]) != es.n_vectors or taken:
            raise StoreBusyError(
                f"embedding set {es.name!r} changed while 'rm' rewrote it: rerun "
                "'cytostore rm' (nothing was removed)"
            )
        con.execute(
            "INSERT INTO embedding_sets SELECT * REPLACE (? AS set_id, ? AS n_vectors, "
            "? AS n_indexed, now() AS updated_at) FROM embedding_sets WHERE set_id = ?",
            [new.set_id, new.n_vectors, new.n_indexed, es.set_id],
        )
        con.execute("DELETE FROM embedding_sets WHERE set_id = ?", [es.set_id])
        con.execute(
            "UPDATE heads SET model = ? WHERE model = ?",
            [str(new.set_id), str(es.set_id)],
        )
        forget_files(store, [rel_path(store, p) for p in set_files(store, es)])
        paths = {
            "vectors": vector_path(store, new),
            "ids": ids_path(store, new),
            "index": index_path(store, new),
        }
        for kind, digest in st.digests.items():
            rel = rel_path(store, paths[kind])
            record_file(store, rel, kind, new.set_id, digest=digest)
    counts = run_deletes(con, deletes)
    moved = {st.old.set_id: st.new.set_id for st in staged}
    for table, sid in con.execute(
        "SELECT name, set_id FROM neighbor_tables"
    ).fetchall():
        if sid in moved:
            con.execute(f"UPDATE {quote(table)} SET set_id = ?", [moved[sid]])
        con.execute(
            f"UPDATE neighbor_tables SET set_id = ?, n_rows = (SELECT count(*) FROM "
            f"{quote(table)}) WHERE name = ?",
            [moved.get(sid, sid), table],
        )
    return counts


def _compact_caches(
    store: Store, cells: npt.NDArray[np.int64], *, dry_run: bool
) -> list[dict[str, Any]]:
    """Rewrite each preprocessing cache (``cache/<prep_id>.*``) without ``cells``.

    The ids file decides how many rows are valid, so the swap publishes an empty
    ids file, replaces the rows file, then publishes the new ids: a crash in
    between leaves an empty cache (rebuilt by the next ``embed``), never rows under
    the wrong ids. A cache whose files cannot be read is deleted (it is rebuilt).

    Returns:
        One dict per cache that held some of the cells: ``prep_id``,
        ``rows_removed``, ``bytes``, ``action`` (``compacted`` or ``deleted``).
    """
    root = store.root / "cache"
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for ids_file in sorted(root.glob("*.ids.npy")):
        prep = ids_file.name[: -len(".ids.npy")]
        data, header_path = root / f"{prep}.u8", root / f"{prep}.json"
        with _cache_lock(root / f"{prep}.lock"):
            try:
                ids = np.load(ids_file, allow_pickle=False).astype(np.int64)
                header = json.loads(header_path.read_text())
                row_bytes = int(np.prod([int(x) for x in header["shape"][1:]]))
                rows = np.memmap(data, np.uint8, "r", shape=(ids.size, row_bytes))
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                entry: dict[str, Any] = {
                    "prep_id": prep,
                    "rows_removed": None,
                    "action": "deleted",
                }
                files = [data, ids_file, header_path]
                entry["bytes"] = sum(path_size(p) for p in files)
                out.append(entry)
                if not dry_run:
                    for p in files:
                        delete_path(p)
                continue
            keep = ~np.isin(ids, cells)
            n_drop = int((~keep).sum())
            if not n_drop:
                continue
            out.append(
                {
                    "prep_id": prep,
                    "rows_removed": n_drop,
                    "bytes": n_drop * row_bytes,
                    "action": "compacted",
                }
            )
            if dry_run:
                continue
            staged = trash_name(data)
            write_kept_rows(staged, rows.reshape(ids.size, row_bytes), keep)
            del rows
            _save_ids(ids_file, np.zeros(0, np.int64))
            os.replace(staged, data)
            _save_ids(ids_file, ids[keep])
            header["shape"] = [int(keep.sum()), *header["shape"][1:]]
            tmp = header_path.with_name(header_path.name + ".tmp")
            tmp.write_text(json.dumps(header, indent=2))
            os.replace(tmp, header_path)
    return out


def _save_ids(path: Path, ids: npt.NDArray[np.int64]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(ids, dtype="<i8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _thumbnails(store: Store, cells: npt.NDArray[np.int64]) -> list[Path]:
    """Thumbnails named for one of ``cells`` (``<id>.*``).

    Under ``STORE/cache/thumbnails/`` (the web page's) and ``STORE/thumbnails/``.
    """
    wanted = {str(int(c)) for c in cells}
    bases = (store.root / "cache" / "thumbnails", store.root / "thumbnails")
    return sorted(
        p
        for base in bases
        if base.is_dir()
        for p in base.rglob("*")
        if p.is_file() and p.name.split(".")[0] in wanted
    )


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """Hold a cache's build lock (``cache/<prep_id>.lock``)."""
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"the preprocessing cache {path.stem} is being built (embed or "
                "pretrain): rerun 'cytostore rm' when it finishes"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def index_without(
    store: Store,
    es: EmbeddingSet,
    new: EmbeddingSet,
    keep: npt.NDArray[np.bool_],
    drop: npt.NDArray[np.int64],
) -> tuple[int, tuple[int, str] | None]:
    """Write ``new``'s index: ``es``'s index with the ids ``drop`` removed.

    Uses ``remove_ids`` where the index supports it (Flat, IVF, PQ); otherwise
    (HNSW) rebuilds it over the indexed prefix of ``new``'s rows (training on a
    seeded sample if the factory needs it). Nothing is written when ``es`` has no
    index file.

    Args:
        store: The store.
        es: The set as it was.
        new: The rewritten set (its vector and ids files already written).
        keep: Which rows of ``es`` ``new`` kept.
        drop: The cell ids removed.

    Returns:
        ``(ntotal, (bytes, sha256))`` of the new index; ``(0, None)`` when there is
        none.
    """
    import faiss

    src = index_path(store, es)
    if not src.exists():
        return 0, None
    idx: Any = faiss.read_index(str(src))
    kept = int(keep[: int(idx.ntotal)].sum())  # an index holds a prefix of the rows
    try:
        idx.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(drop, np.int64)))
    except RuntimeError:  # remove_ids not implemented for this index (HNSW)
        idx = None
    if idx is None or int(idx.ntotal) != kept:
        idx = _rebuild_index(store, new, kept)
    dst = index_path(store, new)
    tmp = dst.with_name(dst.name + ".tmp")
    faiss.write_index(idx, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    digest = (tmp.stat().st_size, sha256_file(tmp))
    os.replace(tmp, dst)
    return int(idx.ntotal), digest


def _rebuild_index(store: Store, new: EmbeddingSet, n_rows: int) -> Any:
    import faiss

    ids, mat = read_vectors(store, new)
    ids, x = ids[:n_rows], np.ascontiguousarray(mat[:n_rows], dtype=np.float32)
    base = faiss.index_factory(new.dim, new.index_factory, faiss_metric(new.metric))
    if not base.is_trained:
        rng = np.random.default_rng(0)
        take = np.sort(rng.choice(n_rows, size=min(n_rows, 20_000), replace=False))
        base.train(np.ascontiguousarray(x[take]))
    idx = faiss.IndexIDMap2(base)
    if n_rows:
        idx.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
    return idx
