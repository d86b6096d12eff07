"""A child process holding a catalog's DuckDB lock (write or read) until let go."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHILD = """
import sys
import duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read")
print("locked", flush=True)
sys.stdin.read()  # until the parent closes our stdin
con.close()
print("released", flush=True)
"""


@contextmanager
def catalog_locked(catalog: Path, mode: str = "write") -> Iterator[None]:
    """Hold ``catalog`` open in another process for the block.

    ``mode`` is ``write`` (a writer: nobody else may open it) or ``read`` (a
    reader: others may read, nobody may write).

    The child says ``locked`` on its stdout once DuckDB holds the file lock, and
    releases it when its stdin is closed: no sleeps, no timing.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(catalog), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if line.strip() != "locked":
            raise RuntimeError(f"lock holder failed to start: {line!r}")
        yield
    finally:
        proc.stdin.close()
        released = proc.stdout.read()
        proc.wait(timeout=60)
    if proc.returncode != 0 or released.strip() != "released":
        raise RuntimeError(f"lock holder ended badly ({proc.returncode}): {released!r}")
