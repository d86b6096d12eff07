"""Gated attention-based multiple-instance learning (ABMIL) on bags of cell embeddings.

[0] Ilse, Tomczak, Welling, Attention-based Deep Multiple Instance Learning, ICML
2018, https://arxiv.org/abs/1802.04712 (the gated variant, their eq. 9).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from cytostore.errors import InvalidArgumentError
from cytostore.heads._base import (
    BaseHead,
    Integral,
    Interval,
    Real,
    StrOptions,
    balanced_weights,
    load_module_state,
    resolve_device,
    seeded,
)
from cytostore.heads.splits import inner_validation_split

__all__ = ["ABMILHead", "GatedAttention", "PriorCorrected", "as_bags", "refit_epochs"]

logger = logging.getLogger(__name__)

Bags = Sequence[npt.NDArray[Any]]


class GatedAttention(nn.Module):
    """Gated attention pooling with a linear classifier on the pooled bag.

    ``h = ReLU(W_in x)``, ``a = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))``,
    ``logits = W_out sum_i a_i h_i``.

    Args:
        dim: Cell embedding width.
        hidden: Width of the projected cell features ``h``.
        attention_dim: Width of the gated attention layer.
        n_classes: Number of bag classes.
        dropout: Dropout on ``h``.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        *,
        dim: int,
        hidden: int,
        attention_dim: int,
        n_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.project = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        self.attention_v = nn.Linear(hidden, attention_dim)
        self.attention_u = nn.Linear(hidden, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool padded bags and classify them.

        Args:
            x: float32 (batch, max_cells, dim) cell embeddings, zero-padded.
            mask: bool (batch, max_cells), True for real cells.

        Returns:
            ``(logits, attention)``: (batch, n_classes) and (batch, max_cells), the
            attention summing to 1 over each bag's real cells (0 on padding).
        """
        h = self.project((x - self.mean) / self.scale)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        scores = self.attention_w(gate).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bn,bnh->bh", attention, h)
        return self.classifier(pooled), attention


class PriorCorrected(nn.Module):
    """A :class:`GatedAttention` whose logits have the log class prior subtracted.

    ``softmax(logits - log prior)`` is the posterior divided by the prior and
    renormalised: :meth:`ABMILHead.predict_proba` with ``prior_correction``.

    Args:
        module: The trained pooling and classifier.
        log_prior: float32 (n_classes,) log training class prior.
    """

    log_prior: torch.Tensor

    def __init__(self, module: GatedAttention, log_prior: torch.Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("log_prior", log_prior)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits - log prior, attention)`` (shapes of GatedAttention)."""
        logits, attention = self.module(x, mask)
        return logits - self.log_prior, attention


def as_bags(bags: Any, n_features: int | None = None) -> list[npt.NDArray[np.float32]]:
    """Return ``bags`` as a list of float32 (n_cells, dim) arrays.

    Raises:
        InvalidArgumentError: If a bag is empty, not 2-D, non-finite, or too wide.
    """
    if isinstance(bags, np.ndarray) and bags.ndim == 2:
        raise InvalidArgumentError(
            "MIL heads take bags: a list of (n_cells, dim) arrays, one per patient, "
            "not a single matrix"
        )
    out: list[npt.NDArray[np.float32]] = []
    for i, bag in enumerate(bags):
        arr = np.ascontiguousarray(np.asarray(bag, dtype=np.float32))
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise InvalidArgumentError(
                f"bag {i} has shape {arr.shape}: every bag must be a non-empty "
                "(n_cells, dim) array"
            )
        width = (
            n_features if n_features is not None else (out[0].shape[1] if out else None)
        )
        if width is not None and arr.shape[1] != width:
            raise InvalidArgumentError(
                f"bag {i} has {arr.shape[1]} features, expected {width}: use "
                "embeddings "
                "of one model"
            )
        if not np.isfinite(arr).all():
            raise InvalidArgumentError(f"bag {i} holds NaN or infinite values")
        out.append(arr)
    return out


def _pad(
    bags: Sequence[npt.NDArray[np.float32]], device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    n_max = max(b.shape[0] for b in bags)
    x = torch.zeros(len(bags), n_max, bags[0].shape[1])
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : b.shape[0]] = torch.from_numpy(b)
        mask[i, : b.shape[0]] = True
    return x.to(device), mask.to(device)


def _mean_loss(
    module: GatedAttention,
    batches: list[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]],
    weight: torch.Tensor | None,
) -> float:
    """Return the (class-weighted) mean cross-entropy of ``module`` on ``batches``."""
    module.eval()
    total, norm = 0.0, 0.0
    with torch.no_grad():
        for (x, mask), yv in batches:
            logits, _ = module(x, mask)
            total += float(F.cross_entropy(logits, yv, weight=weight, reduction="sum"))
            norm += float(weight[yv].sum()) if weight is not None else yv.numel()
    return total / max(norm, 1e-12)


def refit_epochs(best_epochs: Sequence[int], *, min_epochs: int = 1) -> int:
    """Return the epoch count of the final refit from the folds' best epochs.

    The median (rounded up) of the folds' best epochs, at least ``min_epochs``: one
    fold whose validation loss happened to be lowest early cannot shorten the
    refit, and neither can a minority of them.

    Args:
        best_epochs: ``best_epoch_`` of each fold's head.
        min_epochs: The least epochs to train (the heads' ``min_epochs``).

    Returns:
        The number of epochs to train the head on every bag (``>= 1``).

    Raises:
        InvalidArgumentError: If ``best_epochs`` is empty.

    Examples:
        >>> refit_epochs([1, 1, 10, 1, 9], min_epochs=10)
        10
        >>> refit_epochs([12, 30, 17, 14], min_epochs=10)
        16
    """
    if len(best_epochs) == 0:
        raise InvalidArgumentError(
            "refit_epochs needs the best epoch of at least one fold: "
            "cross-validate first"
        )
    return max(1, int(min_epochs), int(np.ceil(np.median(np.asarray(best_epochs)))))


class ABMILHead(BaseHead):
    """Gated attention-MIL classifier of bags (one bag of cell embeddings per patient).

    Trained with AdamW on padded mini-batches of bags. By default the loss weighs
    each class by ``n_bags / (n_classes * n_bags_of_class)`` (``class_weight=
    "balanced"``, as in scikit-learn), so a 3:1 cohort does not teach the head to
    call every patient the majority class.

    **Early stopping** holds out a stratified ``val_size`` part of the bags (or uses
    ``fit(..., validation=...)``), smooths the per-epoch validation loss with an
    exponential moving average (``ema = smoothing * ema + (1 - smoothing) * loss``)
    and keeps the weights of the epoch with the lowest smoothed loss, never one
    before ``min_epochs`` (capped at ``max_epochs``); training stops ``patience``
    epochs after the last improvement. With ``early_stopping=False`` it trains
    exactly ``max_epochs`` on all bags (the refit on every bag, with the length
    :func:`refit_epochs` chooses from the cross-validation folds).

    **Decision rule**: ``predict`` returns the class of highest posterior
    (``argmax`` of ``predict_proba``). With ``prior_correction=True`` the head is
    trained on the natural class frequencies (it requires ``class_weight=None``)
    and the posterior is divided by the training class prior ``class_prior_`` and
    renormalised, ``p'(c|bag) = (p(c|bag) / prior_c) / sum_k p(k|bag) / prior_k``:
    the decision as if all classes were equally likely. The prior is the class
    frequency among the bags passed to ``fit`` (never the ``validation`` bags nor
    any test bag), and is saved with the head.

    Args:
        hidden: Width of the projected cell features.
        attention_dim: Width of the gated attention layer.
        dropout: Dropout on projected features.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Bags per mini-batch.
        max_epochs: Upper bound on epochs.
        min_epochs: Epochs always trained before an epoch may be kept (early
            stopping never keeps an earlier one); capped at ``max_epochs``.
        patience: Epochs without improvement of the smoothed validation loss
            (counted from ``min_epochs``) before stopping.
        smoothing: Weight of the past in the moving average of the validation loss,
            in [0, 1); 0 uses each epoch's raw loss.
        val_size: Fraction of bags held out for early stopping.
        early_stopping: Whether to hold out bags and stop early.
        class_weight: ``"balanced"`` (weigh classes equally in the loss) or
            ``None`` (every bag weighs 1).
        prior_correction: Divide the training class prior out of the posterior
            (needs ``class_weight=None``; see the decision rule above).
        seed: Seed of initialisation, shuffling and the validation split.
        device: Torch device.

    Attributes:
        classes_: Sorted bag labels.
        class_prior_: float64 (n_classes,), each class's fraction of the bags
            passed to ``fit`` (its training bags).
        module_: The trained :class:`GatedAttention` (CPU).
        best_epoch_: Epoch kept; ``n_epochs_``: epochs run.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> bags = [rng.normal(0, 1, (20, 8)) for _ in range(20)]
        >>> for b in bags[10:]:
        ...     b[:3] += 4.0
        >>> head = ABMILHead(max_epochs=30, seed=0).fit(bags, [0] * 10 + [1] * 10)
        >>> head.score(bags, [0] * 10 + [1] * 10) > 0.9
        True
        >>> head.best_epoch_ >= head.min_epochs
        True
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "attention_dim": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "min_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "smoothing": [Interval(Real, 0, 1, closed="left")],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "early_stopping": ["boolean"],
        "class_weight": [StrOptions({"balanced"}), None],
        "prior_correction": ["boolean"],
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
        hidden: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 8,
        max_epochs: int = 40,
        min_epochs: int = 10,
        patience: int = 8,
        smoothing: float = 0.6,
        val_size: float = 0.2,
        early_stopping: bool = True,
        class_weight: str | None = "balanced",
        prior_correction: bool = False,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.hidden = hidden
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs
        self.patience = patience
        self.smoothing = smoothing
        self.val_size = val_size
        self.early_stopping = early_stopping
        self.class_weight = class_weight
        self.prior_correction = prior_correction
        self.seed = seed
        self.device = device

    def fit(
        self,
        X: Any,
        y: Any,
        validation: tuple[Any, Any] | None = None,
    ) -> ABMILHead:
        """Fit on bags ``X`` (list of (n_cells, dim) arrays) and bag labels ``y``.

        Args:
            X: One (n_cells, dim) array per bag.
            y: One label per bag.
            validation: ``(bags, labels)`` for early stopping instead of a split of
                ``X`` (labels must be among those of ``y``).

        Returns:
            ``self``.

        Raises:
            InvalidArgumentError: If a parameter or a bag is invalid.
            LabelError: If ``y`` has fewer than two classes.
        """
        self._validate_params()
        if self.prior_correction and self.class_weight is not None:
            raise InvalidArgumentError(
                "ABMILHead: prior_correction=True divides the training class prior "
                "out of a head trained on the natural class frequencies, but "
                f"class_weight={self.class_weight!r} already weighs the classes "
                "equally (the prior would be divided out twice): pass "
                "class_weight=None with prior_correction=True"
            )
        bags = as_bags(X)
        y_idx = self._encode_labels(y)
        if len(bags) != y_idx.size:
            raise InvalidArgumentError(
                f"{len(bags)} bags but {y_idx.size} labels: pass one label per bag"
            )
        n_classes = self.classes_.size
        # the prior of the bags passed to fit only: never validation or test bags
        self.class_prior_ = np.bincount(y_idx, minlength=n_classes) / y_idx.size
        device = resolve_device(self.device)
        train_bags, train_y = bags, y_idx
        val_bags: list[npt.NDArray[np.float32]] = []
        val_y = np.zeros(0, np.int64)
        if validation is not None:
            val_bags = as_bags(validation[0], bags[0].shape[1])
            pos = {c: i for i, c in enumerate(self.classes_.tolist())}
            val_y = np.asarray(
                [pos[v] for v in np.asarray(validation[1]).tolist()], np.int64
            )
        elif self.early_stopping:
            tr, va = inner_validation_split(y_idx, self.val_size, self.seed)
            if va.size:
                train_bags = [bags[i] for i in tr]
                train_y = y_idx[tr]
                val_bags = [bags[i] for i in va]
                val_y = y_idx[va]
        stacked = np.concatenate(train_bags)
        with seeded(self.seed):
            module = GatedAttention(
                dim=stacked.shape[1],
                hidden=self.hidden,
                attention_dim=self.attention_dim,
                n_classes=n_classes,
                dropout=self.dropout,
            )
            module.mean.copy_(torch.from_numpy(stacked.mean(0)))
            module.scale.copy_(torch.from_numpy(np.maximum(stacked.std(0), 1e-6)))
            module.to(device)
            best_epoch, epoch = self._train(
                module, (train_bags, train_y), (val_bags, val_y), device
            )
        self.module_ = module.to("cpu").eval()
        self.n_epochs_ = epoch
        self.best_epoch_ = best_epoch
        self.n_features_in_ = stacked.shape[1]
        logger.info("abmil: %d epochs, kept %d", epoch, best_epoch)
        return self

    def _weights(
        self, y_idx: npt.NDArray[np.int64], device: str | torch.device
    ) -> torch.Tensor | None:
        """Return the loss's class weights for labels ``y_idx`` (``None``: all 1)."""
        if self.class_weight != "balanced":
            return None
        return torch.from_numpy(balanced_weights(y_idx, self.classes_.size)).to(device)

    def _train(
        self,
        module: GatedAttention,
        train: tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.int64]],
        val: tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.int64]],
        device: str | torch.device,
    ) -> tuple[int, int]:
        """Train ``module``, leaving it at the kept epoch's weights.

        Sets ``val_losses_`` (the raw validation loss of every epoch run; empty
        without validation bags).

        Returns:
            ``(best_epoch, n_epochs)``: the epoch kept (the lowest smoothed
            validation loss at or after ``min_epochs``; the last epoch without
            validation bags) and the epochs run.
        """
        (train_bags, train_y), (val_bags, val_y) = train, val
        weight, val_weight = (
            self._weights(train_y, device),
            self._weights(val_y, device),
        )
        opt = torch.optim.AdamW(
            module.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        gen = torch.Generator().manual_seed(self.seed)
        yt = torch.from_numpy(train_y).to(device)
        val_batches = [
            (
                _pad(val_bags[s : s + 32], device),
                torch.from_numpy(val_y[s : s + 32]).to(device),
            )
            for s in range(0, len(val_bags), 32)
        ]
        min_epochs = min(self.min_epochs, self.max_epochs)
        self.val_losses_: list[float] = []
        ema = best = float("inf")
        best_state, best_epoch, bad, epoch = None, 0, 0, 0
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            order = torch.randperm(len(train_bags), generator=gen).tolist()
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                x, mask = _pad([train_bags[i] for i in idx], device)
                logits, _ = module(x, mask)
                loss = F.cross_entropy(logits, yt[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if not val_batches:
                best_epoch = epoch
                continue
            vloss = _mean_loss(module, val_batches, val_weight)
            self.val_losses_.append(vloss)
            ema = (
                vloss
                if epoch == 1
                else self.smoothing * ema + (1.0 - self.smoothing) * vloss
            )
            if epoch < min_epochs:
                continue
            if ema < best - 1e-6:
                best, best_epoch, bad = ema, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        return best_epoch, epoch

    def _forward(
        self, X: Any
    ) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.float64]]]:
        self._check_fitted()
        bags = as_bags(X, self.n_features_in_)
        probas: list[npt.NDArray[np.float64]] = []
        attention: list[npt.NDArray[np.float64]] = []
        with torch.no_grad():
            for s in range(0, len(bags), 32):
                chunk = bags[s : s + 32]
                x, mask = _pad(chunk, "cpu")
                logits, att = self.module_(x, mask)
                probas.append(torch.softmax(logits.double(), dim=1).numpy())
                for i, b in enumerate(chunk):
                    attention.append(att[i, : b.shape[0]].double().numpy())
        if not probas:
            return np.zeros((0, self.classes_.size)), []
        proba = np.concatenate(probas)
        if self.prior_correction:
            proba = proba / self.class_prior_
            proba /= proba.sum(axis=1, keepdims=True)
        return proba, attention

    def _state_module(self) -> Any:
        return self.module_

    def _extra_state(self) -> dict[str, Any]:
        return {"class_prior_": [float(p) for p in self.class_prior_]}

    def _load_extra_state(self, learned: dict[str, Any]) -> None:
        """Set ``class_prior_`` (heads saved before it existed get none).

        Raises:
            ValueError: If the saved prior is not one positive number per class.
        """
        prior = learned.get("class_prior_")
        if prior is None and not self.prior_correction:
            return
        values = prior if isinstance(prior, list) else []
        if len(values) != self.classes_.size or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1
            for v in values
        ):
            raise ValueError(
                f"the state's class_prior_ {prior!r} is not one positive fraction "
                "per class"
            )
        self.class_prior_ = np.asarray(values, dtype=np.float64)

    def _load_module_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        module = GatedAttention(
            dim=int(self.n_features_in_),
            hidden=self.hidden,
            attention_dim=self.attention_dim,
            n_classes=int(self.classes_.size),
            dropout=self.dropout,
        )
        load_module_state(module, state)
        self.module_ = module

    def logits_module(self) -> nn.Module:
        """Return the head as a differentiable torch module (for attributions).

        Returns:
            An eval-mode copy of :attr:`module_` taking ``(x, mask)`` (float32
            (batch, max_cells, dim), bool (batch, max_cells)) to ``(logits,
            attention)`` as :class:`GatedAttention` does; with ``prior_correction``
            the log class prior is subtracted from the logits
            (:class:`PriorCorrected`), so their softmax is always
            :meth:`predict_proba`.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        self._check_fitted()
        module = copy.deepcopy(self.module_).eval()
        if not self.prior_correction:
            return module
        log_prior = torch.log(torch.as_tensor(self.class_prior_, dtype=torch.float32))
        return PriorCorrected(module, log_prior).eval()

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Return bag probabilities, shape (n_bags, n_classes), ``classes_`` order.

        The softmax posterior; with ``prior_correction`` divided by
        ``class_prior_`` and renormalised (each row sums to 1). ``predict`` is its
        ``argmax``.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        return self._forward(X)[0]

    def attention(self, X: Any) -> list[npt.NDArray[np.float64]]:
        """Return each bag's attention over its cells (n_cells,), summing to 1.

        Raises:
            NotFittedError: If called before ``fit``.
        """
        return self._forward(X)[1]
