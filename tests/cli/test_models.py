from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.embedder import register_model, register_random_model
from cytostore.embedder.backbones import build_backbone
from cytostore.embedder.preprocess import Preprocessing
from cytostore.store import Store


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    store = Store.create(tmp_path / "s")
    register_random_model(store, "baseline", crop_px=64, seed=0)
    register_model(
        store,
        "simclr",
        build_backbone("tiny", seed=1)[0],
        {
            "method": "simclr",
            "backbone": "tiny",
            "preprocessing": Preprocessing(um_per_px=0.25, crop_px=96),
            "epochs": 3,
            "final_loss": 4.25,
            "knn_monitor": {"accuracy": 0.625, "k": 5},
        },
    )
    return store.root


def test_models_cli__table(model_store: Path) -> None:
    result = CliRunner().invoke(main, ["models", str(model_store)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
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
    ]
    assert lines[2].split()[:7] == [
        "baseline",
        "none",
        "tiny",
        "128",
        "64",
        "0.375",
        "0",
    ]
    assert lines[3].split()[:9] == [
        "simclr",
        "simclr",
        "tiny",
        "128",
        "96",
        "0.25",
        "3",
        "4.25",
        "0.625",
    ]
    assert result.stderr == "2 models\n"


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_models_cli__json_has_cards(model_store: Path, fmt: str) -> None:
    result = CliRunner().invoke(main, ["models", str(model_store), "--format", fmt])
    assert result.exit_code == 0, result.output
    text = result.stdout
    docs = (
        json.loads(text)
        if fmt == "json"
        else [json.loads(x) for x in text.splitlines()]
    )
    assert [d["name"] for d in docs] == ["baseline", "simclr"]
    assert docs[1]["knn_accuracy"] == 0.625
    assert (
        docs[1]["card"]["preprocessing"]["prep_id"]
        == Preprocessing(um_per_px=0.25, crop_px=96).prep_id
    )
    assert len(docs[0]["card"]["sha256"]) == 64


def test_models_cli__empty_store_and_missing_store(tmp_path: Path) -> None:
    Store.create(tmp_path / "empty")
    result = CliRunner().invoke(
        main, ["models", str(tmp_path / "empty"), "--format", "json"]
    )
    assert result.exit_code == 0
    assert result.stdout == "[]\n"
    result = CliRunner().invoke(main, ["models", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "no store at" in result.output
