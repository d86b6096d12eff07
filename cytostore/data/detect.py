"""Find every dataset under a path, at any depth, by the names of its files.

One walk of the tree lists every folder; each reader's ``anchor_of`` then says which
folders reveal its dataset root (LMU: ``<CLS>/<CLS>_NNNN.tiff``; BM:
``<CLS>[/<chunk>]/<CLS>_NNNNN.jpg``; MLL: ``<bag_label>/<patient_id>/image_<i>.tif``).
Wrappers do not matter (``PKG - …`` folders, spaces, ``….zip.download/``). Hidden
folders and ``__MACOSX`` are not walked.

Zips: a ``.zip`` given as the path, or found in the tree and holding images, is
extracted once to ``<sources_dir>/<zip name without .zip>/`` (atomically: into a
temporary folder, then renamed), and that folder is searched; cell paths are relative
to the dataset root inside it. Extraction refuses absolute and ``..`` member names,
archives over :data:`ZIP_MAX_BYTES` or the free disk space, archives expanding more
than :data:`ZIP_MAX_RATIO`-fold, and members yielding more bytes than they declare.
Metadata files (``annotations.dat``, ``metadata.csv``,
...) are read directly from small zips without extracting.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType

from cytostore.data import bm, folder, lmu, mll_helmholtz
from cytostore.data.images import is_hidden, is_image_name
from cytostore.errors import InvalidArgumentError, LayoutNotFoundError
from cytostore.store import fault_point

__all__ = [
    "READERS",
    "LAYOUTS",
    "ZIP_MAX_BYTES",
    "ZIP_MAX_RATIO",
    "Found",
    "scan",
    "detect",
    "metadata_dirs",
]

logger = logging.getLogger(__name__)

#: Reader module of each layout, in detection order.
READERS: dict[str, ModuleType] = {
    "lmu": lmu,
    "mll_helmholtz": mll_helmholtz,
    "bm": bm,
    "folder": folder,
}
LAYOUTS = ("auto", *READERS)
#: Most bytes a zip may extract to (the largest TCIA download, LMU, is ~12 GB).
ZIP_MAX_BYTES = 64 * 2**30
#: Most a zip may expand (extracted / compressed bytes) once over
#: :data:`ZIP_RATIO_MIN_BYTES`: cell images barely compress; bombs expand 1000-fold.
ZIP_MAX_RATIO = 100
ZIP_RATIO_MIN_BYTES = 16 * 2**20
_SKIP_DIRS = frozenset({"__macosx", "$recycle.bin", "system volume information"})

Tree = dict[Path, list[str]]


@dataclass(frozen=True)
class Found:
    """One dataset found on disk.

    Attributes:
        layout: Reader name.
        anchor: Dataset root; cell paths are relative to it.
        files: Every file below the anchor (POSIX, relative), sorted.
        meta_dirs: Where its metadata files are looked for, nearest first.
    """

    layout: str
    anchor: Path
    files: tuple[str, ...]
    meta_dirs: tuple[Path, ...]


def scan(root: Path, exclude: Sequence[Path] = ()) -> Tree:
    """Walk ``root`` (following links, once per folder) and list each folder's files.

    Args:
        root: Folder to walk.
        exclude: Folders not to walk (e.g. the store itself).

    Returns:
        ``{folder: sorted file names}`` for every non-hidden folder, ``root`` included.
    """
    skip = {os.path.realpath(p) for p in exclude}
    seen: set[tuple[int, int]] = set()
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:  # vanished or unreadable while walking
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen or os.path.realpath(dirpath) in skip:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(
            d for d in dirnames if not is_hidden(d) and d.lower() not in _SKIP_DIRS
        )
        tree[Path(dirpath)] = sorted(filenames)
    return tree


def _files_under(tree: Tree, anchor: Path) -> tuple[str, ...]:
    out: list[str] = []
    for d, names in tree.items():
        if d == anchor or anchor in d.parents:
            rel = d.relative_to(anchor).as_posix()
            prefix = "" if rel == "." else rel + "/"
            out.extend(prefix + n for n in names)
    return tuple(sorted(out))


def metadata_dirs(anchor: Path, context: Sequence[Path]) -> tuple[Path, ...]:
    """Return the anchor, its ancestors up to the ingest root, and their children.

    Args:
        anchor: The dataset root.
        context: ``(top,)`` for a plain folder: climb from ``anchor`` to ``top``. For
            data extracted from a zip, ``(extracted_root, zip_folder, ingest_root)``:
            climb to the extracted root, then from the folder that held the zip up
            to the ingest root (more ``(start, stop)`` pairs for nested zips).

    Returns:
        Folders, nearest first, without repeats.

    Examples:
        >>> [p.as_posix() for p in metadata_dirs(Path("/r/a/b"), (Path("/r"),))][:3]
        ['/r/a/b', '/r/a', '/r']
    """
    segments = [(anchor, context[0])]
    rest = list(context[1:])
    segments += [(rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)]
    levels: list[Path] = []
    for start, stop in segments:
        d = start
        while True:
            levels.append(d)
            if d == stop or stop not in d.parents:
                break
            d = d.parent
    out = list(levels)
    for d in levels:
        try:
            out.extend(sorted(c for c in d.iterdir() if c.is_dir()))
        except OSError:
            continue
    return tuple(dict.fromkeys(out))


def _zip_has_images(path: Path) -> bool:
    if not path.is_file():  # a FIFO or device named x.zip: never opened
        logger.warning("%s is not a regular file: not opened", path)
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(
                is_image_name(m) and not is_hidden(PurePosixPath(m).name)
                for m in zf.namelist()
            )
    except (OSError, zipfile.BadZipFile) as exc:
        logger.warning("cannot read zip %s: %s", path, exc)
        return False


def _extract(path: Path, sources_dir: Path) -> Path:
    name = (
        path.name[: -len(".zip")] if path.name.lower().endswith(".zip") else path.name
    )
    target = sources_dir / name
    if target.is_dir():
        return target
    tmp = sources_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(path) as zf:
            members = _checked_members(path, zf, sources_dir)
            for info in members:
                _extract_member(path, zf, info, tmp)
    except (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidArgumentError(
            f"{path} is not a valid zip ({exc}): re-download it or extract it yourself"
        ) from None
    except InvalidArgumentError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidArgumentError(
            f"cannot extract {path} ({exc}): extract it yourself and ingest the folder"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("ingest.after_extract")
    os.replace(tmp, target)
    logger.info("extracted %s to %s", path, target)
    return target


def _unsafe_member(name: str) -> bool:
    """True for a member name that is absolute, has a drive, or climbs with ``..``."""
    posix = name.replace("\\", "/")
    return (
        posix.startswith("/")
        or (len(posix) > 1 and posix[1] == ":")
        or ".." in posix.split("/")
        or "\0" in posix
    )


def _checked_members(
    path: Path, zf: zipfile.ZipFile, sources_dir: Path
) -> list[zipfile.ZipInfo]:
    """Return the members to extract, refusing unsafe names and bombs up front."""
    members = zf.infolist()
    for info in members:
        if _unsafe_member(info.filename):
            raise InvalidArgumentError(
                f"{path} holds the unsafe member {info.filename!r} (an absolute or "
                "'..' path, outside the archive folder): refused; extract it "
                "yourself and ingest the folder"
            )
    total = sum(i.file_size for i in members)
    packed = sum(i.compress_size for i in members)
    if total > ZIP_MAX_BYTES:
        raise InvalidArgumentError(
            f"{path} would extract to {total / 2**30:.1f} GiB, above the "
            f"{ZIP_MAX_BYTES / 2**30:.0f} GiB limit: extract it yourself and ingest "
            "the folder"
        )
    if total > ZIP_RATIO_MIN_BYTES and total > ZIP_MAX_RATIO * max(packed, 1):
        raise InvalidArgumentError(
            f"{path} would expand {total / max(packed, 1):.0f}-fold (limit "
            f"{ZIP_MAX_RATIO}:1; images barely compress): refused as a possible zip "
            "bomb; extract it yourself if you trust it"
        )
    free = shutil.disk_usage(sources_dir).free
    if total > free:
        raise InvalidArgumentError(
            f"{path} needs {total / 2**30:.1f} GiB to extract but {sources_dir} has "
            f"{free / 2**30:.1f} GiB free: free some space or extract it elsewhere"
        )
    return members


def _extract_member(
    path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, tmp: Path
) -> None:
    """Extract one member, stopping if it yields more bytes than it declares."""
    dest = tmp / info.filename
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise InvalidArgumentError(
                    f"{path}: member {info.filename!r} holds more bytes than its "
                    "header declares: refused as corrupt or hostile; re-download it"
                )
            out.write(chunk)


def _unwrap(root: Path) -> Path:
    while True:
        entries = [e for e in root.iterdir() if not is_hidden(e.name)]
        dirs = [e for e in entries if e.is_dir() and e.name.lower() not in _SKIP_DIRS]
        if len(dirs) != 1 or any(e.is_file() for e in entries):
            return root
        root = dirs[0]


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InvalidArgumentError(
            f"{str(path)!r} does not exist: give the folder (or .zip) holding the "
            "downloaded dataset(s)"
        )
    if path.is_file() and path.suffix.lower() != ".zip":
        raise InvalidArgumentError(
            f"{str(path)!r} is a file, not a folder or .zip: give the folder holding "
            "the images"
        )


def detect(
    path: str | os.PathLike[str],
    layout: str = "auto",
    *,
    sources_dir: Path | None = None,
    exclude: Sequence[Path] = (),
) -> tuple[list[Found], list[str]]:
    """Find the datasets under ``path``.

    Args:
        path: A folder (any depth above the data) or a ``.zip``.
        layout: ``auto`` (every known layout; else the path as a ``folder``
            dataset if its sub-folders hold images), or one layout name.
        sources_dir: Where zips are extracted; None leaves zips in the tree alone.
        exclude: Folders not to walk (the store).

    Returns:
        ``(found, warnings)``: one :class:`Found` per dataset (at most one per TCIA
        layout), and messages about copies that were passed over.

    Raises:
        InvalidArgumentError: If ``path`` does not exist, is empty or is a bad zip.
        LayoutNotFoundError: If no dataset of the requested layout is found.
    """
    if layout not in LAYOUTS:
        raise InvalidArgumentError(
            f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}"
        )
    root = Path(path).expanduser().absolute()
    _check_path(root)
    roots: list[tuple[Path, tuple[Path, ...]]] = []
    if root.is_file():
        if sources_dir is None:
            raise InvalidArgumentError(f"cannot ingest the zip {root} without a store")
        extracted = _extract(root, sources_dir)
        roots.append((extracted, (extracted, root.parent, root.parent)))
    else:
        roots.append((root, (root,)))
    trees: list[tuple[Tree, tuple[Path, ...]]] = []
    i = 0
    while i < len(roots):
        top, stops = roots[i]
        tree = scan(top, exclude)
        trees.append((tree, stops))
        i += 1
        if sources_dir is None:
            continue
        for d, names in tree.items():
            for n in names:
                if (
                    n.lower().endswith(".zip")
                    and not is_hidden(n)
                    and _zip_has_images(d / n)
                ):
                    extracted = _extract(d / n, sources_dir)
                    roots.append((extracted, (extracted, d, *stops)))
    if not any(names for tree, _ in trees for names in tree.values()):
        raise InvalidArgumentError(
            f"{str(root)!r} holds no files: give the folder holding the downloaded "
            "images"
        )
    found: list[Found] = []
    warnings: list[str] = []
    if layout != "folder":
        wanted = [n for n in READERS if n != "folder" and layout in ("auto", n)]
        for name in wanted:
            candidates: list[tuple[int, Found]] = []
            for tree, stops in trees:
                anchors = {
                    a
                    for d, names in tree.items()
                    if (a := READERS[name].anchor_of(d, names)) is not None
                }
                for a in sorted(anchors):
                    files = _files_under(tree, a)
                    candidates.append(
                        (len(files), Found(name, a, files, metadata_dirs(a, stops)))
                    )
            if not candidates:
                continue
            candidates.sort(key=lambda c: -c[0])
            found.append(candidates[0][1])
            for _, other in candidates[1:]:
                warnings.append(
                    f"{name}: another copy at {other.anchor} was not ingested (the "
                    f"one at {candidates[0][1].anchor} has more files); ingest it on "
                    f"its own with --layout folder --dataset-name NAME if it differs"
                )
    if found or layout not in ("auto", "folder"):
        if not found:
            raise LayoutNotFoundError(
                f"no {layout} dataset found under {str(root)!r}: check the path, or "
                "use --layout auto to see what is there"
            )
        return found, warnings
    tree, stops = trees[0]
    top = next(iter(tree))
    anchor = _unwrap(top) if root.is_file() else top
    has_class_images = any(
        d != anchor and anchor in d.parents and any(is_image_name(n) for n in names)
        for d, names in tree.items()
    )
    if layout == "folder" or has_class_images:
        files = _files_under(tree, anchor)
        meta = metadata_dirs(anchor, stops)
        return [Found("folder", anchor, files, meta)], warnings
    raise LayoutNotFoundError(
        f"no known dataset layout under {str(root)!r} (lmu: <CLS>/<CLS>_NNNN.tiff, "
        "mll_helmholtz: <bag_label>/<patient_id>/image_<i>.tif, bm: "
        "<CLS>/<chunk>/<CLS>_NNNNN.jpg, folder: one sub-folder of images per class): "
        "use --layout folder --pattern '{label}_*.png' (a template of the file "
        "paths) for other trees"
    )
