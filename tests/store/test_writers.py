"""Named-column writers: rows land by column name, whatever columns a table gains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cytostore.errors import InvalidArgumentError
from cytostore.store import (
    Store,
    delete_model_row,
    write_attention,
    write_head_row,
    write_model_row,
    write_patient_predictions,
    write_predictions,
)

TABLES = ("models", "heads", "predictions", "patient_predictions", "attention")


def _write_all(store: Store) -> None:
    write_model_row(
        store,
        name="m",
        method="none",
        backbone="tiny",
        dim=8,
        path="models/m",
        sha256="a" * 64,
        card="{}",
    )
    write_head_row(
        store,
        name="h",
        kind="abmil",
        model="m",
        label="bag_label",
        path="heads/h",
        report=json.dumps({"accuracy": 1.0}),
        weights_sha256="a" * 64,
    )
    write_predictions(
        store,
        head="h",
        cell_id=np.array([1, 2], np.int64),
        label=["x", "y"],
        probability=np.array([0.9, 0.6]),
        probabilities=['{"x": 0.9}', '{"y": 0.6}'],
    )
    write_patient_predictions(
        store,
        head="h",
        dataset=["d"],
        patient_id=["P1"],
        label=["x"],
        probability=[0.8],
        probabilities=['{"x": 0.8}'],
        fold=[0],
        true_label=["x"],
    )
    write_attention(
        store,
        head="h",
        cell_id=[1, 2],
        dataset=["d", "d"],
        patient_id=["P1", "P1"],
        attention=[0.25, 0.75],
        fold=[0, 0],
    )


@pytest.mark.parametrize("add_column", [True, False], ids=["new_column", "as_created"])
def test_writers__rows_land_by_name_even_after_a_new_column(
    tmp_store: Store, add_column: bool
) -> None:
    if add_column:  # what a later migration may do
        with tmp_store.transaction() as con:
            for table in TABLES:
                con.execute(f"ALTER TABLE {table} ADD COLUMN later VARCHAR")
    _write_all(tmp_store)
    assert tmp_store.sql("SELECT name, dim, sha256 FROM models").rows == [
        ("m", 8, "a" * 64)
    ]
    assert tmp_store.sql(
        "SELECT name, kind, model, weights_sha256 FROM heads"
    ).rows == [("h", "abmil", "m", "a" * 64)]
    assert tmp_store.sql(
        "SELECT cell_id, label, probability FROM predictions ORDER BY 1"
    ).rows == [(1, "x", 0.9), (2, "y", 0.6)]
    assert tmp_store.sql(
        "SELECT patient_id, label, fold, true_label FROM patient_predictions"
    ).rows == [("P1", "x", 0, "x")]
    assert tmp_store.sql(
        "SELECT cell_id, attention FROM attention ORDER BY 1"
    ).rows == [(1, 0.25), (2, 0.75)]


def test_writers__replace_head_rows_and_delete_model(tmp_store: Store) -> None:
    _write_all(tmp_store)
    write_attention(
        tmp_store,
        head="h",
        cell_id=[3],
        dataset=["d"],
        patient_id=["P2"],
        attention=[1.0],
        fold=[1],
    )
    assert tmp_store.sql("SELECT cell_id FROM attention").rows == [(3,)]
    write_predictions(
        tmp_store,
        head="h",
        cell_id=[2],
        label=["x"],
        probability=[0.7],
        probabilities=["{}"],
    )
    assert tmp_store.sql("SELECT cell_id, label FROM predictions ORDER BY 1").rows == [
        (1, "x"),
        (2, "x"),
    ]
    delete_model_row(tmp_store, "m")
    assert tmp_store.sql("SELECT count(*) FROM models").rows == [(0,)]


def test_writers__join_the_callers_transaction(tmp_store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), tmp_store.transaction():
        _write_all(tmp_store)
        raise RuntimeError("boom")
    for table in TABLES:
        assert tmp_store.sql(f"SELECT count(*) FROM {table}").rows == [(0,)]


def test_writers__columns_of_different_lengths_are_refused(tmp_store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="different lengths"):
        write_predictions(
            tmp_store,
            head="h",
            cell_id=[1, 2],
            label=["x"],
            probability=[0.5, 0.5],
            probabilities=["{}", "{}"],
        )
