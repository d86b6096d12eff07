"""Advisory file locks (``flock``) on one set's files, across processes and threads.

A lock is taken on its own open file description, so it excludes other processes
*and* other threads of this process that open the same lock file; the kernel drops it
when the holder dies (``kill -9`` included), so a crashed writer never leaves a lock
behind. The lock files themselves (``vectors/<set_id>.lock``,
``indexes/<set_id>.lock``) are empty and may stay on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

from cytostore.errors import StoreBusyError

__all__ = ["file_lock"]

_POLL_S = 0.05


@contextlib.contextmanager
def file_lock(path: Path, busy: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Args:
        path: The lock file.
        busy: The :class:`~cytostore.errors.StoreBusyError` message when the lock
            stays taken (say who holds it and what to do).
        wait_s: How long to wait for a holder to finish (0: fail at once).

    Yields:
        Nothing; the lock is released when the block ends.

    Raises:
        StoreBusyError: If another holder keeps the lock past ``wait_s``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(path, "a+b") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreBusyError(busy) from None
                time.sleep(min(_POLL_S, left))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
