"""Saving and loading trained heads: ``STORE/heads/<name>/`` plus a ``heads`` row.

A head folder holds ``head.pkl`` (the fitted estimator, pickled), ``head.json``
(what it was trained on: kind, model, label, classes, ...), ``report.json`` and
``confusion.png``. Each file is written as ``<file>.tmp`` and renamed; the catalog
row is written last, in one transaction, so a head is listed only when complete.
Pickles execute code when loaded: load heads only from stores you trust.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

from cytostore.errors import InvalidArgumentError, StoreCorruptError, UnknownHeadError
from cytostore.store import Store, write_head_row

__all__ = [
    "HEADS_DIR",
    "head_dir",
    "save_head",
    "load_head",
    "jsonable",
    "list_heads",
    "check_head_name",
]

HEADS_DIR = "heads"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_head_name(name: str) -> str:
    """Return ``name`` if it is a usable head name.

    Raises:
        InvalidArgumentError: If it has characters other than letters, digits, ``_.-``.
    """
    if not _NAME.match(name) or len(name) > 100:
        raise InvalidArgumentError(
            f"head name {name!r} is invalid: use letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def head_dir(store: Store, name: str) -> Path:
    """Return ``STORE/heads/<name>``."""
    return store.root / HEADS_DIR / check_head_name(name)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def jsonable(value: Any) -> Any:
    """Return ``value`` with numpy scalars/arrays, paths and NaN made JSON-able."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def save_head(
    store: Store,
    name: str,
    estimator: Any,
    meta: dict[str, Any],
    report: dict[str, Any],
) -> Path:
    """Write a head's files and register it (replacing a head of the same name).

    Args:
        store: The store.
        name: Head name.
        estimator: The fitted head.
        meta: What it was trained on; must hold ``kind`` (and ``model``, ``label``).
        report: Its evaluation report (JSON-able after numpy conversion).

    Returns:
        The head's folder.
    """
    folder = head_dir(store, name)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        folder / "head.pkl", pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    )
    meta_doc = json.dumps(jsonable(meta | {"name": name}), indent=2, ensure_ascii=False)
    report_doc = json.dumps(jsonable(report), indent=2, ensure_ascii=False)
    _write_atomic(folder / "head.json", meta_doc.encode())
    _write_atomic(folder / "report.json", report_doc.encode())
    write_head_row(
        store,
        name=name,
        kind=meta["kind"],
        model=meta.get("model"),
        label=meta.get("label"),
        path=str(folder.relative_to(store.root)),
        report=report_doc,
    )
    return folder


def list_heads(store: Store) -> list[dict[str, Any]]:
    """Return the ``heads`` rows (name, kind, model, label, path, created_at)."""
    return store.sql(
        "SELECT name, kind, model, label, path, created_at FROM heads ORDER BY name"
    ).dicts()


def load_head(store: Store, name: str) -> tuple[Any, dict[str, Any]]:
    """Return a saved head and its metadata.

    Returns:
        ``(estimator, meta)``.

    Raises:
        UnknownHeadError: If no head of that name is registered.
        StoreCorruptError: If its files are missing.
    """
    rows = store.sql("SELECT path FROM heads WHERE name = ?", [name]).rows
    if not rows:
        known = [h["name"] for h in list_heads(store)]
        raise UnknownHeadError(
            f"no head named {name!r} in {store.root}: known heads are "
            f"{known or 'none'}; "
            "train one with 'cytostore probe' or 'cytostore mil'"
        )
    folder = store.root / rows[0][0]
    try:
        meta = json.loads((folder / "head.json").read_text())
        with open(folder / "head.pkl", "rb") as f:
            estimator = pickle.load(f)  # noqa: S301 - the store's own file
    except FileNotFoundError as exc:
        raise StoreCorruptError(
            f"head {name!r} is registered but {exc.filename} is missing: retrain it"
        ) from None
    return estimator, meta
