"""Lazy re-exports for the sub-packages' ``__init__`` (PEP 562).

A sub-package re-exports its public names, but importing it must not import torch
for a caller that needs one light module (``cytostore search --cell`` needs
``embedder.query``, not ``embedder.pretrain``). :func:`attach` gives the package a
module-level ``__getattr__`` that imports a name's module on first access; the
``__init__`` keeps its ``from ... import`` lines under ``TYPE_CHECKING`` for type
checkers and readers.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


class _LazyPackage(types.ModuleType):
    """A package whose functions may share their name with their module.

    Importing ``pkg.embed`` makes the import system bind the submodule to the
    attribute ``pkg.embed``; an eager ``__init__`` rebinds it to the function at
    once, so ``from pkg import embed`` always gave the function. This class keeps
    that promise under lazy loading by binding the function instead.
    """

    _lazy_shadowed: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in self._lazy_shadowed
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def attach(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Make ``package`` import each exported name's module when it is first used.

    Args:
        package: The package's ``__name__`` (it must be in ``sys.modules``).
        exports: Public name → the submodule defining it (``"pretrain"`` for
            ``package.pretrain``).

    Returns:
        ``(__getattr__, __dir__)`` for the package's namespace.
    """
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    shadowed = frozenset(name for name, sub in exports.items() if name == sub)
    object.__setattr__(module, "_lazy_shadowed", shadowed)

    def __getattr__(name: str) -> Any:  # noqa: N807 (PEP 562)
        sub = exports.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807 (PEP 562)
        return sorted(set(module.__dict__) | set(exports))

    return __getattr__, __dir__
