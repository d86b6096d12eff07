"""``explain --pixels``: which pixels of the deciding cells drive a head's call.

For a cell head, the attribution of its logit for the predicted (or chosen) class
to the cell's pixels; for an attention-MIL head, the attribution of the patient's
logit to the pixels of each of its top-attention cells, one cell at a time, the
other cells' stored embeddings held fixed (the bag's attention is recomputed with
the explained cell's new embedding, so attention shifts count too). Gradients flow
through the head and the frozen backbone that made the embeddings; the cell is
preprocessed exactly as at embedding time, and the map is drawn back onto the
original image.

This follows the question of Sadafi et al. [0] (relevance of a MIL patient call
down to the single cells' pixels, through the head and the feature extractor),
with integrated gradients or gradient × input instead of their layer-wise
relevance propagation.

[0] Sadafi et al., Pixel-level explanation of multiple instance learning models in
biomedical single cell images, IPMI 2023, https://arxiv.org/abs/2303.08632
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cytostore.explain.attribution import (
    DEFAULT_BASELINE_SIGMA_UM,
    DEFAULT_STEPS,
    Attribution,
    attribute,
    to_pixels,
)
from cytostore.explain.checks import (
    deletion_curve,
    deletion_summary,
    pointing,
    randomisation_summary,
    rank_correlation,
)
from cytostore.explain.explainer import ExplainedCell, Explainer
from cytostore.explain.maps import (
    mask_to_crop,
    overlay,
    peak,
    save_pair,
    to_original,
)
from cytostore.store import Store

__all__ = ["explain_pixels", "run_checks", "STRUCTURE_BITS"]

logger = logging.getLogger(__name__)

#: Mask bits of the synthetic generator that the pointing test counts: granules
#: and Auer rods (cytostore.data.synth.MASK_BITS).
STRUCTURE_BITS = 4 | 8


def explain_pixels(
    store: Store | str | os.PathLike[str],
    head: str,
    *,
    cell: int | None = None,
    patient: str | None = None,
    method: str = "ig",
    cells: int = 3,
    target: str | None = None,
    steps: int = DEFAULT_STEPS,
    baseline_sigma_um: float = DEFAULT_BASELINE_SIGMA_UM,
    montage: str | os.PathLike[str] | None = None,
    checks: bool = False,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Explain a head's call with pixel attribution maps of the deciding cells.

    Args:
        store: The store (or its folder).
        head: A saved linear or MLP cell head (with ``cell``) or MIL head (with
            ``patient``).
        cell: Cell id to explain.
        patient: Patient to explain, ``ID`` or ``DATASET/ID``.
        method: ``ig`` (integrated gradients from a blurred baseline) or
            ``gradxinput`` (gradient × input, one backward pass).
        cells: The patient's top-attention cells to explain.
        target: Class whose output is explained (default: the predicted one).
        steps: Integration points of ``ig``.
        baseline_sigma_um: Blur (µm) of the baseline of ``ig`` and of the pixels
            the deletion check removes.
        montage: Write a PNG here: each cell, its overlay and its attention; each
            cell's original and overlay also go to ``<montage stem>.cell<ID>.png``.
        checks: Also run the randomisation and deletion checks on these cells
            (and pointing, where the generator's structure masks exist).
        device: Torch device.
        precision: Autocast of the backbone: ``auto`` (as ``embed`` on this
            device: bf16 on CUDA and on CPUs with native bf16, else fp32), ``fp32``,
            ``bf16`` or ``fp16`` (CUDA).
        batch_size: Images per forward pass.
        seed: Seed of the randomised backbone and the random deletion orders.
        progress: Called with ``(done, total)`` cells.

    Returns:
        ``{"head", "kind", "model", "patient", "cell_id", "prediction", "target",
        "method", "steps", "baseline_sigma_um", "precision", "cells": [{"cell_id",
        "attention", "total_attribution", "completeness_error", "logit",
        "baseline_logit", "peak": {"x", "y"}, "embedding_cosine", "overlay"}],
        "montage", "checks"}``. ``peak`` is the largest attribution's pixel in the
        original image; ``embedding_cosine`` compares the backbone's embedding of
        the crop with the stored vector (1: the explanation sees what the head
        saw); ``overlay`` and ``montage`` are PNG paths or None; ``checks`` is
        None unless asked.

    Raises:
        InvalidArgumentError: Bad arguments (see :class:`Explainer`), an unknown
            method or a non-positive ``steps``.
        UnknownHeadError, UnknownCellError, UnknownPatientError: As
            :class:`Explainer` says.
    """
    ex = Explainer(
        store,
        head,
        cell=cell,
        patient=patient,
        cells=cells,
        target=target,
        device=device,
        precision=precision,
    )
    sigma_px = ex.sigma_px(baseline_sigma_um)
    out = ex.describe()
    out.update(
        cell_id=int(cell) if cell is not None else None,
        method=method,
        steps=steps if method == "ig" else None,
        baseline_sigma_um=float(baseline_sigma_um),
        precision=ex.precision,
    )
    results: list[dict[str, Any]] = []
    attributions: list[Attribution] = []
    total = len(ex.cells)
    if progress is not None:
        progress(0, total)
    for i, c in enumerate(ex.cells):
        model = ex.model(c)
        att = attribute(
            model,
            c.crop,
            ex.target,
            method=method,
            steps=steps,
            baseline_sigma_px=sigma_px,
            batch_size=batch_size,
        )
        attributions.append(att)
        results.append(_summary(ex, c, att))
        if progress is not None:
            progress(i + 1, total)
    out["cells"] = results
    out["montage"] = None
    if montage is not None:
        out["montage"] = str(_draw(ex, attributions, results, Path(montage), method))
    out["checks"] = None
    if checks:
        out["checks"] = run_checks(
            ex,
            attributions,
            method=method,
            steps=steps,
            sigma_px=sigma_px,
            batch_size=batch_size,
            seed=seed,
        )
    return out


def _summary(ex: Explainer, c: ExplainedCell, att: Attribution) -> dict[str, Any]:
    import torch

    h, w = c.image.shape[:2]
    on_image = to_original(att.map, h, w, ex.preprocessing, c.um_per_px)
    x, y = peak(on_image)
    with torch.no_grad():
        emb = ex.model(c).embed(to_pixels(c.crop[None], ex.device))[0].cpu().numpy()
    stored = c.vector.astype(np.float64)
    norms = float(np.linalg.norm(emb) * np.linalg.norm(stored))
    cos = float(emb @ stored) / max(norms, 1e-12)
    return {
        "cell_id": c.cell_id,
        "attention": c.attention,
        "total_attribution": float(att.map.sum()),
        "completeness_error": att.delta,
        "logit": att.logit,
        "baseline_logit": att.baseline_logit,
        "peak": {"x": x, "y": y},
        "embedding_cosine": cos,
        "overlay": None,
    }


def _draw(
    ex: Explainer,
    attributions: list[Attribution],
    results: list[dict[str, Any]],
    out: Path,
    method: str,
) -> Path:
    from cytostore.data import montage

    images, captions = [], []
    for c, att, res in zip(ex.cells, attributions, results, strict=True):
        h, w = c.image.shape[:2]
        on_image = to_original(att.map, h, w, ex.preprocessing, c.um_per_px)
        painted = overlay(c.image, on_image)
        pair = out.with_name(f"{out.stem}.cell{c.cell_id}.png")
        res["overlay"] = str(save_pair(c.image, painted, pair))
        first = f"cell {c.cell_id}"
        if c.attention is not None:
            first += f"\natt {c.attention:.3f}"
        images += [c.image, painted]
        captions += [
            first,
            f"{method} -> {ex.classes[ex.target]}\nsum {res['total_attribution']:.3g}",
        ]
    who = f"patient {ex.patient}" if ex.patient else f"cell {ex.cells[0].cell_id}"
    pred = ex.classes[ex.predicted]
    title = (
        f"{who}: {pred} (p={ex.probabilities[ex.predicted]:.2f}); red for "
        f"{ex.classes[ex.target]}, blue against"
    )
    return montage(images, captions, out, ncols=2, title=title, tile_px=160)


def run_checks(
    ex: Explainer,
    attributions: list[Attribution],
    *,
    method: str = "ig",
    steps: int = DEFAULT_STEPS,
    sigma_px: float = 8.0,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the randomisation, deletion and pointing checks on explained cells.

    Args:
        ex: The explainer whose :attr:`~Explainer.cells` were attributed.
        attributions: One attribution per cell, made with ``method``.
        method: The attribution method (the randomised maps use it too).
        steps: Integration points of ``ig``.
        sigma_px: Blur of the baseline, crop pixels.
        batch_size: Images per forward pass.
        seed: Seed of the random backbone and the random deletion orders.

    Returns:
        ``{"randomisation": randomisation_summary, "deletion": deletion_summary,
        "pointing": {"cells", "mass_share", "area_share", "ratio"} or None (no
        structure masks)}``; see :mod:`cytostore.explain.checks`.
    """
    from cytostore.data.synth import structure_mask

    random_backbone = ex.random_backbone(seed)
    rhos, signed, curves, points = [], [], [], []
    for c, att in zip(ex.cells, attributions, strict=True):
        rand = attribute(
            ex.model(c, random_backbone),
            c.crop,
            ex.target,
            method=method,
            steps=steps,
            baseline_sigma_px=sigma_px,
            batch_size=batch_size,
        )
        rhos.append(rank_correlation(att.map, rand.map))
        signed.append(rank_correlation(att.map, rand.map, absolute=False))
        curves.append(
            deletion_curve(
                ex.model(c),
                c.crop,
                att.map,
                att.baseline,
                ex.target,
                seed=seed,
                batch_size=batch_size,
            )
        )
        mask = structure_mask(c.path)
        if mask is not None and mask.shape == c.image.shape[:2]:
            planted = mask_to_crop(
                (mask & STRUCTURE_BITS) > 0, ex.preprocessing, c.um_per_px
            )
            if planted.any():
                points.append(pointing(att.map, planted))
    point_summary = None
    if points:
        point_summary = {
            "cells": len(points),
            "mass_share": float(np.mean([p["mass_share"] for p in points])),
            "area_share": float(np.mean([p["area_share"] for p in points])),
        }
        point_summary["ratio"] = (
            point_summary["mass_share"] / point_summary["area_share"]
        )
    return {
        "randomisation": randomisation_summary(rhos, signed=signed),
        "deletion": deletion_summary(curves),
        "pointing": point_summary,
    }
