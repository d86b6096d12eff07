"""The cell-type vocabulary: dataset class codes mapped to canonical cell-type names.

The table ships with the package as ``cytostore/data/cell_types.csv`` (columns
``dataset_layout, code, cell_type, description``) and is described in
``docs/cell-types.md``. An empty ``cell_type`` means no canonical name applies (an
artefact, an unidentifiable cell): such cells get ``cell_type`` NULL.

For the ``lmu`` and ``bm`` layouts a code is matched exactly (upper case). For
``folder`` datasets (and anything else) a class name is matched case-insensitively,
treating ``_``, ``-`` and spaces alike, against: the ``folder`` synonyms, the
canonical names themselves, then the LMU and BM codes.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["VocabularyEntry", "vocabulary", "cell_type", "CELL_TYPES"]

_SEP = re.compile(r"[\s_\-]+")


@dataclass(frozen=True)
class VocabularyEntry:
    """One row of ``cell_types.csv``.

    Attributes:
        dataset_layout: ``lmu``, ``bm`` or ``folder`` (synonyms for any folder).
        code: The class code or folder name as it appears in the data.
        cell_type: The canonical name, or None where none applies.
        description: What the code means.
    """

    dataset_layout: str
    code: str
    cell_type: str | None
    description: str


@functools.cache
def vocabulary() -> tuple[VocabularyEntry, ...]:
    """Return every row of the shipped ``cell_types.csv``, in file order."""
    text = (
        resources.files("cytostore.data")
        .joinpath("cell_types.csv")
        .read_text(encoding="utf-8")
    )
    return tuple(
        VocabularyEntry(
            dataset_layout=row["dataset_layout"],
            code=row["code"],
            cell_type=row["cell_type"] or None,
            description=row["description"],
        )
        for row in csv.DictReader(io.StringIO(text))
    )


def _norm(name: str) -> str:
    return _SEP.sub(" ", name.strip().lower())


@functools.cache
def _tables() -> tuple[dict[tuple[str, str], str | None], dict[str, str | None]]:
    exact: dict[tuple[str, str], str | None] = {}
    loose: dict[str, str | None] = {}
    entries = vocabulary()
    for e in entries:
        exact[(e.dataset_layout, e.code)] = e.cell_type
    # Order of precedence for loose matching: synonyms, canonical names, codes.
    for e in entries:
        if e.dataset_layout == "folder":
            loose.setdefault(_norm(e.code), e.cell_type)
    for e in entries:
        if e.cell_type:
            loose.setdefault(_norm(e.cell_type), e.cell_type)
    for layout in ("lmu", "bm"):
        for e in entries:
            if e.dataset_layout == layout:
                loose.setdefault(_norm(e.code), e.cell_type)
    return exact, loose


def cell_type(layout: str, code: str | None) -> str | None:
    """Return the canonical cell type of a class ``code`` in a dataset ``layout``.

    Args:
        layout: ``lmu`` or ``bm`` (exact code match), anything else (loose match of
            a class folder name, see the module docs).
        code: The class code or folder name; None gives None.

    Returns:
        The canonical name, or None where no canonical name applies.

    Examples:
        >>> cell_type("lmu", "MYO"), cell_type("bm", "BLA"), cell_type("lmu", "MYB")
        ('myeloblast', 'myeloblast', 'myelocyte')
        >>> cell_type("folder", "IG"), cell_type("folder", "Neutrophil_Segmented")
        ('immature_granulocyte', 'neutrophil_segmented')
        >>> cell_type("folder", "weird") is None, cell_type("bm", "ART") is None
        (True, True)
    """
    if code is None:
        return None
    exact, loose = _tables()
    if layout in ("lmu", "bm"):
        return exact.get((layout, code.strip().upper()))
    return loose.get(_norm(code))


#: Every canonical cell-type name, sorted.
CELL_TYPES: tuple[str, ...] = tuple(
    sorted({e.cell_type for e in vocabulary() if e.cell_type})
)
