from __future__ import annotations

import hashlib
import json

import pytest
import torch

from cytostore.embedder import (
    ModelCard,
    Preprocessing,
    build_backbone,
    list_models,
    load_card,
    register_model,
    register_random_model,
)
from cytostore.embedder.registry import delete_model
from cytostore.errors import InvalidArgumentError, UnknownModelError
from cytostore.store import Store

CARD_KEYS = {
    "name",
    "method",
    "backbone",
    "dim",
    "preprocessing",
    "data",
    "epochs",
    "wall_s",
    "final_loss",
    "knn_monitor",
    "versions",
    "sha256",
}


def test_register_random_model__card_files_and_row(tmp_store: Store) -> None:
    card = register_random_model(tmp_store, "baseline", crop_px=64, seed=0)
    folder = tmp_store.root / "models" / "baseline"
    doc = json.loads((folder / "card.json").read_text())
    assert CARD_KEYS <= set(doc)
    assert doc["method"] == "none" and doc["backbone"] == "tiny" and doc["dim"] == 128
    assert doc["preprocessing"] == Preprocessing.for_input(64).to_dict()
    assert set(doc["versions"]) == {
        "torch",
        "torchvision",
        "lightly",
        "pytorch_lightning",
        "numpy",
        "cytostore",
    }
    assert doc["versions"]["torch"] == torch.__version__.split("+")[0]
    weights = (folder / "backbone.pt").read_bytes()
    assert doc["sha256"] == hashlib.sha256(weights).hexdigest() == card.sha256
    row = tmp_store.sql("SELECT name, method, backbone, dim, path, sha256 FROM models")
    assert row.rows == [
        ("baseline", "none", "tiny", 128, "models/baseline", card.sha256)
    ]
    assert load_card(tmp_store, "baseline") == card


def test_register_random_model__same_seed_same_weights(tmp_store: Store) -> None:
    a = register_random_model(tmp_store, "a", crop_px=64, seed=0)
    b = register_random_model(tmp_store, "b", crop_px=64, seed=0)
    c = register_random_model(tmp_store, "c", crop_px=64, seed=1)
    assert a.sha256 == b.sha256 != c.sha256


def test_register_model__trained_fields_extra_and_measured_dim(
    tmp_store: Store,
) -> None:
    module, _ = build_backbone("tiny", seed=0)
    card = register_model(
        tmp_store,
        "simclr-tiny",
        module,
        {
            "method": "simclr",
            "backbone": "tiny",
            "preprocessing": Preprocessing.for_input(96).to_dict(),
            "data": {"lmu": 10, "bm": 5},
            "epochs": 3,
            "wall_s": 12.5,
            "final_loss": 4.2,
            "knn_monitor": {"accuracy": 0.5, "k": 5, "label": "label"},
            "temperature": 0.1,
        },
    )
    assert card.dim == 128  # measured by a forward pass
    assert card.extra == {"temperature": 0.1}
    assert card.knn_accuracy == 0.5
    again = load_card(tmp_store, "simclr-tiny")
    assert again == card
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_register_model__name_taken_invalid_or_incomplete(tmp_store: Store) -> None:
    register_random_model(tmp_store, "m", crop_px=32)
    with pytest.raises(InvalidArgumentError, match="exists"):
        register_random_model(tmp_store, "m", crop_px=32)
    card = register_random_model(tmp_store, "m", crop_px=32, seed=5, overwrite=True)
    assert load_card(tmp_store, "m").sha256 == card.sha256
    assert len(list_models(tmp_store)) == 1
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        register_random_model(tmp_store, "../evil", crop_px=32)
    with pytest.raises(InvalidArgumentError, match="preprocessing"):
        register_model(
            tmp_store,
            "x",
            build_backbone("tiny")[0],
            {"method": "a", "backbone": "tiny"},
        )


def test_registry__list_and_unknown_model(tmp_store: Store) -> None:
    with pytest.raises(
        UnknownModelError, match=r"no model 'nope'.*\(there is no model\)"
    ):
        load_card(tmp_store, "nope")
    register_random_model(tmp_store, "b-model", crop_px=32)
    register_random_model(tmp_store, "a-model", crop_px=32)
    models = list_models(tmp_store)
    assert [m["name"] for m in models] == ["a-model", "b-model"]
    assert models[0]["card"]["preprocessing"]["crop_px"] == 32
    with pytest.raises(UnknownModelError, match=r"\(known: a-model, b-model\)"):
        load_card(tmp_store, "nope")
    delete_model(tmp_store, "a-model")
    assert [m["name"] for m in list_models(tmp_store)] == ["b-model"]
    assert not (tmp_store.root / "models" / "a-model").exists()
