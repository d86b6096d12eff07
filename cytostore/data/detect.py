"""Find every dataset under a path, at any depth, by the names of its files.

One walk of the tree lists every folder; each reader's ``anchor_of`` then says which
folders reveal its dataset root (LMU: ``<CLS>/<CLS>_NNNN.tiff``; BM:
``<CLS>[/<chunk>]/<CLS>_NNNNN.jpg``; MLL: ``<bag_label>/<patient_id>/image_<i>.tif``).
Wrappers do not matter (``PKG - …`` folders, spaces, ``….zip.download/``). Hidden
folders and ``__MACOSX`` are not walked.

Zips: a ``.zip`` given as the path, or found in the tree and holding images, is
extracted once to ``<sources_dir>/<zip name without .zip>/`` (atomically: into a
temporary folder, then renamed), and that folder is searched; cell paths are relative
to the dataset root inside it. Metadata files (``annotations.dat``, ``metadata.csv``,
...) are read directly from small zips without extracting.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType

from cytostore.data import bm, folder, lmu, mll_helmholtz
from cytostore.data.images import is_hidden, is_image_name
from cytostore.errors import InvalidArgumentError, LayoutNotFoundError

__all__ = ["READERS", "LAYOUTS", "Found", "scan", "detect", "metadata_dirs"]

logger = logging.getLogger(__name__)

#: Reader module of each layout, in detection order.
READERS: dict[str, ModuleType] = {
    "lmu": lmu,
    "mll_helmholtz": mll_helmholtz,
    "bm": bm,
    "folder": folder,
}
LAYOUTS = ("auto", *READERS)
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
        st = os.stat(dirpath)
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
            base = tmp.resolve()
            for member in zf.namelist():
                dest = (tmp / member).resolve()
                if base != dest and base not in dest.parents:
                    raise InvalidArgumentError(
                        f"{path} holds the unsafe member {member!r} (outside the "
                        "archive folder): extract it yourself and ingest the folder"
                    )
            zf.extractall(tmp)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidArgumentError(
            f"{path} is not a valid zip ({exc}): re-download it or extract it yourself"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, target)
    logger.info("extracted %s to %s", path, target)
    return target


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
