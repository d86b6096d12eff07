"""ls: models, sets, heads and tables with counts and disk use."""

from __future__ import annotations

from pathlib import Path

import pytest

from cytostore.errors import InvalidArgumentError
from cytostore.store import Store
from cytostore.store.inventory import GROUPS, ls


def test_ls__sets_count_rows_and_disk_bytes(vec_store: Store) -> None:
    (row,) = ls(vec_store, "sets")["sets"]
    files = [vec_store.root / "vectors" / "1.f32", vec_store.root / "vectors" / "1.ids"]
    files.append(vec_store.root / "indexes" / "1.faiss")
    assert row["name"] == "m" and row["dim"] == 16 and row["dtype"] == "float32"
    assert (row["rows"], row["indexed"], row["index"]) == (300, 300, "Flat")
    assert row["disk_bytes"] == sum(p.stat().st_size for p in files)


def test_ls__all_groups_and_table_counts(vec_store: Store) -> None:
    groups = ls(vec_store)
    assert tuple(groups) == GROUPS
    tables = {r["table"]: r["rows"] for r in groups["tables"]}
    assert tables["cells"] == 300 and tables["embedding_sets"] == 1
    assert tables["files"] == 3
    assert groups["models"] == [] and groups["heads"] == []


def test_ls__models_read_card_and_size_folder(embedded_store: Path) -> None:
    (model,) = ls(Store.open(embedded_store), "models")["models"]
    folder = embedded_store / "models" / "random-tiny"
    assert (model["name"], model["method"], model["crop_px"]) == (
        "random-tiny",
        "none",
        32,
    )
    assert model["disk_bytes"] == sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file()
    )
    assert (
        model["card"]["sha256"]
        == Store.open(embedded_store).sql("SELECT sha256 FROM models").rows[0][0]
    )


def test_ls__model_folder_outside_the_store_has_no_size(vec_store: Store) -> None:
    with vec_store.transaction() as con:
        con.execute(
            "INSERT INTO models (name, method, backbone, dim, path) "
            "VALUES ('evil', 'none', 'tiny', 16, '/etc')"
        )
    assert ls(vec_store, "models")["models"][0]["disk_bytes"] is None


def test_ls__unknown_group(vec_store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="choose one of models, sets"):
        ls(vec_store, "cells")
