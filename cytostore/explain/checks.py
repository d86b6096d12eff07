"""Honesty checks of pixel attributions: randomisation, deletion, pointing.

- **Model randomisation** [0]: the maps made with the backbone's weights
  re-initialised at random must differ from the trained ones. The check compares
  the absolute maps by Spearman rank correlation and passes when the mean over
  the explained cells is below :data:`RANDOMISATION_MAX_RHO`. A map that survives
  randomisation shows the image (edges, dark pixels), not what the model learned.
- **Deletion** [1]: blurring the top-attributed 10/20/40 % of a crop's pixels
  (replacing them with the IG baseline, the blurred crop) must lower the target
  class's probability more than blurring the same share of random pixels,
  averaged over the explained cells. The area between the two curves (random
  minus top, trapezoids over the deleted share 0 to 0.4) is positive when it does.
- **Pointing**: where the truth is known (synthetic cells and the masks of the
  granules and Auer rods the generator planted), the share of positive
  attribution inside the mask against the mask's share of the crop's area.

[0] Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018,
https://arxiv.org/abs/1810.03292
[1] Samek et al., Evaluating the visualization of what a deep neural network has
learned, IEEE TNNLS 2017, https://arxiv.org/abs/1509.06321 (region perturbation)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import stats

from cytostore.explain.attribution import CellModel, to_pixels

__all__ = [
    "RANDOMISATION_MAX_RHO",
    "DELETION_FRACTIONS",
    "rank_correlation",
    "randomisation_summary",
    "deletion_curve",
    "deletion_summary",
    "pointing",
]

#: The randomisation check passes when the mean Spearman correlation of the
#: absolute trained and randomised maps is below this.
RANDOMISATION_MAX_RHO = 0.5
#: Shares of a crop's pixels blurred by the deletion check.
DELETION_FRACTIONS = (0.1, 0.2, 0.4)


def rank_correlation(
    a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], *, absolute: bool = True
) -> float:
    """Return the Spearman correlation of two maps (0 if one is constant).

    Args:
        a: A map.
        b: Another map of the same shape.
        absolute: Compare the absolute values (the check's measure: the stricter
            one, as sign flips do not count as change); ``False``: signed values.
    """
    x, y = np.ravel(a), np.ravel(b)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def randomisation_summary(
    rhos: Sequence[float],
    threshold: float = RANDOMISATION_MAX_RHO,
    signed: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Return ``{"rho", "mean_rho", "threshold", "passed"}`` (and the signed rho).

    Args:
        rhos: Per cell, the rank correlation of the absolute maps.
        threshold: The check passes when their mean is below it.
        signed: Per cell, the rank correlation of the signed maps (reported as
            ``signed_rho`` and ``mean_signed_rho``; not part of the verdict).
    """
    mean = float(np.mean(rhos)) if len(rhos) else float("nan")
    out: dict[str, Any] = {
        "rho": [float(r) for r in rhos],
        "mean_rho": mean,
        "threshold": threshold,
        "passed": bool(mean < threshold),
    }
    if signed is not None:
        out["signed_rho"] = [float(r) for r in signed]
        out["mean_signed_rho"] = float(np.mean(signed)) if len(signed) else mean
    return out


def _probabilities(
    model: CellModel, pixels: torch.Tensor, target: int, batch_size: int
) -> npt.NDArray[np.float64]:
    out: list[npt.NDArray[np.float64]] = []
    with torch.no_grad():
        for s in range(0, pixels.shape[0], batch_size):
            logits = model(pixels[s : s + batch_size]).double()
            out.append(torch.softmax(logits, dim=1)[:, target].cpu().numpy())
    return np.concatenate(out)


def deletion_curve(
    model: CellModel,
    crop: npt.NDArray[np.uint8],
    att_map: npt.NDArray[np.floating],
    baseline: npt.NDArray[np.floating],
    target: int,
    *,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    n_random: int = 4,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, list[float]]:
    """Return the target probability as the top-attributed or random pixels go.

    Args:
        model: The cell's pixels-to-logits function.
        crop: uint8 (c, c, 3) crop.
        att_map: (c, c) attribution (the largest values are deleted first).
        baseline: float (3, c, c) pixels that replace deleted ones (the blur).
        target: Class index whose probability is followed.
        fractions: Shares of the pixels deleted.
        n_random: Random orders averaged for the random curve.
        seed: Seed of the random orders.
        batch_size: Images per forward pass.

    Returns:
        ``{"fractions": [0, *fractions], "top": [...], "random": [...]}``: the
        probability with nothing deleted, then after each share.
    """
    device: torch.device = model.mean.device
    pixels = to_pixels(crop[None], device)[0]
    base = torch.as_tensor(baseline, dtype=pixels.dtype, device=device)
    n = att_map.size
    order_top = np.argsort(-np.ravel(att_map), kind="stable")
    rng = np.random.default_rng(seed)
    orders = [order_top] + [rng.permutation(n) for _ in range(n_random)]
    images = [pixels]
    for order in orders:
        for f in fractions:
            keep = torch.ones(n, dtype=torch.bool, device=device)
            keep[torch.from_numpy(order[: int(round(f * n))]).to(device)] = False
            keep2 = keep.view(1, *pixels.shape[1:])
            images.append(torch.where(keep2, pixels, base))
    probs = _probabilities(model, torch.stack(images), target, batch_size)
    k = len(fractions)
    top = probs[1 : 1 + k]
    rand = probs[1 + k :].reshape(n_random, k).mean(axis=0)
    return {
        "fractions": [0.0, *[float(f) for f in fractions]],
        "top": [float(probs[0]), *top.tolist()],
        "random": [float(probs[0]), *rand.tolist()],
    }


def deletion_summary(curves: Sequence[dict[str, list[float]]]) -> dict[str, Any]:
    """Average deletion curves; return them, the area between them and the verdict.

    Returns:
        ``{"fractions", "top", "random" (mean curves), "area_between" (trapezoids
        of random minus top over the deleted share), "passed" (top below random
        at every share)}``.
    """
    fractions = np.asarray(curves[0]["fractions"], np.float64)
    top = np.mean([c["top"] for c in curves], axis=0)
    rand = np.mean([c["random"] for c in curves], axis=0)
    gap = rand - top
    area = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(fractions)))
    return {
        "fractions": fractions.tolist(),
        "top": top.tolist(),
        "random": rand.tolist(),
        "area_between": area,
        "passed": bool(np.all(top[1:] < rand[1:])),
    }


def pointing(
    att_map: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_]
) -> dict[str, float]:
    """Return the positive attribution's share inside ``mask`` and the mask's area.

    Args:
        att_map: (h, w) attribution.
        mask: bool (h, w) planted structures, on the same pixels.

    Returns:
        ``{"mass_share", "area_share", "ratio"}``: positive attribution inside the
        mask over all positive attribution, the mask's pixels over all pixels,
        and their ratio (> 1: the attribution concentrates on the structures;
        NaN when the mask or the positive attribution is empty).
    """
    pos = np.clip(np.asarray(att_map, np.float64), 0, None)
    m = np.asarray(mask, bool)
    total = float(pos.sum())
    area = float(m.mean())
    mass = float(pos[m].sum() / total) if total > 0 else float("nan")
    ratio = mass / area if area > 0 and total > 0 else float("nan")
    return {"mass_share": mass, "area_share": area, "ratio": ratio}
