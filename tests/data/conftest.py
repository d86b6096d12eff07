"""Fixtures of the data tests: tiny TCIA-shaped trees written on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LMU_PKG = "PKG - AML-Cytomorphology_LMU"
MLL_PKG = "PKG - AML-Cytomorphology_MLL_Helmholtz_v1"
MLL_HEADER = (
    "patient_id,sex_1f_2m,age,bag_label,instance_count,leucocytes_per_¬µl,"
    "pb_myeloblast,pb_total"
)


def write_image(
    path: Path, mode: str = "RGB", size: int = 12, seed: int = 0, fmt: str | None = None
) -> Path:
    """Write a small random image of ``mode`` at ``path`` (parents created)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        arr16 = rng.integers(0, 65536, (size, size), dtype=np.uint16)
        Image.fromarray(arr16).save(path, format=fmt)
        return path
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.quantize(8)
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def build_lmu(
    root: Path, codes: tuple[str, ...] = ("BAS", "MYO", "NGS"), n: int = 2
) -> Path:
    """``root/PKG - AML-Cytomorphology_LMU/<CLS>/<CLS>_000i.tiff`` + annotations.dat."""
    anchor = root / LMU_PKG
    lines = []
    for k, code in enumerate(codes):
        for i in range(1, n + 1):
            write_image(anchor / code / f"{code}_{i:04d}.tiff", "RGBA", seed=k * 10 + i)
            re1 = "LYT" if i == 1 else "nan"
            lines.append(f"{code}/{code}_{i:04d}.tiff {code} {re1} nan")
    (root / "annotations.dat").write_text("\n".join(lines) + "\n")
    return anchor


def build_mll(root: Path, n: int = 2) -> Path:
    """``root/PKG - …_v1/data/<bag>/<pid>/image_<i>.tif`` and a quirky metadata.csv."""
    pkg = root / MLL_PKG
    patients = [
        ("AAA", "1", '"44,4"', "NPM1", '"13,8"'),
        ("BBB", "2", "35", "control", ""),
    ]
    rows = [MLL_HEADER]
    for k, (pid, sex, age, bag, leuco) in enumerate(patients):
        for i in range(n):
            write_image(
                pkg / "data" / bag / pid / f"image_{i}.tif", seed=100 + k * 10 + i
            )
        rows.append(f"{pid},{sex},{age},{bag},,{leuco},{50 + k},100")
    (pkg / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return pkg / "data"


def build_bm(root: Path, n: int = 2) -> Path:
    """``root/BM_cytomorphology_data/<CLS>[/<chunk>]/<CLS>_NNNNN.jpg``."""
    anchor = root / "BM_cytomorphology_data"
    for k, code in enumerate(("BLA", "NGS", "ABE")):
        folder = anchor / code if code == "ABE" else anchor / code / "0001-1000"
        for i in range(1, n + 1):
            write_image(folder / f"{code}_{k * 100 + i:05d}.jpg", seed=200 + k * 10 + i)
    return anchor


def build_folder(root: Path, n: int = 2) -> Path:
    """``root/my_lab/<class>/cell_i.png`` with PBC-style class names."""
    anchor = root / "my_lab"
    for k, cls in enumerate(("neutrophil", "ig", "Lymphocyte", "mystery")):
        for i in range(n):
            write_image(anchor / cls / f"cell_{i}.png", seed=300 + k * 10 + i)
    return anchor


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "lmu": build_lmu,
    "mll_helmholtz": build_mll,
    "bm": build_bm,
    "folder": build_folder,
}


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """Return ``make(*layouts)``: a tree holding the named tiny datasets under tmp."""

    def make(*layouts: str, root: Path | None = None) -> Path:
        base = root or tmp_path / "data"
        for name in layouts:
            BUILDERS[name](base / f"{name} download")
        return base

    return make


@pytest.fixture
def write_img() -> Callable[..., Path]:
    """:func:`write_image` as a fixture."""
    return write_image


@pytest.fixture
def builders() -> dict[str, Callable[[Path], Path]]:
    """The tiny-tree builders, keyed by layout; each returns the dataset root."""
    return BUILDERS
