"""Self-supervised methods on lightly: a backbone plus heads plus a loss.

Each method is an ``nn.Module`` holding the backbone (the part that is kept and
registered), lightly's projection/prediction heads and lightly's loss. The training
loop (:mod:`cytostore.embedder.train`) makes the views and calls
:meth:`SSLMethod.training_loss`, then :meth:`SSLMethod.after_step` (momentum updates).
Schedules take ``progress`` in [0, 1], the fraction of the run done, so that they work
both for a fixed number of epochs and for a time budget.

- [0] Chen et al., SimCLR, 2020, https://arxiv.org/abs/2002.05709
- [1] Grill et al., BYOL, 2020, https://arxiv.org/abs/2006.07733
- [2] Caron et al., DINO, 2021, https://arxiv.org/abs/2104.14294
- [3] Bardes et al., VICReg, 2022, https://arxiv.org/abs/2105.04906
- [4] Zbontar et al., Barlow Twins, 2021, https://arxiv.org/abs/2103.03230
- [5] Chen et al., MoCo v2, 2020, https://arxiv.org/abs/2003.04297
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from lightly.loss import (
    BarlowTwinsLoss,
    DINOLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    VICRegLoss,
)
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
    VICRegProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from cytostore.errors import InvalidArgumentError

__all__ = [
    "METHODS",
    "SSLMethod",
    "SimCLR",
    "BYOL",
    "DINO",
    "VICReg",
    "BarlowTwins",
    "MoCo",
    "build_method",
]


class SSLMethod(nn.Module):
    """Base class: a backbone trained by a self-supervised objective.

    Args:
        backbone: Maps ``(n, 3, h, w)`` float images to ``(n, dim)`` features.
        dim: The backbone's feature width.
        gather_distributed: Gather negatives/statistics across DDP processes.

    Attributes:
        name: The method's name on the command line.
        n_local_views: Extra small crops per image besides the two global views.
        default_lr: Base learning rate for AdamW at batch size 256 (scaled linearly).
    """

    name: ClassVar[str] = ""
    n_local_views: int = 0
    default_lr: ClassVar[float] = 1e-3

    def __init__(self, backbone: nn.Module, dim: int, gather_distributed: bool = False):
        super().__init__()
        self.backbone = backbone
        self.dim = dim
        self.gather_distributed = gather_distributed

    def forward(self, x: Tensor) -> Tensor:
        """Return backbone features ``(n, dim)`` of images ``(n, 3, h, w)``."""
        return self.backbone(x)

    def training_loss(
        self, global_views: list[Tensor], local_views: list[Tensor], progress: float
    ) -> Tensor:
        """Return the scalar loss of one batch.

        Args:
            global_views: Two tensors ``(n, 3, h, w)``: two views of the same n cells.
            local_views: ``n_local_views`` tensors of smaller crops (may be empty).
            progress: Fraction of the run done, in [0, 1] (drives schedules).

        Returns:
            The loss, a 0-dim tensor.
        """
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Update momentum networks after an optimizer step (no-op by default)."""

    def before_optimizer_step(self, progress: float) -> None:
        """Adjust gradients before an optimizer step (no-op by default)."""


class SimCLR(SSLMethod):
    """SimCLR [0]: NT-Xent between two views, negatives from the batch.

    Args:
        backbone: See :class:`SSLMethod`.
        dim: See :class:`SSLMethod`.
        gather_distributed: See :class:`SSLMethod`.
        temperature: NT-Xent temperature (0.1-0.2 suits batches of 128-512).
        proj_dim: Output width of the projection head.
    """

    name = "simclr"
    default_lr = 2e-3

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        gather_distributed: bool = False,
        temperature: float = 0.2,
        proj_dim: int = 128,
    ) -> None:
        super().__init__(backbone, dim, gather_distributed)
        self.projection_head = SimCLRProjectionHead(dim, max(dim, 512), proj_dim)
        self.criterion = NTXentLoss(
            temperature=temperature, gather_distributed=gather_distributed
        )

    def training_loss(
        self, global_views: list[Tensor], local_views: list[Tensor], progress: float
    ) -> Tensor:
        """NT-Xent between the projections of the two global views."""
        n = global_views[0].shape[0]
        z = self.projection_head(self.backbone(torch.cat(global_views)))
        return self.criterion(z[:n], z[n:])


class _MomentumMethod(SSLMethod):
    """Shared parts of methods with an exponential-moving-average teacher."""

    momentum: tuple[float, float] = (0.99, 1.0)

    def _momentum(self, progress: float) -> float:
        return float(
            cosine_schedule(
                int(progress * 1000), 1000, self.momentum[0], self.momentum[1]
            )
        )


class BYOL(_MomentumMethod):
    """BYOL [1]: predict the momentum network's projection of the other view.

    Args:
        backbone: See :class:`SSLMethod`.
        dim: See :class:`SSLMethod`.
        gather_distributed: Unused (BYOL needs no negatives).
        hidden_dim: Hidden width of the projection and prediction heads.
        proj_dim: Output width of the projection head.
    """

    name = "byol"
    default_lr = 1e-3

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        gather_distributed: bool = False,
        hidden_dim: int = 1024,
        proj_dim: int = 256,
    ) -> None:
        super().__init__(backbone, dim, gather_distributed)
        self.projection_head = BYOLProjectionHead(dim, hidden_dim, proj_dim)
        self.prediction_head = BYOLPredictionHead(proj_dim, hidden_dim, proj_dim)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def training_loss(
        self, global_views: list[Tensor], local_views: list[Tensor], progress: float
    ) -> Tensor:
        """Symmetrised negative cosine similarity of prediction and target."""
        n = global_views[0].shape[0]
        x = torch.cat(global_views)
        p = self.prediction_head(self.projection_head(self.backbone(x)))
        with torch.no_grad():
            z = self.projection_head_momentum(self.backbone_momentum(x)).detach()
        return 0.5 * (self.criterion(p[:n], z[n:]) + self.criterion(p[n:], z[:n]))

    def after_step(self, progress: float) -> None:
        """Move the momentum networks towards the online ones."""
        m = self._momentum(progress)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)


class DINO(_MomentumMethod):
    """DINO [2]: self-distillation with multi-crop (teacher sees the global views).

    Args:
        backbone: See :class:`SSLMethod`.
        dim: See :class:`SSLMethod`.
        gather_distributed: Unused (the centre is a local mean).
        hidden_dim: Hidden width of the DINO head.
        bottleneck_dim: Bottleneck width of the DINO head.
        output_dim: Number of prototypes.
        n_local_views: Small crops per image seen by the student only.
        teacher_temp: Final teacher temperature (warmed up from 0.04).
    """

    name = "dino"
    default_lr = 1e-3
    momentum = (0.996, 1.0)

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        gather_distributed: bool = False,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 128,
        output_dim: int = 4096,
        n_local_views: int = 4,
        teacher_temp: float = 0.05,
    ) -> None:
        super().__init__(backbone, dim, gather_distributed)
        self.n_local_views = n_local_views
        self.teacher_temp = teacher_temp
        self.projection_head = DINOProjectionHead(
            dim,
            hidden_dim,
            bottleneck_dim,
            output_dim,
            batch_norm=True,
            freeze_last_layer=1,
        )
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = DINOProjectionHead(
            dim, hidden_dim, bottleneck_dim, output_dim, batch_norm=True
        )
        self.projection_head_momentum.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = DINOLoss(
            output_dim=output_dim,
            warmup_teacher_temp_epochs=0,
            teacher_temp=teacher_temp,
        )

    def training_loss(
        self, global_views: list[Tensor], local_views: list[Tensor], progress: float
    ) -> Tensor:
        """Cross-entropy between teacher (global views) and student (all views)."""
        n = global_views[0].shape[0]
        with torch.no_grad():
            t = self.projection_head_momentum(
                self.backbone_momentum(torch.cat(global_views))
            ).detach()
        s = list(self.projection_head(self.backbone(torch.cat(global_views))).split(n))
        if local_views:
            s += list(
                self.projection_head(self.backbone(torch.cat(local_views))).split(n)
            )
        temp = 0.04 + (self.teacher_temp - 0.04) * min(1.0, progress / 0.3)
        return self.criterion(
            list(t.float().split(n)), [v.float() for v in s], teacher_temp=temp
        )

    def before_optimizer_step(self, progress: float) -> None:
        """Keep the last layer frozen during the first 5% of the run."""
        if progress < 0.05:
            for p in self.projection_head.last_layer.parameters():
                p.grad = None

    def after_step(self, progress: float) -> None:
        """Move the teacher towards the student."""
        m = self._momentum(progress)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)


class _ProjectedPairMethod(SSLMethod):
    """A method whose loss compares the projections of the two global views.

    Subclasses set ``projection_head`` and ``criterion`` (a lightly loss taking
    ``(z_a, z_b)``) in ``__init__``.
    """

    projection_head: nn.Module
    criterion: nn.Module

    def training_loss(
        self, global_views: list[Tensor], local_views: list[Tensor], progress: float
    ) -> Tensor:
        """The criterion between the projected global views (local views unused)."""
        n = global_views[0].shape[0]
        z = self.projection_head(self.backbone(torch.cat(global_views))).float()
        loss: Tensor = self.criterion(z[:n], z[n:])
        return loss


class VICReg(_ProjectedPairMethod):
    """VICReg [3]: invariance + variance + covariance terms, no negatives.

    Args:
        backbone: See :class:`SSLMethod`.
        dim: See :class:`SSLMethod`.
        gather_distributed: Gather embeddings across processes for the statistics.
        proj_dim: Hidden and output width of the expander.
    """

    name = "vicreg"
    default_lr = 1e-3

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        gather_distributed: bool = False,
        proj_dim: int = 1024,
    ) -> None:
        super().__init__(backbone, dim, gather_distributed)
        self.projection_head = VICRegProjectionHead(dim, proj_dim, proj_dim)
        self.criterion = VICRegLoss(gather_distributed=gather_distributed)


class BarlowTwins(_ProjectedPairMethod):
    """Barlow Twins [4]: push the cross-correlation of the views to the identity.

    Args:
        backbone: See :class:`SSLMethod`.
        dim: See :class:`SSLMethod`.
        gather_distributed: Gather embeddings across processes.
        proj_dim: Hidden and output width of the projector.
    """

    name = "barlowtwins"
    default_lr = 1e-3

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        gather_distributed: bool = False,
        proj_dim: int = 1024,
    ) -> None:
        super().__init__(backbone, dim, gather_distributed)
        self.projection_head = BarlowTwinsProjectionHead(dim, proj_dim, proj_dim)
        self.criterion = BarlowTwinsLoss(gather_distributed=gather_distributed)


class MoCo(_MomentumMethod):
    """MoCo v2 [5]: contrast against a queue of momentum-encoded keys.

    Args:
        backbone: See :class:`SSLMethod`.
        dim: See :class:`SSLMethod`.
        gather_distributed: Gather keys across processes into the queue.
        temperature: InfoNCE temperature.
        queue_size: Number of negative keys kept.
        proj_dim: Output width of the projection head.
    """

    name = "moco"
    default_lr = 2e-3

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        gather_distributed: bool = False,
        temperature: float = 0.2,
        queue_size: int = 4096,
        proj_dim: int = 128,
    ) -> None:
        super().__init__(backbone, dim, gather_distributed)
        self.projection_head = MoCoProjectionHead(dim, max(dim, 512), proj_dim)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(
            temperature=temperature,
            memory_bank_size=(queue_size, proj_dim),
            gather_distributed=gather_distributed,
        )

    def training_loss(
        self, global_views: list[Tensor], local_views: list[Tensor], progress: float
    ) -> Tensor:
        """InfoNCE of queries (view 1) against keys (view 2) and the queue."""
        q = self.projection_head(self.backbone(global_views[0])).float()
        with torch.no_grad():
            k = self.projection_head_momentum(self.backbone_momentum(global_views[1]))
        return self.criterion(q, k.detach().float())

    def after_step(self, progress: float) -> None:
        """Move the key encoder towards the query encoder."""
        m = self._momentum(progress)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)


#: Method name → class.
METHODS: dict[str, type[SSLMethod]] = {
    m.name: m for m in (SimCLR, BYOL, DINO, VICReg, BarlowTwins, MoCo)
}


def build_method(
    name: str,
    backbone: nn.Module,
    dim: int,
    *,
    gather_distributed: bool = False,
    **kwargs: float | int,
) -> SSLMethod:
    """Wrap ``backbone`` in the self-supervised method ``name``.

    Args:
        name: One of :data:`METHODS`.
        backbone: Maps ``(n, 3, h, w)`` float images to ``(n, dim)``.
        dim: The backbone's feature width.
        gather_distributed: Gather across DDP processes where the method uses it.
        **kwargs: Method hyperparameters (e.g. ``temperature=0.1`` for SimCLR).

    Returns:
        The method module (its ``backbone`` attribute is ``backbone``).

    Raises:
        InvalidArgumentError: If ``name`` is not a known method.

    Examples:
        >>> m = build_method("simclr", nn.Sequential(nn.Flatten(), nn.Linear(12, 8)), 8)
        >>> views = [torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)]
        >>> bool(torch.isfinite(m.training_loss(views, [], 0.0)))
        True
    """
    if name not in METHODS:
        raise InvalidArgumentError(
            f"unknown method {name!r}: choose one of {', '.join(METHODS)} "
            "(or 'none' for a random-init baseline)"
        )
    return METHODS[name](backbone, dim, gather_distributed=gather_distributed, **kwargs)
