"""Files on their way out of a store: trash names, commit-then-delete, leftovers.

A removed file is first renamed to ``.<name>.trash-<8 hex>`` in its own folder, then
the catalog transaction that forgets it commits, then the trash is deleted. A crash
leaves either the catalog as it was (and the files under trash names, which the next
``rm`` of the same thing finishes) or trash that nothing refers to. ``rm`` and
``cytostore gc`` delete every name matching :data:`TRASH_PATTERN`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import StoreBusyError
from cytostore.store.checksums import forget_files
from cytostore.store.faults import fault_point
from cytostore.store.locks import file_lock
from cytostore.store.vectors import EmbeddingSet, list_sets

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "TRASH_MARK",
    "TRASH_PATTERN",
    "Query",
    "commit_with_trash",
    "count_rows",
    "delete_path",
    "finish_interrupted",
    "fsync_dirs",
    "path_size",
    "quote",
    "read_query",
    "rel_path",
    "rm_lock",
    "run_deletes",
    "set_lock",
    "trash_name",
    "write_kept_rows",
]

#: Trash names are ``.<name>.trash-<8 hex>``, beside the file they were.
TRASH_MARK = ".trash-"
TRASH_PATTERN = re.compile(r"^\..+\.trash-[0-9a-f]{8}$")
_SET_FILE = re.compile(r"^(\d+)\.(f32|f16|ids|lock|faiss)(\.tmp)?$")
_FOLDERS = ("vectors", "indexes", "models", "heads", "cache", "thumbnails")
_CHUNK_ROWS = 65_536

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def trash_name(path: Path) -> Path:
    """Return a fresh trash name for ``path``: ``.<name>.trash-<8 hex>`` beside it."""
    return path.with_name(f".{path.name}{TRASH_MARK}{secrets.token_hex(4)}")


def count_rows(
    query: Query, deletes: Sequence[tuple[str, str, list[Any]]]
) -> dict[str, int]:
    """Count the rows each ``(table, WHERE, params)`` would delete, per table."""
    counts: dict[str, int] = {}
    for table, where, params in deletes:
        n = int(
            query(f"SELECT count(*) FROM {quote(table)} WHERE {where}", params)[0][0]
        )
        counts[table] = counts.get(table, 0) + n
    return counts


def run_deletes(
    con: Any, deletes: Sequence[tuple[str, str, list[Any]]]
) -> dict[str, int]:
    """Delete the rows inside ``con``'s transaction; drop the neighbour tables."""
    counts: dict[str, int] = {}
    for table, where, params in deletes:
        if table == "neighbor_tables":
            for (tname,) in con.execute(
                f"SELECT name FROM neighbor_tables WHERE {where}", params
            ).fetchall():
                con.execute(f"DROP TABLE IF EXISTS {quote(tname)}")
        n = int(
            con.execute(f"DELETE FROM {quote(table)} WHERE {where}", params).fetchall()[
                0
            ][0]
        )
        counts[table] = counts.get(table, 0) + n
    return counts


def commit_with_trash(
    store: Store, files: Sequence[Path], write: Callable[[Any], dict[str, int]]
) -> dict[str, int]:
    """Rename ``files`` to trash, run ``write`` in one transaction, delete the trash.

    The transaction also forgets the recorded checksums of the files. A failure
    before the commit renames the files back; a crash leaves trash (``rm`` or
    ``gc`` deletes it).

    Args:
        store: The store.
        files: Files or folders to remove (missing ones are skipped).
        write: Called with the transaction's connection; returns rows per table.

    Returns:
        What ``write`` returned.
    """
    moved: list[tuple[Path, Path]] = []
    try:
        for path in files:
            if os.path.lexists(path):
                trash = trash_name(path)
                os.rename(path, trash)
                moved.append((path, trash))
        fsync_dirs({p.parent for p, _ in moved})
        fault_point("rm.after_trash_move")
        with store.transaction() as con:
            counts = write(con)
            rels = [rel_path(store, p) for p, _ in moved]
            forget_files(store, rels)
            for rel in rels:
                forget_files(store, under=rel)
            fault_point("rm.before_commit")
    except BaseException:
        for path, trash in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(trash, path)
        raise
    fault_point("rm.after_commit")
    for _, trash in moved:
        delete_path(trash)
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
            if TRASH_PATTERN.match(path.name):
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
        out.append(rel_path(store, path))
        if not dry_run:
            delete_path(path)
    if out and not dry_run:
        forget_files(store, out)
    return sorted(out)


@contextlib.contextmanager
def rm_lock(store: Store) -> Iterator[None]:
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
def set_lock(store: Store, es: EmbeddingSet) -> Iterator[None]:
    """Hold the set's writer lock (``vectors/<set_id>.lock``) for the block.

    Nothing appends to the set, nor rewrites its index, meanwhile.

    Raises:
        StoreBusyError: If a writer keeps it past the store's busy timeout.
    """
    busy = (
        f"another process is writing embedding set {es.name!r}: wait for it to "
        "finish, then rerun 'cytostore rm'"
    )
    lock = store.root / "vectors" / f"{es.set_id}.lock"
    with file_lock(lock, busy, wait_s=store.busy_timeout_s):
        yield


@contextlib.contextmanager
def read_query(store: Store) -> Iterator[Query]:
    """Yield a query function reading the catalog through ``store.sql``."""

    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return store.sql(sql, list(params)).rows

    yield query


def quote(identifier: str) -> str:
    """Quote a catalog table name (taken from the catalog, never from the user)."""
    return '"' + identifier.replace('"', '""') + '"'


def rel_path(store: Store, path: Path) -> str:
    """Return ``path`` relative to the store, ``/``-separated."""
    try:
        return str(path.relative_to(store.root))
    except ValueError:
        return str(path.resolve().relative_to(store.root.resolve()))


def path_size(path: Path) -> int:
    """Return the bytes of a file, or of every file under a folder (0: missing)."""
    if path.is_symlink() or not path.exists():
        return path.lstat().st_size if path.is_symlink() else 0
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def delete_path(path: Path) -> None:
    """Delete a file, link or folder tree (nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_dirs(dirs: set[Path]) -> None:
    """Make renames inside ``dirs`` durable."""
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_kept_rows(
    path: Path, rows: np.ndarray, keep: npt.NDArray[np.bool_]
) -> tuple[int, tuple[int, str]]:
    """Write ``rows[keep]`` bit for bit to ``path`` (``.tmp``, fsync, ``os.replace``).

    Args:
        path: The file to (re)write.
        rows: The source rows (a memory map is read chunk by chunk).
        keep: Boolean mask over the first axis of ``rows``.

    Returns:
        ``(rows written, (bytes, sha256))``, the digest as ``record_file`` takes it.
    """
    tmp = path.with_name(path.name + ".tmp")
    n, size, digest = 0, 0, hashlib.sha256()
    with open(tmp, "wb") as f:
        for lo in range(0, keep.size, _CHUNK_ROWS):
            sel = np.asarray(rows[lo : lo + _CHUNK_ROWS])[keep[lo : lo + _CHUNK_ROWS]]
            data = np.ascontiguousarray(sel).tobytes()
            f.write(data)
            digest.update(data)
            n, size = n + int(sel.shape[0]), size + len(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n, (size, digest.hexdigest())
