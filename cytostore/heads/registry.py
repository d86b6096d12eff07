"""Saving and loading trained heads: ``STORE/heads/<name>/`` plus a ``heads`` row.

A head folder holds ``head.npz`` (the learned arrays: ``np.savez``, numeric dtypes
only, read back with ``allow_pickle=False``), ``head.json`` (what it was trained on,
its parameters and classes, the sha256 of ``head.npz``), ``report.json`` and
``confusion.png``. Nothing in it is ever unpickled or executed: a store from
someone else can be predicted with safely.

The folder is written whole into ``heads/.<name>.tmp-<random>``, fsynced, and
renamed into place; an existing head is first renamed aside to ``heads/.<name>.old``
and deleted last. A crash at any point leaves the old head or the new one whole and
loadable (while only the aside folder exists, it is loaded), never a mix. The
catalog row is written after the folder is in place.

A head records the sha256 of the model weights its embeddings came from; it is
refused (:class:`~cytostore.errors.StaleHeadError`) once the embeddings it would be
applied to come from other weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore._json import jsonable
from cytostore.errors import (
    InvalidArgumentError,
    PickledHeadError,
    StaleHeadError,
    StoreCorruptError,
    UnknownEmbeddingSetError,
    UnknownHeadError,
)
from cytostore.heads._base import BaseHead
from cytostore.heads.abmil import ABMILHead
from cytostore.heads.knn import KNNHead
from cytostore.heads.linear import LinearProbe
from cytostore.heads.mlp import MLPHead
from cytostore.store import (
    Store,
    fault_point,
    record_tree,
    resolve_inside,
    write_head_row,
)

if TYPE_CHECKING:
    from cytostore.heads.provenance import Provenance

__all__ = [
    "HEADS_DIR",
    "HEAD_CLASSES",
    "HEAD_FORMAT",
    "head_dir",
    "save_head",
    "load_head",
    "jsonable",
    "list_heads",
    "check_head_name",
    "weights_of",
    "retrain_command",
]

HEADS_DIR = "heads"
#: ``format`` of ``head.json``.
HEAD_FORMAT = "cytostore-head-1"
#: The only classes a ``head.json`` may name (nothing is imported by name).
HEAD_CLASSES: dict[str, type[BaseHead]] = {
    cls.__name__: cls for cls in (LinearProbe, KNNHead, MLPHead, ABMILHead)
}
_ARRAYS = "head.npz"
_META = "head.json"
_PICKLE = "head.pkl"
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


def weights_of(store: Store, model: str | int | None) -> str | None:
    """Return the sha256 of the weights that ``model``'s embeddings come from.

    That is the embedding set's ``weights_sha256`` (recorded by ``embed``), else the
    ``models`` row's ``sha256`` of a registered model of that name.

    Returns:
        The hex digest, or ``None`` when neither is recorded.
    """
    try:
        es = store.embedding_set(model)
    except UnknownEmbeddingSetError:
        es = None
    if es is not None and es.weights_sha256:
        return es.weights_sha256
    name = es.model if es is not None else model
    if name is None:
        return None
    rows = store.sql("SELECT sha256 FROM models WHERE name = ?", [str(name)]).rows
    return str(rows[0][0]) if rows and rows[0][0] else None


def retrain_command(store: Store, name: str, meta: dict[str, Any]) -> str:
    """Return the shell command that trains head ``name`` again from its metadata.

    Uses ``meta["cli"]`` (``[[flag, value], ...]``, recorded by ``probe``/``mil``)
    when present, else the ``model``, ``label``, ``where`` (and ``bag``) it records.
    """
    kind = meta.get("kind")
    words = ["cytostore", "mil" if kind == "abmil" else "probe", str(store.root)]
    pairs = meta.get("cli")
    if not isinstance(pairs, list):
        pairs = [
            ["--model", meta.get("model")],
            ["--bag", meta.get("bag")] if kind == "abmil" else ["--kind", kind],
            ["--label", meta.get("label")],
            ["--where", meta.get("where")],
        ]
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2 or pair[1] in (None, False):
            continue
        # a flag (value True) is written bare: --prior-correction
        words += [str(pair[0])] if pair[1] is True else [str(pair[0]), str(pair[1])]
    words += ["--name", name]
    return shlex.join(words)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _aside(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _tidy(final: Path) -> None:
    """Finish what a crashed save left: restore or drop the aside folder, drop temps."""
    aside = _aside(final)
    if aside.is_dir():
        if final.is_dir():
            shutil.rmtree(aside)
        else:
            os.replace(aside, final)
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save_head(
    store: Store,
    name: str,
    estimator: BaseHead,
    meta: dict[str, Any],
    report: dict[str, Any],
    *,
    extras: Callable[[Path], Any] | None = None,
    catalog_rows: Callable[[], Any] | None = None,
    provenance: Provenance | None = None,
) -> Path:
    """Write a head's folder atomically and register it (replacing one of that name).

    Args:
        store: The store.
        name: Head name.
        estimator: The fitted head (one of :data:`HEAD_CLASSES`).
        meta: What it was trained on; must hold ``kind`` (and ``model``, ``label``;
            ``weights_sha256`` is filled in from :func:`weights_of` when absent).
        report: Its evaluation report (JSON-able after numpy conversion).
        extras: Called with the (temporary) folder to write more files into it
            (``confusion.png``) before it is renamed into place.
        catalog_rows: Called inside the transaction that writes the head's row,
            to commit the head's other rows (out-of-fold predictions) with it.
        provenance: The cells it was fit on and its predictions
            (:meth:`~cytostore.heads.provenance.OutOfFold.finish`): writes
            ``train_ids.npy`` and head.json's ``training``, and replaces the
            head's ``predictions`` rows in the same transaction.

    Returns:
        The head's folder.

    Raises:
        InvalidArgumentError: If the name is invalid or the estimator is not a head.
        OSError: If a file cannot be written (the previous head stays in place).
    """
    final = head_dir(store, name)
    if type(estimator).__name__ not in HEAD_CLASSES:
        raise InvalidArgumentError(
            f"cannot save a {type(estimator).__name__}: heads are one of "
            f"{sorted(HEAD_CLASSES)}"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    _tidy(final)
    if "weights_sha256" not in meta:
        meta = meta | {"weights_sha256": weights_of(store, meta.get("model"))}
    arrays, state = estimator.get_state()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    try:
        with open(tmp / _ARRAYS, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        if provenance is not None:
            meta = meta | {"training": provenance.save(tmp)}
        doc = jsonable(
            meta
            | {
                "name": name,
                "format": HEAD_FORMAT,
                "estimator": state,
                "arrays_sha256": _sha256(tmp / _ARRAYS),
            }
        )
        _write_file(tmp / _META, json.dumps(doc, indent=2).encode())
        report_doc = json.dumps(jsonable(report), indent=2, ensure_ascii=False)
        _write_file(tmp / "report.json", report_doc.encode())
        if extras is not None:
            extras(tmp)
            for path in tmp.iterdir():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        fault_point("head.written")
        old = _aside(final)
        if final.exists():
            os.replace(final, old)
            fault_point("head.aside")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    fault_point("head.in_place")
    with store.transaction():
        if catalog_rows is not None:
            catalog_rows()
        if provenance is not None:
            provenance.write_rows(store, name)
        write_head_row(
            store,
            name=name,
            kind=meta["kind"],
            model=meta.get("model"),
            label=meta.get("label"),
            path=f"{HEADS_DIR}/{name}",
            report=report_doc,
            weights_sha256=meta["weights_sha256"],
        )
        record_tree(store, f"{HEADS_DIR}/{name}", "head", name)
    fault_point("head.registered")
    shutil.rmtree(old, ignore_errors=True)
    return final


def list_heads(store: Store) -> list[dict[str, Any]]:
    """Return the ``heads`` rows (name, kind, model, label, path, created_at)."""
    return store.sql(
        "SELECT name, kind, model, label, path, created_at FROM heads ORDER BY name"
    ).dicts()


def load_head(
    store: Store, name: str, *, check_weights: bool = True
) -> tuple[BaseHead, dict[str, Any]]:
    """Return a saved head and its metadata; nothing is unpickled.

    Args:
        store: The store.
        name: Head name.
        check_weights: Refuse the head if the embeddings of its model now come
            from other weights than it was trained on.

    Returns:
        ``(estimator, meta)``.

    Raises:
        UnknownHeadError: If no head of that name is registered.
        PickledHeadError: If the folder holds only a pickled head of an older
            cytostore (it is not loaded: a pickle can run code).
        StoreCorruptError: If its folder lies outside the store, or its files are
            missing, altered or inconsistent.
        StaleHeadError: If ``check_weights`` and the model's weights changed.
    """
    rows = store.sql(
        "SELECT path, kind, model, label FROM heads WHERE name = ?", [name]
    )
    if not rows.rows:
        raise UnknownHeadError.for_name(
            "head",
            name,
            [h["name"] for h in list_heads(store)],
            "list them with 'cytostore ls STORE heads', or train one with "
            "'cytostore probe' or 'cytostore mil'",
            where=str(store.root),
        )
    path, kind, model, label = rows.rows[0]
    folder = resolve_inside(store.root, path, what=f"head {name!r} folder")
    if not folder.is_dir() and _aside(folder).is_dir():
        folder = _aside(folder)  # a save crashed between its two renames
    row_meta = {"kind": kind, "model": model, "label": label}
    meta = _read_meta(store, name, folder, row_meta)
    estimator = _read_estimator(store, name, folder, meta)
    if check_weights:
        _check_weights(store, name, meta)
    return estimator, meta


def _file(store: Store, folder: Path, file: str, name: str) -> Path:
    rel = (folder / file).relative_to(store.root.resolve())
    return resolve_inside(store.root, rel, what=f"head {name!r} file")


def _read_meta(
    store: Store, name: str, folder: Path, row_meta: dict[str, Any]
) -> dict[str, Any]:
    meta_path = _file(store, folder, _META, name)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        meta = None
    except (OSError, ValueError) as exc:
        raise StoreCorruptError(
            f"head {name!r}: {meta_path} is unreadable ({type(exc).__name__}): "
            f"retrain it: {retrain_command(store, name, row_meta)}"
        ) from None
    if not isinstance(meta, dict):
        meta = None
    has_arrays = _file(store, folder, _ARRAYS, name).is_file()
    if not has_arrays and _file(store, folder, _PICKLE, name).exists():
        raise PickledHeadError(
            f"head {name!r} was saved by an older cytostore as a pickle "
            f"({folder / _PICKLE}), which is no longer loaded because a pickle can "
            "run code: retrain it with "
            f"{retrain_command(store, name, meta or row_meta)}"
        )
    if meta is None or not has_arrays:
        missing = _META if meta is None else _ARRAYS
        raise StoreCorruptError(
            f"head {name!r} is registered but {folder / missing} is missing: "
            f"retrain it with {retrain_command(store, name, meta or row_meta)}"
        )
    if meta.get("format") != HEAD_FORMAT:
        raise StoreCorruptError(
            f"head {name!r}: {meta_path} has format {meta.get('format')!r}, not "
            f"{HEAD_FORMAT!r}: retrain it with {retrain_command(store, name, meta)}"
        )
    return meta


def _read_estimator(
    store: Store, name: str, folder: Path, meta: dict[str, Any]
) -> BaseHead:
    arrays_path = _file(store, folder, _ARRAYS, name)
    fix = f"retrain it with {retrain_command(store, name, meta)}"
    if _sha256(arrays_path) != meta.get("arrays_sha256"):
        raise StoreCorruptError(
            f"head {name!r}: {arrays_path} differs from the sha256 recorded in "
            f"{_META} (altered or replaced): {fix}"
        )
    state = meta.get("estimator")
    cls = HEAD_CLASSES.get(str(state.get("class"))) if isinstance(state, dict) else None
    if cls is None or not isinstance(state, dict):
        raise StoreCorruptError(
            f"head {name!r}: {_META} names no known head class "
            f"({sorted(HEAD_CLASSES)}): {fix}"
        )
    try:
        arrays = _read_arrays(arrays_path)
        return cls.from_state(arrays, state)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreCorruptError(
            f"head {name!r}: its files do not describe a {cls.__name__} ({reason}): "
            f"{fix}"
        ) from None


def _read_arrays(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Read ``head.npz`` with ``allow_pickle=False`` (object arrays are refused).

    Raises:
        ValueError: If it is not an ``.npz`` of arrays (e.g. a pickle).
    """
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive of arrays")
    with data:
        return {key: np.asarray(data[key]) for key in data.files}


def _check_weights(store: Store, name: str, meta: dict[str, Any]) -> None:
    trained = meta.get("weights_sha256")
    if not trained:
        return
    now = weights_of(store, meta.get("model"))
    if now and now != trained:
        raise StaleHeadError(
            f"head {name!r} was trained on embeddings of model "
            f"{meta.get('model')!r} with weights sha256 {str(trained)[:12]}, but "
            f"they now come from weights {now[:12]}: retrain the head with "
            f"{retrain_command(store, name, meta)}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
