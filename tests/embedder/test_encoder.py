from __future__ import annotations

import numpy as np
import pytest
import torch

from cytostore.data import load_rgb
from cytostore.embedder import Encoder, register_random_model, resolve_device
from cytostore.embedder.device import resolve_precision
from cytostore.errors import CytostoreError, InvalidArgumentError, StoreCorruptError
from cytostore.store import Store


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def encoder(cell_store: Store) -> Encoder:
    register_random_model(cell_store, "rand", crop_px=48, seed=0)
    return Encoder.load(cell_store, "rand", device="cpu", precision="fp32")


def test_encoder__same_seed_same_vectors(cell_store: Store, encoder: Encoder) -> None:
    register_random_model(cell_store, "twin", crop_px=48, seed=0)
    register_random_model(cell_store, "other", crop_px=48, seed=1)
    ids = cell_store.where_ids()
    vecs = encoder.embed(ids)
    assert vecs.dtype == np.float32 and vecs.shape == (12, 128)
    twin = Encoder.load(cell_store, "twin", device="cpu", precision="fp32")
    np.testing.assert_array_equal(twin.embed(ids), vecs)
    other = Encoder.load(cell_store, "other", device="cpu", precision="fp32")
    assert not np.allclose(other.embed(ids), vecs)


def test_encoder__ids_equal_images_of_those_cells(
    cell_store: Store, encoder: Encoder
) -> None:
    ids = np.array([2, 7, 11, 4])
    paths = cell_store.cell_paths(ids)
    ums = [r[0] for r in cell_store.cell_meta(ids, ["um_per_px"]).rows]
    by_id = encoder.embed(ids, batch_size=3)
    by_path = encoder.embed(paths, um_per_px=ums)
    by_array = encoder.embed([load_rgb(p) for p in paths], um_per_px=ums, batch_size=1)
    np.testing.assert_allclose(by_path, by_id, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_array, by_id, rtol=1e-5, atol=1e-5)
    # The wrong scale is a different input: the preprocessing matters.
    wrong = encoder.embed(paths, um_per_px=0.5)
    assert not np.allclose(wrong[:2], by_id[:2], atol=1e-3)


def test_encoder__iter_embed_streams_in_order_and_skips_vanished(
    cell_store: Store, encoder: Encoder
) -> None:
    cell_store.cell_paths([5])[0].unlink()
    ids = cell_store.where_ids()
    seen: list[tuple[int, int]] = []
    chunks = list(
        encoder.iter_embed(ids, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    )
    got = np.concatenate([c for c, _ in chunks])
    np.testing.assert_array_equal(got, ids[ids != 5])
    assert [len(c) for c, _ in chunks] == [4, 4, 3]
    assert seen[-1] == (11, 11)
    assert cell_store.sql("SELECT path FROM skipped").rows == [("cell_4.png",)]
    vecs = np.concatenate([v for _, v in chunks])
    np.testing.assert_array_equal(vecs, encoder.embed(got))
    with pytest.raises(CytostoreError, match="could not be read"):
        encoder.embed([1, 5])


def test_encoder__bf16_close_to_fp32(cell_store: Store, encoder: Encoder) -> None:
    bf16 = Encoder.load(cell_store, "rand", device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    ids = cell_store.where_ids()
    cos = _cosine(bf16.embed(ids), encoder.embed(ids))
    assert cos.min() > 0.99


def test_encoder__tampered_weights_and_bad_inputs(
    cell_store: Store, encoder: Encoder
) -> None:
    with pytest.raises(InvalidArgumentError, match="um_per_px is for images"):
        encoder.embed([1, 2], um_per_px=0.1)
    with pytest.raises(InvalidArgumentError, match="wrap a single path"):
        encoder.embed("cell.png")  # type: ignore[arg-type]
    assert encoder.embed([]).shape == (0, 128)
    weights = cell_store.root / "models" / "rand" / "backbone.pt"
    state = torch.load(weights)
    state["features.0.weight"] += 1
    torch.save(state, weights)
    with pytest.raises(StoreCorruptError, match="sha256"):
        Encoder.load(cell_store, "rand")


def test_encoder__without_store_embeds_images_only() -> None:
    from cytostore.embedder import Preprocessing, build_backbone

    module, dim = build_backbone("tiny", seed=0, crop_px=32)
    enc = Encoder(module, Preprocessing.for_input(32), device="cpu")
    img = np.full((40, 40, 3), 128, dtype=np.uint8)
    assert enc.dim == dim and enc.embed([img, img], um_per_px=0.3).shape == (2, dim)
    with pytest.raises(InvalidArgumentError, match="no store"):
        enc.embed([1])


def test_resolve_device__names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InvalidArgumentError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resolve_precision__auto_and_errors() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(InvalidArgumentError, match="fp16 autocast is for CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(InvalidArgumentError, match="unknown precision"):
        resolve_precision("int8", cpu)


def test_encoder__load_folds_batch_norms_same_vectors(
    cell_store: Store, encoder: Encoder
) -> None:
    from cytostore.embedder.backbones import build_backbone, load_init_weights
    from cytostore.embedder.registry import WEIGHTS_FILE, model_dir

    assert not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in encoder.backbone.modules()
    )
    plain, _ = build_backbone("tiny", crop_px=48)
    load_init_weights(plain, model_dir(cell_store, "rand") / WEIGHTS_FILE, name="tiny")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    unfused = Encoder(
        plain, encoder.preprocessing, device="cpu", precision="fp32", store=cell_store
    )
    ids = cell_store.where_ids()
    np.testing.assert_allclose(
        encoder.embed(ids), unfused.embed(ids), rtol=1e-4, atol=1e-5
    )


def test_fuse_for_inference__untraceable_module_is_kept() -> None:
    from cytostore.embedder.encoder import fuse_for_inference

    class Branchy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # data-dependent: fx cannot trace

    m = Branchy()
    assert fuse_for_inference(m) is m


def test_tune_allocator__freed_blocks_stay_in_the_heap_for_reuse() -> None:
    import os
    import sys

    from cytostore.embedder.device import tune_allocator

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc allocator tuning is Linux-only")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    assert tune_allocator() and tune_allocator()  # tuned, and idempotent
    block = np.ones(40 * 2**20, dtype=np.uint8)  # untuned: its own mmap
    held = rss()
    del block
    # Untuned, free() unmaps the block at once (RSS drops by 40 MiB) and the next
    # batch faults it in again; tuned, it stays mapped for the next allocation.
    assert held - rss() < 8 * 2**20
