"""Cell images for the web page: decoded, re-encoded as PNG, thumbnails cached.

Only catalogued cells are read, by id, through :meth:`Store.cell_paths` (which
refuses a path leading outside its dataset's root); the file is decoded with the
package's reader and re-encoded with Pillow, so the bytes of a file are never
streamed as they are. Thumbnails live in ``STORE/cache/thumbnails/<cell_id>.png``
(``gc --cache`` and ``rm`` clear them), bounded in count; nothing is written when
the server is read-only or the folder is not writable. A cached thumbnail is
served only while its cell is catalogued: checked against the catalogued ids that
:class:`~cytostore.serve.cache.CatalogCache` keeps while the catalog is unchanged
(no catalog visit per thumbnail).
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from PIL import Image

from cytostore.data import load_rgb
from cytostore.errors import UnknownCellError
from cytostore.serve.cache import CatalogCache
from cytostore.store import Store

__all__ = ["THUMBNAIL_PX", "ThumbnailCache", "cell_png"]

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_PX = 128
#: Most thumbnails kept on disk; past it the oldest half is removed.
MAX_THUMBNAILS = 50_000


def _cell_path(store: Store, cell_id: int) -> Path:
    with store.connect(read_only=True):  # one catalog visit for the three reads
        if not store.cell_meta([int(cell_id)], ["cell_id"]).rows:
            raise UnknownCellError(
                f"no cell {cell_id} in the store: list ids with 'cytostore sql STORE "
                '"SELECT cell_id FROM cells"\''
            )
        return store.cell_paths([int(cell_id)])[0]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def cell_png(store: Store, cell_id: int, max_px: int | None = None) -> bytes:
    """Return a catalogued cell's image re-encoded as PNG.

    Args:
        store: The store.
        cell_id: The cell's id.
        max_px: Shrink so that the longest side is at most this (``None``: full
            resolution).

    Returns:
        The PNG bytes (RGB).

    Raises:
        UnknownCellError: If the id is not a catalogued cell.
        StoreCorruptError: If the cell's path leads outside its dataset's root.
        ImageDecodeError: If the file is missing or not a readable image.
    """
    img = Image.fromarray(load_rgb(_cell_path(store, cell_id)))
    if max_px is not None:
        img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return _png(img)


class ThumbnailCache:
    """Thumbnails of one store, on disk under ``cache/thumbnails/`` when allowed.

    Safe to share between threads.

    Args:
        store: The store.
        writable: Whether thumbnails may be written (``False``: read-only server).
        max_files: Most files kept; past it the oldest half is removed.
        catalog: Where the catalogued ids are kept (default: a cache of its own).
    """

    def __init__(
        self,
        store: Store,
        writable: bool,
        max_files: int = MAX_THUMBNAILS,
        catalog: CatalogCache | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog or CatalogCache(store)
        self.folder = store.root / "cache" / "thumbnails"
        self.writable = writable
        self.max_files = max_files
        self._lock = threading.Lock()
        self._count: int | None = None

    def cached(self, cell_id: int) -> bytes | None:
        """Return a cell's cached thumbnail without blocking, or ``None``.

        ``None`` when none is on disk, or when whether the cell is catalogued is
        not known without a catalog visit: then call :meth:`get` in a thread.
        """
        if not self.catalog.catalogued(cell_id, visit=False):
            return None
        return self._read(cell_id)

    def get(self, cell_id: int) -> bytes:
        """Return the PNG thumbnail of a cell, from the cache or made now.

        Raises:
            UnknownCellError, StoreCorruptError, ImageDecodeError: As
                :func:`cell_png`.
        """
        if self.catalog.catalogued(cell_id):
            data = self._read(cell_id)
            if data is not None:
                return data
        data = cell_png(self.store, int(cell_id), THUMBNAIL_PX)
        if self.writable:
            self._write(self.folder / f"{int(cell_id)}.png", data)
        return data

    def _read(self, cell_id: int) -> bytes | None:
        try:
            data = (self.folder / f"{int(cell_id)}.png").read_bytes()
        except OSError:
            return None
        return data if data.startswith(b"\x89PNG") else None

    def _write(self, path: Path, data: bytes) -> None:
        """Write a thumbnail atomically; give up quietly where the disk refuses."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(
                f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp"
            )
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            self.writable = False  # not writable: serve without caching
            return
        with self._lock:
            if self._count is None:
                self._count = sum(1 for _ in self.folder.glob("*.png"))
            else:
                self._count += 1
            if self._count > self.max_files:
                self._evict()

    def _evict(self) -> None:
        files = sorted(self.folder.glob("*.png"), key=_mtime)
        for f in files[: len(files) // 2 + 1]:
            try:
                f.unlink()
            except OSError:
                pass
        self._count = sum(1 for _ in self.folder.glob("*.png"))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
