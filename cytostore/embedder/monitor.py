"""Watch a pretraining run: the per-epoch loss, a kNN monitor, and their curves.

Where cells carry labels, a few hundred labelled cells are held out of training; after
every epoch they are embedded (no augmentation) and each is classified by a
cosine-similarity, similarity-weighted k-nearest-neighbour vote among the others
(leave-one-out), so a user sees the embedding improve. Given the held-out cells'
datasets, the same features also get the store's neighbourhood mixing score
(:func:`cytostore.store.mixing_score`: are neighbours from the cell's own dataset
more often than chance?), recorded per epoch beside the kNN accuracy.
:func:`write_curves` draws the loss and kNN accuracy per epoch into a PNG.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytorch_lightning as pl
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn

from cytostore._knn import knn_vote
from cytostore.embedder.augment import to_input

__all__ = ["knn_accuracy", "embed_arrays", "TrainingHistory", "write_curves"]

logger = logging.getLogger(__name__)


def knn_accuracy(
    features: npt.NDArray[np.floating[Any]] | torch.Tensor,
    labels: Sequence[str] | npt.NDArray[Any],
    k: int = 20,
    temperature: float = 0.07,
    balanced: bool = False,
) -> float:
    """Leave-one-out accuracy of a weighted cosine kNN vote.

    Each cell's label is predicted from its ``k`` most cosine-similar other cells,
    each voting with weight ``exp(similarity / temperature)`` (as in the DINO /
    InstDisc kNN monitor).

    Args:
        features: float (n, dim) features.
        labels: n labels.
        k: Neighbours per vote (capped at n - 1).
        temperature: Softness of the similarity weights.
        balanced: Return the mean per-class recall instead of the accuracy.

    Returns:
        Accuracy (or balanced accuracy) in [0, 1]; NaN when n < 2.

    Examples:
        >>> f = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
        >>> knn_accuracy(f, ["a", "a", "b", "b"], k=1)
        1.0
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    n = x.shape[0]
    if n < 2:
        return math.nan
    y_t = torch.as_tensor(y, dtype=torch.long)
    n_classes = int(y_t.max()) + 1
    x = torch.nn.functional.normalize(x, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-math.inf)
    kk = min(k, n - 1)
    top_sim, top_idx = sim.topk(kk, dim=1)
    votes = knn_vote(
        top_sim.numpy(), y[top_idx.numpy()], n_classes, temperature=temperature
    )
    pred = votes.argmax(axis=1)
    if not balanced:
        return float(accuracy_score(y, pred))
    return float(balanced_accuracy_score(y, pred))


@torch.no_grad()
def embed_arrays(
    backbone: nn.Module,
    images_u8: npt.NDArray[np.uint8],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> npt.NDArray[np.float32]:
    """Embed uint8 cells with ``backbone`` in eval mode, without augmentation.

    Args:
        backbone: Maps (n, 3, h, w) to (n, dim).
        images_u8: uint8 (n, h, w, 3) preprocessed cells.
        mean: Normalisation mean (RGB, 0..1 scale).
        std: Normalisation standard deviation.
        batch_size: Cells per forward pass.
        device: Device to run on.

    Returns:
        float32 (n, dim) features. The backbone's train/eval mode is restored.
    """
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for i in range(0, len(images_u8), batch_size):
            batch = torch.from_numpy(
                np.ascontiguousarray(images_u8[i : i + batch_size])
            )
            x = to_input(batch.to(device), tuple(mean), tuple(std))  # type: ignore[arg-type]
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(backbone(x).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


class TrainingHistory(pl.Callback):
    """Record the mean loss and the kNN monitor accuracy of every epoch.

    The history travels in Lightning checkpoints, so a resumed run continues it.

    Args:
        images_u8: Held-out labelled cells for the kNN monitor, uint8 (m, h, w, 3);
            ``None`` or fewer than 10 cells: no monitor.
        labels: Their labels (length m).
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        k: Neighbours of the kNN vote.
        curves_path: Where to (re)write the curves PNG after an epoch (at most every
            ``redraw_every_s`` seconds; the caller draws the final one); ``None``:
            never.
        on_epoch: Called with ``(epoch, loss, knn)`` after each epoch (e.g. logging).
        redraw_every_s: Least seconds between two drawings of the curves.
        datasets: The held-out cells' datasets (length m): each epoch then records
            the mixing score of their features (``None``: no mixing score).

    Attributes:
        epochs: One dict per finished epoch: ``epoch``, ``loss`` (mean), ``steps``,
            ``knn`` (accuracy or ``None``), ``elapsed_s``, and ``mixing`` (the
            dataset and label scores of :func:`cytostore.store.mixing_score`, k=10)
            when ``datasets`` were given.
    """

    def __init__(
        self,
        images_u8: npt.NDArray[np.uint8] | None = None,
        labels: Sequence[str] | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        k: int = 20,
        curves_path: str | os.PathLike[str] | None = None,
        on_epoch: Callable[[int, float, float | None], None] | None = None,
        redraw_every_s: float = 60.0,
        datasets: Sequence[str] | None = None,
    ) -> None:
        self.images_u8 = (
            images_u8 if images_u8 is not None and len(images_u8) >= 10 else None
        )
        self.labels = list(labels) if labels is not None else []
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.k = k
        self.curves_path = Path(curves_path) if curves_path is not None else None
        self.on_epoch = on_epoch
        self.epochs: list[dict[str, Any]] = []
        self._sum = 0.0
        self._steps = 0
        self.redraw_every_s = redraw_every_s
        self._last_drawn_s = -math.inf
        self.datasets = list(datasets) if datasets is not None else None
        self._mixing: dict[str, Any] | None = None

    @property
    def has_monitor(self) -> bool:
        """Whether a kNN monitor runs (enough labelled held-out cells)."""
        return self.images_u8 is not None

    def state_dict(self) -> dict[str, Any]:
        """Return the history for a checkpoint."""
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history from a checkpoint."""
        self.epochs = list(state_dict.get("epochs", []))

    def on_train_epoch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Reset the running loss."""
        self._sum, self._steps = 0.0, 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Accumulate the batch loss."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._sum += float(loss.detach())
            self._steps += 1

    def evaluate(self, pl_module: pl.LightningModule) -> float | None:
        """Return the kNN accuracy of the current backbone (None: no monitor)."""
        if self.images_u8 is None:
            return None
        backbone: nn.Module = pl_module.method.backbone  # type: ignore[union-attr,assignment]
        feats = embed_arrays(
            backbone,
            self.images_u8,
            self.mean,
            self.std,
            device=pl_module.device,
        )
        self._mixing = self._mixing_of(feats)
        return knn_accuracy(feats, self.labels, k=self.k)

    def _mixing_of(self, feats: npt.NDArray[np.float32]) -> dict[str, Any] | None:
        """Return the monitor cells' mixing score (dataset and label terms)."""
        if self.datasets is None or len(self.datasets) != len(feats):
            return None
        from cytostore.store import mixing_score

        report = mixing_score(
            feats, self.datasets, labels=self.labels, k=10, sample=None
        )
        return {
            "k": report["k"],
            "dataset": report["dataset"],
            "label": report["label"],
            "per_dataset": {r["dataset"]: r["score"] for r in report["per_dataset"]},
        }

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Record the epoch's loss and kNN accuracy, and redraw the curves."""
        if self._steps == 0:
            return
        knn = self.evaluate(pl_module) if trainer.is_global_zero else None
        entry: dict[str, Any] = {
            "epoch": int(trainer.current_epoch) + 1,
            "loss": self._sum / self._steps,
            "steps": self._steps,
            "knn": knn,
            "elapsed_s": float(getattr(pl_module, "elapsed_s", 0.0)),
        }
        if knn is not None and self._mixing is not None:
            entry["mixing"] = self._mixing
        self.epochs.append(entry)
        if knn is not None:
            pl_module.log("knn", knn, prog_bar=True, rank_zero_only=True)
        logger.info(
            "epoch %d: loss %.4f, kNN %s",
            entry["epoch"],
            entry["loss"],
            "-" if knn is None else f"{knn:.3f}",
        )
        if self.on_epoch is not None:
            self.on_epoch(int(entry["epoch"]), float(entry["loss"]), knn)
        now = time.monotonic()
        due = now - self._last_drawn_s >= self.redraw_every_s
        if self.curves_path is not None and trainer.is_global_zero and due:
            write_curves(self.epochs, self.curves_path)
            self._last_drawn_s = now


def write_curves(
    epochs: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Draw the loss and kNN accuracy per epoch into a PNG (written atomically).

    Args:
        epochs: Entries with ``epoch``, ``loss`` and ``knn`` (``None`` where absent).
        path: Output PNG path.
        title: Figure title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    xs = [e["epoch"] for e in epochs]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(xs, [e["loss"] for e in epochs], "o-", color="tab:blue", ms=3, label="loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    knn_x = [e["epoch"] for e in epochs if e.get("knn") is not None]
    knn_y = [e["knn"] for e in epochs if e.get("knn") is not None]
    if knn_x:
        ax2 = ax.twinx()
        ax2.plot(knn_x, knn_y, "s-", color="tab:orange", ms=3, label="kNN")
        ax2.set_ylabel("kNN accuracy (held-out)", color="tab:orange")
        ax2.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
