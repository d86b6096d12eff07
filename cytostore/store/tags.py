"""Tags: free-text labels people put on cells (``tags`` table, ``cell_meta.tags``).

A tag is a short string (``review``, ``auer-rod``, ``excluded:blurry``) attached to a
cell; ``cell_meta`` shows each cell's tags as a sorted list column, so filters read
``list_contains(tags, 'review')``. The store owns the table: the web page, curation
and ``cytostore tag`` all write through :func:`add_tags` and :func:`remove_tags`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["tag", "add_tags", "remove_tags", "check_tag", "MAX_TAG_CHARS"]

#: The longest tag accepted.
MAX_TAG_CHARS = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_tag(tag: str) -> str:
    """Return ``tag`` stripped, if it is a usable tag.

    Raises:
        InvalidArgumentError: If it is empty, longer than :data:`MAX_TAG_CHARS`
            characters or holds control characters.

    Examples:
        >>> check_tag(" review ")
        'review'
    """
    text = tag.strip()
    if not text or len(text) > MAX_TAG_CHARS or _CONTROL.search(text):
        raise InvalidArgumentError(
            f"tag {tag!r} is not usable: give 1 to {MAX_TAG_CHARS} printable "
            "characters, e.g. 'review' or 'excluded:blurry'"
        )
    return text


def _selection(
    store: Store, where: str | None, ids: Sequence[int] | None
) -> npt.NDArray[np.int64]:
    if where is None and ids is None:
        raise InvalidArgumentError(
            "say which cells to tag: a --where filter (e.g. \"label = 'BLA'\") or ids"
        )
    if ids is None:
        return store.where_ids(where, empty_ok=True)
    arr = np.unique(np.asarray(ids, dtype=np.int64))
    # Look up just these ids (the web page tags a handful of cells at a time).
    found = np.asarray(store.cell_meta(arr, ["cell_id"]).column("cell_id"), np.int64)
    unknown = arr[~np.isin(arr, found)]
    if unknown.size:
        raise InvalidArgumentError(
            f"unknown cell ids {unknown[:5].tolist()}: list ids with "
            "'cytostore sql STORE \"SELECT cell_id FROM cells\"'"
        )
    if where is None:
        return arr
    return np.intersect1d(store.where_ids(where, empty_ok=True), arr)


def tag(
    store: Store,
    where: str | None,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    *,
    ids: Sequence[int] | None = None,
) -> dict[str, int]:
    """Add and remove tags on the cells ``where`` (and/or ``ids``) selects.

    The filter is evaluated before the write opens; both changes commit in one
    transaction. A tag a cell already has is left as it is (its ``created_at`` is
    kept); a tag to add that is also to remove is removed.

    Args:
        store: The store.
        where: SQL filter over ``cell_meta`` (``None`` with ``ids``: just those).
        add: Tags to attach.
        remove: Tags to take off.
        ids: Cell ids (intersected with ``where`` when both are given).

    Returns:
        ``{"cells": selected cells, "added": pairs added, "removed": pairs removed}``.

    Raises:
        InvalidArgumentError: If a tag is unusable, no tag is given, nothing says
            which cells, or an id is unknown.
        InvalidWhereError: If ``where`` is not a valid filter.
    """
    import pyarrow as pa

    to_remove = sorted({check_tag(t) for t in remove})
    to_add = sorted({check_tag(t) for t in add} - set(to_remove))
    if not to_add and not to_remove:
        raise InvalidArgumentError("give a tag to add (--add TAG) or remove (--remove)")
    chosen = _selection(store, where, ids)
    report = {"cells": int(chosen.size), "added": 0, "removed": 0}
    if chosen.size == 0:
        return report
    cells = pa.table({"cell_id": pa.array(chosen, pa.int64())})
    with store.transaction() as con:
        con.register("_chosen_cells", cells)
        try:
            # DuckDB answers an INSERT or DELETE with the number of rows it changed
            # (rows skipped by ON CONFLICT DO NOTHING are not counted).
            report["added"] = _changed(
                con.execute(
                    "INSERT INTO tags (cell_id, tag, created_at) "
                    "SELECT c.cell_id, t.tag, now() FROM _chosen_cells c "
                    "CROSS JOIN (SELECT unnest(?::VARCHAR[]) AS tag) t "
                    "ON CONFLICT DO NOTHING",
                    [to_add],
                )
            )
            report["removed"] = _changed(
                con.execute(
                    "DELETE FROM tags WHERE tag IN (SELECT unnest(?::VARCHAR[])) "
                    "AND cell_id IN (SELECT cell_id FROM _chosen_cells)",
                    [to_remove],
                )
            )
        finally:
            con.unregister("_chosen_cells")
    return report


def _changed(cur: duckdb.DuckDBPyConnection) -> int:
    row = cur.fetchone()
    return int(row[0]) if row else 0


def add_tags(
    store: Store,
    where: str | None,
    tags: Sequence[str],
    *,
    ids: Sequence[int] | None = None,
) -> int:
    """Attach ``tags`` to every cell selected by ``where`` (and/or ``ids``).

    Returns:
        The number of (cell, tag) pairs added; see :func:`tag`.

    Raises:
        InvalidArgumentError, InvalidWhereError: See :func:`tag`.
    """
    if not tags:
        raise InvalidArgumentError("give at least one tag to add (--add TAG)")
    return tag(store, where, add=tags, ids=ids)["added"]


def remove_tags(
    store: Store,
    where: str | None,
    tags: Sequence[str],
    *,
    ids: Sequence[int] | None = None,
) -> int:
    """Remove ``tags`` from every cell selected by ``where`` (and/or ``ids``).

    Returns:
        The number of (cell, tag) pairs removed; see :func:`tag`.

    Raises:
        InvalidArgumentError, InvalidWhereError: See :func:`tag`.
    """
    if not tags:
        raise InvalidArgumentError("give at least one tag to remove (--remove TAG)")
    return tag(store, where, remove=tags, ids=ids)["removed"]
