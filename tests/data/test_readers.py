from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from cytostore.data import detect
from cytostore.data.detect import READERS
from cytostore.data.listing import DatasetListing, ReadOptions
from cytostore.data.mll_helmholtz import parse_metadata

DEFAULT_UM = {"lmu": 0.07072, "mll_helmholtz": 0.1725, "bm": 0.086, "folder": None}
N_CELLS = {"lmu": 6, "mll_helmholtz": 4, "bm": 6, "folder": 8}


def _read(layout: str, root: Path, **opts: object) -> DatasetListing:
    found, _ = detect(root, layout if layout == "folder" else "auto")
    assert [f.layout for f in found] == [layout]
    f = found[0]
    return READERS[layout].read(f.anchor, f.files, f.meta_dirs, ReadOptions(**opts))  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", list(READERS))
def test_reader__contract(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]], layout: str
) -> None:
    anchor = builders[layout](tmp_path / "dl")
    root = anchor if layout == "folder" else tmp_path / "dl"
    listing = _read(layout, root)
    assert listing.layout == layout
    assert listing.root == anchor
    assert listing.um_per_px == DEFAULT_UM[layout]
    assert len(listing.cells) == N_CELLS[layout]
    paths = [c.path for c in listing.cells]
    assert paths == sorted(paths)
    for cell in listing.cells:
        assert "\\" not in cell.path and not PurePosixPath(cell.path).is_absolute()
        assert (listing.root / cell.path).is_file()
        assert cell.label
    # Every reader honours the pixel-size override and ignores OS clutter.
    (anchor / ".DS_Store").write_bytes(b"\0")
    again = _read(layout, root, um_per_px=0.5)
    assert again.um_per_px == 0.5
    assert again.hidden == [".DS_Store"]
    assert [c.path for c in again.cells] == paths


def test_lmu__labels_reannotations_and_cell_types(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["lmu"](tmp_path / "dl")
    cells = {c.path: c for c in _read("lmu", tmp_path / "dl").cells}
    first = cells["MYO/MYO_0001.tiff"]
    assert (first.label, first.cell_type, first.reannotation1, first.reannotation2) == (
        "MYO",
        "myeloblast",
        "LYT",
        None,
    )
    assert cells["MYO/MYO_0002.tiff"].reannotation1 is None
    assert all(c.patient_id is None for c in cells.values())


def test_lmu__without_annotations_labels_from_folders_with_warning(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["lmu"](tmp_path / "dl")
    (tmp_path / "dl" / "annotations.dat").unlink()
    listing = _read("lmu", tmp_path / "dl")
    assert {c.label for c in listing.cells} == {"BAS", "MYO", "NGS"}
    assert any("annotations.dat not found" in w for w in listing.warnings)


def test_lmu__annotations_read_from_zip(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    import zipfile

    builders["lmu"](tmp_path / "dl")
    dat = tmp_path / "dl" / "annotations.dat"
    with zipfile.ZipFile(
        tmp_path / "dl" / "AML-CYTOMORPHOLOGY_LMU-annotations-dat.zip", "w"
    ) as z:
        z.write(dat, "annotations.dat")
    dat.unlink()
    listing = _read("lmu", tmp_path / "dl")
    assert not listing.warnings
    assert sum(c.reannotation1 == "LYT" for c in listing.cells) == 3


def test_mll__patients_parsed_with_quirks(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["mll_helmholtz"](tmp_path / "dl")
    listing = _read("mll_helmholtz", tmp_path / "dl")
    cells = {c.path: c for c in listing.cells}
    assert cells["NPM1/AAA/image_0.tif"].label == "NPM1"
    assert cells["NPM1/AAA/image_0.tif"].patient_id == "AAA"
    assert all(c.cell_type is None for c in cells.values())
    patients = {p["patient_id"]: p for p in listing.patients}
    assert patients["AAA"] == {
        "patient_id": "AAA",
        "sex": "F",
        "age": 44.4,
        "bag_label": "NPM1",
        "instance_count": 2.0,  # empty in the file: counted from the images
        "leucocytes_per_ul": 13.8,
        "pb_myeloblast": 50.0,
        "pb_total": 100.0,
    }
    assert patients["BBB"]["sex"] == "M"
    assert patients["BBB"]["leucocytes_per_ul"] is None


def test_mll__patient_on_disk_missing_from_metadata_warns(
    tmp_path: Path,
    builders: dict[str, Callable[[Path], Path]],
    write_img: Callable[..., Path],
) -> None:
    data = builders["mll_helmholtz"](tmp_path / "dl")
    write_img(data / "PML_RARA" / "ZZZ" / "image_0.TIF")
    listing = _read("mll_helmholtz", tmp_path / "dl")
    patients = {p["patient_id"]: p for p in listing.patients}
    assert patients["ZZZ"] == {
        "patient_id": "ZZZ",
        "bag_label": "PML_RARA",
        "instance_count": 1.0,
    }
    assert any("missing from the metadata" in w for w in listing.warnings)


def test_parse_metadata__xlsx_equals_csv(tmp_path: Path) -> None:
    import openpyxl

    csv_bytes = (
        b"patient_id,sex_1f_2m,age,bag_label,leucocytes_perl\n"
        b'ABF,2,"44,4",NPM1,"44,41"\n'
    )
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "metadata"
    ws.append(["patient_id", "sex_1f_2m", "age", "bag_label", "leucocytes_per_µl"])
    ws.append(["ABF", 2, "44,4", "NPM1", 44.41])
    wb.save(tmp_path / "m.xlsx")
    from_xlsx = parse_metadata((tmp_path / "m.xlsx").read_bytes(), "m.xlsx")
    assert from_xlsx == parse_metadata(csv_bytes, "metadata.csv")
    assert from_xlsx[0]["sex"] == "M" and from_xlsx[0]["leucocytes_per_ul"] == 44.41


def test_bm__labels_from_class_folders_through_chunks(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["bm"](tmp_path / "dl")
    cells = {c.path: c for c in _read("bm", tmp_path / "dl").cells}
    assert cells["BLA/0001-1000/BLA_00001.jpg"].cell_type == "myeloblast"
    assert cells["ABE/ABE_00201.jpg"].label == "ABE"


def test_folder__pattern_with_patients(
    tmp_path: Path, write_img: Callable[..., Path]
) -> None:
    root = tmp_path / "export"
    write_img(root / "P1" / "slide a" / "ig" / "x.jpg")
    write_img(root / "P1" / "lymphocyte" / "y.JPG")
    write_img(root / "P2" / "deep" / "er" / "blast" / "z.jpg")
    write_img(root / "P2" / "blast" / "notes.png")  # .png: does not match *.jpg
    (tmp_path / "pat.csv").write_text(
        "patient_id;diagnosis;age;sex\nP1;AML;61,5;f\nP2;ALL;;2\n"
    )
    listing = _read(
        "folder",
        root,
        pattern="{patient_id}/**/{label}/*.jpg",
        patients=tmp_path / "pat.csv",
        bag_column="diagnosis",
        dataset_name="ward7",
    )
    got = [(c.path, c.patient_id, c.label, c.cell_type) for c in listing.cells]
    assert got == [
        ("P1/lymphocyte/y.JPG", "P1", "lymphocyte", "lymphocyte"),
        ("P1/slide a/ig/x.jpg", "P1", "ig", "immature_granulocyte"),
        ("P2/deep/er/blast/z.jpg", "P2", "blast", "myeloblast"),
    ]
    assert listing.dataset == "ward7"
    assert listing.patients == [
        {"patient_id": "P1", "bag_label": "AML", "age": 61.5, "sex": "F"},
        {"patient_id": "P2", "bag_label": "ALL", "age": None, "sex": "2"},
    ]
    assert any("do not match" in w for w in listing.warnings)


def test_folder__label_from_bag_when_pattern_has_no_label(
    tmp_path: Path, write_img: Callable[..., Path]
) -> None:
    root = tmp_path / "bags"
    write_img(root / "P1_a.png")
    write_img(root / "P2_b.png")
    (tmp_path / "p.csv").write_text("patient_id,bag_label\nP1,NPM1\nP2,control\n")
    listing = _read(
        "folder", root, pattern="{patient_id}_*.png", patients=tmp_path / "p.csv"
    )
    assert [(c.patient_id, c.label, c.cell_type) for c in listing.cells] == [
        ("P1", "NPM1", None),
        ("P2", "control", None),
    ]


def test_detect__all_three_at_any_depth_with_wrappers_and_spaces(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["lmu"](tmp_path / "all" / "TCIA downloads" / "lmu.zip.download")
    builders["mll_helmholtz"](tmp_path / "all" / "x" / "y" / "z")
    builders["bm"](tmp_path / "all" / "Bone-Marrow-Cytomorphology" / "jpgs")
    found, warnings = detect(tmp_path / "all")
    assert [(f.layout, f.anchor.name) for f in found] == [
        ("lmu", "PKG - AML-Cytomorphology_LMU"),
        ("mll_helmholtz", "data"),
        ("bm", "BM_cytomorphology_data"),
    ]
    assert warnings == []


def test_detect__zip_extracted_once_into_sources(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["bm"](tmp_path / "src")
    archive = shutil.make_archive(
        str(tmp_path / "dl" / "BM data"), "zip", tmp_path / "src"
    )
    shutil.rmtree(tmp_path / "src")
    sources = tmp_path / "store" / "sources"
    found, _ = detect(archive, sources_dir=sources)
    assert found[0].anchor == sources / "BM data" / "BM_cytomorphology_data"
    assert len(found[0].files) == 6
    mtime = os.stat(sources / "BM data").st_mtime_ns
    found_in_tree, _ = detect(
        tmp_path / "dl", sources_dir=sources
    )  # zip inside a folder
    assert found_in_tree[0].anchor == found[0].anchor
    assert os.stat(sources / "BM data").st_mtime_ns == mtime


def test_detect__lmu_and_bm_told_apart_by_file_names(
    tmp_path: Path, write_img: Callable[..., Path]
) -> None:
    write_img(tmp_path / "a" / "NGS" / "NGS_0001.tiff")
    write_img(tmp_path / "b" / "NGS" / "NGS_00001.jpg")
    found, _ = detect(tmp_path)
    assert [(f.layout, f.anchor.name) for f in found] == [("lmu", "a"), ("bm", "b")]
