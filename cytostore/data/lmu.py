"""Reader of AML-Cytomorphology_LMU (Matek et al. 2019): 15 flat class folders.

On disk: ``<anchor>/<CLS>/<CLS>_<NNNN>.tiff`` (4-digit index, RGBA TIFF, 400 px at
0.07072 µm/px), the anchor usually ``PKG - AML-Cytomorphology_LMU``. Labels come from
``annotations.dat`` (no header, space separated: ``path label reannotation1
reannotation2``, ``nan`` = no re-annotation, ``UNC`` = unassignable), looked for in
the anchor, its ancestors up to the ingest root and their children, also inside zips;
without it, labels are the folder names. No patient ids are published.

[0] Matek et al., Human-level recognition of blast cells in acute myeloid leukaemia
with convolutional neural networks, Nat Mach Intell 2019, doi 10.1038/s42256-019-0101-9
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cytostore.data.listing import (
    CellRecord,
    DatasetListing,
    ReadOptions,
    find_metadata,
    posix_parts,
    split_files,
)
from cytostore.data.vocabulary import cell_type

__all__ = ["LAYOUT", "DATASET", "UM_PER_PX", "N_EXPECTED", "CODES", "anchor_of", "read"]

LAYOUT = "lmu"
DATASET = "lmu"
UM_PER_PX = 0.07072
N_EXPECTED = 18_365
#: The 15 class codes (folder names).
CODES = frozenset("BAS EBO EOS KSC LYA LYT MMZ MOB MON MYB MYO NGB NGS PMB PMO".split())
_FILE = re.compile(r"^([A-Z]{3})_\d{4}\.tiff?$", re.IGNORECASE)
_ANNOTATIONS = ("annotations.dat",)


def anchor_of(dirpath: Path, names: Sequence[str]) -> Path | None:
    """Return the dataset root if ``dirpath`` is an LMU class folder, else None.

    A class folder is named by one of the 15 codes and holds ``<CODE>_NNNN.tiff``.

    Examples:
        >>> anchor_of(Path("/d/PKG - AML-Cytomorphology_LMU/BAS"), ["BAS_0001.tiff"])
        PosixPath('/d/PKG - AML-Cytomorphology_LMU')
        >>> anchor_of(Path("/d/BAS"), ["BAS_00001.jpg"]) is None
        True
    """
    code = dirpath.name.upper()
    if code not in CODES:
        return None
    for name in names:
        m = _FILE.match(name)
        if m and m.group(1).upper() == code:
            return dirpath.parent
    return None


def _none(value: str) -> str | None:
    return None if value.lower() == "nan" else value


def _read_annotations(text: str) -> dict[str, tuple[str, str | None, str | None]]:
    out: dict[str, tuple[str, str | None, str | None]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        # The path never holds spaces in the real file; be tolerant anyway.
        if len(parts) > 4:
            parts = [" ".join(parts[:-3]), *parts[-3:]]
        parts += ["nan"] * (4 - len(parts))
        path = parts[0].replace("\\", "/").lstrip("./")
        out[path] = (parts[1], _none(parts[2]), _none(parts[3]))
    return out


def read(
    anchor: Path,
    files: Sequence[str],
    meta_dirs: Sequence[Path],
    options: ReadOptions | None = None,
) -> DatasetListing:
    """List the LMU cells under ``anchor`` with labels and re-annotations.

    Args:
        anchor: The folder holding the class folders.
        files: Every file below ``anchor`` (POSIX paths relative to it).
        meta_dirs: Where to look for ``annotations.dat``, nearest first.
        options: ``um_per_px`` overrides 0.07072.

    Returns:
        The listing; ``label`` is the annotation (or folder name), ``cell_type`` its
        canonical name, re-annotations None where ``nan``.
    """
    options = options or ReadOptions()
    images, hidden = split_files(files)
    listing = DatasetListing(
        dataset=DATASET,
        layout=LAYOUT,
        root=anchor,
        um_per_px=options.um_per_px if options.um_per_px is not None else UM_PER_PX,
        n_expected=N_EXPECTED,
        expected_range=(N_EXPECTED, N_EXPECTED),
        hidden=hidden,
    )
    found = find_metadata(meta_dirs, _ANNOTATIONS)
    annotations: dict[str, tuple[str, str | None, str | None]] = {}
    if found is None:
        listing.warnings.append(
            "lmu: annotations.dat not found near the data: labels are the folder "
            "names and there are no re-annotations (put annotations.dat beside the "
            "class folders and re-run ingest to add them to new cells)"
        )
    else:
        annotations = _read_annotations(found[1].decode("utf-8", errors="replace"))
    outside = 0
    for rel in images:
        parts = posix_parts(rel)
        if len(parts) < 2 or parts[0].upper() not in CODES:
            outside += 1
            continue
        ann, re1, re2 = annotations.get(rel, (parts[0], None, None))
        label = ann or None
        listing.cells.append(
            CellRecord(
                path=rel,
                label=label,
                cell_type=cell_type(LAYOUT, label),
                reannotation1=re1,
                reannotation2=re2,
            )
        )
    if outside:
        listing.warnings.append(
            f"lmu: {outside} images outside the class folders of {anchor} were left "
            "out (ingest them with --layout folder if they belong to another dataset)"
        )
    if annotations:
        missing = len(set(annotations) - {c.path for c in listing.cells})
        if missing:
            listing.warnings.append(
                f"lmu: {missing} images listed in annotations.dat are not on disk "
                "(a partial download?)"
            )
    return listing
