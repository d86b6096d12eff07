"""Checksums recorded when a store file is written, in the catalog table ``files``.

One row per file: ``path`` (relative to the store, ``/``-separated), ``kind``
(``vectors``, ``ids``, ``index``, ``weights``, ``card``, ``head``, ...), ``owner``
(set id, model or head name), ``bytes`` and ``sha256``, and ``written_at``.

``sha256`` is always the hash of the file's first ``bytes`` bytes. For most files
that is the whole file. The vector and ids files of an embedding set only grow: each
committed append records the new committed length and the hash of that prefix, in the
same catalog transaction as the set's ``n_vectors``, so a row past the committed
length (a writer running now, or one that was killed) never changes a recorded
checksum. A :class:`PrefixHasher` keeps the running hash of an open writer, so an
append costs a hash of the appended bytes only (about 1 GB/s); the committed prefix
is read once, at a writer's first append.

:func:`record_file` and :func:`record_tree` join the caller's catalog transaction
(``with store.transaction(): ...``) or open their own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cytostore.errors import InvalidArgumentError
from cytostore.store.paths import resolve_inside

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "APPEND_ONLY_KINDS",
    "BLOCK_BYTES",
    "FileRecord",
    "PrefixHasher",
    "expected_files",
    "file_records",
    "forget_files",
    "record_file",
    "record_tree",
    "sha256_file",
]

#: Bytes read at a time when hashing.
BLOCK_BYTES = 1 << 20
#: Kinds whose files only grow: their rows hash a committed prefix.
APPEND_ONLY_KINDS = frozenset({"vectors", "ids"})
_COLUMNS = "path, kind, owner, bytes, sha256, written_at"


@dataclass(frozen=True)
class FileRecord:
    """One row of ``files``.

    Attributes:
        path: Path relative to the store, ``/``-separated.
        kind: What the file is (``vectors``, ``ids``, ``index``, ``weights``, ...).
        owner: The set id, model name or head name it belongs to.
        bytes: Length the checksum covers (the whole file, or a committed prefix).
        sha256: Hex sha256 of the file's first ``bytes`` bytes.
        written_at: When the row was written (UTC, naive).
    """

    path: str
    kind: str
    owner: str | None
    bytes: int
    sha256: str
    written_at: Any = None


def sha256_file(path: str | os.PathLike[str], length: int | None = None) -> str:
    """Return the hex sha256 of a file (or of its first ``length`` bytes), streaming.

    Args:
        path: The file.
        length: Hash only this many bytes from the start (``None``: all of it).

    Returns:
        64 hex digits.

    Raises:
        OSError: If the file cannot be read.
        EOFError: If the file is shorter than ``length``.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:12], sha256_file(p, 0)[:12]
        ('ba7816bf8f01', 'e3b0c44298fc')
    """
    return _hash_prefix(Path(path), length).hexdigest()


def _hash_prefix(path: Path, length: int | None) -> Any:
    h = hashlib.sha256()
    left = length
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(BLOCK_BYTES if left is None else min(BLOCK_BYTES, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    if left:
        raise EOFError(f"{path} is {left} bytes shorter than the {length} to hash")
    return h


def _rel(store: Store, rel_path: str | os.PathLike[str]) -> tuple[str, Path]:
    rel = PurePosixPath(os.fspath(rel_path)).as_posix()
    return rel, resolve_inside(store.root, rel, what="store file")


class PrefixHasher:
    """Running sha256 of an append-only file's committed prefix (one writer's view).

    :meth:`peek` hashes what an append adds on top of the committed prefix (reading
    the prefix from disk once, on first use or when the committed length moved
    elsewhere); :meth:`commit` keeps that state once the catalog commit succeeded.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._state: Any = None
        self._length = -1
        self._pending: tuple[Any, int] | None = None

    def peek(self, committed: int, data: Any) -> tuple[int, str]:
        """Return ``(bytes, sha256)`` of the prefix ``committed`` plus ``data``.

        Args:
            committed: Bytes of the file committed before this append.
            data: The appended bytes (``bytes`` or a C-contiguous array).

        Returns:
            The new committed length and the hex sha256 of that prefix.

        Raises:
            OSError: If the committed prefix has to be read and cannot be.
        """
        if self._state is None or self._length != committed:
            self._state = _hash_prefix(self.path, committed)
            self._length = committed
        h = self._state.copy()
        view = memoryview(data).cast("B")
        h.update(view)
        self._pending = (h, committed + view.nbytes)
        return committed + view.nbytes, h.hexdigest()

    def commit(self) -> None:
        """Keep the state of the last :meth:`peek` (its append was committed)."""
        if self._pending is not None:
            self._state, self._length = self._pending
            self._pending = None


def record_file(
    store: Store,
    rel_path: str | os.PathLike[str],
    kind: str,
    owner: str | int | None,
    *,
    digest: tuple[int, str] | None = None,
) -> FileRecord:
    """Record a file's length and sha256 in ``files`` (replacing its row).

    Args:
        store: The store.
        rel_path: The file, relative to the store (e.g. ``indexes/3.faiss``).
        kind: What it is (``vectors``, ``ids``, ``index``, ``weights``, ``card``,
            ``head``, ...).
        owner: The set id, model name or head name it belongs to.
        digest: ``(bytes, sha256)`` already computed (an append's running hash);
            ``None``: hash the whole file now, 1 MiB at a time.

    Returns:
        The row as written.

    Raises:
        StoreCorruptError: If ``rel_path`` leads outside the store.
        OSError: If the file cannot be read.
    """
    rel, full = _rel(store, rel_path)
    if digest is None:
        digest = (full.stat().st_size, sha256_file(full))
    record = FileRecord(rel, kind, None if owner is None else str(owner), *digest)
    with store.transaction() as con:
        con.execute(
            f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, now())",
            [record.path, record.kind, record.owner, record.bytes, record.sha256],
        )
    return record


def record_tree(
    store: Store, rel_folder: str | os.PathLike[str], kind: str, owner: str | int | None
) -> list[FileRecord]:
    """Record every file under a folder, replacing the rows recorded under it before.

    For multi-file artefacts written into a fresh folder and renamed into place (a
    head): call it after the rename, in the transaction that registers the artefact.

    Args:
        store: The store.
        rel_folder: The folder, relative to the store (e.g. ``heads/subtype``).
        kind: The kind of every file in it (e.g. ``head``).
        owner: The artefact's name.

    Returns:
        The rows written, by path.

    Raises:
        InvalidArgumentError: If the folder does not exist.
        StoreCorruptError: If it leads outside the store.
    """
    rel, full = _rel(store, rel_folder)
    if not full.is_dir():
        raise InvalidArgumentError(
            f"cannot record the files of {rel!r}: it is not a folder of the store; "
            "write the artefact before recording it"
        )
    files = sorted(p for p in full.rglob("*") if p.is_file() and not p.is_symlink())
    with store.transaction():
        forget_files(store, under=rel)
        return [
            record_file(store, f"{rel}/{p.relative_to(full).as_posix()}", kind, owner)
            for p in files
        ]


def forget_files(
    store: Store, paths: Iterable[str] = (), *, under: str | None = None
) -> int:
    """Delete the ``files`` rows of ``paths`` and (optionally) of all files ``under``.

    Call it where files are removed or a name is reused (``rm``, a set id reused).

    Args:
        store: The store.
        paths: Paths relative to the store.
        under: A folder relative to the store: every row below it goes.

    Returns:
        The number of rows deleted.
    """
    listed = [PurePosixPath(p).as_posix() for p in paths]
    with store.transaction() as con:
        before = int(con.execute("SELECT count(*) FROM files").fetchall()[0][0])
        if listed:
            con.execute("DELETE FROM files WHERE list_contains(?, path)", [listed])
        if under is not None:
            prefix = PurePosixPath(under).as_posix().rstrip("/") + "/"
            con.execute("DELETE FROM files WHERE starts_with(path, ?)", [prefix])
        after = int(con.execute("SELECT count(*) FROM files").fetchall()[0][0])
    return before - after


def file_records(store: Store) -> list[FileRecord]:
    """Return every row of ``files``, by path."""
    with store.connect(read_only=True) as con:
        rows = con.execute(f"SELECT {_COLUMNS} FROM files ORDER BY path").fetchall()
    return [FileRecord(p, k, o, int(b), s, w) for p, k, o, b, s, w in rows]


def expected_files(store: Store) -> list[FileRecord]:
    """Return the ``files`` rows of files that a live catalog object still uses.

    A row is live when its path is a vector, ids or index file of an existing
    embedding set, or lies in the folder of a registered model or head. Rows of
    removed objects (a merged shard, a deleted model) are left out: ``gc`` drops them.

    Returns:
        The live rows, by path.
    """
    live = _live_owners(store)
    return [r for r in file_records(store) if owner_of(r.path) in live]


def owner_of(rel_path: str) -> tuple[str, str] | None:
    """Return which object a store path belongs to, from its place in the layout.

    Returns:
        ``("set", "<set_id>")`` for ``vectors/<id>.*`` and ``indexes/<id>.*``,
        ``("model", name)`` for ``models/<name>/...``, ``("head", name)`` for
        ``heads/<name>/...``; ``None`` for anything else.

    Examples:
        >>> owner_of("vectors/3.f32"), owner_of("models/m/card.json")
        (('set', '3'), ('model', 'm'))
    """
    parts = PurePosixPath(rel_path).parts
    if len(parts) == 2 and parts[0] in ("vectors", "indexes"):
        stem = parts[1].split(".", 1)[0]
        return ("set", stem) if stem.isdigit() else None
    if len(parts) >= 2 and parts[0] in ("models", "heads"):
        return (parts[0][:-1], parts[1])
    return None


def _live_owners(store: Store) -> set[tuple[str, str]]:
    with store.connect(read_only=True) as con:
        sets = con.execute("SELECT set_id FROM embedding_sets").fetchall()
        models = con.execute("SELECT name, path FROM models").fetchall()
        heads = con.execute("SELECT name, path FROM heads").fetchall()
    live = {("set", str(s)) for (s,) in sets}
    for kind, rows in (("model", models), ("head", heads)):
        for name, path in rows:
            live.add((kind, str(name)))
            found = owner_of(f"{path}/x") if path else None
            if found is not None:
                live.add(found)
    return live
