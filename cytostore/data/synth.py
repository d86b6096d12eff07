"""Synthetic TCIA-shaped data: the three datasets' exact layouts, with drawn cells.

:func:`synthesize` writes ``OUT/lmu``, ``OUT/mll_helmholtz`` and ``OUT/bm`` with the
real folder levels, file names, formats, image sizes and metadata files of
AML-Cytomorphology_LMU, AML-Cytomorphology_MLL_Helmholtz and
Bone-Marrow-Cytomorphology_MLL_Helmholtz_Fraunhofer (see
``/work/shared/datasets/README.md``). Cells are drawn at each dataset's µm/px with a
class-dependent morphology (:mod:`cytostore.data._morphs`), and the MLL patients'
cell mix and blast morphology depend on their AML subtype, so that an embedder and
heads trained on it can learn something measurable. The same seed gives the same
bytes.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cytostore.data._draw import MASK_BITS, render_cell, render_cell_masks
from cytostore.data._morphs import (
    MLL_PB_CLASSES,
    MORPHS,
    NIF_BLUR_UM,
    STAINS,
    Morph,
    subtype_morphs,
)
from cytostore.errors import InvalidArgumentError

__all__ = [
    "synthesize",
    "allocate_counts",
    "SynthReport",
    "SynthDataset",
    "DATASETS",
    "LMU_COUNTS",
    "BM_COUNTS",
    "MLL_BAG_LABELS",
    "UM_PER_PX",
    "IMAGE_PX",
    "MASK_BITS",
    "MASKS_DIR",
    "structure_mask",
]

logger = logging.getLogger(__name__)

#: The datasets :func:`synthesize` can write, in order.
DATASETS = ("lmu", "mll_helmholtz", "bm")
#: Pixel size of each dataset, µm/px (Matek & Marr 2024, Table 1).
UM_PER_PX = {"lmu": 0.07072, "mll_helmholtz": 0.1725, "bm": 0.086}
#: Side of each dataset's square images, pixels.
IMAGE_PX = {"lmu": 400, "mll_helmholtz": 144, "bm": 250}
#: Real class counts of AML-Cytomorphology_LMU (MYO = myeloblast, MYB = myelocyte).
LMU_COUNTS = {
    "BAS": 79, "EBO": 78, "EOS": 424, "KSC": 15, "LYA": 11, "LYT": 3937, "MMZ": 15,
    "MOB": 26, "MON": 1789, "MYB": 42, "MYO": 3268, "NGB": 109, "NGS": 8484,
    "PMB": 18, "PMO": 70,
}  # fmt: skip
#: Real class counts of the bone-marrow dataset (from the paper's table).
BM_COUNTS = {
    "ABE": 8, "ART": 19630, "BAS": 441, "BLA": 11973, "EBO": 27395, "EOS": 5883,
    "FGC": 47, "HAC": 409, "KSC": 42, "LYI": 65, "LYT": 26242, "MMZ": 3055,
    "MON": 4040, "MYB": 6557, "NGB": 9968, "NGS": 29424, "NIF": 3538, "OTH": 294,
    "PEB": 2740, "PLM": 7629, "PMO": 11994,
}  # fmt: skip
#: Patient bag labels of AML-Cytomorphology_MLL_Helmholtz.
MLL_BAG_LABELS = ("control", "CBFB_MYH11", "NPM1", "PML_RARA", "RUNX1_RUNX1T1")

_LMU_ANCHOR = "PKG - AML-Cytomorphology_LMU"
_MLL_ANCHOR = "PKG - AML-Cytomorphology_MLL_Helmholtz_v1"
_BM_ANCHOR = "BM_cytomorphology_data"
_DATASET_KEY = {"lmu": 1, "mll_helmholtz": 2, "bm": 3}  # seeds stay per dataset
# Mean peripheral-blood differential (%) per subtype, from the real metadata.csv
# (eosinophils of CBFB_MYH11 raised from 0.9 to 4 so its abnormal eosinophils show).
_PB_MEAN = {
    "control": (0, 0, 0, 0, 0, 61.4, 2.3, 0.6, 7.0, 28.5, 0.1, 0),
    "CBFB_MYH11": (54.9, 0.3, 0.6, 0.1, 0.3, 4.5, 4.0, 0.2, 21.7, 16.4, 0, 0.3),
    "NPM1": (67.3, 0.5, 0.8, 0.2, 0.6, 11.1, 0.3, 0.2, 5.6, 13.2, 0, 0.4),
    "PML_RARA": (68.3, 5.9, 0.9, 0.3, 0.2, 7.8, 0, 0, 1.5, 15.1, 0, 0),
    "RUNX1_RUNX1T1": (53.4, 2.4, 3.5, 0.2, 1.0, 12.7, 0.2, 0.1, 3.1, 23.2, 0.2, 0),
}
_PB_COLUMNS = tuple(MLL_PB_CLASSES)
_MLL_HEADER = (
    "patient_id", "sex_1f_2m", "age", "bag_label", "instance_count", "leucocytes_perl",
    *_PB_COLUMNS[:11], "pb_lymph_atyp_neopl", "pb_other", "pb_total",
)  # fmt: skip
#: Folder (beside the datasets, hidden from ingest) of the structure masks.
MASKS_DIR = ".masks"
_NIF_LOOKS = ("NGS", "LYT", "BLA", "EBO", "MON", "PMO", "MYB")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthDataset:
    """What :func:`synthesize` wrote for one dataset.

    Attributes:
        name: ``lmu``, ``mll_helmholtz`` or ``bm``.
        root: The dataset folder, ``OUT/<name>``.
        um_per_px: Pixel size of its images, µm.
        image_px: Side of its square images, pixels.
        counts: Images per class (``lmu``, ``bm``) or per bag label
            (``mll_helmholtz``).
        patients: Images per patient id (``mll_helmholtz``; empty otherwise).
    """

    name: str
    root: Path
    um_per_px: float
    image_px: int
    counts: dict[str, int]
    patients: dict[str, int] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        """Number of images written."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as plain JSON-ready values."""
        return {
            "name": self.name,
            "root": str(self.root),
            "um_per_px": self.um_per_px,
            "image_px": self.image_px,
            "n_cells": self.n_cells,
            "counts": dict(self.counts),
            "patients": dict(self.patients),
        }


@dataclass(frozen=True)
class SynthReport:
    """What :func:`synthesize` wrote: the output folder and one entry per dataset."""

    out: Path
    seed: int
    datasets: dict[str, SynthDataset]

    @property
    def n_cells(self) -> int:
        """Number of images written over all datasets."""
        return sum(d.n_cells for d in self.datasets.values())

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready values."""
        return {
            "out": str(self.out),
            "seed": self.seed,
            "n_cells": self.n_cells,
            "datasets": [d.to_dict() for d in self.datasets.values()],
        }


def allocate_counts(total: int, real_counts: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` over classes: one each, the rest proportional to the real counts.

    The remainder after flooring goes to the largest fractional parts (ties to the
    earlier class), so the counts always sum to ``total``.

    Args:
        total: Number of cells to allocate.
        real_counts: Real count of every class, in output order.

    Returns:
        Count per class, each at least 1, summing to ``total``.

    Raises:
        InvalidArgumentError: ``total`` is smaller than the number of classes.

    Examples:
        >>> allocate_counts(10, {"A": 80, "B": 15, "C": 5})
        {'A': 7, 'B': 2, 'C': 1}
    """
    names = list(real_counts)
    if total < len(names):
        raise InvalidArgumentError(
            f"cannot draw {total} cells over {len(names)} classes: every class needs "
            f"at least one; use at least {len(names)} cells per dataset"
        )
    weights = np.asarray([real_counts[n] for n in names], np.float64)
    share = (total - len(names)) * weights / weights.sum()
    base = np.floor(share).astype(int)
    left = total - len(names) - int(base.sum())
    order = sorted(range(len(names)), key=lambda i: (-(share[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return {n: int(b) + 1 for n, b in zip(names, base, strict=True)}


def _class_counts(dataset: str, n_cells: int) -> dict[str, int]:
    """Return the images per class of ``lmu`` or ``bm``, within its name digits."""
    real, digits = (LMU_COUNTS, 4) if dataset == "lmu" else (BM_COUNTS, 5)
    counts = allocate_counts(n_cells, real)
    if max(counts.values()) >= 10**digits:
        most = n_cells * (10**digits - 1) // max(counts.values())
        raise InvalidArgumentError(
            f"{n_cells} cells give more than {10**digits - 1} images in one "
            f"{dataset} class, beyond its {digits}-digit file names; use at most "
            f"{most} cells per dataset"
        )
    return counts


def _rng(seed: int, dataset: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, _DATASET_KEY[dataset], *key])


@dataclass(frozen=True)
class _Job:
    """One image to draw and write, with everything it depends on."""

    path: Path
    dataset: str
    index: int
    morph: Morph
    od_patient: tuple[float, float, float] | None = None
    size_scale: float = 1.0
    mask_path: Path | None = None


def _draw(seed: int, job: _Job) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the image of ``job`` (uint8 RGB), a function of the seed and the job.

    The stain density varies by 4% per image, or by 2% around the factors of the
    patient's slide (``job.od_patient``). With ``job.mask_path`` the structure mask
    comes too (the image is the same either way); else None.
    """
    rng = _rng(seed, job.dataset, 1, job.index)
    if job.od_patient is None:
        od_jitter = 1.0 + rng.normal(0.0, 0.04, 3)
    else:
        od_jitter = np.asarray(job.od_patient) * (1.0 + rng.normal(0.0, 0.02, 3))
    kwargs: dict[str, Any] = {
        "out_px": IMAGE_PX[job.dataset],
        "um_per_px": UM_PER_PX[job.dataset],
        "od_jitter": od_jitter,
        "size_scale": job.size_scale,
    }
    if job.mask_path is None:
        return render_cell(rng, job.morph, STAINS[job.dataset], **kwargs), None
    return render_cell_masks(rng, job.morph, STAINS[job.dataset], **kwargs)


def _write(seed: int, job: _Job) -> None:
    """Draw ``job`` and write it in its dataset's format (and its mask as a PNG)."""
    pixels, mask = _draw(seed, job)
    if mask is not None and job.mask_path is not None:
        job.mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, "L").save(job.mask_path, format="PNG")
    img = Image.fromarray(pixels, "RGB")
    if job.dataset == "lmu":
        img.convert("RGBA").save(job.path, format="TIFF")  # opaque alpha
    elif job.dataset == "mll_helmholtz":
        img.save(job.path, format="TIFF")
    else:
        img.save(job.path, format="JPEG", quality=90)


def _run(
    jobs: Sequence[_Job], seed: int, workers: int, tick: Callable[[], None]
) -> None:
    """Write every job, in ``workers`` processes; the bytes do not depend on it."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            _write(seed, job)
            tick()
        return
    # spawn, not fork: the caller may hold torch/OpenMP threads
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    try:
        chunk = max(1, min(64, len(jobs) // (4 * workers)))
        for _ in pool.map(functools.partial(_write, seed), jobs, chunksize=chunk):
            tick()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _plan_lmu(tmp: Path, n_cells: int, seed: int) -> tuple[list[_Job], dict[str, int]]:
    """Make the lmu folders and annotations.dat; return the images to draw."""
    counts = _class_counts("lmu", n_cells)
    rng = _rng(seed, "lmu", 0)
    codes = list(LMU_COUNTS)
    lines = []
    jobs: list[_Job] = []
    for cls, count in counts.items():
        (tmp / _LMU_ANCHOR / cls).mkdir(parents=True)
        for i in range(1, count + 1):
            rel = f"{cls}/{cls}_{i:04d}.tiff"
            jobs.append(_Job(tmp / _LMU_ANCHOR / rel, "lmu", len(jobs), MORPHS[cls]))
            reann = ["nan", "nan"]
            if rng.uniform() < 0.104:  # 1,905 of 18,365 were re-annotated
                first = _reannotation(rng, cls, codes)
                reann = [
                    first,
                    first if rng.uniform() < 0.8 else _reannotation(rng, cls, codes),
                ]
            lines.append(f"{rel} {cls} {reann[0]} {reann[1]}\n")
    (tmp / "annotations.dat").write_text("".join(lines), encoding="utf-8")
    return jobs, counts


def _reannotation(rng: np.random.Generator, cls: str, codes: Sequence[str]) -> str:
    draw = rng.uniform()
    if draw < 0.72:
        return cls
    if draw < 0.84:
        return "UNC"
    return str(rng.choice([c for c in codes if c != cls]))


def _patient_ids(rng: np.random.Generator, count: int) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        pid = "".join(rng.choice(letters, 3))
        if pid not in seen:
            seen.add(pid)
            out.append(pid)
    return out


def _decimal_comma(value: float, decimals: int) -> str:
    text = f"{round(value, decimals):.{decimals}f}".rstrip("0").rstrip(".")
    return text.replace(".", ",")


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    share = total * weights / weights.sum()
    base = np.floor(share).astype(int)
    order = np.argsort(-(share - base), kind="stable")
    base[order[: total - int(base.sum())]] += 1
    return base


def _plan_mll(
    tmp: Path, n_cells: int, patients_per_subtype: int, seed: int
) -> tuple[list[_Job], dict[str, int], dict[str, int]]:
    """Make the mll_helmholtz folders and metadata.csv; return the images to draw."""
    n_patients = patients_per_subtype * len(MLL_BAG_LABELS)
    rng = _rng(seed, "mll_helmholtz", 0)
    pids = _patient_ids(rng, n_patients)
    sizes = 2 + _largest_remainder(
        n_cells - 2 * n_patients, rng.uniform(0.2, 1.0, n_patients)
    )
    anchor = tmp / _MLL_ANCHOR
    rows: list[list[str]] = []
    per_bag = dict.fromkeys(MLL_BAG_LABELS, 0)
    per_patient: dict[str, int] = {}
    jobs: list[_Job] = []
    for p, (pid, size) in enumerate(zip(pids, sizes, strict=True)):
        bag = MLL_BAG_LABELS[p % len(MLL_BAG_LABELS)]
        morphs = subtype_morphs(bag)
        mean = np.asarray(_PB_MEAN[bag], np.float64)
        mix = np.zeros_like(mean)
        present = mean > 0
        mix[present] = rng.dirichlet(20.0 * mean[present] / 100.0 + 0.02)
        pb = _largest_remainder(100, mix)
        kinds = rng.choice(len(pb), size=int(size), p=pb / pb.sum())
        od = 1.0 + rng.normal(0.0, 0.06, 3)  # the patient's slide
        od_patient = (float(od[0]), float(od[1]), float(od[2]))
        size_patient = float(rng.normal(1.0, 0.04))
        folder = anchor / "data" / bag / pid
        folder.mkdir(parents=True)
        for i, kind in enumerate(kinds):
            morph = morphs[MLL_PB_CLASSES[_PB_COLUMNS[kind]]]
            path = folder / f"image_{i}.tif"
            jobs.append(
                _Job(path, "mll_helmholtz", len(jobs), morph, od_patient, size_patient)
            )
        per_bag[bag] += int(size)
        per_patient[pid] = int(size)
        rows.append(_metadata_row(rng, pid, bag, int(size), pb))
    rows.sort(key=lambda r: r[0])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(_MLL_HEADER)
    writer.writerows(rows)
    (anchor / "metadata.csv").write_bytes(buf.getvalue().encode("utf-8"))
    return jobs, per_bag, per_patient


def _metadata_row(
    rng: np.random.Generator, pid: str, bag: str, n_images: int, pb: np.ndarray
) -> list[str]:
    """One row of metadata.csv with the real file's quirks (decimal commas, gaps)."""
    control = bag == "control"
    sex = "2" if rng.uniform() < (0.9 if control else 0.5) else "1"
    age = float(np.clip(rng.normal(34.0 if control else 57.0, 12.0), 18.0, 90.0))
    age_text = str(round(age)) if rng.uniform() < 0.12 else _decimal_comma(age, 1)
    leuco = ""
    if not control and rng.uniform() > 0.1:
        leuco = _decimal_comma(float(rng.lognormal(3.2, 1.0)), int(rng.integers(0, 3)))
    counts = [str(int(c)) for c in pb]
    neopl = "" if rng.uniform() < 0.23 else "0.0"
    return [
        pid, sex, age_text, bag, str(n_images), leuco, *counts[:11], neopl,
        counts[11], str(int(pb.sum())),
    ]  # fmt: skip


def _bm_chunk(cls: str, i: int, count: int, chunk_size: int) -> str:
    """Return the chunk folder of image ``i`` (1-based) of a class ("" for none)."""
    if cls == "ABE":
        return ""
    start = (i - 1) // chunk_size * chunk_size + 1
    end = min(start + chunk_size - 1, count)
    return f"{start:04d}-{end:04d}"


def _plan_bm(
    tmp: Path, n_cells: int, seed: int, chunk_size: int
) -> tuple[list[_Job], dict[str, int]]:
    """Make the bm class and chunk folders; return the images to draw."""
    counts = _class_counts("bm", n_cells)
    rng = _rng(seed, "bm", 0)
    jobs: list[_Job] = []
    for cls, count in counts.items():
        folders: dict[str, Path] = {}
        for i in range(1, count + 1):
            chunk = _bm_chunk(cls, i, count, chunk_size)
            if chunk not in folders:
                folders[chunk] = tmp / _BM_ANCHOR / cls / chunk
                folders[chunk].mkdir(parents=True, exist_ok=True)
            folder = folders[chunk]
            if cls == "NIF":  # not identifiable: another class, out of focus
                look = MORPHS[str(rng.choice(_NIF_LOOKS))]
                morph = replace(look, blur_um=NIF_BLUR_UM)
            else:
                morph = MORPHS[cls]
            jobs.append(_Job(folder / f"{cls}_{i:05d}.jpg", "bm", len(jobs), morph))
    return jobs, counts


def synthesize(
    out: str | Path,
    cells_per_dataset: int = 600,
    patients_per_subtype: int | None = None,
    seed: int = 0,
    *,
    datasets: Sequence[str] = DATASETS,
    bm_chunk_size: int = 1000,
    workers: int = 1,
    progress: Progress | None = None,
    masks: bool = False,
) -> SynthReport:
    """Write synthetic ``lmu``, ``mll_helmholtz`` and ``bm`` datasets under ``out``.

    Layouts (each the real one, below a folder per dataset)::

        out/lmu/annotations.dat
        out/lmu/PKG - AML-Cytomorphology_LMU/<CLS>/<CLS>_NNNN.tiff        RGBA 400 px
        out/mll_helmholtz/PKG - AML-Cytomorphology_MLL_Helmholtz_v1/metadata.csv
        out/mll_helmholtz/PKG - .../data/<bag_label>/<PID>/image_<i>.tif  RGB 144 px
        out/bm/BM_cytomorphology_data/<CLS>/<NNNN-NNNN>/<CLS>_NNNNN.jpg    RGB 250 px

    Every class appears at least once; the other cells follow the real class
    counts. The ``mll_helmholtz`` patients share ``cells_per_dataset``; their cell
    mix, blast morphology and slide stain depend on their subtype and on the patient.
    Each dataset is written to a temporary folder and renamed into place when done.

    Args:
        out: Output folder (created if missing).
        cells_per_dataset: Images per dataset (the MLL patients share them).
        patients_per_subtype: MLL patients per bag label; None means
            ``max(2, min(8, cells_per_dataset // 250))``.
        seed: Random seed; the same seed writes the same bytes.
        datasets: Which of ``lmu``, ``mll_helmholtz``, ``bm`` to write.
        bm_chunk_size: Images per ``bm`` chunk folder (1000 in the real data).
        workers: Processes drawing the images (the files do not depend on it).
        progress: Called as ``progress(done, total)`` after each image.
        masks: Also write each image's structure mask (what the drawing planted:
            the white cell, its nucleus, granules, Auer rods; bits of
            :data:`MASK_BITS`) as an 8-bit PNG at
            ``out/.masks/<dataset>/<image path in the dataset>.png`` (a hidden
            folder, so ingest never sees it; :func:`structure_mask` finds it from
            an image path). The images are the same bytes with or without masks.

    Returns:
        The datasets written, with their counts per class / bag and per patient.

    Raises:
        InvalidArgumentError: An unknown dataset, too few (or too many) cells for
            the classes' file names or the patients, a non-positive chunk size or
            worker count, ``out`` being a file, or an ``out/<dataset>`` folder that
            exists and is not empty (nothing is written then).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     report = synthesize(tmp, 40, 2, datasets=["bm", "mll_helmholtz"])
        ...     report.datasets["bm"].counts["NGS"], report.n_cells
        (4, 80)
    """
    out = Path(out)
    names = list(dict.fromkeys(datasets))
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        raise InvalidArgumentError(
            f"unknown dataset(s) {unknown}: choose from {', '.join(DATASETS)}"
        )
    if cells_per_dataset < 1:
        raise InvalidArgumentError(
            f"cells_per_dataset is {cells_per_dataset}: give a positive number"
        )
    if workers < 1:
        raise InvalidArgumentError(f"workers is {workers}: give 1 or more")
    if bm_chunk_size < 1:
        raise InvalidArgumentError(f"bm_chunk_size is {bm_chunk_size}: give 1 or more")
    for name in ("lmu", "bm"):
        if name in names:  # raises before anything is written
            _class_counts(name, cells_per_dataset)
    if patients_per_subtype is None:
        patients_per_subtype = max(2, min(8, cells_per_dataset // 250))
    if "mll_helmholtz" in names:
        n_patients = patients_per_subtype * len(MLL_BAG_LABELS)
        if n_patients > 26**3:
            raise InvalidArgumentError(
                f"{n_patients} patients exceed the {26**3} three-letter pseudonyms: "
                f"use at most {26**3 // len(MLL_BAG_LABELS)} patients per subtype"
            )
        if patients_per_subtype < 1 or cells_per_dataset < 2 * n_patients:
            raise InvalidArgumentError(
                f"{cells_per_dataset} cells cannot fill {patients_per_subtype} "
                f"patients per subtype ({len(MLL_BAG_LABELS)} subtypes, at least 2 "
                f"cells each): use --cells-per-dataset {max(2 * n_patients, 10)} or "
                "more, or fewer --patients-per-subtype"
            )
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(
            f"{out} is a file: give a folder (new or holding no {' / '.join(names)})"
        )
    for name in names:
        target = out / name
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise InvalidArgumentError(
                f"{target} already exists and is not empty: choose a new output "
                "folder or delete it first"
            )

    # Plan every dataset (folders, metadata files, the list of images) in its
    # temporary folder, draw all images in one pass, and rename each dataset into
    # place as soon as its last image is written.
    out.mkdir(parents=True, exist_ok=True)
    planned: list[tuple[SynthDataset, Path, int]] = []  # entry, temp folder, end
    jobs: list[_Job] = []
    try:
        for name in DATASETS:
            if name not in names:
                continue
            tmp = out / f".{name}.synth-tmp"
            if tmp.exists():
                shutil.rmtree(tmp)  # left by an interrupted run of ours
            tmp.mkdir()
            patients: dict[str, int] = {}
            if name == "lmu":
                more, counts = _plan_lmu(tmp, cells_per_dataset, seed)
            elif name == "mll_helmholtz":
                more, counts, patients = _plan_mll(
                    tmp, cells_per_dataset, patients_per_subtype, seed
                )
            else:
                more, counts = _plan_bm(tmp, cells_per_dataset, seed, bm_chunk_size)
            if masks:
                mask_root = out / MASKS_DIR / name
                if mask_root.exists():
                    shutil.rmtree(mask_root)  # of an earlier run into this folder
                more = [
                    replace(j, mask_path=mask_root / f"{j.path.relative_to(tmp)}.png")
                    for j in more
                ]
            jobs += more
            entry = SynthDataset(
                name=name,
                root=out / name,
                um_per_px=UM_PER_PX[name],
                image_px=IMAGE_PX[name],
                counts=counts,
                patients=patients,
            )
            planned.append((entry, tmp, len(jobs)))

        done = 0
        pending = list(planned)

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, len(jobs))
            while pending and pending[0][2] == done:
                entry, tmp, _ = pending.pop(0)
                if entry.root.exists():
                    entry.root.rmdir()  # empty, checked above
                os.replace(tmp, entry.root)
                logger.info("wrote %d synthetic %s cells", entry.n_cells, entry.name)

        _run(jobs, seed, workers, tick)
    except BaseException:  # interrupted or failed: leave no partial dataset
        for entry, tmp, _ in planned:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(out / MASKS_DIR / entry.name, ignore_errors=True)
        raise
    written = {entry.name: entry for entry, _, _ in planned}
    return SynthReport(out=out, seed=seed, datasets=written)


def structure_mask(image: str | os.PathLike[str]) -> np.ndarray | None:
    """Return the structure mask :func:`synthesize` wrote for one image, if any.

    The mask of ``out/<dataset>/<rel>`` lies at ``out/.masks/<dataset>/<rel>.png``;
    it is looked for beside each folder above the image, so the image may be
    given by any path under ``out``.

    Args:
        image: Path of a synthetic image.

    Returns:
        uint8 (H, W) mask of the image's size (bits of :data:`MASK_BITS`), or
        None when no mask was written for it (``masks=False``, or not synthetic).
    """
    path = Path(image)
    for folder in path.parents:
        if folder.parent == folder:
            break
        candidate = (
            folder.parent / MASKS_DIR / folder.name / f"{path.relative_to(folder)}.png"
        )
        if candidate.is_file():
            with Image.open(candidate) as im:
                return np.asarray(im.convert("L"), dtype=np.uint8)
    return None
