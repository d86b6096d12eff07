"""Deterministic fault injection for crash tests: die at a named point, on its n-th hit.

Long commands call :func:`fault_point` at the places where a crash matters (between
a file write and its catalog commit, after a rename, ...). In normal use it costs one
dictionary lookup. A test sets ``CYTOSTORE_FAULT=NAME`` (or ``NAME:N`` for the n-th
time the point is reached, counting from 1) in a child process's environment, and
that process then ends at that point exactly as if it had been killed (``SIGKILL``:
no ``finally``, no ``atexit``, no flush), so a kill test needs no sleeps.
``CYTOSTORE_FAULT_MODE=raise`` raises :class:`InjectedFault` instead, for in-process
tests of error paths. Hand-written because no library offers named, countable
kill points across processes.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["FAULT_ENV", "FAULT_MODE_ENV", "InjectedFault", "fault_point"]

FAULT_ENV = "CYTOSTORE_FAULT"
FAULT_MODE_ENV = "CYTOSTORE_FAULT_MODE"

_lock = threading.Lock()
_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):  # noqa: N818 - it is a fault, not an error
    """Raised at a fault point when ``CYTOSTORE_FAULT_MODE=raise``."""


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    name, _, count = spec.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        n = 1
    return name, max(n, 1)


def fault_point(name: str) -> None:
    """Die here if ``CYTOSTORE_FAULT`` names this point and its hit count is reached.

    Args:
        name: The point's name, ``<command>.<place>`` (e.g. ``embed.after_append``).

    Raises:
        InjectedFault: When the point fires and ``CYTOSTORE_FAULT_MODE=raise``.
    """
    target = _target()
    if target is None or target[0] != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        fire = _hits[name] == target[1]
    if not fire:
        return
    if os.environ.get(FAULT_MODE_ENV) == "raise":
        raise InjectedFault(f"injected fault at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
