from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cytostore.embedder import BACKBONES, build_backbone
from cytostore.errors import InvalidArgumentError, WeightsMismatchError

FAST = ["tiny", "resnet18", "resnet34", "vit_s16"]
DIMS = {"tiny": 128, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "vit_s16": 384}


def _forward(model: torch.nn.Module, crop_px: int, n: int = 2) -> torch.Tensor:
    x = torch.randn(n, 3, crop_px, crop_px, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize(
    ("name", "crop_px"),
    [
        ("tiny", 96),
        ("tiny", 128),
        ("resnet18", 64),
        pytest.param("vit_s16", 64, marks=pytest.mark.slow),
    ],
)
def test_build_backbone__forward_shape(name: str, crop_px: int) -> None:
    model, dim = build_backbone(name, crop_px=crop_px, seed=0)
    assert dim == DIMS[name]
    assert tuple(_forward(model, crop_px).shape) == (2, dim)
    assert not model.training


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "vit_s16"])
@pytest.mark.parametrize("crop_px", [96, 128])
def test_build_backbone__forward_shape_heavy(name: str, crop_px: int) -> None:
    model, dim = build_backbone(name, crop_px=crop_px, seed=0)
    assert tuple(_forward(model, crop_px).shape) == (2, DIMS[name])


def test_backbones__registry_lists_all_names() -> None:
    assert set(BACKBONES) == set(DIMS)


def test_build_backbone__same_seed_same_weights() -> None:
    a, _ = build_backbone("tiny", seed=3)
    b, _ = build_backbone("tiny", seed=3)
    c, _ = build_backbone("tiny", seed=4)
    for (k, va), vb in zip(
        a.state_dict().items(), b.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert not torch.equal(
        a.state_dict()["features.0.weight"], c.state_dict()["features.0.weight"]
    )


def test_build_backbone__init_round_trip_torchvision_format(tmp_path: Path) -> None:
    torch.manual_seed(7)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "lab_weights.pt"
    torch.save(reference.state_dict(), path)  # with fc.*, as torchvision saves it
    model, _ = build_backbone("resnet18", init=path, crop_px=64)
    reference.fc = torch.nn.Identity()
    torch.testing.assert_close(_forward(model, 64), _forward(reference, 64))


def test_build_backbone__init_round_trip_tiny(tmp_path: Path) -> None:
    src, _ = build_backbone("tiny", seed=1)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": src.state_dict()}, path)  # wrapped, as trainers save
    model, _ = build_backbone("tiny", init=path, seed=99)
    torch.testing.assert_close(_forward(model, 64), _forward(src, 64), rtol=0, atol=0)


@pytest.mark.slow
def test_build_backbone__vit_init_at_another_image_size(tmp_path: Path) -> None:
    src, _ = build_backbone("vit_s16", crop_px=128, seed=0)
    model, _ = build_backbone("vit_s16", init=src.state_dict(), crop_px=96)
    assert tuple(_forward(model, 96).shape) == (2, 384)
    torch.testing.assert_close(
        model.state_dict()["conv_proj.weight"], src.state_dict()["conv_proj.weight"]
    )


def test_build_backbone__wrong_state_dict_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(build_backbone("tiny")[0].state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"missing: bn1\.bias") as err:
        build_backbone("resnet18", init=path)
    assert "--backbone" in str(err.value)
    bad = {"conv1.weight": torch.zeros(1), "bogus.weight": torch.zeros(1)}
    with pytest.raises(WeightsMismatchError, match=r"unexpected: bogus\.weight"):
        build_backbone("resnet18", init=bad)
    with pytest.raises(WeightsMismatchError, match=r"wrong shape: conv1\.weight"):
        build_backbone("resnet18", init=bad)


def test_build_backbone__bad_init_file_and_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        build_backbone("tiny", init=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(WeightsMismatchError, match="cannot read"):
        build_backbone("tiny", init=junk)
    with pytest.raises(InvalidArgumentError, match="unknown backbone 'resnet9'"):
        build_backbone("resnet9")
    with pytest.raises(InvalidArgumentError, match="divisible"):
        build_backbone("vit_s16", crop_px=100)
