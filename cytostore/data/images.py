"""Decode any cell image to 8-bit RGB, and probe files for ingest.

Every decodable image becomes a uint8 ``(H, W, 3)`` array:

- RGBA / LA / palette with transparency: alpha is dropped when fully opaque (the
  usual case for LMU's RGBA TIFFs), otherwise composited on white;
- grayscale (``L``, ``1``) and other colour spaces (``CMYK``, ``YCbCr``, ``LAB``,
  ``HSV``, palette): converted with Pillow;
- 16-bit grayscale (``I;16*``): scaled over the full 16-bit range (value / 257, so an
  8-bit image stored as 16-bit round-trips exactly);
- 32-bit integer (``I``) and float (``F``): min-max scaled to 0..255.

Images are fully decoded (``Image.load``), so truncated or corrupt files raise
:class:`~cytostore.errors.ImageDecodeError` rather than giving half-grey pixels.

Only regular files are opened (a FIFO, socket or device is refused after a ``stat``,
before any ``open``), and an image whose header declares more than
:data:`MAX_PIXELS` pixels is refused from its header, without decoding: one cell
crop is far below a megapixel, so such a file is a slide, a scan or a
decompression bomb.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, TiffImagePlugin, UnidentifiedImageError

from cytostore.data.screen import file_kind
from cytostore.errors import ImageDecodeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "load_rgb",
    "load_rgb_image",
    "to_rgb",
    "image_size",
    "probe_image",
    "is_hidden",
    "is_image_name",
]

logger = logging.getLogger(__name__)

#: File name suffixes (lower case) treated as images.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2"}
)
#: Most pixels (width x height) an image may declare: larger ones are refused from
#: their header, never decoded (4096 x 4096 = 16.8 MP; a cell crop is < 1 MP).
MAX_PIXELS = 4096 * 4096
_SMALL_FILE_BYTES = 256 * 1024
#: Files up to this size are read into memory once (hash + decode the same bytes).
_READ_WHOLE_BYTES = 64 * 1024 * 1024
_HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def is_hidden(name: str) -> bool:
    """Return True for OS clutter: dot files (``.DS_Store``, ``._x.tif``), Thumbs.db.

    Examples:
        >>> is_hidden("._BAS_0001.tiff"), is_hidden("Thumbs.db"), is_hidden("a.png")
        (True, True, False)
    """
    return name.startswith(".") or name.lower() in _HIDDEN_NAMES


def is_image_name(name: str) -> bool:
    """Return True if ``name`` ends in an image suffix (case-insensitive).

    Examples:
        >>> is_image_name("image_0.TIF"), is_image_name("notes.txt")
        (True, False)
    """
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _ensure_strict_loading() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; cytostore sets it to False "
            "so that truncated images are reported instead of padded"
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _scale_to_uint8(arr: npt.NDArray[np.generic], mode: str) -> npt.NDArray[np.uint8]:
    if mode.startswith("I;16"):
        scaled = np.rint(arr.astype(np.float64) / 257.0)
        return np.clip(scaled, 0, 255).astype(np.uint8)
    data = arr.astype(np.float64)
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.clip(np.rint((data - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> npt.NDArray[np.uint8]:
    """Return a loaded Pillow image as uint8 ``(H, W, 3)`` RGB (see module docs).

    Examples:
        >>> from PIL import Image
        >>> to_rgb(Image.new("L", (4, 2), 7)).shape
        (2, 4, 3)
        >>> to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0)))[0, 0].tolist()
        [255, 255, 255]
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        alpha = rgba[:, :, 3:4]
        if alpha.min() == 255:
            return rgba[:, :, :3].copy()
        a = alpha.astype(np.float32) / 255.0
        out = rgba[:, :, :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{name} declares {width} x {height} px ({width * height / 1e6:.1f} MP), "
            f"above the {MAX_PIXELS / 1e6:.1f} MP limit for one cell image: not "
            "decoded; crop the single cells out of it first"
        )


def _open_loaded(source: str | Path | io.BytesIO, name: str) -> Image.Image:
    """Open, check the declared size, then fully decode (or raise ImageDecodeError)."""
    _ensure_strict_loading()
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"{name} declares too many pixels ({exc}), above the "
            f"{MAX_PIXELS / 1e6:.1f} MP limit for one cell image: not decoded; crop "
            "the single cells out of it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name} is not an image Pillow can read: remove it, or convert it to "
            "PNG/JPEG/TIFF"
        ) from None
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(
            f"{name} is truncated or corrupt ({exc}): re-download or re-export it"
        ) from None
    try:
        _check_pixels(int(img.width), int(img.height), name)
        img.load()
    except ImageDecodeError:
        img.close()
        raise
    except _DECODE_ERRORS as exc:
        img.close()
        raise ImageDecodeError(
            f"{name} is truncated or corrupt ({exc}): re-download or re-export it"
        ) from None
    return img


def _open_regular(p: Path) -> io.BufferedReader:
    """Open ``p`` for reading only if it is a regular file (checked before opening).

    A FIFO, socket or device is refused from its ``stat`` and never opened (opening
    a FIFO blocks until a writer comes). ``O_NONBLOCK`` and a second check on the
    open descriptor cover a file swapped in between.

    Raises:
        ImageDecodeError: If ``p`` is missing, not a regular file or unreadable.
    """
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError(
                f"{p.name} is {file_kind(st.st_mode)}, not a regular file: never "
                "opened; only regular image files are read"
            )
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(p, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageDecodeError(
            f"{p} does not exist: check the path, or re-ingest if the files moved"
        ) from None
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {p} ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageDecodeError(
            f"{p.name} is {file_kind(mode)}, not a regular file: never read"
        )
    return os.fdopen(fd, "rb")


def _read_tiff_bytes(p: Path) -> bytes | None:
    """Check ``p`` is a non-empty regular file; return its bytes if it is a TIFF."""
    with _open_regular(p) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise ImageDecodeError(f"{p} is an empty file (0 bytes): re-export it")
            head = fh.read(4)
            tiff = head[:2] in (b"II", b"MM") and size <= _READ_WHOLE_BYTES
            return head + fh.read() if tiff else None
        except ImageDecodeError:
            raise
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {p} ({exc.strerror or exc})") from None


def load_rgb(path: str | Path) -> npt.NDArray[np.uint8]:
    """Read an image file fully and return it as uint8 RGB.

    Args:
        path: Any image Pillow reads (TIFF, JPEG, PNG, BMP, ...).

    Returns:
        uint8 array of shape ``(H, W, 3)``.

    Raises:
        ImageDecodeError: If the file is missing, empty, not an image, truncated or
            corrupt.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/x.png"
        >>> Image.new("LA", (3, 5), (9, 255)).save(p)
        >>> load_rgb(p).shape, load_rgb(p).dtype.name
        ((5, 3, 3), 'uint8')
    """
    return np.array(load_rgb_image(path), dtype=np.uint8)


def load_rgb_image(path: str | Path) -> Image.Image:
    """Read an image file fully and return it as an RGB Pillow image.

    The same pixels as :func:`load_rgb`, without the copies into and out of numpy
    where the file is RGB already (JPEG, RGB or opaque RGBA uncompressed TIFF):
    the preprocessing resamples Pillow images directly.

    Raises:
        ImageDecodeError: As :func:`load_rgb`.
    """
    p = Path(path)
    data = _read_tiff_bytes(p)
    if data is not None:
        # Plain uncompressed TIFFs (LMU's, MLL's): the pixels are the bytes.
        img = _raw_tiff_image(data)
        if img is not None:
            return img
    with _open_loaded(p, str(p)) as img:
        return img if img.mode == "RGB" else Image.fromarray(to_rgb(img))


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` in pixels from the header, without decoding pixels.

    Raises:
        ImageDecodeError: If the file is not an image.
    """
    try:
        with _open_regular(Path(path)) as fh, Image.open(fh) as img:
            return int(img.width), int(img.height)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ImageDecodeError(f"{path} is not a readable image ({exc})") from None


# ------------------------------------------------------------ uncompressed TIFF
# The (photometric, bits per sample, extra samples) combinations of 8-bit,
# uncompressed, chunky TIFFs that Pillow decodes with its plain "raw" decoder.
_RAW_TIFF_KINDS = frozenset(
    {
        (1, (8,), ()),
        (1, (8, 8), (0,)),
        (1, (8, 8), (1,)),
        (1, (8, 8), (2,)),
        (2, (8, 8, 8), ()),
        (2, (8, 8, 8, 8), ()),
        (2, (8, 8, 8, 8), (0,)),
        (2, (8, 8, 8, 8), (1,)),
        (2, (8, 8, 8, 8), (2,)),
    }
)
_TIFF_INT_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4)}
# Tags that take the file off the fast path whatever their value: tiles, JPEG
# tables, a colour map, YCbCr, and Windows Media Photo (which Pillow refuses).
_TIFF_OFF_PATH_TAGS = frozenset({320, 322, 323, 324, 325, 347, 530, 0xBC01})


def _tiff_ifd0(data: bytes) -> dict[int, tuple[int, ...]] | None:
    """Parse the integer tags of a classic TIFF's first IFD, or None if unsure."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return None
    magic, offset = struct.unpack_from(order + "HI", data, 2)
    if magic != 42 or offset < 8 or offset + 2 > len(data):
        return None
    (n,) = struct.unpack_from(order + "H", data, offset)
    if n == 0 or offset + 2 + 12 * n > len(data):
        return None
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(n):
        tag, typ, count, value = struct.unpack_from(
            order + "HHI4s", data, offset + 2 + 12 * i
        )
        if tag in _TIFF_OFF_PATH_TAGS:
            return None
        if typ not in _TIFF_INT_TYPES:
            continue  # rationals, strings: resolution, software, ... (not needed)
        fmt, size = _TIFF_INT_TYPES[typ]
        if count == 0 or count > 1 << 20:
            return None
        if count * size <= 4:
            raw = value[: count * size]
        else:
            (where,) = struct.unpack(order + "I", value)
            if where + count * size > len(data):
                return None
            raw = data[where : where + count * size]
        tags[tag] = struct.unpack(f"{order}{count}{fmt}", raw)
    return tags


@dataclass(frozen=True)
class _RawTiff:
    """Where the pixels of a plain uncompressed 8-bit TIFF lie in its bytes."""

    width: int
    height: int
    samples: int  # per pixel: 1 grey, 2 grey + extra, 3 RGB, 4 RGB + extra
    extra: tuple[int, ...]  # ExtraSamples: 0 unspecified, 1 premultiplied, 2 alpha
    rows_per_strip: int
    offsets: tuple[int, ...]


def _raw_tiff(data: bytes) -> _RawTiff | None:
    """Lay out a complete uncompressed 8-bit TIFF, or None if not sure.

    Decoding an uncompressed image is copying its bytes, so checking that every
    strip's rows lie inside the file is the check Pillow's raw decoder makes (a
    short file raises "image file is truncated"), at a fraction of Pillow's cost
    for parsing the header in Python. Only the plain cases are accepted: one
    classic (not Big-) TIFF IFD, compression 1, chunky planes, fill order 1,
    unsigned samples, 8 bits, grey or RGB with at most one extra sample, strips,
    no rotation that swaps the sides. Anything else returns None and goes to
    Pillow, so this never rejects a file Pillow reads.
    """
    tags = _tiff_ifd0(data)
    if tags is None:
        return None

    def one(tag: int, default: int | None = None) -> int | None:
        v = tags.get(tag)
        return default if v is None else (v[0] if len(v) == 1 else None)

    width, height = one(256), one(257)
    spp = one(277, 1)
    if not width or not height or spp is None:
        return None
    if (
        one(259, 1) != 1  # compression
        or one(284, 1) != 1  # planar configuration
        or one(266, 1) != 1  # fill order
        or one(274, 1) not in (1, 2, 3, 4)  # orientation keeping width x height
        or set(tags.get(339, (1,))) != {1}  # sample format: unsigned integer
    ):
        return None
    bps = tags.get(258, (1,))
    if len(bps) == 1 and spp > 1:
        bps = bps * spp
    extra = tags.get(338, ())
    kind = (one(262), bps, extra)
    if len(bps) != spp or kind not in _RAW_TIFF_KINDS:
        return None
    prefix = data[:2]
    if (prefix, kind[0], (1,), 1, bps, extra) not in TiffImagePlugin.OPEN_INFO:
        return None
    if width * height > min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS):
        return None  # refused from the header on the Pillow path, with the reason
    rows = one(278, 2**32 - 1) or 0
    offsets = tags.get(273)
    if rows <= 0 or offsets is None:
        return None
    rows = min(rows, height)
    if len(offsets) != -(-height // rows):
        return None
    stride = width * spp
    for i, start in enumerate(offsets):
        n_rows = min(rows, height - i * rows)
        if start <= 0 or start + n_rows * stride > len(data):
            return None  # truncated (or odd): Pillow says which
    return _RawTiff(width, height, spp, extra, rows, offsets)


def _raw_tiff_size(data: bytes) -> tuple[int, int] | None:
    """Return ``(width, height)`` of a complete plain uncompressed TIFF, else None."""
    raw = _raw_tiff(data)
    return None if raw is None else (raw.width, raw.height)


def _raw_tiff_rgb(data: bytes) -> npt.NDArray[np.uint8] | None:
    """Return a plain uncompressed TIFF as uint8 RGB (as :func:`to_rgb` would).

    None (Pillow decodes instead) if the layout is not plain or an alpha channel
    is not fully opaque (compositing is left to :func:`to_rgb`).
    """
    raw = _raw_tiff(data)
    if raw is None:
        return None
    stride = raw.width * raw.samples
    if len(raw.offsets) == 1:
        flat = np.frombuffer(data, np.uint8, raw.height * stride, raw.offsets[0])
    else:
        parts = []
        for i, start in enumerate(raw.offsets):
            n = min(raw.rows_per_strip, raw.height - i * raw.rows_per_strip)
            parts.append(np.frombuffer(data, np.uint8, n * stride, start))
        flat = np.concatenate(parts)
    pix = flat.reshape(raw.height, raw.width, raw.samples)
    colour = 3 if raw.samples >= 3 else 1
    if raw.samples > colour and raw.extra != (0,):
        if pix[:, :, colour].min() != 255:  # see-through: composite with Pillow
            return None
    if colour == 1:
        return np.repeat(pix[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pix[:, :, :3])


def _raw_tiff_image(data: bytes) -> Image.Image | None:
    """Return a plain uncompressed RGB(A) TIFF as an RGB Pillow image, else None.

    Opaque or unused extra samples are dropped by Pillow's unpacker (``RGBX``);
    grey images go through :func:`_raw_tiff_rgb`; see-through alpha returns None.
    """
    raw = _raw_tiff(data)
    if raw is None:
        return None
    if raw.samples < 3:
        rgb = _raw_tiff_rgb(data)
        return None if rgb is None else Image.fromarray(rgb)
    stride = raw.width * raw.samples
    first, n = raw.offsets[0], raw.height * stride
    contiguous = all(
        o == first + i * raw.rows_per_strip * stride for i, o in enumerate(raw.offsets)
    )
    if contiguous:
        buf = np.frombuffer(data, np.uint8, n, first)
    else:
        rows = raw.rows_per_strip
        buf = np.concatenate(
            [
                np.frombuffer(
                    data, np.uint8, min(rows, raw.height - i * rows) * stride, o
                )
                for i, o in enumerate(raw.offsets)
            ]
        )
    if raw.samples == 4 and raw.extra != (0,):
        alpha = buf[3::4]
        if alpha.min() != 255:  # see-through: composite with Pillow
            return None
    rawmode = "RGB" if raw.samples == 3 else "RGBX"
    return Image.frombytes("RGB", (raw.width, raw.height), buf, "raw", rawmode, 0, 1)


def probe_image(path: str | Path) -> tuple[int, int, str]:
    """Hash a file's bytes (sha256) and fully decode it, as ingest does.

    Uncompressed 8-bit TIFFs (LMU's and MLL's) are checked by a small strip-bounds
    check on the bytes already read for the hash (see :func:`_raw_tiff_size`);
    every other image is decoded by Pillow.

    Args:
        path: The image file.

    Returns:
        ``(width, height, sha256_hex)`` of the original image.

    Raises:
        ImageDecodeError: With a one-line reason if the file is empty, not an image,
            truncated or corrupt.
    """
    p = Path(path)
    source: Path | io.BytesIO = p
    with _open_regular(p) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise ImageDecodeError("empty file (0 bytes)")
            if size <= _READ_WHOLE_BYTES:
                # Read once; hash and decode the same bytes.
                data = fh.read()
                digest = hashlib.sha256(data).hexdigest()
                fast = _raw_tiff_size(data)
                if fast is not None:
                    return fast[0], fast[1], digest
                if size <= _SMALL_FILE_BYTES:
                    source = io.BytesIO(data)
                # Larger files: Pillow opens the path, which it memory-maps for
                # uncompressed images (decoding those from bytes copies line by line).
            else:
                # Huge files: refuse an oversized header before reading it all, then
                # hash through a read-only memory map (no copy).
                _check_header(fh, p.name)
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    digest = hashlib.sha256(mm).hexdigest()
        except ImageDecodeError:
            raise
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {p} ({exc.strerror or exc})") from None
    with _open_loaded(source, p.name) as img:
        return int(img.width), int(img.height), digest


def _check_header(fh: io.BufferedReader, name: str) -> None:
    """Refuse a file whose image header declares over :data:`MAX_PIXELS` pixels."""
    try:
        with Image.open(fh) as img:
            width, height = int(img.width), int(img.height)
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        return  # not an image, or corrupt: decoding below says which
    finally:
        fh.seek(0)
    _check_pixels(width, height, name)
