from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cytostore.data import ingest
from cytostore.errors import InvalidArgumentError, LayoutNotFoundError
from cytostore.store import Store

# ``cytostore.data.ingest`` the attribute is the function; this is the module.
ingest_mod = importlib.import_module("cytostore.data.ingest")


def _cells(store: Store) -> list[tuple[int, str, str]]:
    return store.sql("SELECT cell_id, dataset, path FROM cells ORDER BY cell_id").rows


def _skipped(store: Store) -> dict[str, str]:
    return dict(store.sql("SELECT path, reason FROM skipped").rows)


def test_ingest__all_layouts_in_one_tree(
    tmp_store: Store, make_tree: Callable[..., Path]
) -> None:
    root = make_tree("lmu", "mll_helmholtz", "bm")
    report = ingest(tmp_store, root, workers=1)
    got = [
        (d.dataset, d.found, d.added, d.existing, d.skipped) for d in report.datasets
    ]
    assert got == [
        ("lmu", 6, 6, 0, 0),
        ("mll_helmholtz", 4, 4, 0, 0),
        ("bm", 6, 6, 0, 0),
    ]
    # Published counts differ from these tiny trees: a warning each, no failure.
    assert sum("published" in w for w in report.warnings) == 3
    ids = [r[0] for r in _cells(tmp_store)]
    assert ids == list(range(1, 17))
    row = tmp_store.sql(
        "SELECT label, cell_type, um_per_px, width, height, sha256, reannotation1 "
        "FROM cells WHERE path = 'MYO/MYO_0001.tiff'"
    ).rows[0]
    anchor = root / "lmu download" / "PKG - AML-Cytomorphology_LMU"
    digest = hashlib.sha256((anchor / "MYO" / "MYO_0001.tiff").read_bytes()).hexdigest()
    assert row == ("MYO", "myeloblast", 0.07072, 12, 12, digest, "LYT")
    meta = tmp_store.sql(
        "SELECT patient_id, bag_label, age, sex, leucocytes_per_ul FROM cell_meta "
        "WHERE dataset = 'mll_helmholtz' AND path LIKE '%image_0.tif' ORDER BY 1"
    ).rows
    assert meta == [
        ("AAA", "NPM1", 44.4, "F", 13.8),
        ("BBB", "control", 35.0, "M", None),
    ]
    roots = tmp_store.dataset_roots()
    assert roots["lmu"] == anchor.resolve()
    n_expected = dict(tmp_store.sql("SELECT dataset, n_expected FROM datasets").rows)
    assert n_expected == {"lmu": 18365, "mll_helmholtz": 81214, "bm": 171374}


def test_ingest__rerun_adds_nothing_and_new_files_get_new_ids(
    tmp_store: Store, make_tree: Callable[..., Path], write_img: Callable[..., Path]
) -> None:
    root = make_tree("bm", "lmu")
    ingest(tmp_store, root, workers=1)
    before = _cells(tmp_store)
    again = ingest(tmp_store, root, workers=1)
    assert again.added == 0 and [d.existing for d in again.datasets] == [6, 6]
    assert _cells(tmp_store) == before
    anchor = root / "bm download" / "BM_cytomorphology_data"
    write_img(anchor / "NGS" / "0001-1000" / "NGS_00050.jpg", seed=9)
    third = ingest(tmp_store, root, workers=1)
    assert third.added == 1
    after = _cells(tmp_store)
    assert after[:-1] == before
    assert after[-1] == (13, "bm", "NGS/0001-1000/NGS_00050.jpg")


def test_ingest__bad_files_skipped_with_reasons_convertible_ones_kept(
    tmp_store: Store, tmp_path: Path, write_img: Callable[..., Path]
) -> None:
    root = tmp_path / "lab"
    for mode in ("L", "I;16", "RGBA", "P"):
        write_img(root / "lymphocyte" / f"{mode.replace(';', '')}.png", mode)
    (root / "lymphocyte" / ".DS_Store").write_bytes(b"\0\1")
    (root / "lymphocyte" / "Thumbs.db").write_bytes(b"\0\1")
    write_img(root / "lymphocyte" / "._L.png")  # AppleDouble twin
    (root / "ig").mkdir()
    (root / "ig" / "empty.png").write_bytes(b"")
    (root / "ig" / "text.jpg").write_text("I am not a JPEG")
    full = write_img(root / "ig" / "full.jpg", size=64)
    cut = root / "ig" / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:400])
    (root / "ig" / "notes.txt").write_text("not an image name: ignored")
    report = ingest(tmp_store, root, workers=1)
    (d,) = report.datasets
    assert (d.dataset, d.layout, d.found, d.added, d.skipped) == (
        "lab",
        "folder",
        11,
        5,
        6,
    )
    assert sorted(r[2] for r in _cells(tmp_store)) == sorted(
        ["ig/full.jpg"] + [f"lymphocyte/{m}.png" for m in ("L", "I16", "RGBA", "P")]
    )
    skipped = _skipped(tmp_store)
    assert set(skipped) == {
        "lymphocyte/.DS_Store",
        "lymphocyte/Thumbs.db",
        "lymphocyte/._L.png",
        "ig/empty.png",
        "ig/text.jpg",
        "ig/cut.jpg",
    }
    assert "empty" in skipped["ig/empty.png"]
    assert "not an image" in skipped["ig/text.jpg"]
    assert "truncated" in skipped["ig/cut.jpg"]
    assert "hidden" in skipped["lymphocyte/.DS_Store"]
    # A repaired file is picked up by the next run and leaves `skipped`.
    write_img(root / "ig" / "text.jpg")
    assert ingest(tmp_store, root, workers=1).added == 1
    assert "ig/text.jpg" not in _skipped(tmp_store)


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        ("missing", InvalidArgumentError, "does not exist"),
        ("empty", InvalidArgumentError, "holds no files"),
        ("flat", LayoutNotFoundError, "--layout folder --pattern"),
        ("file", InvalidArgumentError, "is a file"),
    ],
)
def test_ingest__bad_path_raises_naming_the_fix(
    tmp_store: Store,
    tmp_path: Path,
    write_img: Callable[..., Path],
    setup: str,
    error: type[Exception],
    match: str,
) -> None:
    path = tmp_path / "in"
    if setup == "empty":
        (path / "sub").mkdir(parents=True)
    elif setup == "flat":
        write_img(path / "a.png")
        (path / "readme.txt").write_text("x")
    elif setup == "file":
        path = write_img(tmp_path / "a.png")
    with pytest.raises(error, match=match):
        ingest(tmp_store, path)
    assert _cells(tmp_store) == []


def test_ingest__requested_layout_absent_raises(
    tmp_store: Store, make_tree: Callable[..., Path]
) -> None:
    with pytest.raises(LayoutNotFoundError, match="no lmu dataset"):
        ingest(tmp_store, make_tree("bm"), layout="lmu")


def test_ingest__folder_options_rejected_for_tcia_layout(
    tmp_store: Store, make_tree: Callable[..., Path]
) -> None:
    with pytest.raises(InvalidArgumentError, match="only apply to --layout folder"):
        ingest(tmp_store, make_tree("bm"), layout="bm", pattern="{label}/*.jpg")


def test_ingest__dataset_name_clash_with_other_layout_raises(
    tmp_store: Store,
    make_tree: Callable[..., Path],
    builders: dict[str, Callable[[Path], Path]],
    tmp_path: Path,
) -> None:
    ingest(tmp_store, make_tree("bm"), workers=1)
    lab = builders["folder"](tmp_path / "other")
    with pytest.raises(InvalidArgumentError, match="--dataset-name"):
        ingest(tmp_store, lab, dataset_name="bm", workers=1)


def test_ingest__um_per_px_override_and_folder_unknown(
    tmp_store: Store, tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    lab = builders["folder"](tmp_path / "x")
    ingest(tmp_store, lab, workers=1)
    assert tmp_store.sql("SELECT DISTINCT um_per_px FROM cells").rows == [(None,)]
    bm_root = tmp_path / "bm"
    builders["bm"](bm_root)
    ingest(tmp_store, bm_root, um_per_px=0.1, workers=1)
    assert tmp_store.sql(
        "SELECT DISTINCT um_per_px FROM cells WHERE dataset = 'bm'"
    ).rows == [(0.1,)]


def test_ingest__interrupted_between_commits_resumes_with_same_ids(
    tmp_path: Path, make_tree: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree("lmu", "mll_helmholtz", "bm")
    clean = Store.create(tmp_path / "clean")
    ingest(clean, root, workers=1)
    monkeypatch.setattr(ingest_mod, "COMMIT_EVERY", 4)
    monkeypatch.setattr(ingest_mod, "COMMIT_MIN_S", 0.0)
    store = Store.create(tmp_path / "broken")

    def stop(done: int, total: int) -> None:
        if done >= 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(store, root, workers=1, progress=stop)
    partial = _cells(store)
    assert 0 < len(partial) < 16
    ingest(store, root, workers=1)
    assert _cells(store) == _cells(clean)


#: Fault points of ingest and the hit at which the child dies (see
#: :func:`cytostore.store.faults.fault_point`); the child commits every 5 files.
KILL_POINTS = [
    ("ingest.after_prepare", 1),
    ("ingest.after_commit", 1),
    ("ingest.after_commit", 3),
    ("ingest.before_final_commit", 1),
]
# The child runs the real CLI with a small commit size (a module constant).
_CHILD = (
    "import importlib, sys\n"
    "m = importlib.import_module('cytostore.data.ingest')\n"
    "m.COMMIT_EVERY = 5\n"
    "m.COMMIT_MIN_S = 0.0\n"
    "from cytostore.cli import main\n"
    "main(['ingest', *sys.argv[1:], '--workers', '1'], prog_name='cytostore')\n"
)
_CATALOGUED = (
    "SELECT cell_id, dataset, path, label, sha256, width, height FROM cells "
    "ORDER BY cell_id"
)


def _run_child(
    store: Path, source: Path, fault: str | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOSTORE_FAULT")}
    env["OMP_NUM_THREADS"] = "1"
    if fault is not None:
        env["CYTOSTORE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def kill_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder dataset of 23 good images and two bad files (read-only)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("kill") / "lab"
    for i in range(23):
        rgb = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        path = root / f"class{i % 3}" / f"c{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path)
    (root / "class0" / "junk.png").write_bytes(b"junk")
    (root / "class1" / ".DS_Store").write_bytes(b"\0")
    return root


@pytest.fixture(scope="module")
def kill_clean(kill_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The store one uninterrupted CLI ingest of :func:`kill_tree` gives."""
    path = tmp_path_factory.mktemp("clean") / "store"
    done = _run_child(path, kill_tree, None)
    assert done.returncode == 0, done.stderr
    return Store.open(path)


@pytest.mark.parametrize(("point", "hit"), KILL_POINTS)
def test_ingest__killed_at_fault_point_rerun_equals_clean_ingest(
    tmp_path: Path, kill_tree: Path, kill_clean: Store, point: str, hit: int
) -> None:
    store_dir = tmp_path / "store"
    killed = _run_child(store_dir, kill_tree, f"{point}:{hit}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = _cells(Store.open(store_dir))
    # Files are committed 5 at a time (cells and unreadable ones alike), after the
    # clutter file that the preparing transaction records.
    committed = {"after_prepare": 0, "after_commit": 5 * hit}.get(
        point.split(".")[1], 20
    )
    assert len(partial) + len(_skipped(Store.open(store_dir))) == 1 + committed
    done = _run_child(store_dir, kill_tree, None)
    assert done.returncode == 0, done.stderr
    store = Store.open(store_dir)
    cells = store.sql(_CATALOGUED).rows
    assert cells == kill_clean.sql(_CATALOGUED).rows
    assert [c[0] for c in cells] == list(range(1, 24))
    assert len({(c[1], c[2]) for c in cells}) == 23
    assert _skipped(store) == _skipped(kill_clean)
    assert cells[: len(partial)] == [
        c for c in cells if (c[0], c[1], c[2]) in set(partial)
    ]


def test_ingest__killed_after_zip_extraction_rerun_completes(
    tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["bm"](tmp_path / "src")
    archive = Path(shutil.make_archive(str(tmp_path / "bm"), "zip", tmp_path / "src"))
    store_dir = tmp_path / "store"
    killed = _run_child(store_dir, archive, "ingest.after_extract")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (store_dir / "sources" / "bm").exists()  # never half-renamed
    done = _run_child(store_dir, archive, None)
    assert done.returncode == 0, done.stderr
    cells = _cells(Store.open(store_dir))
    assert [c[0] for c in cells] == list(range(1, 7))
    assert len({c[2] for c in cells}) == 6


def test_ingest__parallel_equals_serial(
    tmp_path: Path, write_img: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "lab"
    for i in range(40):
        write_img(root / f"k{i % 2}" / f"{i:02d}.png", size=16, seed=i)
    (root / "k0" / "bad.png").write_bytes(b"junk")
    monkeypatch.setattr(ingest_mod, "MIN_PARALLEL", 1)
    serial = Store.create(tmp_path / "a")
    parallel = Store.create(tmp_path / "b")
    ingest(serial, root, workers=1)
    ingest(parallel, root, workers=2)
    query = "SELECT cell_id, path, sha256, width, height FROM cells ORDER BY cell_id"
    assert serial.sql(query).rows == parallel.sql(query).rows
    assert _skipped(serial) == _skipped(parallel)


def test_ingest__zip_extracted_into_store_sources(
    tmp_path: Path, tmp_store: Store, builders: dict[str, Callable[[Path], Path]]
) -> None:
    builders["lmu"](tmp_path / "src")
    archive = shutil.make_archive(
        str(tmp_path / "AML-Cytomorphology_LMU"), "zip", tmp_path / "src"
    )
    shutil.rmtree(tmp_path / "src")
    report = ingest(tmp_store, archive, workers=1)
    assert [(d.dataset, d.added) for d in report.datasets] == [("lmu", 6)]
    # annotations.dat came from inside the zip too: re-annotations are there.
    assert tmp_store.sql("SELECT count(reannotation1) FROM cells").rows == [(3,)]
    root = tmp_store.dataset_roots()["lmu"]
    assert (
        root
        == (
            tmp_store.root
            / "sources"
            / "AML-Cytomorphology_LMU"
            / "PKG - AML-Cytomorphology_LMU"
        ).resolve()
    )
    assert ingest(tmp_store, archive, workers=1).added == 0
