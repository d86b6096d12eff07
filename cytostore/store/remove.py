"""Remove models, embedding sets and heads; withdraw patients and datasets everywhere.

``remove(store, kind, name)`` is what ``cytostore rm`` calls.

- ``model``, ``set``, ``head``: refused while something depends on it (a model's
  embedding sets and heads; a set's heads and neighbour tables) unless ``cascade``,
  which removes those too. Files go to trash, the catalog rows (and the recorded
  checksums) are deleted in one transaction, then the trash is deleted (see
  :mod:`cytostore.store.trash`): a crash before the commit leaves the catalog as it
  was and is finished by rerunning ``rm``; one after it leaves only trash.
- ``patient``, ``dataset`` (consent withdrawal): see :mod:`cytostore.store.withdraw`.

A rerun of ``rm`` for something already gone finishes what an interrupted ``rm`` left
(trash, files of unregistered sets) instead of failing, and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cytostore.errors import (
    HasDependentsError,
    InvalidArgumentError,
    NotInStoreError,
    UnknownEmbeddingSetError,
)
from cytostore.store.curation import CURATION_TABLES
from cytostore.store.paths import resolve_inside
from cytostore.store.trash import (
    commit_with_trash,
    count_rows,
    finish_interrupted,
    path_size,
    read_query,
    rel_path,
    rm_lock,
    run_deletes,
    set_lock,
)
from cytostore.store.vectors import EmbeddingSet, get_set, list_sets
from cytostore.store.withdraw import set_files, withdraw

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["KINDS", "remove"]

logger = logging.getLogger(__name__)

#: What ``rm`` can remove.
KINDS = ("model", "set", "head", "patient", "dataset")


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
    with rm_lock(store):
        try:
            if kind in ("patient", "dataset"):
                return withdraw(store, kind, name, dataset=dataset, dry_run=dry_run)
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
    runs: list[tuple[str, str]] = dataclasses.field(default_factory=list)


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
            locks.enter_context(set_lock(store, es))
        with read_query(store) as query:
            report["rows"] = count_rows(query, _artefact_deletes(targets))
        report["files"] = [rel_path(store, p) for p in files if os.path.lexists(p)]
        report["bytes"] = sum(path_size(p) for p in files)
        if dry_run:
            return report
        report["rows"] = commit_with_trash(
            store, files, lambda con: run_deletes(con, _artefact_deletes(targets))
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
            raise NotInStoreError.for_name(
                "head",
                name,
                [h for h, _ in heads],
                "check the name with 'cytostore ls STORE heads'",
                where=str(store.root),
            )
        t.heads = [name]
        return t, []
    if kind == "model":
        known = {r[0] for r in store.sql("SELECT name FROM models").rows}
        t.sets = [s for s in sets if s.model == name]
        if name not in known and not t.sets:
            raise NotInStoreError.for_name(
                "model",
                name,
                known | {s.model for s in sets},
                "check the name with 'cytostore models STORE'",
                where=str(store.root),
            )
        t.models = [name] if name in known else []
        t.runs = [
            (k, r)
            for k, r in store.sql(
                "SELECT kind, run FROM curation_runs WHERE model = ? ORDER BY 1, 2",
                [name],
            ).rows
        ]
    else:
        try:
            t.sets = [get_set(store, name)]
        except UnknownEmbeddingSetError:
            raise NotInStoreError.for_name(
                "embedding set",
                name,
                [s.name for s in sets],
                "name it as MODEL, MODEL@i/n or its set id ('cytostore ls STORE sets')",
                where=str(store.root),
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
    if t.runs:
        dependents.append("curation runs " + ", ".join(f"{k} {r}" for k, r in t.runs))
    return t, dependents


def _artefact_files(store: Store, t: _Targets) -> list[Path]:
    files: list[Path] = []
    for es in t.sets:
        files += set_files(store, es)
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
    for kind, table in CURATION_TABLES.items():
        runs = [r for k, r in t.runs if k == kind]
        if runs:
            out.append((table, "run IN (SELECT unnest(?::VARCHAR[]))", [runs]))
            out.append(
                (
                    "curation_runs",
                    "kind = ? AND run IN (SELECT unnest(?::VARCHAR[]))",
                    [kind, runs],
                )
            )
    if t.sets:
        sids = [s.set_id for s in t.sets]
        out.append(("embedding_sets", "set_id IN (SELECT unnest(?))", [sids]))
    if t.models:
        out.append(("models", "name IN (SELECT unnest(?))", [t.models]))
    return out


def _report(kind: str, name: str, dry_run: bool, t: _Targets) -> dict[str, Any]:
    removed: dict[str, list[str]] = {
        "models": t.models,
        "sets": [s.name for s in t.sets],
        "heads": t.heads,
        "neighbor_tables": t.tables,
    }
    if t.runs:  # curation runs (kind and name), only when there are some
        removed["curation_runs"] = [f"{k} {r}" for k, r in t.runs]
    return {
        "kind": kind,
        "name": name,
        "dry_run": dry_run,
        "removed": removed,
        "rows": {},
        "files": [],
        "bytes": 0,
    }
