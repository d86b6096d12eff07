"""Reader of Bone-Marrow-Cytomorphology_MLL_Helmholtz_Fraunhofer (Matek et al. 2021).

On disk: ``<anchor>/<CLS>/<chunk>/<CLS>_<NNNNN>.jpg`` with chunk folders of 1,000
(``0001-1000``, ...; small classes have none), the anchor usually
``BM_cytomorphology_data``; 21 classes, 250 px RGB JPEG at 0.086 µm/px. Labels are the
class folder names; no patient ids are published.

[0] Matek et al., Highly accurate differentiation of bone marrow cell morphologies
using deep neural networks on a large image data set, Blood 2021,
doi 10.1182/blood.2020010568
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cytostore.data.listing import (
    CellRecord,
    DatasetListing,
    ReadOptions,
    posix_parts,
    split_files,
)
from cytostore.data.vocabulary import cell_type

__all__ = ["LAYOUT", "DATASET", "UM_PER_PX", "N_EXPECTED", "CODES", "anchor_of", "read"]

LAYOUT = "bm"
DATASET = "bm"
UM_PER_PX = 0.086
#: Published totals vary between 171,373 and 171,375.
N_EXPECTED = 171_374
EXPECTED_RANGE = (171_373, 171_375)
#: The 21 class codes (folder names).
CODES = frozenset(
    "ABE ART BAS BLA EBO EOS FGC HAC KSC LYI LYT MMZ MON MYB NGB NGS NIF OTH PEB PLM "
    "PMO".split()
)
_FILE = re.compile(r"^([A-Z]{3})_\d{5}\.jpe?g$", re.IGNORECASE)
_CHUNK = re.compile(r"^\d+\s*-\s*\d+$")


def anchor_of(dirpath: Path, names: Sequence[str]) -> Path | None:
    """Return the dataset root if ``dirpath`` holds BM images, else None.

    The folder must hold ``<CODE>_NNNNN.jpg`` and be the ``<CODE>`` class folder
    itself or a chunk folder (``1001-2000``) inside it.

    Examples:
        >>> anchor_of(Path("/d/BM_data/NGS/0001-1000"), ["NGS_00001.jpg"])
        PosixPath('/d/BM_data')
        >>> anchor_of(Path("/d/data/ABE"), ["ABE_00001.jpg"])
        PosixPath('/d/data')
        >>> anchor_of(Path("/d/x/NGS"), ["NGS_0001.tiff"]) is None
        True
    """
    class_dir = dirpath
    if _CHUNK.match(dirpath.name):
        class_dir = dirpath.parent
    code = class_dir.name.upper()
    if code not in CODES:
        return None
    for name in names:
        m = _FILE.match(name)
        if m and m.group(1).upper() == code:
            return class_dir.parent
    return None


def read(
    anchor: Path,
    files: Sequence[str],
    meta_dirs: Sequence[Path],
    options: ReadOptions | None = None,
) -> DatasetListing:
    """List the BM cells under ``anchor``, labelled by their class folder.

    Args:
        anchor: The folder holding the class folders.
        files: Every file below ``anchor`` (POSIX paths relative to it).
        meta_dirs: Unused (BM ships no per-cell metadata beyond the folders).
        options: ``um_per_px`` overrides 0.086.

    Returns:
        The listing; ``label`` is the class code, ``cell_type`` its canonical name.
    """
    options = options or ReadOptions()
    images, hidden = split_files(files)
    listing = DatasetListing(
        dataset=DATASET,
        layout=LAYOUT,
        root=anchor,
        um_per_px=options.um_per_px if options.um_per_px is not None else UM_PER_PX,
        n_expected=N_EXPECTED,
        expected_range=EXPECTED_RANGE,
        hidden=hidden,
    )
    outside = 0
    for rel in images:
        parts = posix_parts(rel)
        if len(parts) < 2 or parts[0].upper() not in CODES:
            outside += 1
            continue
        label = parts[0]
        listing.cells.append(
            CellRecord(path=rel, label=label, cell_type=cell_type(LAYOUT, label))
        )
    if outside:
        listing.warnings.append(
            f"bm: {outside} images outside the class folders of {anchor} were left "
            "out (ingest them with --layout folder if they belong to another dataset)"
        )
    return listing
