"""Ingest on the real TCIA metadata files and real PBC images (``../shared``)."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from PIL import Image

from cytostore.data import ingest
from cytostore.store import Store

MLL_PIDS = (
    "ABF",
    "AEC",
    "AQK",
    "BHG",
    "BHS",
)  # decimal commas, empty cells, both sexes


def _real_lmu_tree(
    shared: Path, root: Path, write_img: Callable[..., Path]
) -> list[list[str]]:
    """Two real file names per class (one re-annotated where there is one)."""
    lines = (shared / "datasets/lmu/annotations.dat").read_text().splitlines()
    by_class: dict[str, list[list[str]]] = {}
    for line in lines:
        parts = line.split()
        by_class.setdefault(parts[1], []).append(parts)
    chosen: list[list[str]] = []
    for rows in by_class.values():
        reannotated = [r for r in rows if r[2] != "nan"]
        chosen += (reannotated[:1] + [r for r in rows if r[2] == "nan"])[:2]
    anchor = root / "Downloads" / "PKG - AML-Cytomorphology_LMU"
    for i, parts in enumerate(chosen):
        write_img(anchor / parts[0], "RGBA", size=10, seed=i)
    shutil.copy(shared / "datasets/lmu/annotations.dat", root / "Downloads")
    return chosen


def test_real_lmu__labels_and_reannotations(
    shared_dir: Path, tmp_path: Path, tmp_store: Store, write_img: Callable[..., Path]
) -> None:
    chosen = _real_lmu_tree(shared_dir, tmp_path / "in", write_img)
    report = ingest(tmp_store, tmp_path / "in", workers=1)
    assert [(d.dataset, d.added) for d in report.datasets] == [("lmu", len(chosen))]
    assert any("18,365 published" in w for w in report.warnings)
    got = {
        r[0]: r[1:]
        for r in tmp_store.sql(
            "SELECT path, label, reannotation1, reannotation2, cell_type FROM cells"
        ).rows
    }

    def null(v: str) -> str | None:
        return None if v == "nan" else v

    expected = {p: (lab, null(r1), null(r2)) for p, lab, r1, r2 in chosen}
    assert {p: v[:3] for p, v in got.items()} == expected
    assert {v[3] for p, v in got.items() if p.startswith("MYO/")} == {"myeloblast"}
    assert {v[3] for p, v in got.items() if p.startswith("MYB/")} == {"myelocyte"}
    # Hand-checked line of the real file: "BAS/BAS_0021.tiff BAS UNC UNC".
    assert got["BAS/BAS_0021.tiff"] == ("BAS", "UNC", "UNC", "basophil")
    assert len({v[0] for v in got.values()}) == 15


def _real_mll_rows(shared: Path) -> tuple[list[str], list[list[str]]]:
    with (shared / "datasets/mll_helmholtz/metadata.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [r for r in rows[1:] if r[0] in MLL_PIDS]


def _num(text: str) -> float | None:
    return float(text.replace(",", ".")) if text else None


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_real_mll__patient_metadata_parsed(
    shared_dir: Path,
    tmp_path: Path,
    tmp_store: Store,
    write_img: Callable[..., Path],
    fmt: str,
) -> None:
    header, rows = _real_mll_rows(shared_dir)
    pkg = tmp_path / "in" / "PKG - AML-Cytomorphology_MLL_Helmholtz_v1"
    for k, r in enumerate(rows):
        for i in range(2):
            write_img(pkg / "data" / r[3] / r[0] / f"image_{i}.tif", seed=10 * k + i)
    if fmt == "csv":
        shutil.copy(shared_dir / "datasets/mll_helmholtz/metadata.csv", pkg)
    else:
        wb = openpyxl.Workbook()
        wb.active.title = "data dictionary"
        ws = wb.create_sheet("metadata")
        ws.append(
            ["leucocytes_per_¬µl" if h.startswith("leucocytes") else h for h in header]
        )
        for r in rows:  # numbers as numbers where the csv has plain ones, else text
            ws.append([int(v) if v.isdigit() else v for v in r])
        wb.save(pkg / "metadata_with_data_dictionary.xlsx")
    ingest(tmp_store, tmp_path / "in", workers=1)
    cols = [
        "patient_id",
        "sex",
        "age",
        "bag_label",
        "instance_count",
        "leucocytes_per_ul",
    ]
    cols += [h for h in header if h.startswith("pb_")]
    got = {
        r[0]: r for r in tmp_store.sql(f"SELECT {', '.join(cols)} FROM patients").rows
    }
    # Every metadata row becomes a patient, also those without images on disk.
    assert len(got) == (189 if fmt == "csv" else len(MLL_PIDS))
    for r in rows:
        raw = dict(zip(header, r, strict=True))
        leuco = next(v for h, v in raw.items() if h.startswith("leucocytes"))
        expected = (
            raw["patient_id"],
            {"1": "F", "2": "M"}[raw["sex_1f_2m"]],
            _num(raw["age"]),
            raw["bag_label"],
            _num(raw["instance_count"]),  # published count kept (2 files on disk)
            _num(leuco),
            *(_num(raw[h]) for h in header if h.startswith("pb_")),
        )
        assert got[raw["patient_id"]] == expected
    labels = tmp_store.sql(
        "SELECT DISTINCT patient_id, label FROM cells ORDER BY 1"
    ).rows
    assert labels == sorted((r[0], r[3]) for r in rows)
    assert got["ABF"][2] == 44.4 and got["AEC"][5] is None  # hand-checked quirks


def test_real_pbc__folder_layout_cell_types(
    shared_dir: Path, tmp_path: Path, tmp_store: Store
) -> None:
    src = shared_dir / "data" / "pbc_sample"
    root = tmp_path / "pbc subset"
    sizes: dict[str, tuple[int, int]] = {}
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpg"))[:2]:
            shutil.copyfile(f, root / cls / f.name)  # a link out would be skipped
            with Image.open(f) as img:
                sizes[f"{cls}/{f.name}"] = img.size
    report = ingest(tmp_store, root, workers=1)
    assert [(d.dataset, d.layout, d.added) for d in report.datasets] == [
        ("pbc subset", "folder", 16)
    ]
    rows = tmp_store.sql(
        "SELECT path, label, cell_type, width, height, um_per_px FROM cells"
    ).rows
    assert {r[0]: (r[3], r[4]) for r in rows} == sizes
    assert {r[1]: r[2] for r in rows} == {
        "basophil": "basophil",
        "eosinophil": "eosinophil",
        "erythroblast": "erythroblast",
        "ig": "immature_granulocyte",
        "lymphocyte": "lymphocyte",
        "monocyte": "monocyte",
        "neutrophil": "neutrophil",
        "platelet": "platelet",
    }
    assert {r[5] for r in rows} == {None}


def test_real_bm_samples__detected_and_decoded(
    shared_dir: Path, tmp_path: Path, tmp_store: Store
) -> None:
    samples = sorted((shared_dir / "datasets/bm/samples").glob("*.jpg"))
    anchor = tmp_path / "Bone-Marrow-Cytomorphology" / "jpgs" / "BM_cytomorphology_data"
    for f in samples:
        code = f.name.split("_")[0]
        (anchor / code / "0001-1000").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, anchor / code / "0001-1000" / f.name)
    report = ingest(tmp_store, tmp_path, workers=1)
    assert [(d.dataset, d.added) for d in report.datasets] == [("bm", len(samples))]
    rows = tmp_store.sql("SELECT DISTINCT width, height, um_per_px FROM cells").rows
    assert rows == [(250, 250, 0.086)]  # README: 250x250 RGB JPEG [V]
