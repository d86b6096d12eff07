"""The package's one torch device resolver (torch is imported only when called).

It sits beside ``cytostore.errors`` below the floors so that ``embedder`` and
``heads``, which never import each other, resolve ``--device`` the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cytostore.errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device to use.

    Args:
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``,
            ``cuda:N``, ``mps``, or a ``torch.device``.

    Returns:
        The device.

    Raises:
        InvalidArgumentError: If the name is not a device, or CUDA is asked for but
            not available.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise InvalidArgumentError(
                f"unknown device {device!r}: use auto, cpu, cuda or cuda:N"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(
                f"device {device!r} asked for but CUDA is not available here: use "
                "--device cpu (or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA devices (cuda:0 ...)"
            )
    elif dev.type not in ("cpu", "mps"):
        raise InvalidArgumentError(
            f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N"
        )
    return dev
