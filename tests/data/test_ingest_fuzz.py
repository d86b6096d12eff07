"""Property-based fuzz of the readers and ingest: hostile bytes under real TCIA names.

Each example writes a tree holding the three TCIA layouts (real anchor folders, class
or patient folders and file names), one intact image per layout, and a few files
whose bytes are random, empty, cut short, or mutated copies of real PNG/JPEG/TIFF
images made with Pillow; some names carry a byte that is not UTF-8. Ingest must
never raise; every file must end up exactly once as a cell or as a ``skipped`` row
with a reason; a file is a cell exactly when Pillow, the reference decoder, fully
decodes it within the pixel limit (and cytostore's own loader then reads it); a
second ingest changes nothing.

The run is derandomized (the same examples in every CI run). The figures the
reliability benchmark reports are :data:`FUZZ_EXAMPLES` and :data:`FUZZ_MIN_FILES`
to :data:`FUZZ_MAX_FILES` fuzzed files per example.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from cytostore.data import ingest, load_rgb
from cytostore.data.images import MAX_PIXELS
from cytostore.store import Store

#: Examples hypothesis runs (each: one tree, two ingests).
FUZZ_EXAMPLES = 30
#: Fewest and most fuzzed files per example (beside one intact image per layout).
FUZZ_MIN_FILES = 4
FUZZ_MAX_FILES = 12

_LMU = "PKG - AML-Cytomorphology_LMU"
_MLL = "PKG - AML-Cytomorphology_MLL_Helmholtz_v1/data"
_BM = "BM_cytomorphology_data"
_KINDS = ("good", "truncated", "mutated", "random", "empty")


@dataclass(frozen=True)
class _Spec:
    """One fuzzed file: where it goes and how its bytes are made."""

    layout: str  # lmu | mll_helmholtz | bm
    index: int
    fmt: str  # the format of the source image: PNG | JPEG | TIFF
    kind: str  # one of _KINDS
    cut: float  # truncated: fraction of the bytes kept
    flips: tuple[tuple[float, int], ...]  # mutated: (relative position, new byte)
    noise: bytes  # random: the bytes
    bad_name: bool  # a byte that is not UTF-8 in the file name


def _rel(layout: str, index: int, bad_name: bool) -> tuple[str, bytes]:
    """Return ``(anchor, path below it as bytes)`` with a real TCIA-style name."""
    tail = b"\xff" if bad_name else b""
    if layout == "lmu":
        code = ("BAS", "MYO", "NGS")[index % 3]
        return _LMU, f"{code}/{code}_{index + 1:04d}".encode() + tail + b".tiff"
    if layout == "bm":
        code = ("BLA", "NGS", "ABE")[index % 3]
        chunk = "" if code == "ABE" else "0001-1000/"
        return _BM, f"{code}/{chunk}{code}_{index + 1:05d}".encode() + tail + b".jpg"
    bag, pid = (("NPM1", "AAA"), ("control", "BBB"))[index % 2]
    return _MLL, f"{bag}/{pid}/image_{index}".encode() + tail + b".tif"


def _image_bytes(fmt: str, seed: int, mode: str = "RGB") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _content(spec: _Spec) -> bytes:
    if spec.kind == "empty":
        return b""
    if spec.kind == "random":
        return spec.noise
    mode = "RGBA" if spec.layout == "lmu" and spec.fmt != "JPEG" else "RGB"
    data = _image_bytes(spec.fmt, spec.index, mode)
    if spec.kind == "truncated":
        return data[: int(len(data) * spec.cut)]
    if spec.kind == "mutated":
        buf = bytearray(data)
        for where, byte in spec.flips:
            buf[min(int(where * len(buf)), len(buf) - 1)] = byte
        return bytes(buf)
    return data


def _reference_decodes(data: bytes) -> bool:
    """Pillow, strict: a non-empty image within the pixel limit that fully loads."""
    if not data:
        return False
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                return False
            img.load()
    except Exception:  # the oracle: anything Pillow raises means "not decodable"
        return False
    return True


_specs = st.builds(
    _Spec,
    layout=st.sampled_from(("lmu", "mll_helmholtz", "bm")),
    index=st.integers(1, 40),
    fmt=st.sampled_from(("PNG", "JPEG", "TIFF")),
    kind=st.sampled_from(_KINDS),
    cut=st.floats(0.0, 0.999),
    flips=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=8
    ).map(tuple),
    noise=st.binary(min_size=1, max_size=600),
    bad_name=st.integers(0, 9).map(lambda n: n == 0),  # one name in ten
)


def _write_tree(root: Path, specs: list[_Spec]) -> dict[tuple[str, str], bytes]:
    """Write the baseline images and the fuzzed files; return what each path holds.

    Keys are ``(dataset, path as catalogued)``; for names that are not UTF-8 the
    path is the printable form ingest records.
    """
    files: dict[tuple[str, bytes], bytes] = {}
    for layout, fmt in (("lmu", "TIFF"), ("mll_helmholtz", "TIFF"), ("bm", "JPEG")):
        anchor, rel = _rel(layout, 0, False)
        files[(anchor, rel)] = _image_bytes(
            fmt, 999, "RGBA" if layout == "lmu" else "RGB"
        )
    for spec in specs:
        files[_rel(spec.layout, spec.index, spec.bad_name)] = _content(spec)
    datasets = {_LMU: "lmu", _MLL: "mll_helmholtz", _BM: "bm"}
    out: dict[tuple[str, str], bytes] = {}
    for (anchor, rel), data in files.items():
        full = os.path.join(os.fsencode(root / anchor), rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(data)
        shown = rel.decode("utf-8", errors="backslashreplace")
        out[(datasets[anchor], shown)] = data
    return out


@pytest.fixture(scope="module")
def empty_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated store; examples copy it (migrating costs each ~0.1 s)."""
    path = tmp_path_factory.mktemp("fuzz") / "empty"
    Store.create(path)
    return path


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(specs=st.lists(_specs, min_size=FUZZ_MIN_FILES, max_size=FUZZ_MAX_FILES))
def test_ingest__fuzzed_files_under_tcia_names_never_crash(
    empty_catalog: Path, specs: list[_Spec]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "downloads"
        files = _write_tree(root, specs)
        intact = {_image_bytes("TIFF", 999, "RGBA"), _image_bytes("JPEG", 999)}
        intact |= {_image_bytes("TIFF", 999)} | {
            _content(s) for s in specs if s.kind == "good"
        }
        store = Store.open(shutil.copytree(empty_catalog, Path(tmp) / "store"))

        report = ingest(store, root, workers=1)

        cells = store.sql(
            "SELECT cell_id, dataset, path FROM cells ORDER BY cell_id"
        ).rows
        skipped = {
            (d, p): r
            for d, p, r in store.sql("SELECT dataset, path, reason FROM skipped").rows
        }
        catalogued = {(d, p) for _, d, p in cells}
        assert [c[0] for c in cells] == list(range(1, len(cells) + 1))
        assert len(catalogued) == len(cells)
        assert catalogued | set(skipped) == set(files)
        assert not catalogued & set(skipped)
        assert all(reason.strip() for reason in skipped.values())
        assert report.added == len(cells) and report.skipped == len(skipped)
        roots = store.dataset_roots()
        for (dataset, path), data in files.items():
            if "\\x" in path:
                assert "not valid UTF-8" in skipped[(dataset, path)]
                continue
            expected = _reference_decodes(data)
            if data in intact:
                assert expected, (dataset, path)
            assert ((dataset, path) in catalogued) == expected, (dataset, path)
            if expected:
                assert load_rgb(roots[dataset] / path).ndim == 3

        again = ingest(store, root, workers=1)
        assert again.added == 0
        assert store.sql(
            "SELECT cell_id, dataset, path FROM cells ORDER BY 1"
        ).rows == (cells)
