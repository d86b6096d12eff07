"""Paths read from a catalog must stay inside their root: the store or a dataset folder.

A catalog copied from someone else may hold absolute paths, ``..`` or symlinks that
lead out; every path read from it goes through :func:`resolve_inside` before use.
"""

from __future__ import annotations

import os
from pathlib import Path

from cytostore.errors import StoreCorruptError

__all__ = ["resolve_inside", "is_inside"]


def is_inside(root: str | os.PathLike[str], rel: str | os.PathLike[str]) -> bool:
    """Return whether ``root / rel`` resolves (symlinks followed) inside ``root``."""
    try:
        resolve_inside(root, rel)
    except StoreCorruptError:
        return False
    return True


def resolve_inside(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], what: str = "path"
) -> Path:
    """Return ``root / rel`` resolved, refusing anything that leads outside ``root``.

    Args:
        root: The folder the path must stay in (the store, or a dataset's root).
        rel: A relative path as recorded in the catalog.
        what: What the path is, for the message (e.g. ``"head 'h' folder"``).

    Returns:
        The resolved absolute path (it need not exist).

    Raises:
        StoreCorruptError: If ``rel`` is absolute, empty, holds a NUL, or resolves
            (after ``..`` and symlinks) outside ``root``.
    """
    text = os.fspath(rel)
    base = Path(root).resolve()
    if not text or "\0" in text or os.path.isabs(text):
        raise StoreCorruptError(
            f"the catalog's {what} {text!r} is not a relative path inside {base}: "
            "this store was altered or copied wrongly; run 'cytostore verify' on it"
        )
    full = (base / text).resolve()
    if full != base and base not in full.parents:
        raise StoreCorruptError(
            f"the catalog's {what} {text!r} leads outside {base} (to {full}): "
            "refused; run 'cytostore verify' on the store"
        )
    return full
