"""Check a store's files against its catalog, and repair what is safe to repair.

:func:`verify` checks, without changing anything:

- every file recorded in ``files`` (of a live set, model or head) exists, has the
  recorded size (vector and ids files: at least the committed prefix) and the
  recorded sha256 of that prefix;
- each embedding set: its vector and ids files hold exactly ``n_vectors`` rows (a
  longer file has an uncommitted tail, reported unless a writer holds the set's lock),
  its ids are unique and all catalogued cells, and its FAISS index holds exactly the
  first ``n_indexed`` ids at the set's dimension;
- every path of the catalog resolves inside its root: model and head folders inside
  the store, dataset roots exist, cell paths inside their dataset's root;
- no stale temporary (a half-written artefact, see :mod:`cytostore.store.gc`) is left;
- with ``images=True``: each cell's image still has the sha256 ingest recorded.

Each problem names the ``cytostore`` command that repairs it. ``repair=True`` does
only what cannot lose data: rebuild an index from the vectors, truncate an
uncommitted tail, delete stale temporaries; then it checks again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import StoreCorruptError
from cytostore.store.checksums import (
    APPEND_ONLY_KINDS,
    FileRecord,
    expected_files,
    sha256_file,
)
from cytostore.store.gc import GC_GRACE_S, _remove, stale_temporaries, writer_holds
from cytostore.store.paths import resolve_inside
from cytostore.store.vectors import EmbeddingSet, ids_path, list_sets, vector_path

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["Problem", "VerifyReport", "verify"]

logger = logging.getLogger(__name__)

_EXAMPLES = 3


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store.

    Attributes:
        kind: ``checksum``, ``missing``, ``size``, ``tail``, ``ids``, ``index``,
            ``path``, ``temporary`` or ``image``.
        object: What it concerns (a store path, ``set m``, ``dataset lmu``, ...).
        message: What is wrong.
        fix: The exact ``cytostore`` command that repairs it.
    """

    kind: str
    object: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """Return the problem as a plain dict."""
        return {
            "kind": self.kind,
            "object": self.object,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`.

    Attributes:
        problems: What is wrong now (after repairs, when ``repair`` was asked).
        repaired: What ``repair`` fixed.
        files: Store files checked (recorded files plus each set's files).
        sets: Embedding sets checked.
        cells: Cell paths checked.
        images: Images re-hashed (``images=True``).
        unchecked: Store files without a recorded checksum for their committed
            length (written before checksums were recorded): sizes only.
    """

    problems: list[Problem] = field(default_factory=list)
    repaired: list[Problem] = field(default_factory=list)
    files: int = 0
    sets: int = 0
    cells: int = 0
    images: int = 0
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem is left."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a plain dict (for JSON)."""
        return {
            "ok": self.ok,
            "files": self.files,
            "sets": self.sets,
            "cells": self.cells,
            "images": self.images,
            "problems": [p.as_dict() for p in self.problems],
            "repaired": [p.as_dict() for p in self.repaired],
            "unchecked": self.unchecked,
        }


class _Checker:
    """One pass of checks; collects problems and the repairs that would fix them."""

    def __init__(self, store: Store, grace_s: float) -> None:
        self.store = store
        self.grace_s = grace_s
        self.root_arg = shlex.quote(str(store.root))
        self.report = VerifyReport()
        self.rebuild: dict[int, list[Problem]] = {}
        self.truncate: dict[int, list[Problem]] = {}
        self.stale: dict[Path, Problem] = {}
        self.sets = {es.set_id: es for es in list_sets(store)}

    def add(self, kind: str, obj: str, message: str, fix: str) -> Problem:
        problem = Problem(kind, obj, message, fix)
        self.report.problems.append(problem)
        return problem

    def cmd(self, *args: str) -> str:
        return " ".join(["cytostore", args[0], self.root_arg, *args[1:]])

    def reembed(self, es: EmbeddingSet) -> str:
        shard = f" --shard {es.shard}" if es.shard else ""
        return (
            f"{self.cmd('rm', 'set', shlex.quote(es.name), '--cascade')} && "
            f"{self.cmd('embed', '--model', shlex.quote(es.model))}{shard}"
        )

    def rebuild_fix(self, es: EmbeddingSet) -> str:
        return self.cmd("build-index", "--model", shlex.quote(es.name), "--rebuild")

    # --------------------------------------------------------------- recorded
    def recorded(self, records: list[FileRecord]) -> None:
        for rec in records:
            self.report.files += 1
            self._recorded_one(rec)

    def _fix_for(self, rec: FileRecord) -> tuple[str, int | None]:
        """The repairing command for a bad recorded file, and a set to rebuild."""
        if rec.kind == "index" and _set_id(rec) in self.sets:
            es = self.sets[_set_id(rec)]
            return self.rebuild_fix(es), es.set_id
        if rec.kind in APPEND_ONLY_KINDS and _set_id(rec) in self.sets:
            return self.reembed(self.sets[_set_id(rec)]), None
        what = "model" if rec.path.startswith("models/") else "head"
        name = shlex.quote(rec.path.split("/")[1])
        again = (
            "retrain it ('cytostore pretrain')"
            if what == "model"
            else "train it again ('cytostore probe' / 'cytostore mil')"
        )
        return f"{self.cmd('rm', what, name)}, then {again}", None

    def _recorded_one(self, rec: FileRecord) -> None:
        try:
            full = resolve_inside(self.store.root, rec.path, what="recorded file")
        except StoreCorruptError as exc:
            fix, _ = self._fix_for(rec)
            self.add("path", rec.path, str(exc), fix)
            return
        fix, set_id = self._fix_for(rec)
        problem: Problem | None = None
        if not full.is_file():
            problem = self.add("missing", rec.path, f"{rec.kind} file is missing", fix)
        else:
            size = full.stat().st_size
            short = size < rec.bytes
            if short or (size != rec.bytes and rec.kind not in APPEND_ONLY_KINDS):
                problem = self.add(
                    "size",
                    rec.path,
                    f"{rec.kind} file holds {size} bytes, {rec.bytes} were written",
                    fix,
                )
            elif sha256_file(full, rec.bytes) != rec.sha256:
                problem = self.add(
                    "checksum",
                    rec.path,
                    f"{rec.kind} file's sha256 differs from the one recorded when it "
                    f"was written ({rec.sha256[:12]}...): it was changed or damaged",
                    fix,
                )
        if problem is not None and set_id is not None:
            self.rebuild.setdefault(set_id, []).append(problem)

    # ------------------------------------------------------------------- sets
    def embedding_sets(self, records: list[FileRecord], known: np.ndarray) -> None:
        by_path = {r.path: r for r in records}
        for es in self.sets.values():
            self.report.sets += 1
            self._set_files(es, by_path)
            self._set_ids(es, known)
            self._set_index(es, by_path)

    def _set_files(self, es: EmbeddingSet, by_path: dict[str, FileRecord]) -> None:
        lock = self.store.root / "vectors" / f"{es.set_id}.lock"
        busy = writer_holds(lock)
        for path, row in ((vector_path(self.store, es), es.row_bytes),
                          (ids_path(self.store, es), 8)):  # fmt: skip
            rel = f"vectors/{path.name}"
            want = es.n_vectors * row
            rec = by_path.get(rel)
            if rec is None:
                self.report.files += 1
            if rec is None or rec.bytes < want:
                if want:
                    self.report.unchecked.append(rel)
            elif rec.bytes > want:
                self.add(
                    "size",
                    rel,
                    f"its checksum covers {rec.bytes // row} rows but set "
                    f"{es.name!r} commits {es.n_vectors}: the catalog was altered",
                    self.reembed(es),
                )
            have = path.stat().st_size if path.exists() else 0
            if have < want:
                if rec is None or have >= rec.bytes:  # else reported as recorded
                    self.add(
                        "size",
                        rel,
                        f"holds {have // row} rows but set {es.name!r} commits "
                        f"{es.n_vectors}: the file was truncated or replaced",
                        self.reembed(es),
                    )
            elif have > want and not busy:
                problem = self.add(
                    "tail",
                    rel,
                    f"{(have - want) // row} uncommitted rows past the {es.n_vectors} "
                    f"committed of set {es.name!r} (a writer was killed)",
                    self.cmd("verify", "--repair"),
                )
                self.truncate.setdefault(es.set_id, []).append(problem)

    def _set_ids(self, es: EmbeddingSet, known: np.ndarray) -> None:
        path = ids_path(self.store, es)
        if not es.n_vectors or not path.exists():
            return
        if path.stat().st_size < es.n_vectors * 8:
            return  # reported as too short
        ids = np.fromfile(path, dtype="<i8", count=es.n_vectors)
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.size != ids.size:
            dup = uniq[counts > 1][:_EXAMPLES].tolist()
            self.add(
                "ids",
                f"set {es.name}",
                f"{ids.size - uniq.size} repeated cell ids (e.g. {dup})",
                self.reembed(es),
            )
        unknown = uniq[~np.isin(uniq, known)]
        if unknown.size:
            self.add(
                "ids",
                f"set {es.name}",
                f"{unknown.size} ids are not catalogued cells "
                f"(e.g. {unknown[:_EXAMPLES].tolist()})",
                self.reembed(es),
            )

    def _set_index(self, es: EmbeddingSet, by_path: dict[str, FileRecord]) -> None:
        import faiss

        path = self.store.root / "indexes" / f"{es.set_id}.faiss"
        rel = f"indexes/{path.name}"
        if rel not in by_path:
            self.report.files += 1
            if path.exists():
                self.report.unchecked.append(rel)
        fix = self.rebuild_fix(es)
        if not path.exists():
            if es.n_indexed:
                problem = self.add(
                    "missing",
                    rel,
                    f"index of set {es.name!r} is missing ({es.n_indexed} indexed)",
                    fix,
                )
                self.rebuild.setdefault(es.set_id, []).append(problem)
            return
        try:
            idx = faiss.read_index(str(path))
        except RuntimeError as exc:
            problem = self.add(
                "index", rel, f"unreadable: {str(exc).splitlines()[0]}", fix
            )
            self.rebuild.setdefault(es.set_id, []).append(problem)
            return
        message = None
        if idx.d != es.dim or idx.ntotal != es.n_indexed:
            message = (
                f"holds {idx.ntotal} vectors of dim {idx.d}; set {es.name!r} records "
                f"{es.n_indexed} indexed of dim {es.dim}"
            )
        elif es.n_indexed <= es.n_vectors:
            ids = ids_path(self.store, es)
            if ids.exists() and ids.stat().st_size >= es.n_indexed * 8:
                message = _index_id_problem(idx, ids, es.n_indexed)
        if message is not None:
            problem = self.add("index", rel, message, fix)
            self.rebuild.setdefault(es.set_id, []).append(problem)

    # ------------------------------------------------------------------ paths
    def paths(self) -> list[tuple[int, str, Path, str, str | None]]:
        """Check catalog paths; return the cells ``(id, dataset, file, path, sha)``."""
        with self.store.connect(read_only=True) as con:
            folders = con.execute(
                "SELECT 'model', name, path FROM models UNION ALL "
                "SELECT 'head', name, path FROM heads"
            ).fetchall()
            datasets = con.execute("SELECT dataset, root FROM datasets").fetchall()
            cells = con.execute(
                "SELECT cell_id, dataset, path, sha256 FROM cells ORDER BY cell_id"
            ).fetchall()
        for what, name, path in folders:
            fix = self.cmd("rm", what, shlex.quote(name))
            try:
                full = resolve_inside(self.store.root, path, what=f"{what} folder")
            except StoreCorruptError as exc:
                self.add("path", f"{what} {name}", str(exc), fix)
                continue
            if not full.is_dir():
                self.add("missing", f"{what} {name}", f"folder {path} is missing", fix)
        roots: dict[str, Path | None] = {}
        for dataset, root in datasets:
            fix = self.cmd("relocate", shlex.quote(dataset), "NEW_ROOT")
            if not root or not os.path.isabs(root):
                self.add(
                    "path", f"dataset {dataset}", f"root {root!r} is not absolute", fix
                )
                roots[dataset] = None
            elif not Path(root).is_dir():
                self.add(
                    "missing",
                    f"dataset {dataset}",
                    f"its images' folder {root} is missing (the store was moved?)",
                    fix,
                )
                roots[dataset] = None
            else:
                roots[dataset] = Path(root).resolve()
        out: list[tuple[int, str, Path, str, str | None]] = []
        bad: dict[str, list[str]] = {}
        parents: dict[tuple[str, str], bool] = {}
        for cell_id, dataset, rel, sha in cells:
            self.report.cells += 1
            root_path = roots.get(dataset)
            found = _inside(root_path, rel, parents, dataset)
            if found is None:
                bad.setdefault(dataset, []).append(rel)
            elif root_path is not None:
                out.append((int(cell_id), dataset, found, rel, sha))
        for dataset, rels in bad.items():
            self.add(
                "path",
                f"dataset {dataset}",
                f"{len(rels)} cell paths lead outside the dataset's root "
                f"(e.g. {rels[0]!r}): the catalog was altered",
                f"{self.cmd('rm', 'dataset', shlex.quote(dataset))}, then ingest "
                "its images again",
            )
        return out

    def images(self, cells: list[tuple[int, str, Path, str, str | None]]) -> None:
        todo = [c for c in cells if c[4]]
        missing: dict[str, list[str]] = {}
        changed: dict[str, list[str]] = {}

        def check(cell: tuple[int, str, Path, str, str | None]) -> str | None:
            _, _, full, _, sha = cell
            if not full.is_file():
                return "missing"
            return None if sha256_file(full) == sha else "changed"

        with ThreadPoolExecutor(max_workers=4) as pool:
            for cell, state in zip(todo, pool.map(check, todo), strict=True):
                self.report.images += 1
                if state is not None:
                    bucket = missing if state == "missing" else changed
                    bucket.setdefault(cell[1], []).append(cell[3])
        totals = Counter(c[1] for c in todo)
        for dataset, rels in missing.items():
            self.add(
                "image",
                f"dataset {dataset}",
                f"{len(rels)} of {totals[dataset]} images are missing "
                f"(e.g. {rels[0]!r})",
                self.cmd("relocate", shlex.quote(dataset), "NEW_ROOT"),
            )
        for dataset, rels in changed.items():
            self.add(
                "image",
                f"dataset {dataset}",
                f"{len(rels)} of {totals[dataset]} images differ from the sha256 "
                f"recorded at ingest (e.g. {rels[0]!r})",
                f"restore the originals, or {self.cmd('rm', 'dataset', dataset)} "
                "and ingest them again",
            )

    def temporaries(self) -> None:
        for path, state in stale_temporaries(self.store, self.grace_s):
            if state != "stale":
                continue
            rel = path.relative_to(self.store.root).as_posix()
            self.stale[path] = self.add(
                "temporary",
                rel,
                "a half-written artefact (its writer stopped)",
                self.cmd("gc"),
            )


def _index_ids(idx: Any) -> npt.NDArray[np.int64] | None:
    """The ids an index returns, sorted (``None``: it holds no ids of its own).

    An ``IndexIDMap``/``IndexIDMap2`` keeps them in its id map; a compressed IVF
    index (``IVF…,PQ…``, built without the map) in its inverted lists, read one
    list at a time into one array (the index's ids' bytes, nothing more).
    """
    import faiss

    if hasattr(idx, "id_map"):
        have = np.asarray(faiss.vector_to_array(idx.id_map), dtype=np.int64)
        have.sort()
        return have
    try:
        invlists: Any = faiss.extract_index_ivf(idx).invlists
    except RuntimeError:  # not an IVF index: its ids are its row numbers
        return None
    sizes = [invlists.list_size(lst) for lst in range(invlists.nlist)]
    have = np.empty(sum(sizes), dtype=np.int64)
    pos = 0
    for lst, size in enumerate(sizes):
        if not size:
            continue
        ptr = invlists.get_ids(lst)
        try:
            have[pos : pos + size] = faiss.rev_swig_ptr(ptr, size)
        finally:
            invlists.release_ids(lst, ptr)
        pos += size
    have.sort()
    return have


def _index_id_problem(idx: Any, ids: Path, n_indexed: int) -> str | None:
    """What is wrong with the index's ids against the first ``n_indexed`` of ``ids``.

    Both are compared as sorted arrays (an IVF index returns its ids in list
    order), so a repeated id counts: at most twice the ids' bytes are held.
    """
    have = _index_ids(idx)
    if have is None:
        return None
    want = np.fromfile(ids, dtype="<i8", count=n_indexed)
    want.sort()
    if have.size == want.size and all(
        np.array_equal(have[lo : lo + _CHUNK], want[lo : lo + _CHUNK])
        for lo in range(0, have.size, _CHUNK)
    ):
        return None
    parts = []
    for what, count, examples in (
        ("repeated", *_repeated(have)),
        ("missing", *_not_in(want, have)),
        ("not in the set's first rows", *_not_in(have, want)),
    ):
        if count:
            parts.append(f"{count} {what} (e.g. {examples})")
    detail = ", ".join(parts) or "the set's rows repeat ids"
    return (
        f"its {have.size} ids differ from the set's first {n_indexed} rows' ids: "
        f"{detail}"
    )


_CHUNK = 1 << 20  # ids compared at a time (8 MiB): bounds the temporaries


def _repeated(a: npt.NDArray[np.int64]) -> tuple[int, list[int]]:
    """How many entries of sorted ``a`` repeat the one before, and a few of them."""
    count, examples = 0, list[int]()
    for lo in range(1, a.size, _CHUNK):
        hi = min(lo + _CHUNK, a.size)
        dup = a[lo:hi][a[lo:hi] == a[lo - 1 : hi - 1]]
        count += dup.size
        examples.extend(np.unique(dup[: _EXAMPLES * 2]).tolist())
    return count, sorted(set(examples))[:_EXAMPLES]


def _not_in(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]
) -> tuple[int, list[int]]:
    """How many entries of sorted ``a`` are not in sorted ``b``, and a few of them."""
    count, examples = 0, list[int]()
    for lo in range(0, a.size, _CHUNK):
        part = a[lo : lo + _CHUNK]
        pos = np.minimum(np.searchsorted(b, part), max(b.size - 1, 0))
        out = part if not b.size else part[b[pos] != part]
        count += out.size
        if len(examples) < _EXAMPLES:
            examples.extend(out[:_EXAMPLES].tolist())
    return count, examples[:_EXAMPLES]


def _set_id(rec: FileRecord) -> int:
    """The set id owning a recorded vector/ids/index file (-1: none)."""
    return int(rec.owner) if rec.owner and rec.owner.isdigit() else -1


def _inside(
    root: Path | None, rel: str, parents: dict[tuple[str, str], bool], dataset: str
) -> Path | None:
    """``root / rel`` if it stays inside ``root`` (lexically when root is missing)."""
    if not rel or "\0" in rel or os.path.isabs(rel):
        return None
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        return None
    if root is None:
        return Path(norm)
    parent = os.path.dirname(norm)
    key = (dataset, parent)
    if key not in parents:
        parents[key] = _resolves_inside(root, parent)
    if not parents[key]:
        return None
    full = root / norm
    if full.is_symlink() and not _resolves_inside(root, norm):
        return None
    return full


def _resolves_inside(root: Path, rel: str) -> bool:
    full = (root / rel).resolve()
    return full == root or root in full.parents


@contextlib.contextmanager
def _set_lock(store: Store, set_id: int) -> Iterator[bool]:
    """Hold the set's writer lock (without waiting); yields whether it was taken."""
    path = store.root / "vectors" / f"{set_id}.lock"
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check(store: Store, images: bool, grace_s: float) -> _Checker:
    checker = _Checker(store, grace_s)
    records = expected_files(store)
    checker.recorded(records)
    with store.connect(read_only=True) as con:
        known = con.execute("SELECT cell_id FROM cells").fetchnumpy()["cell_id"]
    checker.embedding_sets(records, np.asarray(known, dtype=np.int64))
    cells = checker.paths()
    if images:
        checker.images(cells)
    checker.temporaries()
    return checker


def _repair(store: Store, checker: _Checker) -> list[Problem]:
    from cytostore.store.index import build_index

    done: list[Problem] = []
    for path, problem in checker.stale.items():
        _remove(path)
        done.append(problem)
    for set_id, problems in checker.truncate.items():
        es = checker.sets[set_id]
        with _set_lock(store, set_id) as taken:
            if not taken:
                continue
            for path, row in ((vector_path(store, es), es.row_bytes),
                              (ids_path(store, es), 8)):  # fmt: skip
                if path.exists() and path.stat().st_size > es.n_vectors * row:
                    with open(path, "r+b") as f:
                        f.truncate(es.n_vectors * row)
                        os.fsync(f.fileno())
        done.extend(problems)
    for set_id, problems in checker.rebuild.items():
        build_index(store, set_id, rebuild=True)
        done.extend(problems)
    return done


def verify(
    store: Store,
    images: bool = False,
    repair: bool = False,
    *,
    grace_s: float = GC_GRACE_S,
) -> VerifyReport:
    """Check the store's files against its catalog (see the module docstring).

    Args:
        store: The store.
        images: Also re-hash every cell's image against the sha256 recorded at
            ingest (reads every image: slow on large datasets).
        repair: Do the safe repairs (rebuild indexes from the vectors, truncate
            uncommitted tails, delete stale temporaries), then check again.
        grace_s: Temporaries younger than this are not reported (a writer may still
            be writing them).

    Returns:
        The problems left (each with its fixing command), what was repaired, and
        how many files, sets and cells were checked.

    Raises:
        StoreBusyError: If the catalog stays locked by a writer.
    """
    checker = _check(store, images, grace_s)
    if not repair or not checker.report.problems:
        return checker.report
    repaired = _repair(store, checker)
    again = _check(store, images, grace_s).report
    again.repaired = repaired
    logger.info("verify: %d repaired, %d left", len(repaired), len(again.problems))
    return again
