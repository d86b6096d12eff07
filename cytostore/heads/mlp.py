"""MLP head: one hidden layer on frozen embeddings, trained with early stopping."""

from __future__ import annotations

import copy
import logging
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from cytostore.heads._base import (
    BaseHead,
    Integral,
    Interval,
    Real,
    StrOptions,
    as_matrix,
    balanced_weights,
    load_module_state,
    resolve_device,
    seeded,
)
from cytostore.heads.splits import inner_validation_split

__all__ = ["MLPHead", "MLP"]

logger = logging.getLogger(__name__)


class MLP(nn.Module):
    """Standardise, then Linear, GELU, Dropout, Linear.

    Args:
        dim: Embedding width.
        hidden: Hidden width.
        n_classes: Output width.
        dropout: Dropout after the hidden layer.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self, *, dim: int, hidden: int, n_classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map embeddings (batch, dim) float32 to logits (batch, n_classes)."""
        out: torch.Tensor = self.net((x - self.mean) / self.scale)
        return out


class MLPHead(BaseHead):
    """One-hidden-layer MLP classifier with AdamW and early stopping on validation loss.

    Args:
        hidden: Width of the hidden layer.
        dropout: Dropout after the hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Mini-batch size.
        max_epochs: Upper bound on epochs.
        patience: Epochs without validation improvement before stopping.
        val_size: Stratified fraction of the training data used for early stopping.
        class_weight: ``"balanced"`` or ``None``.
        seed: Seed of initialisation, shuffling and the validation split.
        device: Torch device.

    Attributes:
        classes_: Sorted class labels.
        module_: The trained torch module (CPU), best validation epoch.
        n_epochs_: Epochs run; ``best_epoch_``: the epoch kept.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> X = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(3, 1, (60, 4))])
        >>> head = MLPHead(max_epochs=20, seed=0).fit(X, [0] * 60 + [1] * 60)
        >>> head.score(X, [0] * 60 + [1] * 60) > 0.9
        True
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "class_weight": [StrOptions({"balanced"}), None],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
    }
    _state_values: ClassVar[tuple[str, ...]] = (
        "n_features_in_",
        "n_epochs_",
        "best_epoch_",
    )

    def __init__(
        self,
        *,
        hidden: int = 256,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 100,
        patience: int = 8,
        val_size: float = 0.1,
        class_weight: str | None = "balanced",
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_size = val_size
        self.class_weight = class_weight
        self.seed = seed
        self.device = device

    def fit(self, X: Any, y: Any) -> MLPHead:
        """Fit on embeddings ``X`` (n, dim) and labels ``y`` (n,); returns ``self``.

        Raises:
            InvalidArgumentError: If a parameter or ``X`` is invalid.
            LabelError: If ``y`` has fewer than two classes.
        """
        Xf, y_idx = self._prepare_fit(X, y)
        n_classes = self.classes_.size
        device = resolve_device(self.device)
        tr, va = inner_validation_split(y_idx, self.val_size, self.seed)
        if va.size == 0:
            va = tr
        weight = (
            torch.from_numpy(balanced_weights(y_idx[tr], n_classes)).to(device)
            if self.class_weight == "balanced"
            else None
        )
        Xt = torch.from_numpy(Xf).to(device)
        yt = torch.from_numpy(y_idx).to(device)
        with seeded(self.seed):
            module = MLP(
                dim=Xf.shape[1],
                hidden=self.hidden,
                n_classes=n_classes,
                dropout=self.dropout,
            )
            module.mean.copy_(torch.from_numpy(Xf[tr].mean(0)))
            module.scale.copy_(torch.from_numpy(np.maximum(Xf[tr].std(0), 1e-6)))
            module.to(device)
            opt = torch.optim.AdamW(
                module.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            gen = torch.Generator().manual_seed(self.seed)
            tr_t = torch.from_numpy(tr)
            best_loss, best_state, best_epoch, bad = float("inf"), None, 0, 0
            epoch = 0
            for epoch in range(1, self.max_epochs + 1):
                module.train()
                order = tr_t[torch.randperm(tr_t.numel(), generator=gen)]
                for start in range(0, order.numel(), self.batch_size):
                    batch = order[start : start + self.batch_size].to(device)
                    loss = F.cross_entropy(module(Xt[batch]), yt[batch], weight=weight)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                module.eval()
                with torch.no_grad():
                    vloss = float(
                        F.cross_entropy(module(Xt[va]), yt[va], weight=weight)
                    )
                if vloss < best_loss - 1e-5:
                    best_loss, best_epoch, bad = vloss, epoch, 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            if best_state is not None:
                module.load_state_dict(best_state)
        self.module_ = module.to("cpu").eval()
        self.n_epochs_ = epoch
        self.best_epoch_ = best_epoch
        self.n_features_in_ = Xf.shape[1]
        logger.info(
            "mlp head: %d epochs, best %d (val loss %.4f)", epoch, best_epoch, best_loss
        )
        return self

    def _state_module(self) -> Any:
        return self.module_

    def _load_module_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        module = MLP(
            dim=int(self.n_features_in_),
            hidden=self.hidden,
            n_classes=int(self.classes_.size),
            dropout=self.dropout,
        )
        load_module_state(module, state)
        self.module_ = module

    def logits_module(self) -> nn.Module:
        """Return the head as a differentiable torch module (for attributions).

        Returns:
            A copy of :attr:`module_` in eval mode: float32 embeddings (n, dim) to
            logits (n, n_classes), whose softmax is :meth:`predict_proba`.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        self._check_fitted()
        return copy.deepcopy(self.module_).eval()

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Return softmax probabilities, shape (n, n_classes), ``classes_`` order.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        self._check_fitted()
        Xf = as_matrix(X, self.n_features_in_)
        with torch.no_grad():
            logits = self.module_(torch.from_numpy(Xf)).double()
        return torch.softmax(logits, dim=1).numpy()
