"""Reader of AML-Cytomorphology_MLL_Helmholtz (Hehr et al. 2023): bags of patients.

On disk: ``<anchor>/<bag_label>/<patient_id>/image_<i>.tif`` (144 px RGB TIFF at
0.1725 µm/px), the anchor usually ``PKG - AML-Cytomorphology_MLL_Helmholtz_v1/data``;
cell paths are relative to it (``NPM1/ALA/image_3.tif``). Labels exist per patient
only, so each cell's ``label`` is its patient's bag label and ``cell_type`` is NULL.

Patient metadata comes from ``metadata_with_data_dictionary.xlsx`` (sheet
``metadata``) or ``metadata.csv`` found near the data, with the quirks of real copies
handled (see :mod:`cytostore.data.tables`): the leucocyte column is stored as
``leucocytes_per_ul``, ``sex_1f_2m`` becomes ``sex`` ``'F'``/``'M'``, decimal commas
are parsed, empty cells are NULL, and a missing ``instance_count`` is counted from the
files.

[0] Hehr et al., Explainable AI identifies diagnostic cells of genetic AML subtypes,
PLOS Digit Health 2023, doi 10.1371/journal.pdig.0000187
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytostore.data.listing import (
    CellRecord,
    DatasetListing,
    ReadOptions,
    find_metadata,
    posix_parts,
    split_files,
)
from cytostore.data.tables import parse_sex, read_table

__all__ = [
    "LAYOUT",
    "DATASET",
    "UM_PER_PX",
    "N_EXPECTED",
    "BAG_LABELS",
    "anchor_of",
    "read",
    "parse_metadata",
]

LAYOUT = "mll_helmholtz"
DATASET = "mll_helmholtz"
UM_PER_PX = 0.1725
N_EXPECTED = 81_214
#: The five bag labels (folder names).
BAG_LABELS = ("control", "CBFB_MYH11", "NPM1", "PML_RARA", "RUNX1_RUNX1T1")
_BAGS = {b.lower(): b for b in BAG_LABELS}
_FILE = re.compile(r"^image_\d+\.tiff?$", re.IGNORECASE)
_METADATA = ("metadata_with_data_dictionary.xlsx", "metadata.xlsx", "metadata.csv")


def anchor_of(dirpath: Path, names: Sequence[str]) -> Path | None:
    """Return the dataset root if ``dirpath`` is a patient folder, else None.

    A patient folder holds ``image_<i>.tif`` and sits in a bag-label folder.

    Examples:
        >>> anchor_of(Path("/d/data/NPM1/ALA"), ["image_0.tif"])
        PosixPath('/d/data')
        >>> anchor_of(Path("/d/data/other/ALA"), ["image_0.tif"]) is None
        True
    """
    if dirpath.parent.name.lower() not in _BAGS:
        return None
    if any(_FILE.match(n) for n in names):
        return dirpath.parent.parent
    return None


def parse_metadata(data: bytes, where: str) -> list[dict[str, Any]]:
    """Parse the patient metadata table (CSV or XLSX) into patient rows.

    Args:
        data: File content.
        where: File name or path (the suffix picks CSV or XLSX).

    Returns:
        One dict per patient: ``patient_id``, ``bag_label``, ``age``, ``sex``
        (``'F'``/``'M'``), ``instance_count``, ``leucocytes_per_ul``, ``pb_*``...;
        numbers as floats, empty cells as None.

    Raises:
        InvalidArgumentError: If the table cannot be parsed.
    """
    rows = read_table(data, where, text_columns=("patient_id", "bag_label"))
    out: list[dict[str, Any]] = []
    for row in rows:
        pid = row.get("patient_id")
        if not pid:
            continue
        rec: dict[str, Any] = {"patient_id": str(pid)}
        for key, value in row.items():
            if key == "patient_id":
                continue
            if key.startswith("sex"):
                rec["sex"] = parse_sex(value, coding_1f_2m=key == "sex_1f_2m")
            else:
                rec[key] = value
        out.append(rec)
    return out


def read(
    anchor: Path,
    files: Sequence[str],
    meta_dirs: Sequence[Path],
    options: ReadOptions | None = None,
) -> DatasetListing:
    """List the cells under ``anchor`` and read the patient metadata.

    Args:
        anchor: The folder holding the bag-label folders.
        files: Every file below ``anchor`` (POSIX paths relative to it).
        meta_dirs: Where to look for the metadata table, nearest first.
        options: ``um_per_px`` overrides 0.1725.

    Returns:
        The listing, with one patient row per patient in the metadata or on disk.

    Raises:
        InvalidArgumentError: If the metadata table cannot be parsed.
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
    on_disk: dict[str, str] = {}
    counts: Counter[str] = Counter()
    outside = 0
    for rel in images:
        parts = posix_parts(rel)
        if len(parts) != 3 or parts[0].lower() not in _BAGS:
            outside += 1
            continue
        bag, pid = _BAGS[parts[0].lower()], parts[1]
        on_disk.setdefault(pid, bag)
        counts[pid] += 1
        listing.cells.append(CellRecord(path=rel, label=bag, patient_id=pid))
    if outside:
        listing.warnings.append(
            f"mll_helmholtz: {outside} images outside <bag_label>/<patient_id>/ "
            f"folders of {anchor} were left out"
        )
    found = find_metadata(meta_dirs, _METADATA)
    patients: dict[str, dict[str, Any]] = {}
    if found is None:
        listing.warnings.append(
            "mll_helmholtz: no metadata_with_data_dictionary.xlsx or metadata.csv "
            "near the data: patients have only bag labels and cell counts (put the "
            "metadata file beside the data folder and re-run ingest)"
        )
    else:
        for rec in parse_metadata(found[1], found[0]):
            patients[rec["patient_id"]] = rec
    mismatched = [
        pid
        for pid, bag in on_disk.items()
        if pid in patients and patients[pid].get("bag_label") not in (None, bag)
    ]
    if mismatched:
        listing.warnings.append(
            f"mll_helmholtz: {len(mismatched)} patients sit in a folder other than "
            f"their metadata bag_label (e.g. {mismatched[0]}); cells are labelled by "
            "folder"
        )
    unknown = sorted(set(on_disk) - set(patients))
    if found is not None and unknown:
        listing.warnings.append(
            f"mll_helmholtz: {len(unknown)} patients on disk are missing from the "
            f"metadata (e.g. {unknown[0]})"
        )
    for pid in unknown:
        patients[pid] = {"patient_id": pid, "bag_label": on_disk[pid]}
    for pid, rec in patients.items():
        if rec.get("bag_label") is None and pid in on_disk:
            rec["bag_label"] = on_disk[pid]
        if rec.get("instance_count") is None:
            rec["instance_count"] = float(counts.get(pid, 0))
    listing.patients = [patients[p] for p in sorted(patients)]
    return listing
