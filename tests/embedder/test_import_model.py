"""import-model: DinoBloom / DINOv2 / timm / torchvision checkpoints from local files.

Checkpoints are built here from randomly initialised tensors in the layouts the
authors publish (DinoBloom: ``{"teacher": {"backbone.*", "dino_head.*",
"ibot_head.*"}}`` with DINOv2's own key names, written out below from the DINOv2
architecture, not from timm's), for the S and B sizes with real values and for L and G
on the meta device (keys and shapes only). The oracle of every import is a direct
forward of the same weights loaded the authors' way (strip ``backbone.``, drop the
heads, ``load_state_dict(strict=True)``) into an independently built timm model.
No test can reach a network: sockets refuse to connect in this module.
"""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.data import load_rgb
from cytostore.embedder import Encoder
from cytostore.embedder.backbones import build_backbone
from cytostore.embedder.foundation import (
    ARCH_NAMES,
    build_arch,
    check_fit,
    foundation_preprocessing,
    import_model,
    map_state_dict,
    parse_arch,
    pretrain_preprocessing,
)
from cytostore.embedder.preprocess import Preprocessing
from cytostore.errors import InvalidArgumentError, WeightsMismatchError
from cytostore.store import Store

#: DINOv2 sizes: embed dim, depth, heads, SwiGLU (ViT-g) or plain MLP.
SIZES = {
    "s": (384, 12, 6, False),
    "b": (768, 12, 12, False),
    "l": (1024, 24, 16, False),
    "g": (1536, 40, 24, True),
}
TIMM = {"s": "vit_small_patch14_dinov2", "b": "vit_base_patch14_dinov2"}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a test reached for the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def dinov2_layout(size: str, tokens: int = 257) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a DINOv2 ViT-<size>/14 backbone, as DINOv2's code names them.

    From facebookresearch/dinov2 ``DinoVisionTransformer`` (block_chunks=0): patch
    14, LayerScale ``ls1/ls2.gamma``, ``mask_token``; ViT-g uses ``SwiGLUFFNFused``
    (``mlp.w12`` packs two 4096-wide projections, ``mlp.w3`` maps back).
    """
    d, depth, _, swiglu = SIZES[size]
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, tokens, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, 14, 14),
        "patch_embed.proj.bias": (d,),
    }
    hidden = 4096 if swiglu else 4 * d
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {
            b + "norm1.weight": (d,),
            b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d),
            b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d),
            b + "attn.proj.bias": (d,),
            b + "ls1.gamma": (d,),
            b + "norm2.weight": (d,),
            b + "norm2.bias": (d,),
            b + "ls2.gamma": (d,),
        }
        up, down = ("w12", "w3") if swiglu else ("fc1", "fc2")
        shapes |= {
            f"{b}mlp.{up}.weight": (2 * hidden if swiglu else hidden, d),
            f"{b}mlp.{up}.bias": (2 * hidden if swiglu else hidden,),
            f"{b}mlp.{down}.weight": (d, hidden),
            f"{b}mlp.{down}.bias": (d,),
        }
    return shapes | {"norm.weight": (d,), "norm.bias": (d,)}


def dinobloom_checkpoint(
    size: str, seed: int = 0, device: str = "cpu"
) -> dict[str, dict[str, torch.Tensor]]:
    """A DinoBloom-<size>.pth as published: the DINOv2 trainer's teacher."""
    gen = torch.Generator().manual_seed(seed)
    teacher: dict[str, torch.Tensor] = {}
    for key, shape in dinov2_layout(size).items():
        if device == "meta":
            teacher[f"backbone.{key}"] = torch.empty(shape, device="meta")
        elif key.endswith("gamma"):  # LayerScale near its init (1e-5 would hide bugs)
            teacher[f"backbone.{key}"] = 0.1 + 0.05 * torch.rand(shape, generator=gen)
        elif key.startswith("norm") or ".norm" in key:
            base = 1.0 if key.endswith("weight") else 0.0
            teacher[f"backbone.{key}"] = base + 0.02 * torch.randn(shape, generator=gen)
        else:
            teacher[f"backbone.{key}"] = 0.02 * torch.randn(shape, generator=gen)
    d = SIZES[size][0]
    for head in ("dino_head", "ibot_head"):
        teacher[f"{head}.mlp.0.weight"] = torch.zeros(16, d, device=device)
        teacher[f"{head}.last_layer.weight_g"] = torch.ones(1, 16, device=device)
    return {"teacher": teacher}


def reference_model(size: str, ckpt: dict[str, dict[str, torch.Tensor]]) -> Any:
    """The authors' loading recipe applied to a timm DINOv2 ViT (the oracle)."""
    with torch.device("meta"):  # its tensors come from the checkpoint below
        model = timm.create_model(
            TIMM[size], pretrained=False, num_classes=0, img_size=224
        ).eval()
    state = {
        k.replace("backbone.", ""): v
        for k, v in ckpt["teacher"].items()
        if "dino_head" not in k and "ibot_head" not in k
    }
    state.pop("mask_token")
    model.load_state_dict(state, strict=True, assign=True)
    return model


@pytest.fixture(scope="module")
def bloom_s(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One DinoBloom-S checkpoint for the module: its dict, file and oracle model."""
    ckpt = dinobloom_checkpoint("s", seed=1)
    path = tmp_path_factory.mktemp("bloom") / "DinoBloom-S.pth"
    torch.save(ckpt, path)
    return {"ckpt": ckpt, "path": path, "reference": reference_model("s", ckpt)}


def _reference_vectors(model: Any, prep: Preprocessing, pixels: np.ndarray) -> Any:
    with torch.inference_mode():
        return model(prep.to_tensor(pixels)).numpy()


def _cells(store: Store, ids: list[int]) -> list[np.ndarray]:
    rows = store.cell_meta(np.asarray(ids), ["dataset", "path"]).rows
    roots = dict(store.sql("SELECT dataset, root FROM datasets").rows)
    return [load_rgb(Path(roots[d]) / p) for d, p in rows]


# ------------------------------------------------------------------ architectures
@pytest.mark.parametrize("size", ["s", "b", "l", "g"])
def test_dinobloom_layout__every_size_fits_on_meta(size: str) -> None:
    arch = f"dinobloom-{size}"
    model, dim = build_arch(arch, device="meta")
    ckpt = dinobloom_checkpoint(size, device="meta")
    state, dropped = map_state_dict(parse_arch(arch), ckpt, model)
    check_fit(model, state, arch, f"DinoBloom-{size.upper()}.pth")
    assert dim == SIZES[size][0]
    assert dropped == {"ssl_heads": 4, "mask_token": 1}
    assert {tuple(v.shape) for k, v in state.items() if k == "pos_embed"} == {
        (1, 257, dim)
    }


@pytest.mark.parametrize("size", ["vits14", "vitg14"])
def test_dinov2_original_layout__518px_position_embedding_resampled(size: str) -> None:
    """DINOv2's published files: no wrapper, 37x37+1 positions, resampled to 224."""
    arch = f"dinov2-{size}"
    model, dim = build_arch(arch, device="meta")
    raw = {
        k: torch.empty(s, device="meta")
        for k, s in dinov2_layout(size[3], tokens=1370).items()
    }
    state, _ = map_state_dict(parse_arch(arch), raw, model)
    check_fit(model, state, arch, "dinov2.pth")
    assert tuple(state["pos_embed"].shape) == (1, 257, dim)


def test_dinov2_chunked_blocks__flattened() -> None:
    """The DINOv2 trainer with block_chunks=4 names blocks blocks.<chunk>.<i>."""
    model, _ = build_arch("dinobloom-s", device="meta")
    ckpt = dinobloom_checkpoint("s", device="meta")
    teacher = {
        re.sub(r"^backbone\.blocks\.(\d+)\.", lambda m: _chunk(int(m[1])), k): v
        for k, v in ckpt["teacher"].items()
    }
    assert "backbone.blocks.3.9.norm1.weight" in teacher
    state, _ = map_state_dict(parse_arch("dinobloom-s"), {"teacher": teacher}, model)
    check_fit(model, state, "dinobloom-s", "chunked.pth")


def _chunk(i: int) -> str:
    return f"backbone.blocks.{i // 3}.{i}."


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("dinobloom-xl", "unknown --arch 'dinobloom-xl'"),
        ("timm:hf-hub:someone/model", "not a model timm builds offline"),
        ("timm:no_such_model_x", "not a model timm builds offline"),
        ("torchvision:fasterrcnn_resnet50_fpn", "not a torchvision classification"),
    ],
)
def test_parse_arch__refuses_unknown_and_hub_names(arch: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_arch(arch)


def test_arch_names__cli_list_agrees() -> None:
    from cytostore.cli.pretrain import IMPORTED_ARCHS

    assert set(IMPORTED_ARCHS) == set(ARCH_NAMES)


# ------------------------------------------------------------------ preprocessing
def test_preprocessing__resize_ignores_um_per_px_physical_id_unchanged() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)
    prep = foundation_preprocessing("dinobloom-s")
    assert (prep.scale, prep.crop_px) == ("resize", 224)
    assert np.array_equal(prep.apply(img, 0.07), prep.apply(img, None))
    physical = foundation_preprocessing("dinobloom-s", 112, scale="physical")
    assert not np.array_equal(physical.apply(img, 0.07), physical.apply(img, None))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert prep.prep_id != Preprocessing(prep.um_per_px, 224).prep_id
    assert "scale" not in Preprocessing.for_input(96).to_dict()
    assert pretrain_preprocessing("tiny", 96) == Preprocessing.for_input(96)


# ------------------------------------------------------------------ importing
@pytest.mark.parametrize("size", ["s", "b"])
def test_import_model__dinobloom_embeds_like_a_direct_forward(
    size: str, cell_store: Store, tmp_path: Path, bloom_s: dict[str, Any]
) -> None:
    if size == "s":
        ckpt, path, ref = bloom_s["ckpt"], bloom_s["path"], bloom_s["reference"]
        ids = [1, 6, 11]  # one cell of each µm/px (0.07, 0.17, unknown)
    else:  # ViT-B is slow on a CPU: one cell
        ckpt = dinobloom_checkpoint(size, seed=1)
        path = tmp_path / f"DinoBloom-{size.upper()}.pth"
        torch.save(ckpt, path)
        ref, ids = reference_model(size, ckpt), [6]
    card = import_model(cell_store, f"bloom-{size}", path, f"dinobloom-{size}")
    dim = SIZES[size][0]
    prov = card.provenance or {}
    assert (card.method, card.backbone) == ("imported", f"dinobloom-{size}")
    assert card.dim == dim and prov["dim"] == dim
    assert prov["file"] == path.name and len(prov["file_sha256"]) == 64
    assert prov["scale"] == "resize" and prov["input_px"] == 224
    assert prov["pooling"] == "CLS token after the final LayerNorm"
    assert "zenodo.org/records/10908163" in prov["license"]

    enc = Encoder.load(cell_store, f"bloom-{size}", device="cpu", precision="fp32")
    got = enc.embed(ids, batch_size=2)
    imgs = _cells(cell_store, ids)
    pixels = np.stack([card.preprocessing.apply(img, None) for img in imgs])
    want = _reference_vectors(ref, card.preprocessing, pixels)
    assert got.shape == (len(ids), dim)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_import_model__safetensors_and_flat_dicts(
    cell_store: Store, tmp_path: Path, bloom_s: dict[str, Any]
) -> None:
    """The teacher dict alone, as .safetensors (the documented conversion)."""
    from safetensors.torch import save_file

    ckpt = bloom_s["ckpt"]
    path = tmp_path / "DinoBloom-S.safetensors"
    save_file(ckpt["teacher"], str(path))
    card = import_model(cell_store, "bloom-st", path, "dinobloom-s")
    enc = Encoder.load(cell_store, "bloom-st", device="cpu", precision="fp32")
    pixels = np.stack(
        [card.preprocessing.apply(img, None) for img in _cells(cell_store, [2])]
    )
    want = _reference_vectors(bloom_s["reference"], card.preprocessing, pixels)
    np.testing.assert_allclose(enc.embed([2]), want, rtol=1e-4, atol=1e-5)


def test_import_model__timm_and_torchvision_state_dicts(
    cell_store: Store, tmp_path: Path
) -> None:
    """A timm model's own state dict (with its classifier) and a torchvision one."""
    import torchvision

    src = timm.create_model("test_vit", pretrained=False, num_classes=5).eval()
    torch.save(src.state_dict(), tmp_path / "test_vit.pth")
    card = import_model(cell_store, "tv", tmp_path / "test_vit.pth", "timm:test_vit")
    assert card.dim == 64 and card.provenance["dropped_keys"] == {"classifier": 2}  # type: ignore[index]
    pixels = np.stack(
        [card.preprocessing.apply(img, 0.07) for img in _cells(cell_store, [1])]
    )
    src.reset_classifier(0)
    want = _reference_vectors(src, card.preprocessing, pixels)
    got = Encoder.load(cell_store, "tv", device="cpu", precision="fp32").embed([1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    r18 = torchvision.models.resnet18(weights=None).eval()
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    card = import_model(
        cell_store, "r18", tmp_path / "r18.pth", "torchvision:resnet18", input_px=64
    )
    assert card.dim == 512 and card.preprocessing.crop_px == 64
    r18.fc = torch.nn.Identity()
    pixels = np.stack(
        [card.preprocessing.apply(img, 0.07) for img in _cells(cell_store, [1])]
    )
    want = _reference_vectors(r18, card.preprocessing, pixels)
    got = Encoder.load(cell_store, "r18", device="cpu", precision="fp32").embed([1])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_build_backbone__init_from_a_dinobloom_file(bloom_s: dict[str, Any]) -> None:
    """pretrain --backbone dinobloom-s --init DinoBloom-S.pth starts from the file."""
    model, dim = build_backbone("dinobloom-s", bloom_s["path"], crop_px=224)
    ref = bloom_s["reference"]
    assert dim == 384
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------------------------ refusals
def _import(store: Path, weights: Path, arch: str, name: str = "m") -> Any:
    return CliRunner().invoke(
        main,
        ["import-model", str(store), "--name", name, "--weights", str(weights),
         "--arch", arch],
    )  # fmt: skip


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_import_model_cli__wrong_size_refused_in_one_line(
    cell_store: Store, bloom_s: dict[str, Any]
) -> None:
    run = _import(cell_store.root, bloom_s["path"], "dinobloom-b")
    assert run.exit_code == 2, run.output
    line = _error_line(run.output)
    assert (
        "DinoBloom-S.pth does not fit --arch dinobloom-b: expected 174 tensors" in line
    )
    assert (
        "wrong shape (file vs expected): blocks.0.attn.proj.bias (384,) vs (768,)"
        in line
    )
    assert line.endswith("use --arch dinobloom-s")
    assert cell_store.sql("SELECT count(*) FROM models").rows == [(0,)]
    assert not (cell_store.root / "models" / "m").exists()


def test_import_model_cli__missing_and_unexpected_keys_named(
    cell_store: Store, tmp_path: Path, bloom_s: dict[str, Any]
) -> None:
    ckpt = {"teacher": dict(bloom_s["ckpt"]["teacher"])}
    del ckpt["teacher"]["backbone.norm.weight"]
    ckpt["teacher"]["backbone.extra.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "bad.pth")
    line = _error_line(
        _import(cell_store.root, tmp_path / "bad.pth", "dinobloom-s").output
    )
    assert "1 missing: norm.weight; 1 unexpected: extra.weight" in line


def test_import_model_cli__pickled_objects_refused_with_the_conversion(
    cell_store: Store, tmp_path: Path, bloom_s: dict[str, Any]
) -> None:
    ckpt: dict[str, Any] = dict(bloom_s["ckpt"])
    ckpt["args"] = argparse.Namespace(lr=0.1)  # what a trainer's checkpoint may hold
    torch.save(ckpt, tmp_path / "DinoBloom-S.pth")
    run = _import(cell_store.root, tmp_path / "DinoBloom-S.pth", "dinobloom-s")
    assert run.exit_code == 2
    line = _error_line(run.output)
    assert "torch.load(weights_only=True) refused DinoBloom-S.pth" in line
    assert "convert the file once to safetensors" in line
    assert "Namespace" in line  # the cause, from torch
    with pytest.raises(WeightsMismatchError):
        import_model(cell_store, "m", tmp_path / "DinoBloom-S.pth", "dinobloom-s")


@pytest.mark.parametrize(
    ("content", "arch", "expected"),
    [
        (b"not a checkpoint at all", "dinobloom-s", "cannot read junk.pth as a torch"),
        (None, "dinobloom-xl", "unknown --arch 'dinobloom-xl'"),
        (None, "timm:hf-hub:a/b", "not a model timm builds offline"),
    ],
)
def test_import_model_cli__bad_input_exits_2(
    cell_store: Store, tmp_path: Path, content: bytes | None, arch: str, expected: str
) -> None:
    path = tmp_path / "junk.pth"
    if content is None:
        torch.save({"w": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    run = _import(cell_store.root, path, arch)
    assert run.exit_code == 2
    assert expected in _error_line(run.output)
    assert "import-model [OPTIONS] STORE" in run.output.splitlines()[0]


def test_import_model_cli__then_embed_and_search_like_any_model(
    cell_store: Store, bloom_s: dict[str, Any]
) -> None:
    run = _import(cell_store.root, bloom_s["path"], "dinobloom-s", "bloom")
    assert run.exit_code == 0, run.output
    assert (
        "imported DinoBloom-S.pth as bloom: dinobloom-s, dim 384, 224 px (resize)"
        in run.output
    )
    runner = CliRunner()
    s = str(cell_store.root)
    run = runner.invoke(
        main,
        ["embed", s, "--model", "bloom", "--where", "cell_id <= 4", "--device", "cpu"],
    )
    assert run.exit_code == 0, run.output
    ids, vectors = Store.open(cell_store.root).vectors("bloom")
    assert vectors.shape == (4, 384) and sorted(ids.tolist()) == [1, 2, 3, 4]
    args = ["search", s, "--model", "bloom", "--cell", "1", "-k", "2"]
    run = runner.invoke(main, [*args, "--format", "csv"])
    assert run.exit_code == 0, run.output
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit[list(ids).index(1)]
    sims[list(ids).index(1)] = -2.0  # search leaves the query cell out
    assert run.output.splitlines()[1].split(",")[0] == str(ids[int(np.argmax(sims))])


@pytest.mark.slow
def test_pretrain__continues_from_a_dinobloom_file_with_the_vit_recipe(
    cell_store: Store, bloom_s: dict[str, Any]
) -> None:
    from cytostore.embedder import pretrain

    card = pretrain(
        cell_store, "bloom-ours", backbone="dinobloom-s", init=bloom_s["path"],
        crop_px=56, epochs=1, batch_size=4, monitor_cells=0, device="cpu",
    )  # fmt: skip
    assert (card.method, card.backbone, card.dim) == ("dino", "dinobloom-s", 384)
    assert card.preprocessing.scale == "resize" and card.init == str(bloom_s["path"])
    vectors = Encoder.load(cell_store, "bloom-ours", device="cpu").embed([1, 2])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
