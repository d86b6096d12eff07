"""Read patient metadata tables (CSV or XLSX) with the quirks of real exports.

- Headers become plain identifiers: lower case, anything but letters/digits → ``_``;
  a mangled leucocyte header (``leucocytes_per_¬µl``, ``leucocytes_perl``, ...) is
  stored as ``leucocytes_per_ul``.
- Numbers become floats, also with a decimal comma (``"44,4"`` → 44.4); empty cells
  (and ``nan``/``NA``) become None; anything else stays text.
- CSV delimiters ``,``, ``;`` and tab are recognised; encodings UTF-8 (with or without
  BOM), else Latin-1.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from cytostore.errors import InvalidArgumentError

__all__ = ["read_table", "parse_value", "normalize_column", "parse_sex"]

_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?$")
_MISSING = frozenset({"", "nan", "na", "n/a", "none", "null", "-"})


def parse_value(value: Any) -> Any:
    """Return ``value`` as a float if numeric (decimal comma allowed), None if empty.

    Examples:
        >>> parse_value("44,4"), parse_value("0.0"), parse_value(""), parse_value("AB")
        (44.4, 0.0, None, 'AB')
        >>> parse_value(497)
        497.0
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text.lower() in _MISSING:
        return None
    if _NUMBER.match(text):
        return float(text.replace(",", "."))
    return text


def normalize_column(name: str) -> str:
    """Return a header as a plain identifier (see module docs).

    Examples:
        >>> normalize_column("leucocytes_per_¬µl"), normalize_column("Sex (1f, 2m)")
        ('leucocytes_per_ul', 'sex_1f_2m')
    """
    text = re.sub(r"[^0-9a-zA-Z]+", "_", str(name).strip().lower()).strip("_")
    if text.startswith("leucocytes_per") or text.startswith("leukocytes_per"):
        return "leucocytes_per_ul"
    if not text:
        return "column"
    if text[0].isdigit():
        text = "c_" + text
    return text


def parse_sex(value: Any, coding_1f_2m: bool = False) -> str | None:
    """Return ``'F'``, ``'M'`` or None (unknown), or the text if unrecognised.

    Args:
        value: The raw cell.
        coding_1f_2m: Numbers mean 1 = female, 2 = male (``sex_1f_2m``).

    Examples:
        >>> parse_sex("2", coding_1f_2m=True), parse_sex("female"), parse_sex("")
        ('M', 'F', None)
    """
    v = parse_value(value)
    if v is None:
        return None
    if isinstance(v, float):
        if coding_1f_2m and v in (1.0, 2.0):
            return "F" if v == 1.0 else "M"
        return str(int(v)) if v.is_integer() else str(v)
    low = v.lower()
    if low in ("f", "female", "w", "woman", "weiblich"):
        return "F"
    if low in ("m", "male", "man", "maennlich", "männlich"):
        return "M"
    return v


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _decode(data: bytes) -> str:
    for enc in ("utf-8-sig", "latin-1"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")  # pragma: no cover


def _read_csv(data: bytes) -> list[list[Any]]:
    text = _decode(data)
    sample = text[:8192]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return [row for row in csv.reader(io.StringIO(text), dialect) if any(row)]


def _read_xlsx(data: bytes, sheet: str, where: str) -> list[list[Any]]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds on a bad file
        raise InvalidArgumentError(
            f"cannot read {where} as an Excel workbook ({exc}): save it as .xlsx "
            "or .csv"
        ) from None
    try:
        names = {n.lower(): n for n in wb.sheetnames}
        ws = wb[names.get(sheet.lower(), wb.sheetnames[0])]
        return [
            list(row)
            for row in ws.iter_rows(values_only=True)
            if any(v is not None and str(v).strip() for v in row)
        ]
    finally:
        wb.close()


def read_table(
    data: bytes,
    where: str,
    sheet: str = "metadata",
    text_columns: tuple[str, ...] = ("patient_id",),
) -> list[dict[str, Any]]:
    """Parse a CSV or XLSX table into rows with normalised headers and values.

    Args:
        data: The file content.
        where: Its name or path (the suffix picks the format; used in messages).
        sheet: XLSX sheet to read (case-insensitive; the first sheet if absent).
        text_columns: Normalised columns kept as text (ids such as ``"007"``).

    Returns:
        One dict per data row: ``{normalized column: parsed value}``.

    Raises:
        InvalidArgumentError: If the table cannot be parsed or has no header.
    """
    if where.lower().endswith((".xlsx", ".xlsm")) or data[:2] == b"PK":
        rows = _read_xlsx(data, sheet, where)
    else:
        rows = _read_csv(data)
    if not rows:
        raise InvalidArgumentError(
            f"{where} is empty: it needs a header row and one row per patient"
        )
    header = [normalize_column(h if h is not None else "") for h in rows[0]]
    out: list[dict[str, Any]] = []
    for raw in rows[1:]:
        values = list(raw) + [None] * (len(header) - len(raw))
        out.append(
            {
                h: _text(v) if h in text_columns else parse_value(v)
                for h, v in zip(header, values, strict=False)
                if h
            }
        )
    return out
