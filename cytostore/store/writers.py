"""Named-column writers of the tables that the upper floors fill (models, heads, ...).

``store`` owns every catalog table: ``embedder`` and ``heads`` write their rows only
through these functions, never with SQL of their own. Each names its columns
(``INSERT INTO t (a, b, ...) SELECT a, b, ... FROM rows``), so a later migration that
adds a column cannot break it. Each runs in one transaction, or joins the caller's
(``with store.transaction(): write_attention(...); write_head_row(...)`` commits
both or neither).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "write_model_row",
    "delete_model_row",
    "write_head_row",
    "delete_head_row",
    "write_predictions",
    "write_patient_predictions",
    "write_attention",
]

Column = Sequence[Any] | npt.NDArray[Any]


def _as_list(values: Column) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _insert_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: dict[str, Column],
    computed: dict[str, str] | None = None,
    *,
    replace: bool = False,
) -> int:
    """Insert column-wise rows into ``table`` by column name, through an Arrow table.

    Args:
        con: A connection inside the caller's transaction.
        table: A fixed table name of the schema (never user input).
        columns: ``{column: values}``, all of one length.
        computed: ``{column: SQL expression}`` filled in by the database (``now()``).
        replace: ``INSERT OR REPLACE`` (rows with the same primary key are replaced).

    Returns:
        The number of rows inserted.

    Raises:
        InvalidArgumentError: If the columns differ in length.
    """
    import pyarrow as pa

    lists = {k: _as_list(v) for k, v in columns.items()}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise InvalidArgumentError(
            f"rows for {table} have columns of different lengths "
            f"({ {k: len(v) for k, v in lists.items()} }): pass one value per row"
        )
    n = lengths.pop() if lengths else 0
    if n == 0:
        return 0
    view = f"_cytostore_rows_{table}"
    con.register(view, pa.table(lists))
    try:
        extra = computed or {}
        cols = ", ".join(f'"{c}"' for c in [*lists, *extra])
        values = ", ".join([*(f'"{c}"' for c in lists), *extra.values()])
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        con.execute(f"{verb} INTO {table} ({cols}) SELECT {values} FROM {view}")
    finally:
        con.unregister(view)
    return n


def _repeat(value: Any, n: int) -> list[Any]:
    return [value] * n


def write_model_row(
    store: Store,
    *,
    name: str,
    method: str,
    backbone: str,
    dim: int,
    path: str,
    sha256: str | None,
    card: str,
    created_at: _dt.datetime | None = None,
) -> None:
    """Write (or replace) the ``models`` row of a registered model.

    Args:
        store: The store.
        name: Model name (primary key).
        method: Training method (``dino``, ``none``, ...).
        backbone: Backbone name.
        dim: Embedding width.
        path: The model's folder, relative to the store (``models/<name>``).
        sha256: sha256 of its weights file.
        card: The model card, as a JSON document.
        created_at: Registration time (naive UTC; ``None``: now).
    """
    with store.transaction() as con:
        con.execute("DELETE FROM models WHERE name = ?", [name])
        _insert_columns(
            con,
            "models",
            {
                "name": [name],
                "method": [method],
                "backbone": [backbone],
                "dim": [int(dim)],
                "path": [path],
                "sha256": [sha256],
                "card": [card],
                "created_at": [created_at or _now()],
            },
        )


def delete_model_row(store: Store, name: str) -> None:
    """Remove the ``models`` row of ``name`` (nothing if there is none)."""
    with store.transaction() as con:
        con.execute("DELETE FROM models WHERE name = ?", [name])


def write_head_row(
    store: Store,
    *,
    name: str,
    kind: str,
    model: str | None,
    label: str | None,
    path: str,
    report: str,
    weights_sha256: str | None = None,
) -> None:
    """Write (or replace) the ``heads`` row of a saved head; ``created_at`` is now.

    Args:
        store: The store.
        name: Head name (primary key).
        kind: ``linear``, ``knn``, ``mlp`` or ``abmil``.
        model: The model (or embedding set) whose vectors it was trained on.
        label: The label column it predicts.
        path: Its folder, relative to the store (``heads/<name>``).
        report: Its evaluation report, as a JSON document.
        weights_sha256: sha256 of the weights of that model (``None``: unknown).
    """
    with store.transaction() as con:
        _insert_columns(
            con,
            "heads",
            {
                "name": [name],
                "kind": [kind],
                "model": [None if model is None else str(model)],
                "label": [label],
                "path": [path],
                "report": [report],
                "weights_sha256": [weights_sha256],
            },
            computed={"created_at": "now()"},
            replace=True,
        )


def delete_head_row(store: Store, name: str) -> None:
    """Remove the ``heads`` row of ``name`` and its predictions and attention rows."""
    with store.transaction() as con:
        con.execute("DELETE FROM heads WHERE name = ?", [name])
        for table in ("predictions", "patient_predictions", "attention"):
            con.execute(f"DELETE FROM {table} WHERE head = ?", [name])


def write_predictions(
    store: Store,
    *,
    head: str,
    cell_id: Column,
    label: Column,
    probability: Column,
    probabilities: Column,
    in_training: Column | None = None,
    fold: Column | None = None,
    train_similarity: Column | None = None,
    out_of_distribution: Column | None = None,
    replace_head: bool = False,
) -> int:
    """Write (or replace) one ``predictions`` row per cell; ``predicted_at`` is now.

    Args:
        store: The store.
        head: The head that predicted.
        cell_id: int64 (n,) cell ids.
        label: (n,) predicted labels.
        probability: (n,) probability of the predicted label.
        probabilities: (n,) JSON documents ``{class: probability}``.
        in_training: (n,) whether the cell is in the saved head's training data
            (``None``: NULL, unknown).
        fold: (n,) the cross-validation fold whose model predicted the cell while
            holding it out (``None`` or a NULL value: the saved head predicted it).
        train_similarity: (n,) similarity of the cell to its nearest training cell
            of the head, itself excluded (``None``: NULL, not computed).
        out_of_distribution: (n,) whether the cell lies outside the head's
            training data (``None``: NULL, not computed).
        replace_head: Delete every earlier row of ``head`` first.

    Returns:
        The number of rows written.

    Raises:
        InvalidArgumentError: If the columns differ in length.
    """
    ids = _as_list(cell_id)
    n = len(ids)

    def _or_null(values: Column | None) -> Column:
        return _repeat(None, n) if values is None else values

    with store.transaction() as con:
        if replace_head:
            con.execute("DELETE FROM predictions WHERE head = ?", [head])
        return _insert_columns(
            con,
            "predictions",
            {
                "cell_id": ids,
                "head": _repeat(head, n),
                "label": label,
                "probability": probability,
                "probabilities": probabilities,
                "in_training": _or_null(in_training),
                "fold": _or_null(fold),
                "train_similarity": _or_null(train_similarity),
                "out_of_distribution": _or_null(out_of_distribution),
            },
            computed={"predicted_at": "now()"},
            replace=True,
        )


def write_patient_predictions(
    store: Store,
    *,
    head: str,
    dataset: Column,
    patient_id: Column,
    label: Column,
    probability: Column,
    probabilities: Column,
    fold: Column | None = None,
    true_label: Column | None = None,
    replace_head: bool = False,
) -> int:
    """Write (or replace) one ``patient_predictions`` row per patient.

    Args:
        store: The store.
        head: The MIL head that predicted.
        dataset: (n,) dataset of each patient.
        patient_id: (n,) patient (bag) ids.
        label: (n,) predicted labels.
        probability: (n,) probability of the predicted label.
        probabilities: (n,) JSON documents ``{class: probability}``.
        fold: (n,) out-of-fold test fold (``None``: NULL, a prediction on new
            patients).
        true_label: (n,) known labels (``None``: NULL).
        replace_head: Delete every earlier row of ``head`` first.

    Returns:
        The number of rows written.

    Raises:
        InvalidArgumentError: If the columns differ in length.
    """
    pids = _as_list(patient_id)
    n = len(pids)
    with store.transaction() as con:
        if replace_head:
            con.execute("DELETE FROM patient_predictions WHERE head = ?", [head])
        return _insert_columns(
            con,
            "patient_predictions",
            {
                "dataset": dataset,
                "patient_id": pids,
                "head": _repeat(head, n),
                "label": label,
                "probability": probability,
                "probabilities": probabilities,
                "fold": _repeat(None, n) if fold is None else fold,
                "true_label": _repeat(None, n) if true_label is None else true_label,
            },
            computed={"predicted_at": "now()"},
            replace=True,
        )


def write_attention(
    store: Store,
    *,
    head: str,
    cell_id: Column,
    dataset: Column,
    patient_id: Column,
    attention: Column,
    fold: Column,
    replace_head: bool = True,
) -> int:
    """Write one ``attention`` row per cell of a MIL head.

    Args:
        store: The store.
        head: The MIL head.
        cell_id: int64 (n,) cell ids.
        dataset: (n,) dataset of each cell's patient.
        patient_id: (n,) the cell's patient (bag).
        attention: (n,) attention weight of the cell in its bag.
        fold: (n,) fold whose model gave the weight.
        replace_head: Delete every earlier row of ``head`` first.

    Returns:
        The number of rows written.

    Raises:
        InvalidArgumentError: If the columns differ in length.
    """
    ids = _as_list(cell_id)
    with store.transaction() as con:
        if replace_head:
            con.execute("DELETE FROM attention WHERE head = ?", [head])
        return _insert_columns(
            con,
            "attention",
            {
                "cell_id": ids,
                "head": _repeat(head, len(ids)),
                "dataset": dataset,
                "patient_id": patient_id,
                "attention": attention,
                "fold": fold,
            },
            replace=True,
        )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None, microsecond=0)
