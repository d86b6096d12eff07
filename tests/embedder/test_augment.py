from __future__ import annotations

import numpy as np
import pytest
import torch

from cytostore.embedder.augment import AugmentConfig, BatchAugment, to_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")


MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
IDENTITY = AugmentConfig(
    out_px=24,
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    rotate=False,
    flip_p=0.0,
    stain_sigma=0.0,
    jitter_p=0.0,
    gray_p=0.0,
    blur_p=0.0,
)


def _images(n: int = 6, side: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, side, side, 3), generator=g, dtype=torch.uint8)


def test_batch_augment__keeps_shape_dtype_and_range() -> None:
    aug = BatchAugment(AugmentConfig(out_px=16, gray_p=0.5, blur_p=1.0), MEAN, STD)
    x = _images()
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    raw = out * aug.std + aug.mean  # undo the normalisation
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_batch_augment__seeded_generator_is_deterministic() -> None:
    aug = BatchAugment(AugmentConfig(out_px=16), MEAN, STD)
    x = _images()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batch_augment__identity_config_is_the_normalised_input() -> None:
    x = _images()
    out = BatchAugment(IDENTITY, MEAN, STD)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, to_input(x, MEAN, STD), atol=1e-4, rtol=0)


def test_batch_augment__flip_mirrors_the_image() -> None:
    x = _images()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "flip_p": 1.0})
    out = BatchAugment(cfg, MEAN, STD)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, to_input(x, MEAN, STD).flip(-1), atol=1e-4, rtol=0)


def test_batch_augment__rotation_keeps_a_centred_disc() -> None:
    # A centred disc is unchanged by any rotation about the centre.
    yy, xx = np.mgrid[:32, :32]
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 8**2).astype(np.uint8) * 200
    x = torch.from_numpy(np.repeat(disc[None, :, :, None], 3, axis=3).copy())
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "out_px": 32, "rotate": True})
    out = BatchAugment(cfg, (0.0,) * 3, (1.0,) * 3)(x, torch.Generator().manual_seed(1))
    ref = to_input(x, (0.0,) * 3, (1.0,) * 3)
    assert (out - ref).abs().mean() < 0.02


def test_batch_augment__colour_jitter_keeps_gray_pixels_gray_under_hue() -> None:
    x = torch.full((4, 8, 8, 3), 128, dtype=torch.uint8)
    cfg = AugmentConfig(
        **{
            **IDENTITY.__dict__,
            "out_px": 8,
            "jitter_p": 1.0,
            "brightness": 0.0,
            "contrast": 0.0,
            "saturation": 0.0,
            "hue": 0.5,
        }
    )
    out = BatchAugment(cfg, (0.0,) * 3, (1.0,) * 3)(x, torch.Generator().manual_seed(0))
    assert out.std(dim=1).max() < 1e-4  # R == G == B still
    assert out.mean().item() == pytest.approx(128 / 255, abs=1e-3)


def test_batch_augment__blur_preserves_the_mean_of_a_flat_image() -> None:
    x = torch.full((2, 16, 16, 3), 90, dtype=torch.uint8)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "out_px": 16, "blur_p": 1.0})
    out = BatchAugment(cfg, (0.0,) * 3, (1.0,) * 3)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, 90 / 255), atol=1e-4, rtol=0)


def test_batch_augment__stain_jitter_changes_colour_mildly() -> None:
    x = _images()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "stain_sigma": 0.05})
    out = BatchAugment(cfg, (0.0,) * 3, (1.0,) * 3)(x, torch.Generator().manual_seed(0))
    diff = (out - to_input(x, (0.0,) * 3, (1.0,) * 3)).abs()
    assert 0 < diff.mean() < 0.1
