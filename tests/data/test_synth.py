from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from cytostore.data import synthesize
from cytostore.data._draw import render_cell
from cytostore.data._morphs import STAINS, subtype_morphs
from cytostore.data.synth import (
    BM_COUNTS,
    LMU_COUNTS,
    MLL_BAG_LABELS,
    allocate_counts,
)
from cytostore.errors import InvalidArgumentError

LMU_ANCHOR = "lmu/PKG - AML-Cytomorphology_LMU"
MLL_ANCHOR = "mll_helmholtz/PKG - AML-Cytomorphology_MLL_Helmholtz_v1"
BM_ANCHOR = "bm/BM_cytomorphology_data"
MLL_HEADER = [
    "patient_id", "sex_1f_2m", "age", "bag_label", "instance_count", "leucocytes_perl",
    "pb_myeloblast", "pb_promyelocyte", "pb_myelocyte", "pb_metamyelocyte",
    "pb_neutrophil_band", "pb_neutrophil_segmented", "pb_eosinophil", "pb_basophil",
    "pb_monocyte", "pb_lymph_typ", "pb_lymph_atyp_react", "pb_lymph_atyp_neopl",
    "pb_other", "pb_total",
]  # fmt: skip


def _files(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _features(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """Colour histogram (8 bins per channel) as a fraction of the pixels."""
    pixels = rgb.reshape(-1, 3)
    return np.concatenate(
        [np.histogram(pixels[:, c], bins=8, range=(0, 256))[0] for c in range(3)]
    ) / len(pixels)


def _loo_nearest_centroid(x: npt.NDArray[np.float64], y: list[str]) -> float:
    """Leave-one-out accuracy of a nearest-centroid classifier (standardised)."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    labels = np.asarray(y)
    hits = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        classes = sorted(set(labels[keep]))
        centroids = np.stack([x[keep][labels[keep] == c].mean(0) for c in classes])
        hits += classes[int(np.argmin(((centroids - x[i]) ** 2).sum(1)))] == labels[i]
    return hits / len(x)


def test_allocate_counts__hand_checked() -> None:
    # 7 left over: shares 5.6, 1.05, 0.35 -> floors 5, 1, 0; 1 more to A (0.6).
    assert allocate_counts(10, {"A": 80, "B": 15, "C": 5}) == {"A": 7, "B": 2, "C": 1}
    assert allocate_counts(3, {"A": 80, "B": 15, "C": 5}) == {"A": 1, "B": 1, "C": 1}


def test_allocate_counts__too_few_cells_says_how_many() -> None:
    with pytest.raises(InvalidArgumentError, match="at least 15 cells"):
        allocate_counts(14, LMU_COUNTS)


@pytest.mark.parametrize("total", [15, 21, 120, 1000, 5003])
def test_allocate_counts__sums_and_follows_real_proportions(total: int) -> None:
    for real in (LMU_COUNTS, BM_COUNTS):
        if total < len(real):
            continue
        counts = allocate_counts(total, real)
        assert sum(counts.values()) == total and min(counts.values()) >= 1
        rest = total - len(real)
        for cls, n in counts.items():
            share = rest * real[cls] / sum(real.values())
            assert share - 1 < n - 1 < share + 1


def test_synthesize__lmu_layout_and_annotations(synthetic_tree: Path) -> None:
    anchor = synthetic_tree / LMU_ANCHOR
    assert sorted(p.name for p in anchor.iterdir()) == sorted(LMU_COUNTS)
    on_disk = set()
    for cls in LMU_COUNTS:
        names = sorted(p.name for p in (anchor / cls).iterdir())
        assert names == [f"{cls}_{i:04d}.tiff" for i in range(1, len(names) + 1)]
        on_disk |= {f"{cls}/{n}" for n in names}
    assert len(on_disk) == 120
    counts = Counter(p.split("/")[0] for p in on_disk)
    assert counts == Counter(allocate_counts(120, LMU_COUNTS))
    with Image.open(anchor / "NGS" / "NGS_0001.tiff") as img:
        assert (img.format, img.mode, img.size) == ("TIFF", "RGBA", (400, 400))
        assert np.asarray(img)[:, :, 3].min() == 255

    text = (synthetic_tree / "lmu" / "annotations.dat").read_text()
    assert text.endswith("nan\n") or text.endswith("\n")
    rows = [line.split(" ") for line in text.splitlines()]
    assert all(len(r) == 4 for r in rows)
    assert {r[0] for r in rows} == on_disk and len(rows) == len(on_disk)
    allowed = set(LMU_COUNTS) | {"UNC"}
    reannotated = 0
    for path, label, re1, re2 in rows:
        assert label == path.split("/")[0]
        assert (re1 == "nan") == (re2 == "nan")
        if re1 != "nan":
            reannotated += 1
            assert re1 in allowed and re2 in allowed
    assert 0 < reannotated < 40  # ~10% of 120


def test_synthesize__mll_layout_and_metadata(synthetic_tree: Path) -> None:
    anchor = synthetic_tree / MLL_ANCHOR
    data = anchor / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(MLL_BAG_LABELS)
    images: dict[str, int] = {}
    bag_of: dict[str, str] = {}
    for bag in MLL_BAG_LABELS:
        patients = sorted(p.name for p in (data / bag).iterdir())
        assert len(patients) == 2
        for pid in patients:
            assert re.fullmatch(r"[A-Z]{3}", pid) and pid not in images
            names = {p.name for p in (data / bag / pid).iterdir()}
            assert names == {f"image_{i}.tif" for i in range(len(names))}
            assert len(names) >= 2
            images[pid], bag_of[pid] = len(names), bag
    assert sum(images.values()) == 120
    with Image.open(data / bag / pid / "image_0.tif") as img:
        assert (img.format, img.mode, img.size) == ("TIFF", "RGB", (144, 144))

    raw = (anchor / "metadata.csv").read_bytes()
    assert raw.count(b"\r\n") == len(images) + 1
    rows = list(csv.DictReader(raw.decode("utf-8").splitlines()))
    assert list(rows[0]) == MLL_HEADER
    assert [r["patient_id"] for r in rows] == sorted(images)
    pb_columns = [c for c in MLL_HEADER if c.startswith("pb_") and c != "pb_total"]
    for r in rows:
        assert r["bag_label"] == bag_of[r["patient_id"]]
        assert int(r["instance_count"]) == images[r["patient_id"]]
        assert r["sex_1f_2m"] in {"1", "2"}
        assert 18 <= float(r["age"].replace(",", ".")) <= 90
        pb = [float(r[c]) for c in pb_columns if r[c] != ""]
        assert int(r["pb_total"]) == sum(pb) == 100
        if r["bag_label"] == "control":
            assert r["leucocytes_perl"] == "" and int(r["pb_myeloblast"]) == 0
        else:
            assert int(r["pb_myeloblast"]) > 0
        if r["leucocytes_perl"]:
            assert float(r["leucocytes_perl"].replace(",", ".")) > 0
    assert any('"' in line for line in raw.decode().splitlines()[1:])  # "44,4"


def test_synthesize__mll_header_matches_the_real_file(shared_dir: Path) -> None:
    real = shared_dir / "datasets" / "mll_helmholtz" / "metadata.csv"
    with real.open(newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == MLL_HEADER


def test_synthesize__bm_layout(synthetic_tree: Path) -> None:
    anchor = synthetic_tree / BM_ANCHOR
    assert sorted(p.name for p in anchor.iterdir()) == sorted(BM_COUNTS)
    counts = allocate_counts(120, BM_COUNTS)
    for cls, n in counts.items():
        files = sorted((anchor / cls).rglob("*.jpg"))
        assert [p.name for p in files] == [
            f"{cls}_{i:05d}.jpg" for i in range(1, n + 1)
        ]
        parents = {p.parent.relative_to(anchor).as_posix() for p in files}
        assert parents == ({"ABE"} if cls == "ABE" else {f"{cls}/0001-{n:04d}"})
    with Image.open(
        anchor / "NGS" / f"0001-{counts['NGS']:04d}" / "NGS_00001.jpg"
    ) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (250, 250))


def test_synthesize__bm_chunks_of_chunk_size(tmp_path: Path) -> None:
    report = synthesize(tmp_path, 60, datasets=["bm"], bm_chunk_size=3, seed=1)
    anchor = tmp_path / BM_ANCHOR
    n = report.datasets["bm"].counts["NGS"]
    assert n > 3
    expected = {f"{s:04d}-{min(s + 2, n):04d}" for s in range(1, n + 1, 3)}
    assert {p.name for p in (anchor / "NGS").iterdir()} == expected
    last = f"{(n - 1) // 3 * 3 + 1:04d}-{n:04d}"
    assert (anchor / "NGS" / last / f"NGS_{n:05d}.jpg").is_file()
    assert [p.name for p in (anchor / "ABE").iterdir()] == ["ABE_00001.jpg"]


def test_synthesize__same_seed_same_bytes(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", 24, 2, seed=7)
    synthesize(tmp_path / "b", 24, 2, seed=7)
    synthesize(tmp_path / "c", 24, 2, seed=8)
    synthesize(tmp_path / "d", 24, 2, seed=7, datasets=["bm"])
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 3 * 24 + 2  # + annotations.dat, metadata.csv
    assert a != c
    # a dataset does not depend on which others are written with it
    assert _files(tmp_path / "d" / "bm") == _files(tmp_path / "a" / "bm")
    assert first.n_cells == 72
    assert first.datasets["mll_helmholtz"].patients == {
        p.name: len(list(p.iterdir()))
        for p in (tmp_path / "a" / MLL_ANCHOR / "data").glob("*/*")
    }


def test_synthesize__workers_write_the_same_bytes(tmp_path: Path) -> None:
    synthesize(tmp_path / "one", 21, 2, seed=5, datasets=["mll_helmholtz", "bm"])
    synthesize(
        tmp_path / "two", 21, 2, seed=5, datasets=["mll_helmholtz", "bm"], workers=2
    )
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one == two and len(one) == 43


def test_synthesize__refuses_a_non_empty_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "bm").mkdir()
    (tmp_path / "bm" / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="not empty.*new output folder"):
        synthesize(tmp_path, 30, datasets=["bm"])
    assert [p.name for p in (tmp_path / "bm").iterdir()] == ["mine.txt"]


def test_synthesize__interrupted_run_leaves_no_partial_dataset(tmp_path: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, 21, datasets=["bm"], progress=interrupt)
    assert list(tmp_path.iterdir()) == []
    synthesize(tmp_path, 21, datasets=["bm"])  # and a re-run is not refused
    assert len(list((tmp_path / BM_ANCHOR).rglob("*.jpg"))) == 21


def test_synthesize__out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(InvalidArgumentError, match="is a file: give a folder"):
        synthesize(tmp_path / "out", 21, datasets=["bm"])


def test_synthesize__an_empty_dataset_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "bm").mkdir()
    synthesize(tmp_path, 21, datasets=["bm"])
    assert len(list((tmp_path / BM_ANCHOR).rglob("*.jpg"))) == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm"]  # no temp left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cells_per_dataset": 14, "datasets": ["lmu"]}, "at least 15 cells"),
        ({"cells_per_dataset": 20, "datasets": ["bm"]}, "at least 21 cells"),
        (
            {"cells_per_dataset": 30, "patients_per_subtype": 4},
            "use --cells-per-dataset 40 or more",
        ),
        (
            {
                "cells_per_dataset": 10**6,
                "patients_per_subtype": 4000,
                "datasets": ["mll_helmholtz"],
            },
            "at most 3515 patients per subtype",
        ),
        ({"cells_per_dataset": 30000}, "beyond its 4-digit file names"),
        ({"datasets": ["tcia"]}, "choose from lmu, mll_helmholtz, bm"),
        ({"datasets": ["bm"], "bm_chunk_size": 0}, "bm_chunk_size is 0: give 1"),
        ({"datasets": ["bm"], "workers": 0}, "workers is 0: give 1 or more"),
    ],
)
def test_synthesize__invalid_arguments(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        synthesize(tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_synthesize__progress_counts_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    synthesize(
        tmp_path,
        25,
        datasets=["bm", "mll_helmholtz"],
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(i, 50) for i in range(1, 51)]


def test_synthesize__lymphocytes_and_neutrophils_look_different(
    synthetic_tree: Path,
) -> None:
    anchor = synthetic_tree / LMU_ANCHOR
    x, y = [], []
    for cls in ("LYT", "NGS"):
        for path in sorted((anchor / cls).iterdir())[:20]:
            with Image.open(path) as img:
                x.append(_features(np.asarray(img.convert("RGB"))))
            y.append(cls)
    assert _loo_nearest_centroid(np.stack(x), y) >= 0.9


def test_synthesize__subtype_blasts_differ() -> None:
    x, y = [], []
    for bag in MLL_BAG_LABELS[1:]:
        blast = subtype_morphs(bag)["BLAST"]
        for i in range(16):
            rng = np.random.default_rng([3, i])
            img = render_cell(
                rng, blast, STAINS["mll_helmholtz"], out_px=144, um_per_px=0.1725
            )
            x.append(_features(img))
            y.append(bag)
    assert _loo_nearest_centroid(np.stack(x), y) >= 0.6  # chance: 0.25


def test_synthesize__control_bags_differ_from_aml_bags(tmp_path: Path) -> None:
    report = synthesize(tmp_path, 240, 4, seed=3, datasets=["mll_helmholtz"])
    data = tmp_path / MLL_ANCHOR / "data"
    x, y = [], []
    for pid in report.datasets["mll_helmholtz"].patients:
        (folder,) = data.glob(f"*/{pid}")
        feats = []
        for path in folder.iterdir():
            with Image.open(path) as img:
                feats.append(_features(np.asarray(img)))
        x.append(np.mean(feats, axis=0))
        y.append("control" if folder.parent.name == "control" else "aml")
    assert _loo_nearest_centroid(np.stack(x), y) >= 0.8
