"""Embedded cells with their catalog columns, row-aligned: what heads and curation read.

One loader serves every upper floor that learns from or ranks a set's vectors (the
heads' probe, MIL, compare and explain; curation's audit and select), so they
agree on row order, dtype, which cells are dropped and what counts as unset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import EmptySelectionError, StoreCorruptError

if TYPE_CHECKING:
    from cytostore.store.store import Store

__all__ = ["MISSING_TEXTS", "Cells", "is_missing", "load_cells"]

#: Texts (trimmed, any case) that mean "no value" in a catalog column.
MISSING_TEXTS = frozenset({"", "nan", "none", "null", "na", "n/a"})


def is_missing(value: Any) -> bool:
    """Return whether a catalog value counts as unset.

    Unset is ``None``, a float NaN, or a text in :data:`MISSING_TEXTS` once trimmed
    and lower-cased (``" NA "``, ``"n/a"``, ``"None"``). Hand-written because
    ``pandas.isna`` knows no missing-value texts and this floor has no pandas.

    Examples:
        >>> [is_missing(v) for v in (None, float("nan"), " NA ", "BLA", 0)]
        [True, True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float):
        return bool(np.isnan(value))
    return str(value).strip().lower() in MISSING_TEXTS


@dataclass
class Cells:
    """Embedded cells with ``cell_meta`` columns, row-aligned.

    Attributes:
        ids: int64 ``(n,)`` cell ids, in the set's row order.
        X: ``(n, dim)`` vectors in the stored dtype (float32 or float16).
        meta: ``{column: object array (n,)}``, the catalog values as DuckDB
            returns them (``None`` where unset).

    Examples:
        >>> import numpy as np
        >>> cells = Cells(
        ...     np.array([4, 7, 9]), np.eye(3, dtype=np.float32),
        ...     {"label": np.array(["BAS", None, "EOS"], dtype=object)},
        ... )
        >>> sub = cells.take(np.array([2, 0]))
        >>> len(sub), sub.ids.tolist(), sub.meta["label"].tolist()
        (2, [9, 4], ['EOS', 'BAS'])
    """

    ids: npt.NDArray[np.int64]
    X: npt.NDArray[Any]
    meta: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def take(self, rows: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> Cells:
        """Return the chosen rows (indices, in their order, or a boolean mask)."""
        return Cells(
            self.ids[rows], self.X[rows], {k: v[rows] for k, v in self.meta.items()}
        )

    def __len__(self) -> int:
        return int(self.ids.size)


def load_cells(
    store: Store,
    model: str | int | None = None,
    where: str | None = None,
    columns: Sequence[str | None] = (),
) -> Cells:
    """Return the vectors of ``model`` for the cells ``where`` selects, with columns.

    Cells without a vector in the set are not returned; no row is dropped for an
    unset column value (test each with :func:`is_missing`).

    Args:
        store: The store.
        model: Model name or embedding-set id (``None``: the store's only set).
        where: SQL filter over ``cell_meta``, run in the sandbox (``None``: every
            embedded cell).
        columns: ``cell_meta`` columns to return in ``meta`` (``None`` entries and
            repeats are left out).

    Returns:
        The :class:`Cells`, in the set's row order: ``X`` as the set stores it (a
        read-only memory map when ``where`` is ``None``).

    Raises:
        InvalidArgumentError: If a column name is not a plain identifier (or empty).
        UnknownColumnError: If a column is not in ``cell_meta``.
        InvalidWhereError: If ``where`` is invalid.
        EmptySelectionError: If no embedded cell matches.
        UnknownEmbeddingSetError: If the model has no vectors.
        StoreCorruptError: If the set holds vectors of cells the catalog lacks.

    Examples:
        >>> import tempfile, numpy as np
        >>> from cytostore.store import Store
        >>> store = Store.create(tempfile.mkdtemp() + "/s")
        >>> ids = store.add_cells([
        ...     {"dataset": "d", "path": f"{i}.tif", "label": lab}
        ...     for i, lab in enumerate(["BAS", "", "EOS"])
        ... ])
        >>> with store.vector_writer(store.create_embedding_set("m", 2)) as w:
        ...     _ = w.append(ids[::-1], np.eye(3, 2))
        >>> cells = load_cells(store, "m", "label <> 'EOS'", ["label"])
        >>> cells.ids.tolist(), cells.meta["label"].tolist(), cells.X.dtype.name
        ([2, 1], ['', 'BAS'], 'float32')
        >>> [is_missing(v) for v in cells.meta["label"]]
        [True, False]
    """
    cols = list(dict.fromkeys(c for c in columns if c is not None))
    store.require_columns(cols)
    ids, X = store.vectors(model, where)
    if ids.size == 0:
        raise EmptySelectionError(
            f"--where {where!r} selects no embedded cell"
            if where
            else "the set holds no vectors: embed cells first ('cytostore embed')"
        )
    ids = np.asarray(ids, dtype=np.int64)
    # The filter ran once, in vectors(); cell_meta returns rows in the order of ids.
    rows = store.cell_meta(ids, ["cell_id", *cols]).rows
    found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not np.array_equal(found, ids):
        raise StoreCorruptError(
            "the set holds vectors of cells the catalog lacks "
            f"({ids.size - np.isin(ids, found).sum()} of {ids.size}): run "
            "'cytostore verify STORE'"
        )
    meta = {
        c: np.fromiter((r[j] for r in rows), dtype=object, count=len(rows))
        for j, c in enumerate(cols, start=1)
    }
    return Cells(ids, X, meta)
