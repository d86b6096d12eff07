"""Reclaim space: orphaned files, half-written temporaries, stale checksum rows, caches.

A file under ``vectors/``, ``indexes/``, ``models/`` or ``heads/`` is *orphaned* when
no catalog row refers to it: the files of a set id that is not in
``embedding_sets``, a model or head folder without its ``models``/``heads`` row. A
*temporary* is a file named ``*.tmp`` or a folder named ``.*.tmp-*`` (an artefact
written before its atomic rename). Neither is removed while a live writer may still
own it:

- the folder is listed *before* the catalog is read, and a set's row is committed
  before its files are created, so a set registered meanwhile is never mistaken;
- models and heads are written before their catalog row, so their orphans (and every
  temporary) must also be older than ``grace_s``;
- a temporary of an embedding set or a preprocessing cache is kept while another
  process holds that set's (or cache's) lock file.

``models/<name>/checkpoints/`` of an unregistered model is a resumable ``pretrain``
run: it is kept and listed in ``GcReport.kept``. The preprocessing caches under
``cache/`` are expensive to rebuild: they are removed only with ``cache=True`` (those
no registered model uses) or ``all_caches=True`` (all of them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cytostore.store.checksums import expected_files, file_records, forget_files
from cytostore.store.paths import is_inside
from cytostore.store.trash import TRASH_PATTERN

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["GC_GRACE_S", "GcReport", "gc", "stale_temporaries", "writer_holds"]

logger = logging.getLogger(__name__)

#: Default age (seconds) below which temporaries and model/head orphans are kept.
GC_GRACE_S = 3600.0
_ARTEFACT_DIRS = ("vectors", "indexes", "models", "heads")
_SET_SUFFIXES = {"float32": ".f32", "float16": ".f16"}
_CACHE_SUFFIXES = (".u8", ".ids.npy", ".json", ".lock")


@dataclass
class GcReport:
    """What :func:`gc` removed (or would remove, with ``dry_run``).

    Attributes:
        removed: One dict per file or folder: ``path`` (relative to the store),
            ``bytes``, ``why`` (``orphan``, ``temporary``, ``cache``).
        records: ``files`` rows of removed objects that were dropped.
        kept: Paths deliberately kept, with the reason (a resumable pretrain run, a
            temporary a live writer holds).
        dry_run: Nothing was removed; ``removed`` lists what would be.
    """

    removed: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    kept: list[dict[str, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def files(self) -> int:
        """Files (and folders) removed."""
        return len(self.removed)

    @property
    def bytes(self) -> int:
        """Bytes reclaimed."""
        return sum(int(r["bytes"]) for r in self.removed)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a plain dict (for JSON)."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "records": self.records,
            "dry_run": self.dry_run,
            "removed": self.removed,
            "kept": self.kept,
        }


def writer_holds(lock_path: Path) -> bool:
    """Return whether another process holds the ``flock`` of ``lock_path`` now.

    A missing lock file means no writer. The check takes the lock for an instant.
    """
    try:
        fh = open(lock_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


def _age_s(path: Path, now: float) -> float:
    return now - path.lstat().st_mtime


def _is_temporary(path: Path) -> bool:
    name = path.name
    if TRASH_PATTERN.match(name):  # what an interrupted `rm` left to delete
        return True
    if path.is_dir() and not path.is_symlink():
        return name.startswith(".") and ".tmp-" in name
    return name.endswith(".tmp")


def _lock_of(store: Store, path: Path) -> Path | None:
    """The lock file a writer of this temporary would hold, if there is one."""
    rel = path.relative_to(store.root).parts
    stem = rel[-1].split(".", 1)[0]
    if rel[0] in ("vectors", "indexes") and len(rel) == 2 and stem.isdigit():
        return store.root / "vectors" / f"{stem}.lock"
    if rel[0] == "cache" and len(rel) == 2:
        return store.root / "cache" / f"{stem}.lock"
    return None


def _walk(root: Path) -> Iterator[Path]:
    """Every file and folder under ``root``, not descending into temporary folders."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        yield entry
        if entry.is_dir() and not entry.is_symlink() and not _is_temporary(entry):
            yield from _walk(entry)


def stale_temporaries(
    store: Store, grace_s: float = GC_GRACE_S
) -> list[tuple[Path, str]]:
    """Return the temporaries no live writer can still own, and the live ones.

    Args:
        store: The store.
        grace_s: Temporaries younger than this are kept.

    Returns:
        ``(path, state)`` pairs: ``state`` is ``stale`` (safe to delete),
        ``young`` (newer than ``grace_s``) or ``locked`` (a writer holds its lock).
    """
    now = time.time()
    out: list[tuple[Path, str]] = []
    # sources/: zips ingest extracts into ``.<name>.tmp-<pid>`` before renaming.
    for top in (*_ARTEFACT_DIRS, "cache", "sources"):
        for path in _walk(store.root / top):
            if not _is_temporary(path):
                continue
            lock = _lock_of(store, path)
            if lock is not None and writer_holds(lock):
                out.append((path, "locked"))
            elif _age_s(path, now) < grace_s:
                out.append((path, "young"))
            else:
                out.append((path, "stale"))
    return out


def _catalog_refs(store: Store) -> tuple[set[Path], set[Path], set[str]]:
    """Files of live sets, folders of live models and heads, prep ids in use."""
    with store.connect(read_only=True) as con:
        sets = con.execute("SELECT set_id, dtype FROM embedding_sets").fetchall()
        folders = con.execute(
            "SELECT path FROM models UNION ALL SELECT path FROM heads"
        ).fetchall()
        cards = con.execute("SELECT card FROM models").fetchall()
        preps = con.execute("SELECT preprocessing FROM embedding_sets").fetchall()
    files: set[Path] = set()
    for set_id, dtype in sets:
        for suffix in (_SET_SUFFIXES.get(dtype, ".f32"), ".ids", ".lock"):
            files.add(store.root / "vectors" / f"{set_id}{suffix}")
        files.add(store.root / "indexes" / f"{set_id}.faiss")
    live = {
        (store.root / p).resolve() for (p,) in folders if p and is_inside(store.root, p)
    }
    prep_ids: set[str] = set()
    for (doc,) in cards + preps:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            value = json.loads(doc) if doc else {}
            prep = value.get("preprocessing", value) if value else {}
            if isinstance(prep, dict) and prep.get("prep_id"):
                prep_ids.add(str(prep["prep_id"]))
    return files, live, prep_ids


def _orphans(
    store: Store, listed: list[Path], grace_s: float, report: GcReport
) -> list[Path]:
    set_files, live_folders, _ = _catalog_refs(store)
    now = time.time()
    out: list[Path] = []
    for path in listed:
        rel = path.relative_to(store.root).parts
        if rel[0] in ("vectors", "indexes"):
            if path not in set_files and not path.is_dir():
                lock = _lock_of(store, path)
                if not (lock is not None and path == lock and writer_holds(lock)):
                    out.append(path)
            continue
        # models/<name> and heads/<name>: the folder is the unit
        if len(rel) != 2 or path.resolve() in live_folders:
            continue
        if rel[0] == "models" and (path / "checkpoints").is_dir():
            report.kept.append(
                {
                    "path": f"{'/'.join(rel)}/checkpoints",
                    "why": "an unfinished pretrain run: continue it with "
                    f"'cytostore pretrain STORE --name {rel[1]} --resume'",
                }
            )
            out.extend(
                p
                for p in sorted(path.iterdir())
                if p.name != "checkpoints" and _age_s(p, now) >= grace_s
            )
        elif _age_s(path, now) >= grace_s:
            out.append(path)
    return out


def _caches(store: Store, all_caches: bool) -> list[Path]:
    _, _, used = _catalog_refs(store)
    root = store.root / "cache"
    if not root.is_dir():
        return []
    out: list[Path] = []
    for path in sorted(root.iterdir()):
        if _is_temporary(path) or not any(
            path.name.endswith(s) for s in _CACHE_SUFFIXES
        ):
            continue
        prep_id = path.name.split(".", 1)[0]
        if (all_caches or prep_id not in used) and not writer_holds(
            root / f"{prep_id}.lock"
        ):
            out.append(path)
    if (root / "thumbnails").is_dir():  # the web page's thumbnails (cytostore serve)
        out.append(root / "thumbnails")
    return out


def gc(
    store: Store,
    dry_run: bool = False,
    cache: bool = False,
    *,
    all_caches: bool = False,
    grace_s: float = GC_GRACE_S,
) -> GcReport:
    """Remove orphaned files, stale temporaries and stale ``files`` rows.

    Args:
        store: The store.
        dry_run: Only report what would be removed.
        cache: Also remove the preprocessing caches no registered model uses.
        all_caches: Remove every preprocessing cache (implies ``cache``); they are
            rebuilt by the next ``pretrain`` or ``embed`` that needs them.
        grace_s: Keep temporaries, and model/head orphans, younger than this.

    Returns:
        What was removed, the bytes reclaimed and what was kept on purpose.

    Raises:
        StoreBusyError: If the catalog stays locked by a writer.
        OSError: If a file cannot be removed (permissions).
    """
    report = GcReport(dry_run=dry_run)
    # List before reading the catalog (see the module docstring).
    listed = [p for top in _ARTEFACT_DIRS for p in _walk(store.root / top)]
    listed = [p for p in listed if not _is_temporary(p)]
    temps = stale_temporaries(store, grace_s)
    victims: list[tuple[Path, str]] = [
        (p, "orphan") for p in _orphans(store, listed, grace_s, report)
    ]
    for path, state in temps:
        if state == "stale":
            victims.append((path, "temporary"))
        else:
            why = "a live writer holds its lock" if state == "locked" else "too recent"
            rel = path.relative_to(store.root).as_posix()
            report.kept.append({"path": rel, "why": why})
    if cache or all_caches:
        victims.extend((p, "cache") for p in _caches(store, all_caches))
    seen: set[Path] = set()
    for path, why in victims:
        if path in seen or any(parent in seen for parent in path.parents):
            continue
        seen.add(path)
        rel = path.relative_to(store.root).as_posix()
        report.removed.append({"path": rel, "bytes": _size(path), "why": why})
        if not dry_run:
            _remove(path)
    live = {r.path for r in expected_files(store)}
    stale = [r.path for r in file_records(store) if r.path not in live]
    report.records = len(stale)
    if stale and not dry_run:
        forget_files(store, stale)
    logger.info(
        "gc: %d files, %d bytes%s", report.files, report.bytes, " (dry run)" * dry_run
    )
    return report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
