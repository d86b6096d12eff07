"""Linear probe: multinomial logistic regression on frozen embeddings, in torch."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sklearn.metrics import balanced_accuracy_score

from cytostore.errors import InvalidArgumentError
from cytostore.heads._base import (
    BaseHead,
    Integral,
    Interval,
    Real,
    StrOptions,
    as_matrix,
    balanced_weights,
    resolve_device,
    seeded,
)
from cytostore.heads.splits import inner_validation_split

__all__ = ["LinearProbe"]

logger = logging.getLogger(__name__)


class LinearProbe(BaseHead):
    """Multinomial logistic regression fitted full-batch with L-BFGS (strong Wolfe).

    Features are standardised with the training mean and sd; the L2 penalty
    ``0.5 * l2 * ||W||^2`` is added to the (class-weighted) mean cross-entropy. With
    several ``l2`` candidates, each is fitted on a stratified ``1 - val_size`` part of
    the training data (subsampled to ``max_select_rows``), warm-started from the
    previous (strongest first); the one with the best validation balanced accuracy
    is kept, and the final model is refitted on all the training data from its
    weights.

    Args:
        l2: Penalty weight, or a tuple of candidates chosen on a validation split.
        max_iter: L-BFGS iterations of the final fit (at most 30 per candidate;
            the warm-started refit rarely gains balanced accuracy past 50).
        tol: Gradient tolerance that stops L-BFGS.
        class_weight: ``"balanced"`` (weights ``n / (k * count)``) or ``None``.
        val_size: Fraction of the training data held out to choose ``l2``.
        max_select_rows: Choose ``l2`` on a stratified subsample of at most this
            many training (and validation) rows, then rescale it by
            ``n_subsample / n`` (a fixed prior's weight on the mean loss) for the
            refit on all rows; ``None`` uses every row.
        seed: Seed of the validation split and the initialisation.
        device: Torch device (``"cpu"``, ``"cuda"``, ``"auto"``).

    Attributes:
        classes_: Sorted class labels, shape (n_classes,).
        coef_: float32 (n_classes, dim) weights on the raw (unstandardised) features.
        intercept_: float32 (n_classes,).
        l2_: The penalty of the final fit (the chosen one, rescaled when subsampled).
        val_scores_: ``{l2: validation balanced accuracy}`` (empty with one candidate).
        n_iter_: L-BFGS function evaluations of the final fit.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> X = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(3, 1, (50, 4))])
        >>> y = np.array(["a"] * 50 + ["b"] * 50)
        >>> probe = LinearProbe(seed=0).fit(X, y)
        >>> probe.classes_.tolist(), probe.score(X, y) > 0.95
        (['a', 'b'], True)
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "l2": [Interval(Real, 0, None, closed="left"), tuple, list],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "class_weight": [StrOptions({"balanced"}), None],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "max_select_rows": [Interval(Integral, 100, None, closed="left"), None],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
    }

    _state_arrays: ClassVar[tuple[str, ...]] = ("coef_", "intercept_")
    _state_values: ClassVar[tuple[str, ...]] = ("n_features_in_", "l2_", "n_iter_")

    def __init__(
        self,
        *,
        l2: float | tuple[float, ...] = (1e-2, 1e-3, 1e-4),
        max_iter: int = 50,
        tol: float = 1e-4,
        class_weight: str | None = "balanced",
        val_size: float = 0.1,
        max_select_rows: int | None = 10000,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.val_size = val_size
        self.max_select_rows = max_select_rows
        self.seed = seed
        self.device = device

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Fit on embeddings ``X`` (n, dim) and labels ``y`` (n,); returns ``self``.

        Raises:
            InvalidArgumentError: If a parameter or ``X`` is invalid.
            LabelError: If ``y`` has fewer than two classes.
        """
        import torch

        Xf, y_idx = self._prepare_fit(X, y)
        n_classes = self.classes_.size
        mean = Xf.mean(axis=0, dtype=np.float64).astype(np.float32)
        scale = Xf.std(axis=0, dtype=np.float64).astype(np.float32)
        scale[scale < 1e-12] = 1.0
        device = resolve_device(self.device)
        Xt = torch.from_numpy((Xf - mean) / scale).to(device)
        yt = torch.from_numpy(y_idx).to(device)
        candidates = sorted(
            self.l2 if isinstance(self.l2, tuple | list) else (self.l2,), reverse=True
        )
        if not candidates or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for v in candidates
        ):
            raise InvalidArgumentError(
                f"LinearProbe: l2={self.l2!r} is invalid: pass a float >= 0 or a "
                "non-empty tuple of them"
            )
        with seeded(self.seed):
            W = torch.zeros(n_classes, Xf.shape[1], device=device, requires_grad=True)
            b = torch.zeros(n_classes, device=device, requires_grad=True)
            self.val_scores_: dict[float, float] = {}
            chosen = float(candidates[0])
            tr, va = inner_validation_split(y_idx, self.val_size, self.seed)
            if len(candidates) > 1 and va.size > 0:  # no class of 2 rows: the first
                tr, va = (
                    _subsample(tr, y_idx, self.max_select_rows, self.seed),
                    _subsample(va, y_idx, self.max_select_rows, self.seed + 1),
                )
                best = -1.0
                best_state = (W.detach().clone(), b.detach().clone())
                for lam in candidates:
                    self._lbfgs(
                        W, b, Xt[tr], yt[tr], n_classes, float(lam), select=True
                    )
                    with torch.no_grad():
                        pred = (Xt[va] @ W.T + b).argmax(1).cpu().numpy()
                    score = float(balanced_accuracy_score(y_idx[va], pred))
                    self.val_scores_[float(lam)] = score
                    logger.info("linear probe: l2=%g val balanced acc %.4f", lam, score)
                    if score > best + 1e-4:
                        best, chosen = score, float(lam)
                        best_state = (W.detach().clone(), b.detach().clone())
                with torch.no_grad():
                    W.copy_(best_state[0])
                    b.copy_(best_state[1])
                # the penalty of a fixed prior on the mean loss scales as 1 / n
                chosen *= tr.size / y_idx.size
            self.n_iter_ = self._lbfgs(W, b, Xt, yt, n_classes, chosen)
        self.l2_ = chosen
        Wn = W.detach().cpu().numpy().astype(np.float64)
        bn = b.detach().cpu().numpy().astype(np.float64)
        coef = Wn / scale.astype(np.float64)
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = (bn - coef @ mean.astype(np.float64)).astype(np.float32)
        self.n_features_in_ = Xf.shape[1]
        return self

    def _lbfgs(
        self,
        W: Any,
        b: Any,
        X: Any,
        y: Any,
        n_classes: int,
        lam: float,
        select: bool = False,
    ) -> int:
        import torch
        import torch.nn.functional as F

        weight = None
        if self.class_weight == "balanced":
            weight = torch.from_numpy(balanced_weights(y.cpu().numpy(), n_classes)).to(
                X.device
            )
        opt = torch.optim.LBFGS(
            [W, b],
            lr=1.0,
            max_iter=min(self.max_iter, 30) if select else self.max_iter,
            tolerance_grad=self.tol,
            tolerance_change=1e-7,
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(X @ W.T + b, y, weight=weight)
            loss = loss + 0.5 * lam * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        state = opt.state[opt._params[0]]
        return int(state.get("func_evals", 0))

    def _extra_state(self) -> dict[str, Any]:
        return {"val_scores_": [[k, v] for k, v in self.val_scores_.items()]}

    def _load_extra_state(self, learned: dict[str, Any]) -> None:
        pairs = learned.get("val_scores_", [])
        self.val_scores_ = {float(k): float(v) for k, v in pairs}

    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """Return the logits, shape (n, n_classes).

        Raises:
            NotFittedError: If called before ``fit``.
        """
        self._check_fitted()
        Xf = as_matrix(X, self.n_features_in_)
        return Xf.astype(np.float64) @ self.coef_.T.astype(np.float64) + self.intercept_

    def logits_module(self) -> Any:
        """Return the probe as a differentiable torch module (for attributions).

        Returns:
            A ``torch.nn.Linear`` in eval mode mapping float32 embeddings
            (n, dim) to the logits (n, n_classes) of :meth:`decision_function`
            (its weights are copies: changing them leaves the probe as it is).

        Raises:
            NotFittedError: If called before ``fit``.
        """
        import torch

        self._check_fitted()
        layer = torch.nn.Linear(int(self.n_features_in_), int(self.classes_.size))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(self.coef_, np.float32)))
            layer.bias.copy_(torch.from_numpy(np.asarray(self.intercept_, np.float32)))
        return layer.eval()

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Return softmax probabilities, shape (n, n_classes), in ``classes_`` order.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        z = self.decision_function(X)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def _subsample(
    rows: npt.NDArray[np.int64],
    y_idx: npt.NDArray[np.int64],
    max_rows: int | None,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Return at most ``max_rows`` of ``rows``, stratified (every class kept)."""
    if max_rows is None or rows.size <= max_rows:
        return rows
    rng = np.random.default_rng(seed)
    frac = max_rows / rows.size
    keep: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y_idx[rows]):
        members = rows[y_idx[rows] == c]
        n = max(1, int(round(frac * members.size)))
        keep.append(rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(keep))
