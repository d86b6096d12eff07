from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from embedder_helpers import draw_cell
from PIL import Image

from cytostore.embedder import Encoder, list_models
from cytostore.embedder.pretrain import pretrain
from cytostore.errors import (
    ConfigMismatchError,
    EmptySelectionError,
    InvalidArgumentError,
)
from cytostore.store import Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = dict(backbone="tiny", crop_px=32, batch_size=16, device="cpu", workers=1)


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two labelled datasets of drawn cells: 'a' 90 cells, 'b' 30 cells."""
    base = tmp_path_factory.mktemp("pretrain_store")
    rng = np.random.default_rng(0)
    store = Store.create(base / "store")
    for dataset, n in (("a", 90), ("b", 30)):
        root = base / "images" / dataset
        root.mkdir(parents=True)
        rows = []
        for i in range(n):
            big = i % 2 == 0
            img = draw_cell(64, 0.3, rng, diameter_um=rng.uniform(12, 16) if big else 6)
            Image.fromarray(img).save(root / f"c{i}.png")
            rows.append(
                {
                    "dataset": dataset,
                    "path": f"c{i}.png",
                    "label": "big" if big else "small",
                    "um_per_px": 0.3,
                }
            )
        store.upsert_dataset(dataset, "folder", root, 0.3)
        store.add_cells(rows)
    return base


@pytest.fixture
def store(tmp_path: Path, _template: Path) -> Store:
    shutil.copytree(_template, tmp_path, dirs_exist_ok=True)
    s = Store.open(tmp_path / "store")
    for dataset in ("a", "b"):
        s.upsert_dataset(dataset, "folder", tmp_path / "images" / dataset, 0.3)
    return s


def test_pretrain__registers_card_weights_and_curves(store: Store) -> None:
    card = pretrain(store, "m", epochs=2, **FAST)
    assert (card.method, card.backbone, card.dim, card.epochs) == (
        "simclr",
        "tiny",
        128,
        2,
    )
    assert set(card.data) == {"a", "b"}
    assert sum(card.data.values()) == 96  # 24 labelled cells held out (a fifth)
    assert card.wall_s > 0 and math.isfinite(card.final_loss)
    assert card.preprocessing.crop_px == 32
    assert card.versions["lightly"] and len(card.sha256) == 64
    knn = card.knn_monitor
    assert knn["cells"] == 24 and len(knn["history"]) == 2
    assert (
        all(0.0 <= v <= 1.0 for v in knn["history"])
        and knn["accuracy"] == knn["history"][-1]
    )
    folder = store.root / "models" / "m"
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["name"] for r in list_models(store)] == ["m"]
    stored = json.loads((folder / "card.json").read_text())
    assert stored["sha256"] == card.sha256
    feats = Encoder.load(store, "m", device="cpu").embed(np.array([1, 2, 3]))
    assert feats.shape == (3, 128) and np.isfinite(feats).all()


def test_pretrain__resume_continues_and_refuses_a_changed_config(store: Store) -> None:
    pretrain(store, "m", epochs=1, **FAST)
    card = pretrain(store, "m", epochs=2, resume=True, **FAST)
    assert card.epochs == 2 and len(card.knn_monitor["history"]) == 2
    with pytest.raises(ConfigMismatchError, match="where: None -> \"dataset = 'a'\""):
        pretrain(store, "m", epochs=3, resume=True, where="dataset = 'a'", **FAST)


def test_pretrain__refuses_a_taken_name_without_resume_or_overwrite(
    store: Store,
) -> None:
    pretrain(store, "m", method="none", backbone="tiny", crop_px=32)
    with pytest.raises(InvalidArgumentError, match="--resume.*--overwrite"):
        pretrain(store, "m", epochs=1, **FAST)


def test_pretrain__method_none_registers_the_random_baseline(store: Store) -> None:
    card = pretrain(store, "rnd", method="none", backbone="tiny", crop_px=32, seed=3)
    assert (card.method, card.epochs, card.seed) == ("none", 0, 3)


def test_pretrain__method_none_with_init_registers_those_weights(
    store: Store, tmp_path: Path
) -> None:
    from cytostore.embedder import Encoder, build_backbone

    src, _ = build_backbone("tiny", seed=7)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    card = pretrain(
        store, "init", method="none", backbone="tiny", crop_px=32, init=path, seed=0
    )
    assert (card.method, card.init) == ("none", str(path))
    pretrain(store, "rnd", method="none", backbone="tiny", crop_px=32, seed=0)
    got = Encoder.load(store, "init", device="cpu", precision="fp32").backbone
    rnd = Encoder.load(store, "rnd", device="cpu", precision="fp32").backbone
    want = Encoder(src, card.preprocessing, device="cpu", precision="fp32").backbone
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(got(x), want(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(rnd(x), want(x), atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "swav"}, InvalidArgumentError, "simclr, byol, dino, vicreg"),
        ({"backbone": "vgg"}, InvalidArgumentError, "tiny, resnet18"),
        ({"balance": "patient"}, InvalidArgumentError, "dataset, none"),
        ({"where": "label = 'nope'"}, EmptySelectionError, "selects no cells"),
        ({"where": "cell_id = 1"}, EmptySelectionError, "at least 2"),
    ],
)
def test_pretrain__bad_input_is_refused_clearly(
    store: Store, kwargs: dict[str, str], error: type[Exception], message: str
) -> None:
    args = {**FAST, **kwargs}
    with pytest.raises(error, match=message):
        pretrain(store, "bad", epochs=1, **args)  # type: ignore[arg-type]


def test_pretrain__shrinks_the_batch_to_the_cells(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        card = pretrain(store, "few", epochs=1, where="cell_id <= 10", **FAST)
    assert "batch size shrunk from 16 to 10" in caplog.text
    assert card.data == {"a": 10} and card.extra["config"]["batch_size"] == 10
    # one process: the default rate scales with the batch actually used
    from cytostore.embedder.methods import METHODS

    default = METHODS[card.extra["config"]["method"]].default_lr
    assert card.extra["lr"] == pytest.approx(default * 10 / 256)
    assert card.extra["world_size"] == 1 and card.extra["sync_batchnorm"] is False


def test_pretrain__vanished_files_are_skipped_and_training_goes_on(
    store: Store,
) -> None:
    for i in (1, 3, 5):
        (store.dataset_roots()["a"] / f"c{i}.png").unlink()
    card = pretrain(store, "m", epochs=1, monitor_cells=0, **FAST)
    assert card.extra["skipped_cells"] == 3
    assert card.data == {"a": 87, "b": 30} and card.knn_monitor is None
    assert store.sql("SELECT count(*) FROM skipped").rows[0][0] == 3


def test_pretrain__unbalanced_run_trains_on_every_dataset(store: Store) -> None:
    card = pretrain(store, "m", epochs=1, balance="none", monitor_cells=0, **FAST)
    assert card.data == {"a": 90, "b": 30}
    assert card.extra["config"]["balance"] == "none"
