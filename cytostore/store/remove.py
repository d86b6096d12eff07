"""Remove models, embedding sets and heads; withdraw patients and datasets everywhere.

``remove(store, kind, name)`` is what ``cytostore rm`` calls. Two families:

- **Artefacts** (``model``, ``set``, ``head``): refused while something depends on
  them (a model's embedding sets and heads; a set's heads and neighbour tables)
  unless ``cascade``. Their files are first renamed to a trash name inside their own
  folder (``.<name>.trash-<8 hex>``), then the catalog rows are deleted in one
  transaction, then the trash is deleted. A crash before the commit leaves the
  catalog as it was and the files under trash names: rerunning ``rm`` finishes the
  removal (a failure that is not a crash moves the files back). A crash after it
  leaves only trash, which ``rm`` and ``cytostore gc`` delete.
- **Consent withdrawal** (``patient``, ``dataset``): every row that names the cells
  is deleted (every catalog table with a ``cell_id`` or ``neighbor_id`` column, every
  table with the patient's ``(dataset, patient_id)`` or the ``dataset``), and every
  file that holds their data is rewritten without them: each embedding set holding
  one of them is rewritten under a **new set id** (vectors, ids, and its FAISS index
  with those ids removed), and the preprocessing caches and thumbnails lose their
  rows. The new set files are written (``.tmp``, fsync, ``os.replace``) before the
  catalog transaction that deletes the rows and swaps each set's row for its new
  one, so readers see the old store or the new one, never a mix. Old set files then
  go to trash. Cell ids of the remaining cells never change.

Fault points (for kill tests): ``rm.mid_compaction``, ``rm.before_commit``,
``rm.after_trash_move``, ``rm.after_commit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    HasDependentsError,
    InvalidArgumentError,
    NotInStoreError,
    StoreBusyError,
    UnknownEmbeddingSetError,
)
from cytostore.store.faults import fault_point
from cytostore.store.index import faiss_metric, index_path
from cytostore.store.paths import resolve_inside
from cytostore.store.vectors import (
    EmbeddingSet,
    get_set,
    ids_path,
    list_sets,
    read_vectors,
    vector_path,
)

if TYPE_CHECKING:
    from cytostore.store.catalog import Store

__all__ = ["KINDS", "TRASH_MARK", "remove", "trash_name", "finish_interrupted"]

logger = logging.getLogger(__name__)

#: What ``rm`` can remove.
KINDS = ("model", "set", "head", "patient", "dataset")
#: Files on their way out are named ``.<name>.trash-<8 hex>`` in their own folder.
TRASH_MARK = ".trash-"
_TRASH = re.compile(r"^\..+\.trash-[0-9a-f]{8}$")
_SET_FILE = re.compile(r"^(\d+)\.(f32|f16|ids|lock|faiss)(\.tmp)?$")
_FOLDERS = ("vectors", "indexes", "models", "heads", "cache", "thumbnails")
_CHUNK_ROWS = 65_536
_NOT_CELL_TABLES = ("embedding_sets", "neighbor_tables", "models", "heads")

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def trash_name(path: Path) -> Path:
    """Return a fresh trash name for ``path``: ``.<name>.trash-<8 hex>`` beside it."""
    return path.with_name(f".{path.name}{TRASH_MARK}{secrets.token_hex(4)}")


def remove(
    store: Store,
    kind: str,
    name: str,
    *,
    dataset: str | None = None,
    cascade: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Remove a model, set or head, or withdraw a patient or dataset everywhere.

    Args:
        store: The store.
        kind: One of :data:`KINDS`.
        name: The model name; the set (``MODEL``, ``MODEL@i/n`` or set id); the head
            name; the patient id; or the dataset name.
        dataset: For ``patient``: its dataset (needed when the id exists in several).
        cascade: Also remove what depends on a model or set (sets, heads, neighbour
            tables) instead of refusing.
        dry_run: Report what would be removed and change nothing.

    Returns:
        A report: ``kind``, ``name``, ``dry_run``, ``removed`` (names by kind),
        ``rows`` (catalog rows per table), ``files`` (store-relative paths),
        ``bytes`` (disk space freed); for patients and datasets also ``cells``,
        ``sets`` (each rewritten set: ``model``, ``set_id``, ``new_set_id``,
        ``n_vectors``, ``n_indexed``, ``rows_removed``) and ``caches``.

    Raises:
        InvalidArgumentError: If ``kind`` is unknown, or a patient id is in several
            datasets and ``dataset`` is not given.
        NotInStoreError: If nothing of that name exists (and no interrupted removal
            was left to finish).
        HasDependentsError: If something depends on it and ``cascade`` is false.
        StoreBusyError: If another ``rm``, a vector writer or a cache build holds
            what must be rewritten.
    """
    if kind not in KINDS:
        raise InvalidArgumentError(f"cannot remove a {kind!r}: KIND is one of {KINDS}")
    with _rm_lock(store):
        try:
            if kind in ("patient", "dataset"):
                return _withdraw(store, kind, name, dataset=dataset, dry_run=dry_run)
            return _remove_artefact(store, kind, name, cascade=cascade, dry_run=dry_run)
        except NotInStoreError as exc:
            left = finish_interrupted(store, dry_run=dry_run)
            if not left:
                raise
            return {
                "kind": kind,
                "name": name,
                "dry_run": dry_run,
                "note": f"{exc}; finished an interrupted removal instead",
                "rows": {},
                "files": left,
                "bytes": 0,
            }


# ------------------------------------------------------------------ artefacts
@dataclasses.dataclass
class _Targets:
    models: list[str] = dataclasses.field(default_factory=list)
    sets: list[EmbeddingSet] = dataclasses.field(default_factory=list)
    heads: list[str] = dataclasses.field(default_factory=list)
    tables: list[str] = dataclasses.field(default_factory=list)


def _remove_artefact(
    store: Store, kind: str, name: str, *, cascade: bool, dry_run: bool
) -> dict[str, Any]:
    targets, dependents = _resolve(store, kind, name)
    if dependents and not cascade:
        raise HasDependentsError(
            f"{kind} {name!r} is used by {'; '.join(dependents)}: remove those first, "
            f"or rerun with --cascade to remove them too"
        )
    files = _artefact_files(store, targets)
    report = _report(kind, name, dry_run, targets)
    with contextlib.ExitStack() as locks:
        for es in targets.sets:
            locks.enter_context(_set_lock(store, es))
        with _read(store) as query:
            report["rows"] = _count(query, _artefact_deletes(targets))
        report["files"] = [_rel(store, p) for p in files if os.path.lexists(p)]
        report["bytes"] = sum(_size(p) for p in files)
        if dry_run:
            return report
        report["rows"] = _commit_with_trash(
            store, files, lambda con: _run_deletes(con, _artefact_deletes(targets))
        )
    report["files"] += finish_interrupted(store)
    logger.info("removed %s %s: %s", kind, name, report["removed"])
    return report


def _resolve(store: Store, kind: str, name: str) -> tuple[_Targets, list[str]]:
    """Return what removing ``kind name`` removes, and the dependents (as text)."""
    t = _Targets()
    sets = list_sets(store)
    heads = store.sql("SELECT name, model FROM heads ORDER BY name").rows
    tables = store.sql("SELECT name, set_id FROM neighbor_tables ORDER BY name").rows
    if kind == "head":
        if name not in {h for h, _ in heads}:
            raise NotInStoreError(
                f"no head {name!r} in {store.root} (heads: "
                f"{', '.join(h for h, _ in heads) or 'none'}): check the name with "
                "'cytostore ls STORE heads'"
            )
        t.heads = [name]
        return t, []
    if kind == "model":
        known = {r[0] for r in store.sql("SELECT name FROM models").rows}
        t.sets = [s for s in sets if s.model == name]
        if name not in known and not t.sets:
            raise NotInStoreError(
                f"no model {name!r} in {store.root} (models: "
                f"{', '.join(sorted(known)) or 'none'}): check the name with "
                "'cytostore models STORE'"
            )
        t.models = [name] if name in known else []
    else:
        try:
            t.sets = [get_set(store, name)]
        except UnknownEmbeddingSetError:
            raise NotInStoreError(
                f"no embedding set {name!r} in {store.root} (sets: "
                f"{', '.join(s.name for s in sets) or 'none'}): name it as MODEL, "
                "MODEL@i/n or its set id"
            ) from None
    set_keys = {str(s.set_id) for s in t.sets}
    set_keys |= {s.model for s in t.sets if s.shard is None}
    set_keys |= set(t.models)
    t.heads = [h for h, m in heads if m is not None and str(m) in set_keys]
    ids = {s.set_id for s in t.sets}
    t.tables = [n for n, sid in tables if sid in ids]
    dependents = []
    if kind == "model" and t.sets:
        dependents.append(
            "embedding sets " + ", ".join(f"{s.name} (set {s.set_id})" for s in t.sets)
        )
    if t.heads:
        dependents.append("heads " + ", ".join(t.heads))
    if t.tables:
        dependents.append("neighbour tables " + ", ".join(t.tables))
    return t, dependents


def _artefact_files(store: Store, t: _Targets) -> list[Path]:
    files: list[Path] = []
    for es in t.sets:
        lock = store.root / "vectors" / f"{es.set_id}.lock"
        files += [vector_path(store, es), ids_path(store, es), index_path(store, es)]
        files.append(lock)
    rows = store.sql(
        "SELECT 'model', name, path FROM models WHERE name IN (SELECT unnest(?)) "
        "UNION ALL SELECT 'head', name, path FROM heads "
        "WHERE name IN (SELECT unnest(?))",
        [t.models or [""], t.heads or [""]],
    ).rows
    for what, name, rel in rows:
        path = resolve_inside(store.root, rel, what=f"{what} {name!r} folder")
        if path == store.root.resolve():
            raise InvalidArgumentError(
                f"the catalog's {what} {name!r} folder is the store itself: refused; "
                "run 'cytostore verify' on the store"
            )
        files.append(path)
    return files


def _artefact_deletes(t: _Targets) -> list[tuple[str, str, list[Any]]]:
    """``(table, WHERE clause, params)`` of every catalog row the targets own."""
    out: list[tuple[str, str, list[Any]]] = []
    if t.heads:
        for table in ("predictions", "patient_predictions", "attention", "heads"):
            col = "name" if table == "heads" else "head"
            out.append((table, f"{col} IN (SELECT unnest(?))", [t.heads]))
    if t.tables:
        out.append(("neighbor_tables", "name IN (SELECT unnest(?))", [t.tables]))
    if t.sets:
        sids = [s.set_id for s in t.sets]
        out.append(("embedding_sets", "set_id IN (SELECT unnest(?))", [sids]))
    if t.models:
        out.append(("models", "name IN (SELECT unnest(?))", [t.models]))
    return out


def _report(kind: str, name: str, dry_run: bool, t: _Targets) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": name,
        "dry_run": dry_run,
        "removed": {
            "models": t.models,
            "sets": [s.name for s in t.sets],
            "heads": t.heads,
            "neighbor_tables": t.tables,
        },
        "rows": {},
        "files": [],
        "bytes": 0,
    }


def _count(
    query: Query, deletes: Sequence[tuple[str, str, list[Any]]]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table, where, params in deletes:
        n = int(query(f"SELECT count(*) FROM {_q(table)} WHERE {where}", params)[0][0])
        counts[table] = counts.get(table, 0) + n
    return counts


def _run_deletes(
    con: Any, deletes: Sequence[tuple[str, str, list[Any]]]
) -> dict[str, int]:
    """Delete the rows inside ``con``'s transaction; drop the neighbour tables."""
    counts: dict[str, int] = {}
    for table, where, params in deletes:
        if table == "neighbor_tables":
            for (tname,) in con.execute(
                f"SELECT name FROM neighbor_tables WHERE {where}", params
            ).fetchall():
                con.execute(f"DROP TABLE IF EXISTS {_q(tname)}")
        n = int(
            con.execute(f"DELETE FROM {_q(table)} WHERE {where}", params).fetchall()[0][
                0
            ]
        )
        counts[table] = counts.get(table, 0) + n
    return counts


def _commit_with_trash(
    store: Store, files: Sequence[Path], write: Callable[[Any], dict[str, int]]
) -> dict[str, int]:
    """Rename ``files`` to trash, run ``write`` in one transaction, delete the trash.

    A failure before the commit renames the files back; a crash leaves trash.
    """
    moved: list[tuple[Path, Path]] = []
    try:
        for path in files:
            if os.path.lexists(path):
                trash = trash_name(path)
                os.rename(path, trash)
                moved.append((path, trash))
        _fsync_dirs({p.parent for p, _ in moved})
        fault_point("rm.after_trash_move")
        with store.transaction() as con:
            counts = write(con)
            fault_point("rm.before_commit")
    except BaseException:
        for path, trash in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(trash, path)
        raise
    fault_point("rm.after_commit")
    for _, trash in moved:
        _delete(trash)
    return counts


def finish_interrupted(store: Store, dry_run: bool = False) -> list[str]:
    """Delete what an interrupted ``rm`` left: trash, and files of unregistered sets.

    Files of a set id that is not in the catalog are the old files of a set that a
    withdrawal rewrote (a crash came after its commit) or the new files of one that
    never committed. Call it under the store's ``rm`` lock.

    Returns:
        Store-relative paths of the files deleted (or that would be).
    """
    found: list[Path] = []
    for folder in _FOLDERS:
        base = store.root / folder
        if not base.is_dir():
            continue
        for path in base.iterdir():
            if _TRASH.match(path.name):
                found.append(path)
            elif folder in ("vectors", "indexes") and _SET_FILE.match(path.name):
                found.append(path)
    # Files first, catalog second: a set registered meanwhile is seen as registered.
    registered = {s.set_id for s in list_sets(store)}
    out: list[str] = []
    for path in found:
        m = _SET_FILE.match(path.name)
        if m and int(m.group(1)) in registered:
            continue
        out.append(_rel(store, path))
        if not dry_run:
            _delete(path)
    return sorted(out)


# ---------------------------------------------------------- consent withdrawal
def _withdraw(
    store: Store, kind: str, name: str, *, dataset: str | None, dry_run: bool
) -> dict[str, Any]:
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
    with _read(store) as query:
        deletes = _cell_deletes(query, kind, ds, name, cells)
        report["rows"] = _count(query, deletes)
    affected = []
    for es in list_sets(store):
        ids, _ = read_vectors(store, es)
        n_drop = int(np.isin(ids, cells).sum())
        if n_drop:
            affected.append((es, n_drop))
    thumbs = _thumbnails(store, cells)
    report["files"] = [_rel(store, p) for p in thumbs]
    if dry_run:
        report["sets"] = [
            {"model": es.name, "set_id": es.set_id, "rows_removed": n}
            for es, n in affected
        ]
        report["caches"] = _compact_caches(store, cells, dry_run=True)
        report["bytes"] = sum(n * (es.row_bytes + 8) for es, n in affected)
        report["bytes"] += sum(c["bytes"] for c in report["caches"])
        report["bytes"] += sum(_size(p) for p in thumbs)
        return report
    with contextlib.ExitStack() as locks:
        for es, _ in affected:
            locks.enter_context(_set_lock(store, es))
        staged: list[tuple[EmbeddingSet, EmbeddingSet, int]] = []
        committed = False
        try:
            first = 1 + max((s.set_id for s in list_sets(store)), default=0)
            for i, (es, _) in enumerate(affected):
                staged.append(_stage_set(store, es, first + i, cells))
            report["caches"] = _compact_caches(store, cells, dry_run=False)
            report["bytes"] = sum(_size(p) for p in thumbs)
            report["bytes"] += sum(c["bytes"] for c in report["caches"])
            report["rows"] = _commit_with_trash(
                store, thumbs, lambda con: _swap_sets(con, staged, deletes)
            )
            committed = True
        finally:
            if not committed:
                for _, new, _ in staged:
                    for path in _set_files(store, new):
                        _delete(path)
        old = [p for es, _, _ in staged for p in _set_files(store, es)]
        report["bytes"] += sum(_size(p) for p in old)
        report["bytes"] -= sum(
            _size(p) for _, new, _ in staged for p in _set_files(store, new)
        )
        moved = []
        for path in old:
            if os.path.lexists(path):
                moved.append(trash_name(path))
                os.rename(path, moved[-1])
                report["files"].append(_rel(store, path))
        fault_point("rm.after_old_trash")
        for trash in moved:
            _delete(trash)
    report["files"] += finish_interrupted(store)
    report["sets"] = [
        {
            "model": new.name,
            "set_id": es.set_id,
            "new_set_id": new.set_id,
            "n_vectors": new.n_vectors,
            "n_indexed": new.n_indexed,
            "rows_removed": n,
        }
        for es, new, n in staged
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
            raise NotInStoreError(
                f"no dataset {name!r} in {store.root} (datasets: "
                f"{', '.join(r[0] for r in known) or 'none'}): check the name with "
                "'cytostore info STORE'"
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


def _set_files(store: Store, es: EmbeddingSet) -> list[Path]:
    lock = store.root / "vectors" / f"{es.set_id}.lock"
    return [vector_path(store, es), ids_path(store, es), index_path(store, es), lock]


def _stage_set(
    store: Store, es: EmbeddingSet, new_id: int, cells: npt.NDArray[np.int64]
) -> tuple[EmbeddingSet, EmbeddingSet, int]:
    """Write ``es`` without ``cells`` as set ``new_id`` (files only, not catalogued)."""
    new = dataclasses.replace(es, set_id=new_id)
    for path in _set_files(store, new):
        _delete(path)  # leftovers of an interrupted rm
    ids, mat = read_vectors(store, es)
    keep = ~np.isin(ids, cells)
    n = write_kept_rows(vector_path(store, new), mat, keep)
    fault_point("rm.mid_compaction")
    write_kept_rows(ids_path(store, new), ids, keep)
    new = dataclasses.replace(new, n_vectors=n)
    dropped = ids[~keep]
    new = dataclasses.replace(
        new, n_indexed=index_without(store, es, new, keep, dropped)
    )
    return es, new, int(dropped.size)


def _swap_sets(
    con: Any,
    staged: Sequence[tuple[EmbeddingSet, EmbeddingSet, int]],
    deletes: Sequence[tuple[str, str, list[Any]]],
) -> dict[str, int]:
    """In the commit: delete the rows, and replace each set's row by its new one."""
    for es, new, _ in staged:
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
    counts = _run_deletes(con, deletes)
    moved = {es.set_id: new.set_id for es, new, _ in staged}
    for table, sid in con.execute(
        "SELECT name, set_id FROM neighbor_tables"
    ).fetchall():
        if sid in moved:
            con.execute(f"UPDATE {_q(table)} SET set_id = ?", [moved[sid]])
        con.execute(
            f"UPDATE neighbor_tables SET set_id = ?, n_rows = (SELECT count(*) FROM "
            f"{_q(table)}) WHERE name = ?",
            [moved.get(sid, sid), table],
        )
    fault_point("rm.before_commit")
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
                entry["bytes"] = sum(_size(p) for p in files)
                out.append(entry)
                if not dry_run:
                    for p in files:
                        _delete(p)
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
    """Files under ``STORE/thumbnails/`` named for one of ``cells`` (``<id>.*``)."""
    base = store.root / "thumbnails"
    if not base.is_dir():
        return []
    wanted = {str(int(c)) for c in cells}
    return sorted(
        p for p in base.rglob("*") if p.is_file() and p.name.split(".")[0] in wanted
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


# ---------------------------------------------------------------- helpers
@contextlib.contextmanager
def _rm_lock(store: Store) -> Iterator[None]:
    """Hold ``STORE/.rm.lock``: one ``rm`` at a time per store."""
    with open(store.root / ".rm.lock", "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"another 'cytostore rm' is running on {store.root}: wait for it to "
                "finish, then rerun"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _set_lock(store: Store, es: EmbeddingSet) -> Iterator[None]:
    """Hold the set's writer lock (``vectors/<set_id>.lock``) so nothing appends."""
    folder = store.root / "vectors"
    if not folder.is_dir():
        yield
        return
    with open(folder / f"{es.set_id}.lock", "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"another process is writing embedding set {es.name!r}: wait for it "
                "to finish, then rerun 'cytostore rm'"
            ) from None
        yield


@contextlib.contextmanager
def _read(store: Store) -> Iterator[Query]:
    """Yield a query function reading the catalog through ``store.sql``."""

    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return store.sql(sql, list(params)).rows

    yield query


def _q(identifier: str) -> str:
    """Quote a catalog table name (taken from the catalog, never from the user)."""
    return '"' + identifier.replace('"', '""') + '"'


def _rel(store: Store, path: Path) -> str:
    try:
        return str(path.relative_to(store.root))
    except ValueError:
        return str(path.resolve().relative_to(store.root.resolve()))


def _size(path: Path) -> int:
    if path.is_symlink() or not path.exists():
        return path.lstat().st_size if path.is_symlink() else 0
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dirs(dirs: set[Path]) -> None:
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_kept_rows(path: Path, rows: np.ndarray, keep: npt.NDArray[np.bool_]) -> int:
    """Write ``rows[keep]`` bit for bit to ``path`` (``.tmp``, fsync, ``os.replace``).

    Args:
        path: The file to (re)write.
        rows: The source rows (a memory map is read chunk by chunk).
        keep: Boolean mask over the first axis of ``rows``.

    Returns:
        The number of rows written.
    """
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "wb") as f:
        for lo in range(0, keep.size, _CHUNK_ROWS):
            sel = np.asarray(rows[lo : lo + _CHUNK_ROWS])[keep[lo : lo + _CHUNK_ROWS]]
            f.write(np.ascontiguousarray(sel).tobytes())
            n += int(sel.shape[0])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def index_without(
    store: Store,
    es: EmbeddingSet,
    new: EmbeddingSet,
    keep: npt.NDArray[np.bool_],
    drop: npt.NDArray[np.int64],
) -> int:
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
        The new index's ``ntotal`` (0 when there is none).
    """
    import faiss

    src = index_path(store, es)
    if not src.exists():
        return 0
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
    os.replace(tmp, dst)
    return int(idx.ntotal)


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
