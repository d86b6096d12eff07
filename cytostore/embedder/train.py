"""The training loop: a LightningModule that augments cached cells on the device.

The data loader only hands out uint8 rows of the cache (a memory-map slice, no
workers needed); :class:`SSLModule` turns each batch into views with
:class:`~cytostore.embedder.augment.BatchAugment` on the training device and calls the
method's loss. PyTorch Lightning brings multi-GPU / multi-node DDP, mixed precision,
checkpointing, the time budget (``max_time``) and the progress bar.

Under DDP (``devices``/``num_nodes`` > 1, launched by Lightning, ``torchrun`` or
SLURM's ``srun``) every process runs this loop on its share of each epoch's draw
(:class:`~cytostore.embedder.sampling.BatchSampler`); only global rank 0 writes
files (the checkpoint, the configuration); a process that fails leaves a one-line
report in the run's folder so that the others can name it in their own error
(:class:`~cytostore.errors.DistributedRunError`), and :func:`on_global_zero` runs
the registration on rank 0 while the other processes wait for its outcome.

Learning rate and momentum follow the run's ``progress`` in [0, 1]: the fraction of
steps done for a fixed number of epochs, or the fraction of the time budget used
(``max_s``), whichever is further, so a time-budgeted run still warms up and anneals.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytorch_lightning as pl
import torch
from lightly.models.utils import get_weight_decay_parameters
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cytostore.embedder.augment import AugmentConfig, BatchAugment
from cytostore.embedder.device import resolve_device, resolve_precision
from cytostore.embedder.methods import SSLMethod
from cytostore.embedder.monitor import TrainingHistory
from cytostore.embedder.sampling import BatchSampler, CachedRows
from cytostore.errors import (
    ConfigMismatchError,
    CytostoreError,
    DistributedRunError,
    TrainingDivergedError,
)
from cytostore.store import fault_point

__all__ = [
    "TrainConfig",
    "TrainResult",
    "SSLModule",
    "train_ssl",
    "lightning_hardware",
    "config_difference",
    "CHECKPOINT_NAME",
    "global_rank",
    "launch_rank",
    "on_global_zero",
    "sync_batchnorm",
]

logger = logging.getLogger(__name__)

#: Lightning's loggers (its INFO lines are hidden during a run unless -v).
_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning_fabric",
    "lightning.pytorch",
    "lightning.fabric",
)
#: Modules whose warnings are hidden during a run unless -v.
_QUIET_MODULES = r"(pytorch_lightning|lightning_fabric|lightning|lightly|torch)(\.|$)"

#: File name of the resumable checkpoint inside a run's checkpoint folder.
CHECKPOINT_NAME = "last.ckpt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (compared on ``--resume``).

    Attributes:
        method: Self-supervised method name (see ``METHODS``).
        batch_size: Cells per batch and device (each gives two or more views).
        lr: AdamW peak learning rate; ``None``: the method's default scaled by
            the global batch, ``batch_size x processes / 256`` (linear scaling).
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup: Fraction of the run with a linear learning-rate warm-up.
        balance: ``"dataset"`` (each dataset equally likely per draw) or ``"none"``.
        seed: Seed of the init, the batch draws and the augmentations.
        augment: The two global views.
        local_augment: The small crops of multi-crop methods (DINO).
        method_kwargs: Method hyperparameters (e.g. ``{"temperature": 0.1}``).
    """

    method: str = "simclr"
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 0.05
    warmup: float = 0.05
    balance: str = "dataset"
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    local_augment: AugmentConfig | None = None
    method_kwargs: dict[str, float | int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the configuration."""
        doc = asdict(self)
        doc["augment"] = self.augment.to_dict()
        doc["local_augment"] = (
            self.local_augment.to_dict() if self.local_augment is not None else None
        )
        return json.loads(json.dumps(doc))  # tuples → lists, as stored


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        epochs: Per-epoch history (``epoch``, ``loss``, ``steps``, ``knn``,
            ``elapsed_s``).
        steps: Optimizer steps done in all (resumed runs included).
        wall_s: Training seconds in all (resumed runs included).
        final_loss: Mean loss of the last epoch (NaN if none finished).
        knn_final: kNN monitor accuracy after the last epoch, or ``None``.
        stopped_by: ``"epochs"`` or ``"time"``.
        checkpoint: Path of the last checkpoint.
        cells_per_epoch: Cells drawn in each epoch, summed over all processes
            (counted from the batches, resumed epochs included).
        world_size: Processes that trained (1 without DDP).
        global_rank: This process's rank (0 without DDP).
        lr: The peak learning rate used.
        sync_batchnorm: Whether BatchNorm statistics were synchronised across
            processes (see :func:`sync_batchnorm`).
    """

    epochs: list[dict[str, Any]]
    steps: int
    wall_s: float
    final_loss: float
    knn_final: float | None
    stopped_by: str
    checkpoint: Path
    cells_per_epoch: list[int] = field(default_factory=list)
    world_size: int = 1
    global_rank: int = 0
    lr: float = 0.0
    sync_batchnorm: bool = False


def lightning_hardware(
    device: str = "auto", precision: str = "auto"
) -> tuple[str, int | list[int], str]:
    """Map a device and precision to Lightning's ``(accelerator, devices, precision)``.

    Uses :func:`cytostore.embedder.device.resolve_precision`: bf16 autocast on the
    CPU only where it is native (elsewhere it is many times slower than fp32).

    Raises:
        InvalidArgumentError: If the device or precision is unknown or unavailable.

    Examples:
        >>> lightning_hardware("cpu", "fp32")
        ('cpu', 1, '32-true')
    """
    dev = resolve_device(device)
    concrete = resolve_precision(precision, dev)
    lightning_precision = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
    if dev.type == "cuda":
        return (
            "gpu",
            [dev.index] if dev.index is not None else 1,
            lightning_precision[concrete],
        )
    return dev.type, 1, lightning_precision[concrete]


def config_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Return ``"key: saved → wanted"`` for every top-level key that differs.

    Examples:
        >>> config_difference({"a": 1, "b": 2}, {"a": 1, "b": 3})
        ['b: 2 -> 3']
    """
    keys = sorted(set(saved) | set(wanted))
    return [
        f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}"
        for k in keys
        if saved.get(k) != wanted.get(k)
    ]


class SSLModule(pl.LightningModule):
    """Lightning wrapper: augment uint8 batches on the device, compute the SSL loss.

    Args:
        method: The self-supervised method (holds the backbone).
        config: The run's configuration.
        mean: Normalisation mean of the preprocessing.
        std: Normalisation standard deviation.
        total_steps: Optimizer steps of the whole run, if it is epoch-bounded.
        budget_s: Training seconds of the whole run, if it is time-bounded.
        world_size: DDP processes (each takes ``config.batch_size`` cells a step):
            the default learning rate scales with the global batch.
    """

    def __init__(
        self,
        method: SSLMethod,
        config: TrainConfig,
        mean: Sequence[float],
        std: Sequence[float],
        total_steps: int | None = None,
        budget_s: float | None = None,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.method = method
        self.config = config
        self.global_aug = BatchAugment(config.augment, list(mean), list(std))
        self.local_aug = (
            BatchAugment(config.local_augment, list(mean), list(std))
            if config.local_augment is not None and method.n_local_views > 0
            else None
        )
        self.total_steps = total_steps
        self.budget_s = budget_s
        self.lr = (
            config.lr
            if config.lr is not None
            else method.default_lr * config.batch_size * world_size / 256
        )
        self.elapsed_before_s = 0.0
        self._fit_started: float | None = None

    # ----------------------------------------------------------------- clock
    @property
    def elapsed_s(self) -> float:
        """Training seconds so far, resumed runs included."""
        now = 0.0 if self._fit_started is None else time.monotonic() - self._fit_started
        return self.elapsed_before_s + now

    def progress(self) -> float:
        """Fraction of the run done, in [0, 1]."""
        parts = [0.0]
        if self.total_steps:
            parts.append(self.global_step / self.total_steps)
        if self.budget_s:
            parts.append(self.elapsed_s / self.budget_s)
        return min(1.0, max(parts))

    def _lr_at(self, progress: float) -> float:
        warm = self.config.warmup
        if warm > 0 and progress < warm:
            return self.lr * max(progress / warm, 0.01)
        t = (progress - warm) / max(1e-8, 1.0 - warm)
        return self.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))

    # ------------------------------------------------------------- lifecycle
    def configure_model(self) -> None:
        """Lay the network out channels-last (faster convs), before DDP wraps it.

        DDP lays its gradient buckets out like the parameters when it wraps the
        model; converting afterwards (as ``on_fit_start`` would) leaves buckets
        and gradients with different strides: a copy per step and the warning
        "Grad strides do not match bucket view strides".
        """
        self.method.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        """Start the clock."""
        self._fit_started = time.monotonic()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the clock and the configuration in the checkpoint."""
        checkpoint["cytostore"] = {
            "elapsed_s": self.elapsed_s,
            "config": self.config.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the clock of a resumed run."""
        self.elapsed_before_s = float(
            checkpoint.get("cytostore", {}).get("elapsed_s", 0.0)
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW; no weight decay on norms and biases."""
        params = [p for p in self.method.parameters() if p.requires_grad]
        decay, no_decay = get_weight_decay_parameters([self.method])
        keep = {id(p) for p in params}
        groups: list[dict[str, Any]]
        groups = [
            {"params": [p for p in decay if id(p) in keep]},
            {"params": [p for p in no_decay if id(p) in keep], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            groups, lr=self.lr, weight_decay=self.config.weight_decay
        )

    # ------------------------------------------------------------------ step
    def make_views(self, batch_u8: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Return (2 global views, local views) of a uint8 (b, h, w, 3) batch."""
        seed = self.config.seed * 1_000_003 + self.global_step * 7919 + self.global_rank
        g = torch.Generator().manual_seed(seed % (2**63))
        with torch.autocast(self.device.type, enabled=False):
            glob = [self.global_aug(batch_u8, g) for _ in range(2)]
            loc = (
                [self.local_aug(batch_u8, g) for _ in range(self.method.n_local_views)]
                if self.local_aug is not None
                else []
            )
        cl = torch.channels_last
        return [v.contiguous(memory_format=cl) for v in glob], [
            v.contiguous(memory_format=cl) for v in loc
        ]

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Augment, compute the loss, refuse a non-finite one.

        Raises:
            TrainingDivergedError: If the loss is NaN or infinite.
        """
        p = self.progress()
        opt = self.optimizers()
        lr = self._lr_at(p)
        for group in opt.param_groups:  # type: ignore[union-attr]
            group["lr"] = lr
        fault_point(f"pretrain.step.rank{self.global_rank}")  # one process fails
        glob, loc = self.make_views(batch)
        loss = self.method.training_loss(glob, loc, p)
        if not torch.isfinite(loss.detach()).all():
            raise TrainingDivergedError(
                f"the loss became {float(loss.detach())} at epoch "
                f"{self.current_epoch + 1}, step {self.global_step}: training stopped"
            )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("lr", lr, prog_bar=False, on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Let the method adjust gradients (e.g. DINO's frozen last layer)."""
        self.method.before_optimizer_step(self.progress())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Momentum updates of the method's teacher networks."""
        self.method.after_step(self.progress())


class _EpochCheckpoint(pl.Callback):
    """Write the resumable checkpoint atomically after every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        fault_point("pretrain.before_checkpoint_replace")  # new epoch in .tmp only
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        fault_point("pretrain.after_checkpoint")


class _CellsSeen(pl.Callback):
    """Count the cells of every epoch's batches, summed over all processes."""

    def __init__(self) -> None:
        self.per_epoch: list[int] = []
        self._cells = 0

    def state_dict(self) -> dict[str, Any]:
        return {"per_epoch": list(self.per_epoch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.per_epoch = [int(v) for v in state_dict.get("per_epoch", [])]

    def on_train_epoch_start(self, *args: Any) -> None:
        self._cells = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._cells += len(batch)

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        total = trainer.strategy.reduce(
            torch.tensor(float(self._cells), device=pl_module.device),
            reduce_op="sum",
        )
        self.per_epoch.append(int(round(float(total))))


class _Progress(pl.Callback):
    """Forward training progress to a ``progress(done, total)`` callback."""

    def __init__(self, progress: Callable[[int, int], None], module: SSLModule) -> None:
        self.progress = progress
        self.module = module

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.progress(int(round(1000 * self.module.progress())), 1000)


def train_ssl(
    method: SSLMethod,
    images_u8: npt.NDArray[np.uint8],
    domains: Sequence[str] | npt.NDArray[np.str_],
    config: TrainConfig,
    mean: Sequence[float],
    std: Sequence[float],
    run_dir: str | os.PathLike[str],
    *,
    rows: npt.NDArray[np.int64] | None = None,
    epochs: int | None = None,
    max_s: float | None = None,
    resume: bool = False,
    run_config: dict[str, Any] | None = None,
    history: TrainingHistory | None = None,
    device: str = "auto",
    devices: int | None = None,
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "auto",
    callbacks: Sequence[pl.Callback] = (),
    progress: Callable[[int, int], None] | None = None,
    progress_bar: bool = False,
) -> TrainResult:
    """Train ``method`` on cached cells until ``epochs`` or ``max_s`` is reached.

    Args:
        method: The method, holding the backbone (trained in place).
        images_u8: uint8 (N, h, w, 3) cells (a memmap is fine).
        domains: Dataset of each training row (for domain-balanced sampling).
        config: The run's configuration.
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        rows: Rows of ``images_u8`` to train on (int64, same length as
            ``domains``); ``None``: all rows.
        run_dir: Folder of the run; the checkpoint is ``run_dir/checkpoints/last.ckpt``
            and the configuration ``run_dir/checkpoints/config.json``.
        epochs: Total epochs (resumed ones included); ``None``: until ``max_s``.
        max_s: Total training seconds (resumed ones included); ``None``: no limit.
        resume: Continue from the run's checkpoint.
        run_config: The configuration compared on resume (default ``config.to_dict()``).
        history: Records loss / kNN per epoch (created if ``None``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        devices: Lightning ``devices`` (e.g. 4 GPUs); overrides ``device``'s count.
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        num_nodes: Nodes for multi-node DDP.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see
            :func:`lightning_hardware`).
        callbacks: Extra Lightning callbacks.
        progress: Called with ``(done, 1000)``: thousandths of the run done.
        progress_bar: Show Lightning's progress bar.

    Returns:
        The run's :class:`TrainResult`; ``method.backbone`` holds the trained weights.

    Raises:
        InvalidArgumentError: If neither ``epochs`` nor ``max_s`` is given, or
            there are fewer rows than one batch.
        ConfigMismatchError: If ``resume`` finds a checkpoint of another configuration.
        TrainingDivergedError: If the loss becomes non-finite (the last checkpoint
            is kept).
    """
    from cytostore.errors import InvalidArgumentError

    if epochs is None and max_s is None:
        raise InvalidArgumentError("give a number of epochs or a time budget (max_s)")
    _check_world(devices, num_nodes)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = ckpt_dir / CHECKPOINT_NAME
    wanted = run_config if run_config is not None else config.to_dict()
    ckpt = _check_resume(ckpt_dir, ckpt_path, wanted, resume)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    accelerator, dev_auto, lightning_precision = lightning_hardware(device, precision)
    dev: int | list[int] = devices if devices is not None else dev_auto
    per_node = dev if isinstance(dev, int) else len(dev)
    world = per_node * num_nodes
    sampler = BatchSampler(
        domains, config.batch_size, config.balance, config.seed, world_size=world
    )
    total_steps = len(sampler) * epochs if epochs is not None else None
    method.train()  # backbones come in eval mode; BN must use batch statistics
    module = SSLModule(method, config, mean, std, total_steps, max_s, world)
    history = history if history is not None else TrainingHistory()
    cells = _CellsSeen()
    rank = launch_rank(per_node)
    report = _FailureReport(ckpt_dir, rank, world)
    if rank == 0:
        _write_json(ckpt_dir / "config.json", wanted)

    cbs: list[pl.Callback] = [
        history,
        cells,
        _EpochCheckpoint(ckpt_path),
        *callbacks,
    ]
    if progress is not None and rank == 0:
        cbs.append(_Progress(progress, module))
    with _lightning_quiet():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=dev,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=lightning_precision,  # type: ignore[arg-type]
            max_epochs=epochs if epochs is not None else -1,
            max_time=_dt.timedelta(seconds=max_s) if max_s is not None else None,
            callbacks=cbs,
            logger=False,
            default_root_dir=str(run_dir),
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            # BatchNorm over the global batch (as SimCLR/BYOL train); torch's
            # SyncBatchNorm runs on GPUs only, so CPU processes keep their own.
            sync_batchnorm=sync_batchnorm(accelerator, world),
            log_every_n_steps=1,
        )
        loader = _loader(images_u8, rows, domains, config, trainer)
        try:
            with report:
                trainer.fit(
                    module,
                    loader,
                    ckpt_path=str(ckpt_path) if ckpt is not None else None,
                )
        except TrainingDivergedError as exc:
            kept = (
                f"the last good checkpoint is kept at {ckpt_path}"
                if ckpt_path.is_file()
                else "no epoch had finished, so there is no checkpoint"
            )
            raise TrainingDivergedError(
                f"{exc}; {kept}. Lower the learning rate (--lr) or use another method, "
                "and start a new run (or --resume with the same configuration)"
            ) from exc
    wall_s = module.elapsed_s
    module._fit_started = None
    final = history.epochs[-1] if history.epochs else {}
    done_epochs = len(history.epochs)
    return TrainResult(
        epochs=list(history.epochs),
        steps=int(trainer.global_step),
        wall_s=wall_s,
        final_loss=float(final.get("loss", math.nan)),
        knn_final=final.get("knn"),
        stopped_by="epochs" if epochs is not None and done_epochs >= epochs else "time",
        checkpoint=ckpt_path,
        cells_per_epoch=list(cells.per_epoch),
        world_size=int(trainer.world_size),
        global_rank=int(trainer.global_rank),
        lr=float(module.lr),
        sync_batchnorm=sync_batchnorm(accelerator, world),
    )


def sync_batchnorm(accelerator: str, world: int) -> bool:
    """Return whether a run synchronises BatchNorm statistics across processes.

    Yes under DDP on GPUs (statistics of the global batch, as the SimCLR and BYOL
    papers train); no on one process, and no on CPUs, where torch's
    :class:`~torch.nn.SyncBatchNorm` does not run (each process keeps its own).

    Examples:
        >>> sync_batchnorm("gpu", 8), sync_batchnorm("cpu", 2), sync_batchnorm("gpu", 1)
        (True, False, False)
    """
    return world > 1 and accelerator in ("gpu", "cuda")


def launch_rank(devices_per_node: int = 1) -> int:
    """Return this process's global DDP rank as its launcher set it (0 alone).

    Known before any process group exists, from the variables that ``torchrun``
    (``RANK``), SLURM (``SLURM_PROCID``, when the job step has several tasks) or
    Lightning's own launcher (``NODE_RANK``, ``LOCAL_RANK``) set.

    Examples:
        >>> launch_rank()
        0
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", "0")) * devices_per_node + int(
        env.get("LOCAL_RANK", "0")
    )


def _check_world(devices: int | None, num_nodes: int) -> None:
    """Refuse a run that torchrun started as N processes but asks for fewer.

    Each process would otherwise train alone on all the data and write the same
    files as the others.
    """
    from cytostore.errors import InvalidArgumentError

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = (devices or 1) * num_nodes
    if launched > 1 and wanted != launched:
        raise InvalidArgumentError(
            f"this is one of {launched} processes started together (WORLD_SIZE="
            f"{launched}) but --devices x --num-nodes is {wanted}: pass --devices "
            "(processes per node) and --num-nodes so that they multiply to "
            f"{launched}, with --strategy ddp"
        )


def global_rank() -> int:
    """Return this process's global rank: 0 without DDP, and on DDP's rank 0.

    Lightning's own value once a run has started, else :func:`launch_rank`.
    """
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", None)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(rank) if rank is not None else launch_rank()


def on_global_zero(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` on global rank 0 only; every process returns its result.

    Without a process group this is ``fn()``. Under DDP, rank 0 runs ``fn`` (e.g.
    registering the model) while the other processes wait; then rank 0 sends them
    its result (a JSON-ready dict) or its one-line error. This is the run's last
    collective, so every process then destroys the process group: one left for
    interpreter exit lets gloo's worker threads outlive Python, and the process
    can abort ("terminate called without an active exception", SIGABRT) after
    its work is done.

    Returns:
        ``fn()``'s dict, on every process.

    Raises:
        DistributedRunError: On the other processes, if ``fn`` failed on rank 0
            (rank 0 itself re-raises ``fn``'s own error).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    payload: list[Any] = [None]
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            payload = [json.dumps({"ok": fn()})]
        except BaseException as exc:  # every failure must reach the other ranks
            error = exc
            payload = [json.dumps({"error": _one_line(exc)})]
    dist.broadcast_object_list(payload, src=0)  # a JSON string between our ranks
    dist.barrier()  # no process tears its connections down while a peer reads
    dist.destroy_process_group()
    if error is not None:
        raise error
    doc = json.loads(payload[0])
    if "error" in doc:
        raise DistributedRunError(
            f"rank 0 failed after training: {doc['error']}; nothing was "
            "registered by this process"
        )
    result: dict[str, Any] = doc["ok"]
    return result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, CytostoreError) else f"{type(exc).__name__}: {text}"


class _FailureReport:
    """Leave a one-line report when this process fails; name a failed peer's.

    A DDP process that fails takes no part in the next collective, so its peers
    only see a broken connection (gloo) or time out (NCCL). Each process
    therefore writes ``rank-<r>.failed`` (its error in one line) into the run's
    checkpoint folder before its error propagates, and a process whose own
    error is not a :class:`CytostoreError` (the broken connection) raises
    :class:`DistributedRunError` quoting the report of the first failed peer.
    Hand-written: torch's elastic error files exist only under ``torchrun``.
    """

    _WAIT_S = 3.0

    def __init__(self, folder: Path, rank: int, world: int) -> None:
        self.folder = folder
        self.rank = rank
        self.world = world
        self.path = folder / f"rank-{rank}.failed"
        self.path.unlink(missing_ok=True)  # a stale report of an earlier run
        self.started = time.time()

    def __enter__(self) -> _FailureReport:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or self.world < 2 or isinstance(exc, KeyboardInterrupt):
            return
        peer = None if isinstance(exc, CytostoreError) else self._peer_report()
        if peer is not None:
            rank, text = peer
            self._write(f"rank {rank} failed first: {text}")
            raise DistributedRunError(
                f"process {rank} of {self.world} failed: {text}"
            ) from exc
        self._write(_one_line(exc))

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self.path.write_text(text + "\n")

    def _peer_report(self) -> tuple[int, str] | None:
        deadline = time.monotonic() + self._WAIT_S
        while True:
            for r in range(self.world):
                path = self.folder / f"rank-{r}.failed"
                if r == self.rank or not path.is_file():
                    continue
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime >= self.started - 1:
                        return r, path.read_text().strip()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)


@contextlib.contextmanager
def _lightning_quiet() -> Iterator[None]:
    """Hide Lightning's INFO lines and third-party warnings during a run.

    Lightning logs its hardware lines, tips ("💡 Tip: ... litlogger") and stop
    reasons at INFO on its own loggers, whose level it sets itself on import, and
    torch/Lightning emit deprecation warnings from inside ``fit``. While the run
    lasts, those loggers log warnings and errors only and those warnings are
    ignored, unless this module's logger is enabled for INFO (``cytostore -v``,
    or an application that configured logging at INFO), which shows everything.
    Levels and warning filters are restored afterwards.
    """
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=_QUIET_MODULES)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _loader(
    images_u8: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.int64] | None,
    domains: Sequence[str] | npt.NDArray[np.str_],
    config: TrainConfig,
    trainer: pl.Trainer,
) -> DataLoader[Tensor]:
    sampler = BatchSampler(
        domains,
        config.batch_size,
        config.balance,
        config.seed,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
    )
    return DataLoader(
        CachedRows(images_u8, rows), sampler=sampler, batch_size=None, num_workers=0
    )


def _check_resume(
    ckpt_dir: Path, ckpt_path: Path, wanted: dict[str, Any], resume: bool
) -> Path | None:
    from cytostore.errors import InvalidArgumentError

    if not resume:
        if ckpt_path.is_file():
            raise InvalidArgumentError(
                f"a run already exists in {ckpt_dir.parent}: continue it with "
                "--resume, or pick another --name"
            )
        return None
    if not ckpt_path.is_file():
        raise InvalidArgumentError(
            f"nothing to resume: no checkpoint at {ckpt_path}; start the run "
            "without --resume"
        )
    saved_path = ckpt_dir / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    diff = config_difference(saved, wanted)
    if diff:
        raise ConfigMismatchError(
            "--resume with a different configuration than the interrupted run ("
            + "; ".join(diff)
            + "): rerun with the original settings, or start a new run under "
            "another --name"
        )
    return ckpt_path


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, path)


def backbone_state(method: SSLMethod) -> dict[str, Tensor]:
    """Return the backbone's weights as contiguous CPU tensors (for registration)."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in method.backbone.state_dict().items()
    }


def unwrap_backbone(method: SSLMethod) -> nn.Module:
    """Return the backbone on CPU in standard memory format, eval mode."""
    backbone = method.backbone.cpu().to(memory_format=torch.contiguous_format)
    return backbone.eval()
