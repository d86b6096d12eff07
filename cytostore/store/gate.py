"""One process's threads share a catalog: many readers, or one writer.

DuckDB lets one process hold a catalog read-only (many connections) or read-write,
never both at once, and refuses a second connection whose configuration differs.
Threads of one process therefore queue here before they connect: readers share the
gate, a writer has it alone (and may read inside its own transaction). The stdlib
has no reader/writer lock, hence this small one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

__all__ = ["Gate", "gate_for"]

_gates: dict[str, Gate] = {}
_gates_lock = threading.Lock()


class Gate:
    """A reader/writer lock for one catalog file within this process.

    Writers take precedence over new readers once they wait, so a stream of
    searches cannot starve a commit.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self, deadline: float) -> bool:
        """Take a reader's share; return False if ``deadline`` (monotonic) passes."""
        with self._cond:
            while self._writer or self._writers_waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._readers += 1
            return True

    def release_read(self) -> None:
        """Give back a reader's share."""
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self, deadline: float) -> bool:
        """Take the gate alone; return False if ``deadline`` (monotonic) passes."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                self._writer = True
                return True
            finally:
                self._writers_waiting -= 1
                self._cond.notify_all()

    def release_write(self) -> None:
        """Give the gate back."""
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def holder(self) -> str:
        """Return ``"writer"``, ``"readers"`` or ``"none"`` (for busy messages)."""
        with self._cond:
            if self._writer:
                return "writer"
            return "readers" if self._readers else "none"


def gate_for(catalog: Path) -> Gate:
    """Return this process's gate for the catalog at ``catalog``."""
    key = str(Path(catalog).resolve())
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = Gate()
        return gate
