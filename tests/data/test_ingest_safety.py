"""Ingest never crashes on a file: odd names, non-regular files, huge headers, zips."""

from __future__ import annotations

import faulthandler
import importlib
import os
import socket
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cytostore.data import ingest
from cytostore.data.images import MAX_PIXELS, probe_image
from cytostore.errors import ImageDecodeError, InvalidArgumentError
from cytostore.store import CATALOG_FILE, Store

# ``cytostore.data.detect`` the attribute is the function; this is the module.
detect_mod = importlib.import_module("cytostore.data.detect")


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """A regression that opens a FIFO would block forever: fail loudly instead."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _cells(store: Store) -> list[tuple[int, str]]:
    return store.sql("SELECT cell_id, path FROM cells ORDER BY cell_id").rows


def _skipped(store: Store) -> dict[str, str]:
    return dict(store.sql("SELECT path, reason FROM skipped").rows)


def _write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
        fh.write(data)


def _can_make_non_utf8_names(tmp_path: Path) -> bool:
    try:
        _write_bytes_name(tmp_path, b"probe_\xff", b"")
    except OSError:
        return False
    os.remove(os.path.join(os.fsencode(tmp_path), b"probe_\xff"))
    return True


def test_ingest__names_not_utf8_are_skipped_with_printable_paths(
    tmp_store: Store,
    tmp_path: Path,
    make_tree: Callable[..., Path],
    write_img: Callable[..., Path],
) -> None:
    if not _can_make_non_utf8_names(tmp_path):
        pytest.skip("this file system refuses file names that are not UTF-8")
    root = make_tree("bm")
    chunk = root / "bm download" / "BM_cytomorphology_data" / "BLA" / "0001-1000"
    good = write_img(tmp_path / "good.jpg", seed=5).read_bytes()
    _write_bytes_name(chunk, b"BLA_\xff0009.jpg", good)  # Latin-1 byte in a name
    bad_dir = os.path.join(os.fsencode(chunk.parent.parent), b"NGS", b"caf\xe9")
    os.makedirs(bad_dir)
    _write_bytes_name(Path(os.fsdecode(bad_dir)), b"NGS_00777.jpg", good)
    _write_bytes_name(chunk, b"notes\xff.txt", b"not an image name: ignored")

    report = ingest(tmp_store, root, workers=1)

    (d,) = report.datasets
    assert (d.found, d.added, d.skipped) == (8, 6, 2)
    skipped = _skipped(tmp_store)
    assert set(skipped) == {
        "BLA/0001-1000/BLA_\\xff0009.jpg",
        "NGS/caf\\xe9/NGS_00777.jpg",
    }
    assert all("not valid UTF-8" in r and "rename" in r for r in skipped.values())
    before = _cells(tmp_store)
    assert len(before) == 6
    again = ingest(tmp_store, root, workers=1)
    assert again.added == 0 and _cells(tmp_store) == before


def test_ingest__dataset_folder_not_utf8_is_a_warning_not_a_crash(
    tmp_store: Store, tmp_path: Path, builders: dict[str, Callable[[Path], Path]]
) -> None:
    if not _can_make_non_utf8_names(tmp_path):
        pytest.skip("this file system refuses file names that are not UTF-8")
    root = tmp_path / "downloads"
    builders["lmu"](root / "lmu")
    builders["bm"](Path(os.fsdecode(os.path.join(os.fsencode(root), b"t\xe9l\xe9"))))
    report = ingest(tmp_store, root, workers=1)
    assert [d.dataset for d in report.datasets] == ["lmu"]
    assert any("not valid UTF-8" in w and "\\xe9" in w for w in report.warnings)
    with pytest.raises(InvalidArgumentError, match="not valid UTF-8"):
        ingest(tmp_store, Path(os.fsdecode(os.fsencode(root) + b"/t\xe9l\xe9")))


def test_ingest__fifo_socket_and_outward_symlinks_skipped_never_opened(
    tmp_store: Store, tmp_path: Path, write_img: Callable[..., Path]
) -> None:
    root = tmp_path / "lab"
    write_img(root / "k0" / "a.png", seed=1)
    write_img(root / "k1" / "b.png", seed=2)
    outside = write_img(tmp_path / "elsewhere" / "c.png", seed=3)
    os.mkfifo(root / "k0" / "x.png")  # opening it would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "k0" / "s.png"))
    (root / "k0" / "out.png").symlink_to(outside)
    (root / "k0" / "broken.png").symlink_to(root / "k0" / "nowhere.png")
    (root / "k1" / "in.png").symlink_to(root / "k0" / "a.png")  # inside: a cell
    (root / "k2").symlink_to(outside.parent, target_is_directory=True)
    try:
        report = ingest(tmp_store, root, workers=1)
    finally:
        sock.close()
    (d,) = report.datasets
    assert (d.found, d.added, d.skipped) == (8, 3, 5)
    assert sorted(p for _, p in _cells(tmp_store)) == [
        "k0/a.png",
        "k1/b.png",
        "k1/in.png",
    ]
    skipped = _skipped(tmp_store)
    assert "FIFO" in skipped["k0/x.png"] and "never opened" in skipped["k0/x.png"]
    assert "socket" in skipped["k0/s.png"]
    assert "outside the dataset root" in skipped["k0/out.png"]
    assert "broken symlink" in skipped["k0/broken.png"]
    assert "outside the dataset root" in skipped["k2/c.png"]


def test_probe_image__fifo_refused_from_stat(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.tiff")
    with pytest.raises(ImageDecodeError, match="FIFO.*not a regular file"):
        probe_image(tmp_path / "x.tiff")


def _tiff_header(width: int, height: int, payload: int = 64) -> bytes:
    """A classic little-endian 8-bit grey TIFF declaring ``width x height`` pixels.

    Only ``payload`` bytes of pixels follow: decoding it would fail as truncated.
    """
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, width * height),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        fmt = "<HHIHxx" if typ == 3 else "<HHII"
        ifd += struct.pack(fmt, tag, typ, count, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + b"\x80" * payload


def _png_declaring(width: int, height: int, write_img: Callable[..., Path]) -> bytes:
    import zlib

    small = write_img(Path(os.environ["HOME"]) / "small.png", size=4).read_bytes()
    ihdr = struct.pack(">II", width, height) + small[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return small[:16] + ihdr + crc + small[33:]


@pytest.mark.parametrize(
    ("name", "side"),
    [("tiff", 4097), ("tiff", 20_000), ("png", 4097), ("png", 100_000)],
)
def test_probe_image__over_pixel_limit_refused_from_header(
    tmp_path: Path, write_img: Callable[..., Path], name: str, side: int
) -> None:
    assert side * side > MAX_PIXELS
    path = tmp_path / f"big.{name}"
    data = _tiff_header(side, side) if name == "tiff" else None
    path.write_bytes(data or _png_declaring(side, side, write_img))
    # Decoding would say "truncated": the limit is checked before any decoding.
    with pytest.raises(ImageDecodeError, match="MP limit for one cell image"):
        probe_image(path)


def test_probe_image__at_pixel_limit_side_still_decoded(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "strip.png"
    Image.new("1", (4096, 16)).save(path)
    assert probe_image(path)[:2] == (4096, 16)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGBA", "TIFF"),
        ("LA", "PNG"),
        ("L", "JPEG"),
        ("1", "PNG"),
        ("I;16", "TIFF"),
        ("I;16", "PNG"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("CMYK", "JPEG"),
    ],
)
def test_ingest__odd_but_decodable_images_are_cells(
    tmp_store: Store,
    tmp_path: Path,
    write_img: Callable[..., Path],
    mode: str,
    fmt: str,
) -> None:
    ext = {"TIFF": "tif", "PNG": "png", "JPEG": "jpg", "GIF": "gif"}[fmt]
    write_img(tmp_path / "lab" / "k" / f"a.{ext}", mode, fmt=fmt)
    report = ingest(tmp_store, tmp_path / "lab", workers=1)
    assert (report.added, report.skipped) == (1, 0)
    assert tmp_store.sql("SELECT width, height FROM cells").rows == [(12, 12)]


# ----------------------------------------------------------------------- zips
def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
    return path


@pytest.mark.parametrize(
    "member", ["../evil/BLA_00001.jpg", "/tmp/BLA_00001.jpg", "a/../../x.jpg"]
)
def test_ingest__zip_member_outside_archive_refused(
    tmp_path: Path, write_img: Callable[..., Path], member: str
) -> None:
    img = write_img(tmp_path / "a.jpg").read_bytes()
    archive = _zip(tmp_path / "bm.zip", {"BLA/BLA_00002.jpg": img, member: img})
    store = tmp_path / "store"
    with pytest.raises(InvalidArgumentError, match="unsafe member"):
        ingest(store, archive, workers=1)
    assert not store.exists()
    assert not (tmp_path / "evil").exists()


def test_ingest__zip_bomb_and_oversized_zip_refused(
    tmp_path: Path, write_img: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    img = write_img(tmp_path / "a.jpg").read_bytes()
    monkeypatch.setattr(detect_mod, "ZIP_RATIO_MIN_BYTES", 1 << 20)
    bomb = _zip(
        tmp_path / "bomb.zip",
        {"BLA/BLA_00001.jpg": img, "BLA/BLA_00002.jpg": b"\0" * (4 << 20)},
    )
    store = tmp_path / "store"
    with pytest.raises(InvalidArgumentError, match="zip bomb"):
        ingest(store, bomb, workers=1)
    assert not store.exists()
    monkeypatch.setattr(detect_mod, "ZIP_MAX_BYTES", 1000)
    plain = _zip(tmp_path / "bm.zip", {"BLA/BLA_00001.jpg": img * 3})
    with pytest.raises(InvalidArgumentError, match="GiB limit"):
        ingest(store, plain, workers=1)
    assert not store.exists()


def test_ingest__zip_that_is_a_fifo_in_the_tree_is_not_opened(
    tmp_store: Store, make_tree: Callable[..., Path]
) -> None:
    root = make_tree("bm")
    os.mkfifo(root / "more.zip")
    assert ingest(tmp_store, root, workers=1).added == 6


# ------------------------------------------------- a failed ingest leaves nothing
@pytest.mark.parametrize("setup", ["missing", "empty", "flat", "workers"])
def test_ingest__failure_leaves_no_new_store(
    tmp_path: Path, write_img: Callable[..., Path], setup: str
) -> None:
    path = tmp_path / "in"
    if setup == "empty":
        (path / "sub").mkdir(parents=True)
    elif setup in ("flat", "workers"):
        write_img(path / "a.png")
    store = tmp_path / "store"
    with pytest.raises(InvalidArgumentError):
        ingest(store, path, workers=0 if setup == "workers" else 1)
    assert not store.exists()
    # A folder that existed (without a catalog) is kept, and left without one.
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError):
        ingest(store, path, workers=0 if setup == "workers" else 1)
    assert sorted(p.name for p in store.iterdir()) == ["notes.txt"]


def test_ingest__failure_on_existing_store_keeps_it(
    tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    store = tmp_path / "store"
    ingest(store, make_tree("bm"), workers=1)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        ingest(store, tmp_path / "nowhere", workers=1)
    assert (store / CATALOG_FILE).is_file()
    assert len(_cells(Store.open(store))) == 6
