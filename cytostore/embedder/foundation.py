"""Foundation models from local weight files: DinoBloom, DINOv2, timm and torchvision.

A lab that has downloaded ``DinoBloom-S.pth`` (or a DINOv2, timm or torchvision
checkpoint) imports it once with :func:`import_model`; from then on it is a model of
the store like any other (``embed``, ``search``, ``probe``, ``mil``, ``explain``,
``export``, the web page).

- The architecture is built offline by timm or torchvision with random weights
  (``pretrained=False``, ``weights=None``); nothing here can reach a hub: names
  that timm would resolve on the Hugging Face hub (``hf-hub:...``) are refused.
- The file is read with ``torch.load(weights_only=True)`` (or as ``.safetensors``),
  never unpickled freely; a file ``weights_only`` refuses is refused with the cause
  and the conversion ``docs/models.md`` documents.
- Keys are mapped by timm's own checkpoint filters where they exist (DINOv2's
  original names, ``mask_token``, SwiGLU ``w12/w3``, position-embedding resampling);
  only the DinoBloom wrapper (``teacher`` / ``backbone.`` / ``dino_head`` /
  ``ibot_head``), which no library knows, is unwrapped here.
- A file that does not fit is refused with one line: what was expected and what
  was found (missing and unexpected keys, shapes).

The store keeps its own copy of the mapped weights (``backbone.pt``, read back with
``weights_only=True``), and the card records the provenance (arch, file, sha256,
licence, input size, normalisation, pooling, feature width, µm/px policy).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import os
import pickle
import re
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cytostore.embedder.card import ModelCard, sha256_file
from cytostore.embedder.preprocess import (
    DEFAULT_FOV_UM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SCALES,
    Preprocessing,
)
from cytostore.errors import InvalidArgumentError, WeightsMismatchError

if TYPE_CHECKING:
    from cytostore.store import Store

__all__ = [
    "ARCH_NAMES",
    "ArchSpec",
    "build_arch",
    "build_from_file",
    "foundation_preprocessing",
    "import_model",
    "is_foundation_arch",
    "load_foundation_weights",
    "map_state_dict",
    "parse_arch",
    "pretrain_preprocessing",
    "read_weights",
    "vit_recipe_defaults",
]

logger = logging.getLogger(__name__)

#: Where DinoBloom's weights are published; its licence is not stated in the code
#: repository (marrlab/DinoBloom), so the card says so unless --license is given.
DINOBLOOM_RECORD = "https://zenodo.org/records/10908163"
_DINOBLOOM_LICENSE = f"not stated by the authors' repository; see {DINOBLOOM_RECORD}"
#: facebookresearch/dinov2 is Apache-2.0 (its first release was CC-BY-NC-4.0).
_DINOV2_LICENSE = "Apache-2.0"

#: size letter -> (timm model, feature width)
_VIT = {
    "s": ("vit_small_patch14_dinov2", 384),
    "b": ("vit_base_patch14_dinov2", 768),
    "l": ("vit_large_patch14_dinov2", 1024),
    "g": ("vit_giant_patch14_dinov2", 1536),
}
_DINOV2_SIZES = {"vits14": "s", "vitb14": "b", "vitl14": "l", "vitg14": "g"}
#: The fixed architecture names (plus ``timm:<name>`` and ``torchvision:<name>``).
ARCH_NAMES = tuple(f"dinobloom-{s}" for s in _VIT) + tuple(
    f"dinov2-{s}" for s in _DINOV2_SIZES
)
_VIT_POOLING = "CLS token after the final LayerNorm"
#: timm names that would be resolved on a hub or elsewhere, even with pretrained=False.
_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:", "hf-hub-", "local-dir:", "http:", "https:")
#: DinoBloom's SSL heads, kept in its checkpoints beside the backbone.
_SSL_HEADS = ("dino_head.", "ibot_head.")


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture name means: how to build it and how to feed it.

    Attributes:
        arch: The name as the card records it (``dinobloom-s``, ``timm:resnet50``).
        family: ``dinobloom``, ``dinov2``, ``timm`` or ``torchvision``.
        model: The timm or torchvision model name.
        input_px: Native input size in pixels.
        mean: Normalisation mean (RGB, 0..1).
        std: Normalisation standard deviation.
        scale: Default µm/px policy: ``resize`` (whole image, as DinoBloom was
            trained) or ``physical`` (our resample-and-crop).
        license: Licence known for the family (``None``: unknown, give --license).
        patch: Patch size of a ViT (input sizes must be multiples), else ``None``.
    """

    arch: str
    family: str
    model: str
    input_px: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: str = "physical"
    license: str | None = None
    patch: int | None = None


def is_foundation_arch(name: str) -> bool:
    """Return whether ``name`` names an importable architecture (not a house one)."""
    return name in ARCH_NAMES or name.startswith(("timm:", "torchvision:"))


def parse_arch(arch: str) -> ArchSpec:
    """Return the :class:`ArchSpec` of an architecture name, without building it.

    Args:
        arch: ``dinobloom-s|b|l|g``, ``dinov2-vits14|vitb14|vitl14|vitg14``,
            ``timm:<model>`` (a name of ``timm.list_models()``) or
            ``torchvision:<model>`` (a classification model of torchvision).

    Returns:
        The spec.

    Raises:
        InvalidArgumentError: If the name is unknown, or would be fetched from a hub.

    Examples:
        >>> parse_arch("dinobloom-b").model, parse_arch("dinobloom-b").input_px
        ('vit_base_patch14_dinov2', 224)
    """
    if arch.startswith("dinobloom-") and arch[len("dinobloom-") :] in _VIT:
        model = _VIT[arch[-1]][0]
        return ArchSpec(arch, "dinobloom", model, 224, scale="resize", patch=14,
                        license=_DINOBLOOM_LICENSE)  # fmt: skip
    if arch.startswith("dinov2-") and arch[len("dinov2-") :] in _DINOV2_SIZES:
        model = _VIT[_DINOV2_SIZES[arch[len("dinov2-") :]]][0]
        return ArchSpec(arch, "dinov2", model, 224, patch=14, license=_DINOV2_LICENSE)
    if arch.startswith("timm:"):
        return _timm_spec(arch)
    if arch.startswith("torchvision:"):
        return _torchvision_spec(arch)
    raise InvalidArgumentError(
        f"unknown --arch {arch!r}: use one of {', '.join(ARCH_NAMES)}, "
        "timm:<model name> or torchvision:<model name>"
    )


def _timm_spec(arch: str) -> ArchSpec:
    import timm

    name = arch[len("timm:") :]
    if name.startswith(_REMOTE_PREFIXES) or not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5] if name else []
        hint = f" (close: {', '.join(close)})" if close else ""
        raise InvalidArgumentError(
            f"--arch {arch!r}: {name!r} is not a model timm builds offline{hint}: "
            "give a name of timm.list_models() (no hub names)"
        )
    cfg = timm.models.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    lic = getattr(cfg, "license", None) if cfg is not None else None
    return ArchSpec(
        arch, "timm", name, size, mean, std,  # type: ignore[arg-type]
        license=f"{lic} (timm's pretrained tag; check your file's)" if lic else None,
    )  # fmt: skip


def _torchvision_spec(arch: str) -> ArchSpec:
    import torchvision

    name = arch[len("torchvision:") :]
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise InvalidArgumentError(
            f"--arch {arch!r}: {name!r} is not a torchvision classification model: "
            f"use one of torchvision.models.list_models() (e.g. resnet50, vit_b_16)"
        )
    return ArchSpec(arch, "torchvision", name, 224)


def build_arch(
    arch: str | ArchSpec,
    *,
    input_px: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, int]:
    """Build an architecture with random weights, offline, as a feature extractor.

    Args:
        arch: Architecture name or spec (see :func:`parse_arch`).
        input_px: Input size (``None``: the native one). A ViT's position
            embedding is made for this size (other sizes are interpolated).
        seed: Seed of the random init (``None``: torch's current RNG state).
        device: Build on this device; ``"meta"`` builds shapes only (no memory).

    Returns:
        ``(module, dim)``: the module in eval mode, mapping float
        ``(n, 3, input_px, input_px)`` to ``(n, dim)`` (the CLS token, the pooled
        feature, or the layer before a torchvision classifier).

    Raises:
        InvalidArgumentError: If the name is unknown or the input size does not fit.
    """
    spec = arch if isinstance(arch, ArchSpec) else parse_arch(arch)
    px = spec.input_px if input_px is None else int(input_px)
    if px < 16 or (spec.patch and px % spec.patch):
        step = spec.patch or 1
        raise InvalidArgumentError(
            f"input size {px} px does not fit {spec.arch}: use a multiple of its "
            f"patch size {step} >= 16 (e.g. {spec.input_px})"
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device) if device is not None else nullcontext():
            model, dim = _build(spec, px)
    return model.eval(), dim


def _build(spec: ArchSpec, px: int) -> tuple[nn.Module, int]:
    if spec.family == "torchvision":
        import torchvision

        model = torchvision.models.get_model(spec.model, weights=None)
        _drop_classifier(model, spec.arch)
        dim = _measure(model, px)
        return model, dim
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if spec.patch is not None:  # DINOv2 ViTs: any multiple of 14 at forward time
        kwargs |= {"img_size": px, "dynamic_img_size": True}
    elif px != spec.input_px and _takes_img_size(spec.model):
        kwargs["img_size"] = px
    model = timm.create_model(spec.model, **kwargs)
    width: Any = model.num_features  # every timm model has it
    return model, int(width)


def _takes_img_size(name: str) -> bool:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def _drop_classifier(model: nn.Module, arch: str) -> str:
    """Replace the last ``nn.Linear`` (the classifier) by ``nn.Identity``; its name."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise InvalidArgumentError(
            f"{arch} has no linear classifier to remove: import a model whose last "
            "layer is nn.Linear, or use timm:<name>"
        )
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    setattr(model, "_cytostore_classifier", last)  # noqa: B010 - read by mapping
    return last


def _measure(model: nn.Module, px: int) -> int:
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "meta":
        with torch.device("meta"):
            out = model.eval()(torch.zeros(1, 3, px, px))
        return int(out.shape[-1])
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, px, px))
    return int(out.shape[-1])


# ------------------------------------------------------------------ reading files
def read_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a weights file without running code from it.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (tensors, dicts, lists, numbers: no objects).

    Args:
        path: The file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.safetensors``).

    Returns:
        What the file holds (usually a dict; DinoBloom's: ``{"teacher": {...}}``).

    Raises:
        InvalidArgumentError: If the file does not exist.
        WeightsMismatchError: If it cannot be read safely (the cause, and how to
            convert it: docs/models.md).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(
            f"weights file {str(p)!r} does not exist: give the path of the "
            "downloaded .pth/.pt/.safetensors file"
        )
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm
            raise WeightsMismatchError(
                f"{p.name} is a safetensors file but safetensors is not installed: "
                "pip install safetensors"
            ) from None
        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - any safetensors parse failure
            raise WeightsMismatchError(
                f"cannot read {p.name} as safetensors ({_first_line(exc)}): "
                "download it again"
            ) from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=_zip(p))
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # junk, not a pickled object
            raise WeightsMismatchError(
                f"cannot read {p.name} as a torch or safetensors file "
                f"({_first_line(exc)}): download it again"
            ) from None
        raise WeightsMismatchError(
            f"torch.load(weights_only=True) refused {p.name}: it holds Python "
            f"objects besides tensors ({_first_line(exc)}); cytostore never unpickles "
            "them: convert the file once to safetensors where you trust it (see "
            "docs/models.md, 'Files torch refuses') and import that"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, ...
        raise WeightsMismatchError(
            f"cannot read {p.name} as a torch or safetensors file "
            f"({type(exc).__name__}: {_first_line(exc)}): download it again"
        ) from None
    return obj if isinstance(obj, dict) else {"": obj}


def _zip(path: Path) -> bool:
    """Whether the file is torch's zip format (mmap needs it; old files are not)."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # torch's cause follows its generic header
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line.split(" was not an allowed global")[0][:200]


# ------------------------------------------------------------------ mapping keys
def map_state_dict(
    spec: ArchSpec, raw: Mapping[str, Any], model: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Map a checkpoint's keys onto ``model``'s (see the module docstring).

    Args:
        spec: The architecture.
        raw: What :func:`read_weights` returned.
        model: The module from :func:`build_arch` (its shapes guide resampling).

    Returns:
        ``(state, dropped)``: the mapped state dict, and the count of keys left
        out on purpose by reason (``ssl_heads``, ``classifier``, ``mask_token``).

    Raises:
        WeightsMismatchError: If the file is not a state dict.
    """
    state = _unwrap(raw)
    dropped: dict[str, int] = {}
    if spec.family in ("dinobloom", "dinov2"):
        # DinoBloom saves the DINOv2 trainer's {"teacher": {"backbone.*",
        # "dino_head.*", "ibot_head.*"}}; no library knows this wrapper.
        heads = [k for k in state if k.startswith(_SSL_HEADS)]
        if heads:
            dropped["ssl_heads"] = len(heads)
        state = {k: v for k, v in state.items() if k not in heads}
        if state and all(k.startswith("backbone.") for k in state):
            state = {k[len("backbone.") :]: v for k, v in state.items()}
        # DINOv2 trained with block_chunks > 0 names blocks "blocks.<chunk>.<i>.".
        state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v
                 for k, v in state.items()}  # fmt: skip
        if "mask_token" in state:
            dropped["mask_token"] = 1
        state = _timm_filter("timm.models.vision_transformer", state, model)
    elif spec.family == "timm":
        import timm

        module = timm.models.model_entrypoint(spec.model).__module__
        state = _timm_filter(module, state, model)
        cfg = timm.models.get_pretrained_cfg(spec.model)
        names = getattr(cfg, "classifier", None) or ()
        names = (names,) if isinstance(names, str) else tuple(names)
        own = model.state_dict()
        head = [
            k
            for k in state
            if k not in own and any(k.startswith(f"{n}.") for n in names)
        ]
        if head:
            dropped["classifier"] = len(head)
        state = {k: v for k, v in state.items() if k not in head}
    else:
        last = getattr(model, "_cytostore_classifier", None)
        head = [k for k in state if last and k.startswith(f"{last}.")]
        if head:
            dropped["classifier"] = len(head)
        state = {k: v for k, v in state.items() if k not in head}
        from cytostore.embedder.backbones import fit_vit_pos_embedding

        state = fit_vit_pos_embedding(model, state)
    return state, dropped


def _unwrap(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint (``teacher``, ``model``, ...)."""
    obj: Any = raw
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next(
            (
                obj[k]
                for k in ("teacher", "state_dict", "model", "model_ema", "")
                if isinstance(obj.get(k), Mapping)
            ),
            None,
        )
        if inner is None:
            break
        obj = inner
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        found = sorted(map(str, obj))[:5] if isinstance(obj, Mapping) else []
        raise WeightsMismatchError(
            "the file holds no state dict (name -> tensor) where one was expected "
            f"(top-level keys: {found or type(obj).__name__}): give the checkpoint "
            "file itself (DinoBloom: the .pth with a 'teacher' entry)"
        )
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in obj.items()
    }


def _timm_filter(
    module_name: str, state: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Apply the ``checkpoint_filter_fn`` of a timm model module, where it has one."""
    module = importlib.import_module(module_name)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return dict(filter_fn(state, model))
    except Exception as exc:  # noqa: BLE001 - a file far from the arch breaks it
        raise WeightsMismatchError(
            f"timm could not map these weights onto {type(model).__name__} "
            f"({type(exc).__name__}: {_first_line(exc)}): pick the --arch the file "
            "was made for"
        ) from None


def check_fit(
    model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, file: str
) -> None:
    """Refuse a state dict that does not fit ``model`` key for key and shape for shape.

    Raises:
        WeightsMismatchError: One line: expected vs found (missing and unexpected
            keys, wrong shapes), and a guess at the right ``--arch``.
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = [f"expected {len(own)} tensors, found {len(state)}"]
    for what, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape (file vs expected)", shapes),
    ):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{more}")
    raise WeightsMismatchError(
        f"{file} does not fit --arch {arch}: {'; '.join(parts)}. "
        f"{_arch_hint(state, arch)}"
    )


def _arch_hint(state: Mapping[str, torch.Tensor], arch: str) -> str:
    """Name the ViT size a file's width points to, else the general fix."""
    width = state["cls_token"].shape[-1] if "cls_token" in state else None
    family = arch.split("-")[0] if arch.startswith(("dinobloom", "dinov2")) else None
    for size, (_, dim) in _VIT.items():
        if width == dim and family:
            name = f"{family}-{size}" if family == "dinobloom" else None
            if name is None:
                name = next(
                    f"dinov2-{k}" for k, v in _DINOV2_SIZES.items() if v == size
                )
            if name != arch:
                return f"Its width {dim} is that of {name}: use --arch {name}"
    return (
        "Give the file made for this architecture, or pick the --arch it was made for"
    )


def load_foundation_weights(
    model: nn.Module, arch: str | ArchSpec, path: str | os.PathLike[str]
) -> dict[str, int]:
    """Read, map, check and load a foundation checkpoint into ``model`` (in place).

    Returns:
        The keys dropped on purpose by reason (see :func:`map_state_dict`).

    Raises:
        InvalidArgumentError: If the file does not exist.
        WeightsMismatchError: If it cannot be read safely or does not fit.
    """
    spec = arch if isinstance(arch, ArchSpec) else parse_arch(arch)
    state, dropped = map_state_dict(spec, read_weights(path), model)
    check_fit(model, state, spec.arch, Path(path).name)
    model.load_state_dict(state, strict=True, assign=_on_meta(model))
    return dropped


def build_from_file(
    arch: str | ArchSpec,
    path: str | os.PathLike[str],
    *,
    input_px: int | None = None,
) -> tuple[nn.Module, int, dict[str, int]]:
    """Build an architecture straight from a weights file (no random init to undo).

    The module is built on the meta device and its tensors are the file's (a few
    seconds saved per ViT); a module with tensors the file does not hold (none of
    the supported families) is built normally instead.

    Returns:
        ``(module, dim, dropped)``: the module in eval mode on the CPU, its feature
        width, and the keys dropped on purpose (see :func:`map_state_dict`).

    Raises:
        InvalidArgumentError: If the file does not exist or the arch is unknown.
        WeightsMismatchError: If it cannot be read safely or does not fit.
    """
    spec = arch if isinstance(arch, ArchSpec) else parse_arch(arch)
    raw = read_weights(path)
    model, dim = build_arch(spec, input_px=input_px, device="meta")
    state, dropped = map_state_dict(spec, raw, model)
    check_fit(model, state, spec.arch, Path(path).name)
    model.load_state_dict(state, strict=True, assign=True)
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type == "meta" for t in tensors):  # non-persistent buffers
        model, dim = build_arch(spec, input_px=input_px, seed=0)
        model.load_state_dict(state, strict=True)
    return model.eval(), dim, dropped


def _on_meta(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.device.type == "meta"


def foundation_preprocessing(
    arch: str | ArchSpec,
    input_px: int | None = None,
    *,
    scale: str | None = None,
    fov_um: float = DEFAULT_FOV_UM,
) -> Preprocessing:
    """Return the preprocessing an imported architecture is fed with.

    Args:
        arch: Architecture name or spec.
        input_px: Input size (``None``: native).
        scale: ``physical`` or ``resize`` (``None``: the family's: ``resize`` for
            DinoBloom, as its authors trained it; ``physical`` otherwise).
        fov_um: Field of view of a ``physical`` crop in µm.

    Returns:
        The :class:`~cytostore.embedder.Preprocessing` (its normalisation is the
        family's).

    Raises:
        InvalidArgumentError: If ``scale`` is not one of ``physical``, ``resize``.
    """
    spec = arch if isinstance(arch, ArchSpec) else parse_arch(arch)
    px = spec.input_px if input_px is None else int(input_px)
    policy = spec.scale if scale is None else scale
    if policy not in SCALES:
        raise InvalidArgumentError(
            f"--scale must be one of {', '.join(SCALES)}, got {policy!r}"
        )
    prep = Preprocessing.for_input(px, fov_um, mean=spec.mean, std=spec.std)
    if policy == "physical":
        return prep
    return Preprocessing(prep.um_per_px, px, spec.mean, spec.std, scale=policy)


# ------------------------------------------------------------------ importing
def import_model(
    store: Store | str | os.PathLike[str],
    name: str,
    weights: str | os.PathLike[str],
    arch: str,
    *,
    license: str | None = None,  # noqa: A002 - the word users type
    scale: str | None = None,
    input_px: int | None = None,
    fov_um: float = DEFAULT_FOV_UM,
    overwrite: bool = False,
) -> ModelCard:
    """Import a local foundation-model checkpoint as a model of the store.

    Args:
        store: The store (or its folder).
        name: Model name to register.
        weights: The downloaded file (``.pth``/``.pt``/``.safetensors``).
        arch: ``dinobloom-s|b|l|g``, ``dinov2-vits14|vitb14|vitl14|vitg14``,
            ``timm:<model>`` or ``torchvision:<model>``.
        license: Licence of the weights for the card (``None``: the family's
            known licence, or ``unknown``).
        scale: µm/px policy: ``resize`` (whole image to the input size, as the
            original) or ``physical`` (resample to a common µm/px and crop, like our
            own models). ``None``: ``resize`` for DinoBloom, else ``physical``.
        input_px: Input size (``None``: native: 224 for DinoBloom and DINOv2).
        fov_um: Field of view of a ``physical`` crop in µm.
        overwrite: Replace a model of the same name.

    Returns:
        The card as written (provenance under ``card.extra["provenance"]``).

    Raises:
        InvalidArgumentError: If the name is invalid or taken, the arch unknown,
            the file missing, or the input size does not fit.
        WeightsMismatchError: If the file cannot be read safely, or does not fit
            the architecture (one line: expected vs found).
    """
    from cytostore.embedder.registry import model_dir, register_model
    from cytostore.store import Store

    st = store if isinstance(store, Store) else Store.open(Path(store))
    model_dir(st, name)  # validates the name before any heavy work
    taken = name in {r[0] for r in st.sql("SELECT name FROM models").rows}
    if taken and not overwrite:
        raise InvalidArgumentError(
            f"a model named {name!r} exists: choose another --name, or replace it "
            "(--overwrite)"
        )
    spec = parse_arch(arch)
    prep = foundation_preprocessing(spec, input_px, scale=scale, fov_um=fov_um)
    path = Path(weights)
    model, dim, dropped = build_from_file(spec, path, input_px=prep.crop_px)
    provenance = {
        "arch": spec.arch,
        "family": spec.family,
        "builder": f"{'torchvision' if spec.family == 'torchvision' else 'timm'}"
        f":{spec.model}",
        "file": path.name,
        "file_sha256": sha256_file(path),
        "file_bytes": path.stat().st_size,
        "license": license or spec.license or "unknown (give --license)",
        "input_px": prep.crop_px,
        "normalisation": {"mean": list(prep.mean), "std": list(prep.std)},
        "pooling": _pooling(spec, model),
        "dim": dim,
        "scale": prep.scale,
        "dropped_keys": dropped,
        "imported": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "versions": {p: _version(p) for p in ("timm", "torchvision", "safetensors")},
    }
    card = register_model(
        st,
        name,
        model,
        {
            "method": "imported",
            "backbone": spec.arch,
            "dim": dim,
            "preprocessing": prep,
            "init": path.name,
            "provenance": provenance,
        },
        overwrite=overwrite,
    )
    logger.info("imported %s as %s (%s, dim %d)", path.name, name, spec.arch, dim)
    return card


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _pooling(spec: ArchSpec, model: nn.Module) -> str:
    if spec.family in ("dinobloom", "dinov2"):
        return _VIT_POOLING
    if spec.family == "timm":
        return f"timm global_pool={getattr(model, 'global_pool', '?')!r}"
    last = getattr(model, "_cytostore_classifier", "?")
    return f"input of the removed classifier {last}"


# ------------------------------------------------------------------ pretraining
#: Method of the ViT recipe: DINOv2 and DinoBloom were trained with DINO-style
#: self-distillation, so continued pretraining on a lab's cells uses DINO.
VIT_RECIPE_METHOD = "dino"


def vit_recipe_defaults(
    backbone: str, method: str | None, crop_px: int | None
) -> tuple[str | None, int | None]:
    """Fill ``pretrain``'s unset method and input size for an importable arch.

    The ViT recipe: ``dino`` at the architecture's native input size (224 px for
    DinoBloom and DINOv2); house backbones keep the device recipe's (``None``).

    Returns:
        ``(method, crop_px)``.

    Examples:
        >>> vit_recipe_defaults("dinobloom-s", None, None)
        ('dino', 224)
        >>> vit_recipe_defaults("tiny", None, None)
        (None, None)
    """
    if not is_foundation_arch(backbone):
        return method, crop_px
    spec = parse_arch(backbone)
    return method or VIT_RECIPE_METHOD, crop_px or spec.input_px


def pretrain_preprocessing(
    backbone: str, crop_px: int, fov_um: float = DEFAULT_FOV_UM
) -> Preprocessing:
    """Return the preprocessing ``pretrain`` trains ``backbone`` with.

    An importable architecture keeps its family's normalisation and µm/px policy
    (:func:`foundation_preprocessing`); a house backbone gets
    ``Preprocessing.for_input(crop_px, fov_um)``.
    """
    if is_foundation_arch(backbone):
        return foundation_preprocessing(backbone, crop_px, fov_um=fov_um)
    return Preprocessing.for_input(crop_px, fov_um)
