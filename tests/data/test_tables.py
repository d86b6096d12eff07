from __future__ import annotations

import io
from pathlib import Path

import openpyxl
import pytest

from cytostore.data.tables import normalize_column, parse_sex, parse_value, read_table
from cytostore.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("44,4", 44.4),
        ("13.8", 13.8),
        ("497", 497.0),
        ("-1,5", -1.5),
        ("", None),
        ("nan", None),
        ("  ", None),
        ("NPM1", "NPM1"),
        (3, 3.0),
        (None, None),
        ("1e3", 1000.0),
    ],
)
def test_parse_value__numbers_and_missing(raw: object, expected: object) -> None:
    assert parse_value(raw) == expected


@pytest.mark.parametrize(
    "header",
    ["leucocytes_per_µl", "leucocytes_per_¬µl", "leucocytes_perl", "Leucocytes per µl"],
)
def test_normalize_column__mangled_leucocyte_header(header: str) -> None:
    assert normalize_column(header) == "leucocytes_per_ul"


@pytest.mark.parametrize(
    ("raw", "coded", "expected"),
    [
        ("1", True, "F"),
        ("2", True, "M"),
        (1.0, True, "F"),
        ("", True, None),
        ("female", False, "F"),
        ("M", False, "M"),
        ("x", False, "x"),
    ],
)
def test_parse_sex__codings(raw: object, coded: bool, expected: str | None) -> None:
    assert parse_sex(raw, coding_1f_2m=coded) == expected


def test_read_table__semicolon_csv_with_decimal_commas_and_latin1() -> None:
    data = "patient_id;age;Sex\n007;44,4;f\nB;;m\n".encode("latin-1")
    rows = read_table(data, "p.csv")
    assert rows == [
        {"patient_id": "007", "age": 44.4, "sex": "f"},
        {"patient_id": "B", "age": None, "sex": "m"},
    ]


def test_read_table__xlsx_sheet_metadata(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    wb.active.title = "data dictionary"
    wb.active.append(["column", "meaning"])
    ws = wb.create_sheet("metadata")
    ws.append(["patient_id", "age", "leucocytes_per_µl"])
    ws.append(["AAA", "44,4", 13.8])
    buf = io.BytesIO()
    wb.save(buf)
    rows = read_table(buf.getvalue(), "m.xlsx")
    assert rows == [{"patient_id": "AAA", "age": 44.4, "leucocytes_per_ul": 13.8}]


def test_read_table__empty_file_raises() -> None:
    with pytest.raises(InvalidArgumentError, match="empty"):
        read_table(b"", "p.csv")
