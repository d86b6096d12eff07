"""What a reader returns: the cells and patients of one dataset found on disk.

A reader (``lmu``, ``mll_helmholtz``, ``bm``, ``folder``) is a module with

- ``LAYOUT``: its name;
- ``anchor_of(dirpath, names) -> Path | None``: given one folder and the names of the
  files in it, the dataset root (anchor) this folder reveals, or None;
- ``read(anchor, files, meta_dirs, options) -> DatasetListing``: list the cells under
  the anchor (``files`` are every file below it, POSIX paths relative to it) and read
  the metadata files found in ``meta_dirs``.

Readers only list; :func:`cytostore.data.ingest` decodes, hashes and catalogues.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cytostore.data.images import is_hidden, is_image_name

__all__ = [
    "CellRecord",
    "DatasetListing",
    "ReadOptions",
    "find_metadata",
    "split_files",
    "posix_parts",
]

logger = logging.getLogger(__name__)

#: Largest metadata file (``annotations.dat``, ``metadata.csv``, ...) read, in bytes.
MAX_METADATA_BYTES = 64 * 1024 * 1024


@dataclass
class CellRecord:
    """One image a reader found.

    Attributes:
        path: POSIX path relative to the dataset root (the anchor folder).
        label: Cell type code, or the patient's bag label where only patients are
            labelled; None if unknown.
        patient_id: The patient, or None where the dataset has no patients.
        cell_type: Canonical cell type (see :mod:`cytostore.data.vocabulary`) or None.
        reannotation1: LMU re-annotation 1 (None for ``nan`` and other datasets).
        reannotation2: LMU re-annotation 2.
    """

    path: str
    label: str | None
    patient_id: str | None = None
    cell_type: str | None = None
    reannotation1: str | None = None
    reannotation2: str | None = None


@dataclass
class ReadOptions:
    """Options of a read (all optional; only ``folder`` uses the last four).

    Attributes:
        um_per_px: Pixel size overriding the layout's default (µm per pixel).
        pattern: ``folder`` path template such as ``{label}/*.jpg``.
        patients: ``folder`` patient metadata table (CSV/XLSX) keyed by patient_id.
        bag_column: Column of ``patients`` holding the bag label.
        dataset_name: ``folder`` dataset name (default: the folder's name).
    """

    um_per_px: float | None = None
    pattern: str | None = None
    patients: Path | None = None
    bag_column: str = "bag_label"
    dataset_name: str | None = None


@dataclass
class DatasetListing:
    """Everything a reader found for one dataset.

    Attributes:
        dataset: Catalog name (``lmu``, ``mll_helmholtz``, ``bm`` or the folder's).
        layout: Reader name.
        root: The anchor folder; cell paths are relative to it.
        um_per_px: Pixel size in µm, or None if unknown.
        n_expected: Published cell count (None if unknown).
        expected_range: Accepted published counts ``(low, high)``; None if unknown.
        cells: The images, sorted by path.
        patients: Patient rows (``patient_id``, ``bag_label``, ``age``, ``sex``, ...).
        hidden: Relative paths of OS clutter files (recorded as skipped).
        warnings: Things the user should know (missing metadata, mismatches).
        rejected: ``(printable path, reason)`` of files refused before any reader
            saw them (names that are not valid UTF-8; recorded as skipped).
    """

    dataset: str
    layout: str
    root: Path
    um_per_px: float | None
    n_expected: int | None = None
    expected_range: tuple[int, int] | None = None
    cells: list[CellRecord] = field(default_factory=list)
    patients: list[dict[str, Any]] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def posix_parts(rel: str) -> list[str]:
    """Return the parts of a relative POSIX path (``PurePosixPath.parts``, faster).

    Examples:
        >>> posix_parts("BAS/./BAS_0001.tiff"), posix_parts("a//b/")
        (['BAS', 'BAS_0001.tiff'], ['a', 'b'])
    """
    return [p for p in rel.split("/") if p and p != "."]


def split_files(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split relative paths into image-named files and hidden clutter.

    Files that are neither (``README.txt``, checksum lists) are left out.

    Returns:
        ``(images, hidden)``, each sorted.

    Examples:
        >>> split_files(["a/x.png", "a/.DS_Store", "a/._x.png", "notes.txt"])
        (['a/x.png'], ['a/.DS_Store', 'a/._x.png'])
    """
    images: list[str] = []
    hidden: list[str] = []
    for f in files:
        parts = posix_parts(f)
        if not parts:
            continue
        if any(is_hidden(p) for p in parts):
            hidden.append(f)
        elif is_image_name(parts[-1]):
            images.append(f)
    return sorted(images), sorted(hidden)


def find_metadata(
    meta_dirs: Sequence[Path], names: Sequence[str]
) -> tuple[str, bytes] | None:
    """Find the first metadata file called one of ``names``, also inside zips.

    Args:
        meta_dirs: Folders to look in, nearest first.
        names: File names (case-insensitive), preferred first.

    Returns:
        ``(where, content)`` with a human-readable location, or None if absent.
    """
    wanted = [n.lower() for n in names]
    for name in wanted:
        for d in meta_dirs:
            try:
                entries = list(d.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.name.lower() == name and entry.is_file():
                    if entry.stat().st_size > MAX_METADATA_BYTES:
                        logger.warning("%s is too large for a metadata file", entry)
                        continue
                    return str(entry), entry.read_bytes()
    for name in wanted:
        for d in meta_dirs:
            try:
                zips = sorted(
                    p for p in d.iterdir() if p.suffix.lower() == ".zip" and p.is_file()
                )
            except OSError:
                continue
            for z in zips:
                found = _from_zip(z, name)
                if found is not None:
                    return found
    return None


def _from_zip(path: Path, name: str) -> tuple[str, bytes] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                base = PurePosixPath(member).name
                if base.lower() == name and not is_hidden(base):
                    if zf.getinfo(member).file_size > MAX_METADATA_BYTES:
                        logger.warning("%s!%s is too large for metadata", path, member)
                        continue
                    with zf.open(member) as fh:
                        return f"{path}!{member}", fh.read(MAX_METADATA_BYTES + 1)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
    return None
