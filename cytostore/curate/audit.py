"""``audit``: a label-issue score for every labelled cell, into ``label_issues``.

Two out-of-sample opinions about each cell's class, averaged, then confident
learning [0] over the average:

1. **probe**: out-of-fold probabilities of a linear probe
   (:class:`~cytostore.heads.LinearProbe`) from K folds that keep each patient's
   cells in one fold (label-stratified; plain stratified folds when the cells have
   no patients), so a cell is never judged by a model that saw its patient;
2. **neighbours**: the vote of the cell's ``k`` nearest cells from *other*
   patients (the store's search; weights ``exp(cos / 0.07)``, the package's one
   kNN vote), so a patient's batch look cannot vouch for its own labels.

``pred_probs = (probe + neighbours) / 2`` (the probe alone where a cell has no
neighbour from another patient). cleanlab then gives ``is_issue``
(``cleanlab.filter.find_label_issues``: prune by noise rate of the confident joint,
whose per-class thresholds allow for classes that look alike) and a label quality
``q`` (``cleanlab.rank.get_label_quality_scores``: the mean of its
``self_confidence``, the probability of the given label, and its
``normalized_margin``, that probability against the best other class's).
``score = (is_issue + 1 - q) / 2``: 0-1, higher = more likely mislabelled, above
0.5 exactly for the flagged cells (every flagged cell ranks above every other);
``rank`` orders by score (ties by cell id); ``suggested_label`` is the most
probable class; ``neighbor_agreement`` is the plain share of the ``k`` neighbours
that carry the given label. (On planted flips in ``bench/bench_audit.py``
self-confidence alone ranks uniform noise slightly better, the margin noise towards
a look-alike class; the mean and the flags-first order hold up on both.)

[0] Northcutt, Jiang, Chuang, Confident Learning: Estimating Uncertainty in Dataset
Labels, JAIR 2021, https://arxiv.org/abs/1911.00068
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore._knn import TEMPERATURE, knn_vote
from cytostore.curate._common import (
    GROUP_COLUMNS,
    groups_of,
    open_store,
    other_group_neighbors,
    plain,
    tiles,
)
from cytostore.errors import InvalidArgumentError, LabelError
from cytostore.heads.evaluate import cross_validate, make_folds
from cytostore.heads.linear import LinearProbe
from cytostore.store import (
    Store,
    check_run_name,
    is_missing,
    load_cells,
    write_label_issues,
)

__all__ = ["AuditResult", "LabelScores", "audit", "score_label_issues"]

logger = logging.getLogger(__name__)

#: Folds of the out-of-fold probabilities.
FOLDS = 5
#: Neighbours from other patients per cell.
K_NEIGHBORS = 20


@dataclass(frozen=True)
class LabelScores:
    """Per-cell outputs of :func:`score_label_issues`, row-aligned with its input.

    Attributes:
        score: float64 (n,) 0-1, higher = more likely mislabelled.
        rank: int64 (n,) 1 = most suspect.
        suggested: int64 (n,) most probable class index.
        is_issue: bool (n,) flagged by confident learning.
        neighbor_agreement: float64 (n,) share of neighbours with the given label
            (NaN without neighbours).
        pred_probs: float64 (n, n_classes) the averaged probabilities.
    """

    score: npt.NDArray[np.float64]
    rank: npt.NDArray[np.int64]
    suggested: npt.NDArray[np.int64]
    is_issue: npt.NDArray[np.bool_]
    neighbor_agreement: npt.NDArray[np.float64]
    pred_probs: npt.NDArray[np.float64]


def score_label_issues(
    labels: npt.ArrayLike,
    probe_probs: npt.ArrayLike,
    neighbor_labels: npt.ArrayLike,
    neighbor_similarity: npt.ArrayLike,
    *,
    weighted: bool = True,
) -> LabelScores:
    """Combine out-of-fold probe probabilities and neighbours into label-issue scores.

    Args:
        labels: int (n,) given class of each cell, in ``[0, n_classes)``.
        probe_probs: float (n, n_classes) out-of-fold probabilities.
        neighbor_labels: int (n, k) class of each neighbour (-1: no neighbour).
        neighbor_similarity: float (n, k) cosine similarity of each neighbour.
        weighted: Weight the neighbours' votes by ``exp(cos / 0.07)``; ``False``
            (sets searched by L2 distance): one vote each.

    Returns:
        The :class:`LabelScores`.

    Raises:
        InvalidArgumentError: If the shapes disagree or fewer than two classes.

    Examples:
        >>> import numpy as np
        >>> y = np.array([0, 0, 0, 1, 1, 1])
        >>> p = np.array([[.9, .1]] * 3 + [[.1, .9]] * 2 + [[.95, .05]])
        >>> nb = np.array([[0, 0]] * 3 + [[1, 1]] * 2 + [[0, 0]])
        >>> s = score_label_issues(y, p, nb, np.ones((6, 2)))
        >>> int(s.rank.argmin()), s.suggested[5].item(), s.is_issue.tolist()
        (5, 0, [False, False, False, False, False, True])
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=np.int64)
    P = np.asarray(probe_probs, dtype=np.float64)
    nb = np.asarray(neighbor_labels, dtype=np.int64)
    sim = np.asarray(neighbor_similarity, dtype=np.float64)
    if (
        P.ndim != 2
        or P.shape[0] != y.size
        or nb.shape != sim.shape
        or (nb.ndim != 2 or nb.shape[0] != y.size)
    ):
        raise InvalidArgumentError(
            f"labels {y.shape}, probabilities {P.shape}, neighbours {nb.shape} and "
            f"similarities {sim.shape} must share their first dimension"
        )
    n_classes = P.shape[1]
    if n_classes < 2:
        raise InvalidArgumentError("a label audit needs two or more classes")
    has = nb >= 0
    votes = knn_vote(
        np.where(has, sim, -np.inf),
        np.maximum(nb, 0),
        n_classes,
        temperature=TEMPERATURE if weighted else None,
    )
    covered: npt.NDArray[np.bool_] = np.asarray(has.any(axis=1), dtype=bool)
    votes[~covered] = 0.0
    mixed = np.where(covered[:, None], (P + votes) / 2.0, P)
    mixed = mixed / np.clip(mixed.sum(axis=1, keepdims=True), 1e-12, None)
    n_nb = has.sum(axis=1)
    same = ((nb == y[:, None]) & has).sum(axis=1)
    agreement = np.where(n_nb > 0, same / np.maximum(n_nb, 1), np.nan)
    with warnings.catch_warnings():  # cleanlab warns about tiny classes; we report
        warnings.simplefilter("ignore")
        quality = (
            np.asarray(
                get_label_quality_scores(y, mixed, method="self_confidence"), np.float64
            )
            + np.asarray(
                get_label_quality_scores(y, mixed, method="normalized_margin"),
                np.float64,
            )
        ) / 2.0
        try:
            flagged = np.asarray(find_label_issues(y, mixed), dtype=bool)
        except ValueError as exc:  # e.g. a class absent from the probabilities
            logger.warning("confident learning could not flag issues: %s", exc)
            flagged = np.zeros(y.size, dtype=bool)
    score = np.clip((flagged + (1.0 - quality)) / 2.0, 0.0, 1.0)
    order = np.lexsort((np.arange(y.size), -score))
    rank = np.empty(y.size, dtype=np.int64)
    rank[order] = np.arange(1, y.size + 1)
    return LabelScores(
        score=score,
        rank=rank,
        suggested=mixed.argmax(axis=1).astype(np.int64),
        is_issue=np.asarray(flagged, dtype=bool),
        neighbor_agreement=agreement.astype(np.float64),
        pred_probs=mixed,
    )


def out_of_fold_probs(
    X: npt.NDArray[Any],
    y: npt.NDArray[np.int64],
    groups: npt.NDArray[np.object_] | None,
    *,
    folds: int = FOLDS,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[npt.NDArray[np.float64], str]:
    """Return out-of-fold linear-probe probabilities ``(n, n_classes)`` and the split.

    Folds are patient-grouped (``heads`` ``patient`` split) when at least ``folds``
    patients are present, otherwise stratified by label.

    Raises:
        LabelError: If a class has fewer cells than folds.
        SplitError: If the split cannot be made.
    """
    n_groups = 0 if groups is None else len({g for g in groups if g is not None})
    split = "patient" if n_groups >= folds else "stratified"
    plan = make_folds(
        split,
        y,
        None if split == "stratified" else list(groups),  # type: ignore[arg-type]
        folds=folds,
        seed=seed,
    )
    cv = cross_validate(
        lambda: LinearProbe(seed=seed, device=device),
        X,
        y,
        None,
        plan.folds,
        progress=progress,
    )
    n_classes = int(y.max()) + 1
    P = np.zeros((y.size, n_classes), dtype=np.float64)
    cols = np.asarray(cv.classes, dtype=np.int64)
    P[np.ix_(cv.rows, cols)] = cv.proba
    return P, split


@dataclass
class AuditResult:
    """What :func:`audit` wrote and found.

    Attributes:
        run: The run's name (rows in ``label_issues`` under it).
        model: The model audited.
        label: The label column.
        n_cells: Cells scored.
        n_issues: Cells flagged by confident learning.
        split: ``patient`` or ``stratified`` folds.
        skipped_classes: Classes left out (fewer cells than folds): ``{class: n}``.
        top: The most suspect rows (dicts with the table's columns).
        montage: The PNG written, if any.
    """

    run: str
    model: str
    label: str
    n_cells: int
    n_issues: int
    split: str
    skipped_classes: dict[str, int] = field(default_factory=dict)
    top: list[dict[str, Any]] = field(default_factory=list)
    montage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        return {
            "run": self.run,
            "model": self.model,
            "label": self.label,
            "n_cells": self.n_cells,
            "n_issues": self.n_issues,
            "split": self.split,
            "skipped_classes": self.skipped_classes,
            "top": self.top,
            "montage": self.montage,
        }


def audit(
    store: Store | str | os.PathLike[str],
    model: str,
    label: str,
    *,
    where: str | None = None,
    name: str | None = None,
    k: int = K_NEIGHBORS,
    folds: int = FOLDS,
    top: int = 12,
    montage: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Score every labelled cell for how likely its label is wrong; write the run.

    See the module docstring for how the score is made. A second audit under the
    same ``name`` replaces that run's rows only.

    Args:
        store: The store (or its folder).
        model: The model whose embeddings are used.
        label: The ``cell_meta`` column audited (cells where it is missing are
            left out).
        where: SQL filter over ``cell_meta`` choosing the cells.
        name: Run name (default ``<label>-<model>``).
        k: Neighbours from other patients per cell.
        folds: Folds of the out-of-fold probabilities.
        top: Rows returned in ``top`` (and drawn in the montage).
        montage: Write a PNG here: each of the ``top`` suspects (red border) beside
            its 5 nearest cells from other patients.
        seed: Seed of the folds and the probe.
        device: Torch device of the probe.
        progress: ``progress(done, total)`` over the folds.

    Returns:
        The :class:`AuditResult`.

    Raises:
        InvalidArgumentError: If ``k``, ``folds`` or ``top`` is out of range or
            the run name is unusable.
        UnknownColumnError: If ``label`` is not a ``cell_meta`` column.
        LabelError: If fewer than two classes have enough cells.
        InvalidWhereError, EmptySelectionError, UnknownEmbeddingSetError: From
            loading the cells.
    """
    st = open_store(store)
    run = check_run_name(name or f"{label}-{model}")
    if k < 1 or folds < 2 or top < 0:
        raise InvalidArgumentError(
            f"k={k}, folds={folds}, top={top}: give k >= 1, folds >= 2 and top >= 0"
        )
    cells = load_cells(st, model, where, [label, *GROUP_COLUMNS])
    values = cells.meta[label]
    keep = np.asarray([not is_missing(v) for v in values], dtype=bool)
    cells = cells.take(np.flatnonzero(keep))
    given = np.asarray([str(v) for v in cells.meta[label]], dtype=object)
    classes, counts = np.unique(given.astype(str), return_counts=True)
    small = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < folds}
    if small:
        logger.warning(
            "classes with fewer than %d cells are not audited: %s", folds, small
        )
        cells = cells.take(np.flatnonzero(~np.isin(given.astype(str), list(small))))
        given = np.asarray([str(v) for v in cells.meta[label]], dtype=object)
        classes = np.unique(given.astype(str))
    if classes.size < 2:
        raise LabelError(
            f"column {label!r} has {classes.size} class(es) with {folds} or more "
            "labelled cells in the selection: an audit needs two; widen --where or "
            "choose another --label"
        )
    y = np.searchsorted(classes, given.astype(str)).astype(np.int64)
    groups = groups_of(cells)
    probs, split = out_of_fold_probs(
        np.asarray(cells.X, dtype=np.float32),
        y,
        groups,
        folds=folds,
        seed=seed,
        device=device,
        progress=progress,
    )
    sim, nb_ids = other_group_neighbors(st, model, cells.ids, groups, k)
    sorter = np.argsort(cells.ids, kind="stable")
    pos = np.searchsorted(cells.ids, np.maximum(nb_ids, 0), sorter=sorter)
    nb_rows = sorter[np.minimum(pos, cells.ids.size - 1)]
    nb_labels = np.where(nb_ids >= 0, y[nb_rows], -1)
    cosine = st.embedding_set(model).metric == "cosine"
    scores = score_label_issues(y, probs, nb_labels, sim, weighted=cosine)
    params = {
        "label": label,
        "where": where,
        "k": k,
        "folds": folds,
        "split": split,
        "seed": seed,
        "skipped_classes": small,
    }
    write_label_issues(
        st,
        run,
        model=model,
        label_column=label,
        params=params,
        cell_ids=cells.ids,
        given_label=given.tolist(),
        suggested_label=classes[scores.suggested].tolist(),
        score=scores.score,
        rank=scores.rank,
        neighbor_agreement=scores.neighbor_agreement,
        is_issue=scores.is_issue,
    )
    order = np.argsort(scores.rank)[:top]
    rows = [
        {
            "rank": int(scores.rank[i]),
            "cell_id": int(cells.ids[i]),
            "given_label": str(given[i]),
            "suggested_label": str(classes[scores.suggested[i]]),
            "score": round(float(scores.score[i]), 4),
            "neighbor_agreement": None
            if np.isnan(scores.neighbor_agreement[i])
            else round(float(scores.neighbor_agreement[i]), 3),
            "is_issue": bool(scores.is_issue[i]),
        }
        for i in order
    ]
    result = AuditResult(
        run=run,
        model=model,
        label=label,
        n_cells=int(cells.ids.size),
        n_issues=int(scores.is_issue.sum()),
        split=split,
        skipped_classes=small,
        top=rows,
    )
    if montage is not None and rows:
        result.montage = str(
            _draw(st, rows, nb_ids, cells.ids, given, sim, Path(montage), result)
        )
    logger.info("audit %s: %d cells, %d flagged", run, result.n_cells, result.n_issues)
    return result


def _draw(
    st: Store,
    rows: list[dict[str, Any]],
    nb_ids: npt.NDArray[np.int64],
    ids: npt.NDArray[np.int64],
    given: npt.NDArray[np.object_],
    sim: npt.NDArray[np.float32],
    out: Path,
    result: AuditResult,
) -> Path:
    """Each suspect (red border) beside its 5 nearest cells from other patients."""
    from cytostore.data import montage

    shown = 5
    at = {int(c): i for i, c in enumerate(ids.tolist())}
    images: list[npt.NDArray[np.uint8]] = []
    captions: list[str] = []
    highlight: list[int] = []
    blank = np.full((8, 8, 3), 255, dtype=np.uint8)
    suspects = [at[r["cell_id"]] for r in rows]
    pictures = tiles(
        st, [r["cell_id"] for r in rows] + nb_ids[suspects, :shown].ravel().tolist()
    )
    for r in rows:
        i = at[r["cell_id"]]
        highlight.append(len(images))
        images.append(pictures[r["cell_id"]])
        captions.append(
            f"#{r['rank']} {r['given_label']}->{r['suggested_label']}\n"
            f"score {r['score']:.2f}"
        )
        for j in range(shown):
            nid = int(nb_ids[i, j]) if j < nb_ids.shape[1] else -1
            if nid < 0:
                images.append(blank)
                captions.append("")
                continue
            images.append(pictures[nid])
            captions.append(f"{given[at[nid]]}\nsim {plain(sim[i, j]):.2f}")
    title = (
        f"audit {result.run}: {result.label} on {result.model}, "
        f"{result.n_issues} of {result.n_cells} cells flagged; "
        "each suspect (red) beside its look-alikes"
        + (" from other patients" if result.split == "patient" else "")
    )
    return montage(
        images, captions, out, ncols=shown + 1, title=title, highlight=highlight
    )
