from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cytostore.data import bm, lmu
from cytostore.data.vocabulary import CELL_TYPES, cell_type, vocabulary

ROOT = Path(__file__).resolve().parents[2]


def test_vocabulary__csv_has_documented_columns_and_unique_keys() -> None:
    path = ROOT / "cytostore" / "data" / "cell_types.csv"
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == [
            "dataset_layout",
            "code",
            "cell_type",
            "description",
        ]
        rows = list(reader)
    keys = [(r["dataset_layout"], r["code"].lower()) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r["description"] for r in rows)
    assert {r["dataset_layout"] for r in rows} == {"lmu", "bm", "folder"}


@pytest.mark.parametrize(("layout", "codes"), [("lmu", lmu.CODES), ("bm", bm.CODES)])
def test_vocabulary__every_published_code_is_listed(
    layout: str, codes: frozenset[str]
) -> None:
    listed = {e.code for e in vocabulary() if e.dataset_layout == layout}
    assert codes <= listed


@pytest.mark.parametrize(
    ("layout", "code", "expected"),
    [
        ("lmu", "MYO", "myeloblast"),
        ("lmu", "MYB", "myelocyte"),
        ("lmu", "MOB", "monoblast"),
        ("lmu", "LYT", "lymphocyte"),
        ("lmu", "NGS", "neutrophil_segmented"),
        ("bm", "BLA", "myeloblast"),
        ("bm", "ART", None),
        ("bm", "NIF", None),
        ("folder", "ig", "immature_granulocyte"),
        ("folder", "IG", "immature_granulocyte"),
        ("folder", "Neutrophil", "neutrophil"),
        ("folder", "lymphocytes", "lymphocyte"),
        ("folder", "Segmented-Neutrophil", "neutrophil_segmented"),
        ("folder", "plasma_cell", "plasma_cell"),
        ("folder", "NGS", "neutrophil_segmented"),
        ("folder", "blast", "myeloblast"),
        ("folder", "mystery", None),
        ("lmu", None, None),
    ],
)
def test_cell_type__mapping(
    layout: str, code: str | None, expected: str | None
) -> None:
    assert cell_type(layout, code) == expected


def test_cell_types_doc__lists_every_row_of_the_csv() -> None:
    doc = (ROOT / "docs" / "cell-types.md").read_text()
    for e in vocabulary():
        row = (
            f"| {e.dataset_layout} | {e.code} | {e.cell_type or ''} | {e.description} |"
        )
        assert row in doc, f"docs/cell-types.md lacks the row {row}"
    for name in CELL_TYPES:
        assert f"`{name}`" in doc
