"""What a store holds: models, embedding sets, heads and tables, with their disk use.

:func:`ls` reads the catalog and sizes the files each object owns; it opens nothing
else (cards are JSON in the catalog, never files executed or unpickled).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cytostore.errors import InvalidArgumentError, StoreCorruptError
from cytostore.store.paths import resolve_inside
from cytostore.store.vectors import ids_path, list_sets, vector_path

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["GROUPS", "MODEL_COLUMNS", "ls", "list_models"]

#: The groups :func:`ls` lists, in order.
GROUPS = ("models", "sets", "heads", "tables")
#: Columns of a model row (``list_models`` adds ``card``, the card as a dict).
MODEL_COLUMNS = (
    "name",
    "method",
    "backbone",
    "dim",
    "crop_px",
    "um_per_px",
    "epochs",
    "final_loss",
    "knn_accuracy",
    "created",
    "cells",
    "disk_bytes",
)


def _disk_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _folder_bytes(store: Store, rel: str | None, what: str) -> int | None:
    """Disk use of a catalogued folder; ``None`` if its path leads outside the store."""
    if not rel:
        return 0
    try:
        return _disk_bytes(resolve_inside(store.root, rel, what=what))
    except StoreCorruptError:
        return None


def list_models(store: Store) -> list[dict[str, Any]]:
    """Return one row per registered model, by name.

    Returns:
        Dicts with :data:`MODEL_COLUMNS` (from the ``models`` row and its card;
        ``cells``: cells it was trained on, ``disk_bytes``: its folder) and
        ``card`` (the model card as a dict).
    """
    with store.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT name, method, backbone, dim, path, card, created_at "
            "FROM models ORDER BY name"
        ).fetchall()
    out = []
    for name, method, backbone, dim, path, doc, created_at in rows:
        try:
            card = json.loads(doc) if doc else {}
        except ValueError:
            card = {}
        card = card if isinstance(card, dict) else {}
        prep = card.get("preprocessing") or {}
        knn = card.get("knn_monitor") or {}
        data = card.get("data") or {}
        cells = (
            sum(v for v in data.values() if isinstance(v, int))
            if isinstance(data, dict)
            else None
        )
        out.append(
            {
                "name": name,
                "method": method,
                "backbone": backbone,
                "dim": dim,
                "crop_px": prep.get("crop_px"),
                "um_per_px": prep.get("um_per_px"),
                "epochs": card.get("epochs"),
                "final_loss": card.get("final_loss"),
                "knn_accuracy": knn.get("accuracy"),
                "created": card.get("created") or created_at,
                "cells": cells,
                "disk_bytes": _folder_bytes(store, path, f"model {name!r} folder"),
                "card": card,
            }
        )
    return out


def _sets(store: Store) -> list[dict[str, Any]]:
    out = []
    for es in list_sets(store):
        index = store.root / "indexes" / f"{es.set_id}.faiss"
        files = (vector_path(store, es), ids_path(store, es), index)
        out.append(
            {
                "set_id": es.set_id,
                "name": es.name,
                "model": es.model,
                "shard": es.shard,
                "dim": es.dim,
                "dtype": es.dtype,
                "metric": es.metric,
                "rows": es.n_vectors,
                "indexed": es.n_indexed,
                "index": es.index_factory,
                "disk_bytes": sum(_disk_bytes(p) for p in files),
            }
        )
    return out


def _heads(store: Store) -> list[dict[str, Any]]:
    with store.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT name, kind, model, label, path, created_at FROM heads ORDER BY name"
        ).fetchall()
    return [
        {
            "name": name,
            "kind": kind,
            "model": model,
            "label": label,
            "created": created,
            "disk_bytes": _folder_bytes(store, path, f"head {name!r} folder"),
        }
        for name, kind, model, label, path, created in rows
    ]


def _tables(store: Store) -> list[dict[str, Any]]:
    with store.connect(read_only=True) as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' AND table_schema = 'main' "
                "ORDER BY table_name"
            ).fetchall()
        ]
        return [
            {
                "table": name,
                "rows": int(
                    con.execute(
                        f'SELECT count(*) FROM "{name.replace(chr(34), "")}"'
                    ).fetchall()[0][0]
                ),
            }
            for name in names
        ]


def ls(store: Store, what: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """List what the store holds, with sizes, dims, counts and disk use.

    Args:
        store: The store.
        what: One of :data:`GROUPS` (``models``, ``sets``, ``heads``, ``tables``);
            ``None``: all of them.

    Returns:
        ``{group: rows}`` in :data:`GROUPS` order, each row a dict:

        - ``models``: see :func:`list_models`;
        - ``sets``: ``set_id``, ``name``, ``model``, ``shard``, ``dim``, ``dtype``,
          ``metric``, ``rows``, ``indexed``, ``index`` (FAISS factory),
          ``disk_bytes`` (vector, ids and index files);
        - ``heads``: ``name``, ``kind``, ``model``, ``label``, ``created``,
          ``disk_bytes``;
        - ``tables``: ``table``, ``rows`` (every catalog table).

        ``disk_bytes`` is ``None`` for a folder the catalog places outside the store.

    Raises:
        InvalidArgumentError: If ``what`` is not a group.

    Examples:
        >>> import tempfile
        >>> from cytostore.store import Store
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> ls(store, "sets")
        {'sets': []}
    """
    if what is not None and what not in GROUPS:
        raise InvalidArgumentError(
            f"cannot list {what!r}: choose one of {', '.join(GROUPS)}"
        )
    makers = {
        "models": list_models,
        "sets": _sets,
        "heads": _heads,
        "tables": _tables,
    }
    return {g: makers[g](store) for g in GROUPS if what in (None, g)}
