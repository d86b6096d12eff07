"""kNN head: cosine nearest neighbours with a temperature-weighted vote (as DINO)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cytostore._knn import TEMPERATURE, knn_vote
from cytostore.heads._base import (
    BaseHead,
    Integral,
    Interval,
    Real,
    StrOptions,
    as_matrix,
)

__all__ = ["KNNHead"]


def _normalise(X: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


class KNNHead(BaseHead):
    """Cosine k-nearest-neighbour classifier on frozen embeddings.

    ``weighting="temperature"`` votes with ``exp(cos / temperature)`` per neighbour,
    as in DINO's kNN evaluation ([0] Caron et al., DINO, 2021,
    https://arxiv.org/abs/2104.14294); ``"uniform"`` is a plain majority vote;
    ``k=1`` is the nearest neighbour. Probabilities are the normalised votes.

    Args:
        k: Neighbours per query (capped at the training size).
        temperature: Temperature of the weighted vote.
        weighting: ``"temperature"`` or ``"uniform"``.
        batch_size: Queries per similarity block (memory: batch_size x n_train floats).

    Attributes:
        classes_: Sorted class labels.
        X_fit_: float32 (n_train, dim) unit-norm training embeddings.
        y_fit_: int64 (n_train,) class indices.

    Examples:
        >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> KNNHead(k=1).fit(X, ["a", "a", "b", "b"]).predict([[1.0, 0.2]]).tolist()
        ['a']
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "k": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "weighting": [StrOptions({"temperature", "uniform"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    _state_arrays: ClassVar[tuple[str, ...]] = ("X_fit_", "y_fit_")

    def __init__(
        self,
        *,
        k: int = 20,
        temperature: float = TEMPERATURE,
        weighting: str = "temperature",
        batch_size: int = 1024,
    ) -> None:
        self.k = k
        self.temperature = temperature
        self.weighting = weighting
        self.batch_size = batch_size

    def fit(self, X: Any, y: Any) -> KNNHead:
        """Store unit-norm embeddings ``X`` (n, dim) and labels ``y``; returns ``self``.

        Raises:
            InvalidArgumentError: If a parameter or ``X`` is invalid.
            LabelError: If ``y`` has fewer than two classes.
        """
        Xf, y_idx = self._prepare_fit(X, y)
        self.X_fit_ = _normalise(Xf)
        self.y_fit_ = y_idx
        self.n_features_in_ = Xf.shape[1]
        return self

    def kneighbors(
        self, X: Any, k: int | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Return cosine similarities and training rows of the ``k`` nearest neighbours.

        Returns:
            ``(similarity, rows)``, each (n, k), most similar first.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        import torch

        self._check_fitted()
        Q = _normalise(as_matrix(X, self.n_features_in_))
        kk = min(k or self.k, self.X_fit_.shape[0])
        base = torch.from_numpy(self.X_fit_)
        sims: list[npt.NDArray[np.float32]] = []
        rows: list[npt.NDArray[np.int64]] = []
        for start in range(0, Q.shape[0], self.batch_size):
            s = torch.from_numpy(Q[start : start + self.batch_size]) @ base.T
            top = torch.topk(s, kk, dim=1)
            sims.append(top.values.numpy())
            rows.append(top.indices.numpy().astype(np.int64))
        if not sims:
            return np.zeros((0, kk), np.float32), np.zeros((0, kk), np.int64)
        return np.concatenate(sims), np.concatenate(rows)

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Return normalised neighbour votes, shape (n, n_classes), ``classes_`` order.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        sim, rows = self.kneighbors(X)
        temperature = self.temperature if self.weighting == "temperature" else None
        return knn_vote(
            sim, self.y_fit_[rows], self.classes_.size, temperature=temperature
        )
