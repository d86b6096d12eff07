"""Pixel explanations: the forward reproduces the store, maps land where they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cytostore.embedder.preprocess import Preprocessing
from cytostore.errors import (
    InvalidArgumentError,
    UnknownCellError,
    UnknownPatientError,
)
from cytostore.explain import (
    CellModel,
    Explainer,
    attribute,
    deletion_curve,
    deletion_summary,
    explain_pixels,
    pointing,
    rank_correlation,
)
from cytostore.explain.attribution import blur, to_pixels
from cytostore.explain.checks import randomisation_summary
from cytostore.explain.maps import crop_box, mask_to_crop, to_original
from cytostore.store import Store


def _bm_cell(store: Path) -> int:
    return int(
        Store.open(store)
        .sql("SELECT min(cell_id) FROM cell_meta WHERE dataset = 'bm'")
        .rows[0][0]
    )


def _patient(store: Path) -> str:
    return str(
        Store.open(store)
        .sql("SELECT min(patient_id) FROM cell_meta WHERE patient_id IS NOT NULL")
        .rows[0][0]
    )


# ------------------------------------------------------------------ the forward
@pytest.mark.parametrize("head", ["lin", "mlp"])
def test_cell_model__reproduces_stored_vector_and_head(
    explain_store: Path, head: str
) -> None:
    ex = Explainer(explain_store, head, cell=_bm_cell(explain_store), device="cpu")
    c = ex.cells[0]
    # the crop is the cache's row: the preprocessing of embedding time
    from cytostore.embedder.cache import CellCache

    row = CellCache.open(ex.store, ex.preprocessing).rows([c.cell_id])[0]
    np.testing.assert_array_equal(c.crop, row)
    model = ex.model(c)
    with torch.no_grad():
        emb = model.embed(to_pixels(c.crop[None], ex.device))[0].numpy()
        logits = model(to_pixels(c.crop[None], ex.device)).double()
    np.testing.assert_allclose(emb, c.vector, atol=2e-2)
    proba = torch.softmax(logits, 1)[0].numpy()
    np.testing.assert_allclose(proba, ex.probabilities, atol=2e-2)


def test_mil_model__patient_logits_with_each_top_cell(explain_store: Path) -> None:
    ex = Explainer(
        explain_store, "mil", patient=_patient(explain_store), cells=3, device="cpu"
    )
    assert len(ex.cells) == 3
    att = [c.attention for c in ex.cells]
    assert att == sorted(att, reverse=True)
    for c in ex.cells:
        with torch.no_grad():
            logits = ex.model(c)(to_pixels(c.crop[None], ex.device)).double()
        proba = torch.softmax(logits, 1)[0].numpy()
        np.testing.assert_allclose(proba, ex.probabilities, atol=2e-2)


# ----------------------------------------------------------------- attribution
@pytest.mark.parametrize("head", ["lin", "mil"])
def test_attribute__ig_sums_to_the_logit_change(explain_store: Path, head: str) -> None:
    kw = {"cell": _bm_cell(explain_store)} if head == "lin" else {}
    if head == "mil":
        kw = {"patient": _patient(explain_store), "cells": 1}
    ex = Explainer(explain_store, head, device="cpu", precision="fp32", **kw)
    c = ex.cells[0]
    att = attribute(ex.model(c), c.crop, ex.target, steps=48, baseline_sigma_px=3.0)
    change = att.logit - att.baseline_logit
    assert att.map.shape == c.crop.shape[:2]
    assert abs(float(att.map.sum()) - change) <= 0.05 * abs(change) + 1e-3
    assert att.delta <= 0.05 * abs(change) + 1e-3


def test_attribute__refuses_unknown_method(explain_store: Path) -> None:
    ex = Explainer(explain_store, "lin", cell=_bm_cell(explain_store), device="cpu")
    with pytest.raises(InvalidArgumentError, match="unknown attribution method"):
        attribute(ex.model(ex.cells[0]), ex.cells[0].crop, 0, method="lrp")


def test_blur__keeps_a_constant_image_and_smooths_a_dot() -> None:
    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(blur(flat, 2.0), flat)
    dot = torch.zeros(1, 3, 17, 17)
    dot[..., 8, 8] = 1.0
    out = blur(dot, 1.5)
    assert float(out[0, 0, 8, 8]) < 0.1
    assert float(out.sum()) == pytest.approx(3.0, rel=1e-3)


# ---------------------------------------------------------- maps on the image
@pytest.mark.parametrize("um", [0.1, 0.25, None])
def test_to_original__lands_on_the_pixels_the_crop_came_from(um: float | None) -> None:
    prep = Preprocessing.for_input(32, fov_um=8.0)
    img = np.full((60, 80, 3), 230, np.uint8)
    img[25:33, 36:42] = 20  # a dark patch near the centre
    crop = prep.apply(img, um)
    dark = (255.0 - crop[:, :, 0].astype(np.float64)) / 255.0
    back = to_original(dark, 60, 80, prep, um)
    patch = np.zeros((60, 80), bool)
    patch[25:33, 36:42] = True
    x0, y0, side = crop_box(60, 80, prep, um)
    assert side == pytest.approx(32 * 0.25 / um if um else 80.0)
    # the mapped-back darkness peaks on the patch, and is 0 outside the crop
    assert back[patch].mean() > 4 * back[~patch].mean()
    assert patch[np.unravel_index(int(np.argmax(back)), back.shape)]
    if um == 0.25:  # 32 px square: (24, 14)..(56, 46)
        assert back[:, :20].max() == 0 and back[:10, :].max() == 0


def test_mask_to_crop__follows_the_preprocessing() -> None:
    prep = Preprocessing.for_input(32, fov_um=8.0)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 30:40] = True
    img = np.full((64, 64, 3), 230, np.uint8)
    img[mask] = 0
    crop_mask = mask_to_crop(mask, prep, 0.2)
    dark = prep.apply(img, 0.2)[:, :, 0] < 115
    assert (crop_mask == dark).mean() > 0.98
    assert crop_mask.sum() > 0


# ------------------------------------------------------------- honesty checks
class _DarkRed(nn.Module):
    """A planted 'backbone': mean darkness of the red channel, one feature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x[:, :1].mean(dim=(2, 3))


def _planted_model() -> tuple[CellModel, Preprocessing]:
    prep = Preprocessing.for_input(64, fov_um=24.0)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[10.0], [-10.0]]))
        head.bias.zero_()
    return CellModel(_DarkRed(), prep, head), prep


def _planted_cell(prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """An Auer-rod cell from the generator and its rods-and-granules mask."""
    from cytostore.data._draw import render_cell_masks
    from cytostore.data._morphs import MORPHS, STAINS

    rng = np.random.default_rng(3)
    img, mask = render_cell_masks(
        rng, MORPHS["FGC"], STAINS["bm"], out_px=250, um_per_px=0.086
    )
    crop = prep.apply(img, 0.086)
    planted = mask_to_crop((mask & (4 | 8)) > 0, prep, 0.086)
    return crop, planted


def test_pointing__a_structure_detector_points_at_the_planted_structures() -> None:
    model, prep = _planted_model()
    crop, planted = _planted_cell(prep)
    att = attribute(model, crop, 0, steps=16, baseline_sigma_px=2.0 / prep.um_per_px)
    hit = pointing(att.map, planted)
    assert 0 < hit["area_share"] < 0.5
    assert hit["ratio"] > 1.5
    # the map flipped left-right misses the structures: the test can fail
    missed = pointing(att.map[:, ::-1], planted)
    assert missed["ratio"] < hit["ratio"]


def test_deletion__top_pixels_cost_more_than_random_and_reversed_less() -> None:
    model, prep = _planted_model()
    crop, _ = _planted_cell(prep)
    att = attribute(model, crop, 0, steps=16, baseline_sigma_px=2.0 / prep.um_per_px)
    good = deletion_summary(
        [deletion_curve(model, crop, att.map, att.baseline, 0, n_random=3)]
    )
    assert good["passed"] and good["area_between"] > 0
    assert good["top"][0] == good["random"][0]
    bad = deletion_summary(
        [deletion_curve(model, crop, -att.map, att.baseline, 0, n_random=3)]
    )
    assert not bad["passed"] and bad["area_between"] < 0


def test_randomisation__identical_maps_fail_independent_maps_pass() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    # a sign flip is no change to |map|, and full change to the signed map
    assert rank_correlation(a, -a) == pytest.approx(1.0)
    assert rank_correlation(a, -a, absolute=False) == pytest.approx(-1.0)
    assert not randomisation_summary([rank_correlation(a, 2 * a)])["passed"]
    rhos = [rank_correlation(a, rng.normal(size=(16, 16))) for _ in range(5)]
    assert randomisation_summary(rhos)["passed"]


def test_random_backbone__is_not_the_model_itself(explain_store: Path) -> None:
    ex = Explainer(explain_store, "lin", cell=_bm_cell(explain_store), device="cpu")
    rand = ex.random_backbone(0)
    c = ex.cells[0]
    x = to_pixels(c.crop[None], ex.device)
    with torch.no_grad():
        a = ex.model(c).embed(x)
        b = ex.model(c, rand).embed(x)
    assert not torch.allclose(a, b, atol=1e-3)


# ------------------------------------------------------------------- end to end
def test_explain_pixels__patient_montage_overlays_and_checks(
    explain_store: Path, tmp_path: Path
) -> None:
    out = explain_pixels(
        explain_store,
        "mil",
        patient=_patient(explain_store),
        cells=2,
        method="gradxinput",
        montage=tmp_path / "m.png",
        checks=True,
        device="cpu",
    )
    assert out["kind"] == "abmil" and out["target"] == out["prediction"]["label"]
    assert [c["attention"] for c in out["cells"]] == sorted(
        (c["attention"] for c in out["cells"]), reverse=True
    )
    assert Path(out["montage"]).is_file()
    from PIL import Image

    for c in out["cells"]:
        assert Path(c["overlay"]).is_file()
        path = Store.open(explain_store).cell_paths([c["cell_id"]])[0]
        w, h = Image.open(path).size
        assert 0 <= c["peak"]["x"] < w and 0 <= c["peak"]["y"] < h
        assert Image.open(c["overlay"]).size == (2 * w + 4, h)
        assert c["embedding_cosine"] > 0.999
    checks = out["checks"]
    assert len(checks["randomisation"]["rho"]) == 2
    assert len(checks["randomisation"]["signed_rho"]) == 2
    assert len(checks["deletion"]["top"]) == 4
    assert checks["pointing"] is None  # the session's synthetic data has no masks


def test_explain_pixels__chosen_class(explain_store: Path) -> None:
    ex = Explainer(explain_store, "lin", cell=_bm_cell(explain_store), device="cpu")
    other = next(c for i, c in enumerate(ex.classes) if i != ex.predicted)
    out = explain_pixels(
        explain_store,
        "lin",
        cell=_bm_cell(explain_store),
        target=other,
        method="gradxinput",
        device="cpu",
    )
    assert out["target"] == other
    assert out["prediction"]["label"] == ex.classes[ex.predicted]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"head": "knn", "cell": 1}, InvalidArgumentError, "kNN head"),
        ({"head": "mil", "cell": 1}, InvalidArgumentError, "MIL head"),
        ({"head": "lin", "patient": "X"}, InvalidArgumentError, "classifies cells"),
        ({"head": "lin"}, InvalidArgumentError, "exactly one"),
        ({"head": "lin", "cell": 1, "target": "NOPE"}, InvalidArgumentError, "--class"),
        ({"head": "lin", "cell": 10**9}, UnknownCellError, "no cell"),
        ({"head": "mil", "patient": "NOPE"}, UnknownPatientError, "NOPE"),
        ({"head": "mil", "patient": "x", "cells": 0}, InvalidArgumentError, "cells"),
    ],
)
def test_explainer__refuses(
    explain_store: Path, kwargs: dict, error: type, match: str
) -> None:
    kwargs = dict(kwargs)
    if kwargs.get("cell") == 1:
        kwargs["cell"] = _bm_cell(explain_store)
    with pytest.raises(error, match=match):
        Explainer(explain_store, device="cpu", **kwargs)
