"""Which files ingest may open: names the catalog can store, regular files in the root.

Ingest looks at every file it found *before* opening it (``lstat``/``stat`` only):

- a name that is not valid UTF-8 (a ``str`` from the OS holding surrogate escapes)
  cannot be stored in the catalog (DuckDB text is UTF-8); it is recorded in
  ``skipped`` under a printable form (:func:`printable_path`: the bad bytes written
  ``\\xNN``) and never opened;
- FIFOs, sockets, devices, folders and other non-regular files are never opened (a
  FIFO named ``x.png`` would block a reader forever); nor are broken symlinks;
- a symlink (the file itself or a folder above it) that leads outside the dataset
  root is refused, as :func:`cytostore.store.resolve_inside` refuses it when the
  catalogued path is read later.

Each refusal is a one-line reason for the ``skipped`` table.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

__all__ = ["file_kind", "is_utf8", "printable_path", "screen_files", "NOT_UTF8"]

#: Reason recorded for a path that is not valid UTF-8.
NOT_UTF8 = (
    "file name is not valid UTF-8 (path shown with \\xNN escapes for the bad "
    "bytes): not opened; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8) and "
    "ingest again"
)

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symlink"),
)


def file_kind(mode: int) -> str:
    """Name the kind of file an ``st_mode`` describes.

    Examples:
        >>> import stat
        >>> file_kind(stat.S_IFIFO | 0o644), file_kind(stat.S_IFREG | 0o644)
        ('a FIFO (named pipe)', 'a regular file')
    """
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def is_utf8(text: str) -> bool:
    """Return whether ``text`` encodes to UTF-8 (no surrogate escapes from the OS).

    Examples:
        >>> import os
        >>> is_utf8("NGS/NGS_0001.tiff"), is_utf8(os.fsdecode(b"BAS_\\xff.tiff"))
        (True, False)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(text: str) -> str:
    """Return a UTF-8 form of an OS path: bytes that are not UTF-8 become ``\\xNN``.

    Valid UTF-8 paths are returned unchanged.

    Examples:
        >>> import os
        >>> printable_path(os.fsdecode(b"BAS/BAS_\\xff01.tiff"))
        'BAS/BAS_\\\\xff01.tiff'
    """
    if is_utf8(text):
        return text
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def _inside(base: str, real: str) -> bool:
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _dir_reason(root: Path, base: str, rel_dir: str) -> str | None:
    real = os.path.realpath(os.path.join(root, rel_dir))
    if _inside(base, real):
        return None
    return (
        f"its folder {rel_dir!r} is a symlink leading outside the dataset root (to "
        f"{printable_path(real)}): not opened; copy the files into the dataset "
        "folder, or ingest the folder the link points to"
    )


def _file_reason(base: str, full: str) -> str | None:
    try:
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(full)
            if not _inside(base, real):
                return (
                    "a symlink leading outside the dataset root (to "
                    f"{printable_path(real)}): not opened; copy the file into the "
                    "dataset folder instead"
                )
            try:
                st = os.stat(full)
            except FileNotFoundError:
                return "a broken symlink (its target does not exist): fix or remove it"
    except FileNotFoundError:
        return "vanished while ingest ran: ingest again once the folder is settled"
    except OSError as exc:
        return f"cannot look at it ({exc.strerror or exc}): check its permissions"
    if not stat.S_ISREG(st.st_mode):
        return (
            f"{file_kind(st.st_mode)}, not a regular file: never opened; only "
            "regular image files are ingested"
        )
    return None


def screen_files(root: str | os.PathLike[str], rels: Sequence[str]) -> list[str | None]:
    """Say, without opening anything, which files under ``root`` ingest may open.

    Args:
        root: The dataset root.
        rels: POSIX paths relative to ``root`` (valid UTF-8: check names first with
            :func:`is_utf8`).

    Returns:
        One entry per path: None if it is a regular file inside ``root`` (following
        symlinks), else the one-line reason it is refused.
    """
    root = Path(root)
    base = os.path.realpath(root)
    dirs: dict[str, str | None] = {}
    out: list[str | None] = []
    for rel in rels:
        rel_dir = rel.rpartition("/")[0]
        if rel_dir not in dirs:
            dirs[rel_dir] = _dir_reason(root, base, rel_dir) if rel_dir else None
        out.append(dirs[rel_dir] or _file_reason(base, os.path.join(root, rel)))
    return out
