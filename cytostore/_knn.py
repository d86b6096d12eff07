"""The package's one kNN vote: neighbours' labels weighted by ``exp(cos / T)``.

Used by the kNN head (``heads``) and the pretraining kNN monitor (``embedder``),
which never import each other; numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["knn_vote", "TEMPERATURE"]

#: DINO's kNN temperature ([0] Caron et al., DINO, 2021,
#: https://arxiv.org/abs/2104.14294).
TEMPERATURE = 0.07


def knn_vote(
    similarity: npt.ArrayLike,
    neighbour_labels: npt.ArrayLike,
    n_classes: int,
    *,
    temperature: float | None = TEMPERATURE,
) -> npt.NDArray[np.float64]:
    """Return each query's normalised class votes from its neighbours.

    Each neighbour votes for its class with weight ``exp(cos / temperature)``
    (computed as ``exp((cos - 1) / temperature)``, the same after normalising, and
    free of overflow), or ``1`` when ``temperature`` is ``None`` (majority vote).

    Args:
        similarity: float (n_queries, k) cosine similarities of the neighbours.
        neighbour_labels: int (n_queries, k) class indices in ``[0, n_classes)``.
        n_classes: Number of classes.
        temperature: Softness of the weights; ``None``: uniform weights.

    Returns:
        float64 (n_queries, n_classes) votes summing to 1 per row (0 where a query
        has no neighbour).

    Examples:
        >>> v = knn_vote([[0.9, 0.8, 0.1]], [[1, 1, 0]], 2, temperature=None)
        >>> v.round(3).tolist()
        [[0.333, 0.667]]
    """
    sim = np.asarray(similarity, dtype=np.float64)
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    if temperature is None:
        weights: npt.NDArray[Any] = np.ones_like(sim)
    else:
        weights = np.exp((sim - 1.0) / temperature)
    votes = np.zeros((sim.shape[0], n_classes), dtype=np.float64)
    np.add.at(votes, (np.arange(sim.shape[0])[:, None], labels), weights)
    total = votes.sum(axis=1, keepdims=True)
    return votes / np.where(total > 0, total, 1.0)
