"""Ingest: find the datasets under a path and catalogue every readable cell image.

Each new file is read once, hashed (sha256) and fully decoded, in parallel worker
processes; files already catalogued under the same (dataset, path) are not read
again, so re-ingesting adds nothing and keeps every id. Results are committed at
least :data:`COMMIT_EVERY` files and :data:`COMMIT_MIN_S` seconds apart, one
transaction each, in a fixed order (datasets in detection order, files sorted by
path): an ingest killed part-way and run again finishes the job with no duplicates
and the same ids an uninterrupted run gives.
Unreadable inputs (hidden files, empty, truncated or non-image files) become rows of
``skipped`` with the reason; the ingest goes on. Files are screened before anything
opens them (:mod:`cytostore.data.screen`): names that are not valid UTF-8, FIFOs,
sockets, devices, broken symlinks and symlinks leading out of the dataset root are
skipped unopened, and images declaring more than
:data:`~cytostore.data.images.MAX_PIXELS` pixels are skipped from their header.

A failed ingest (missing path, nothing found, a bad option) leaves no new store
behind: a store folder this call created is removed again if the call fails before
its first cell is committed. Crash points for the kill tests:
``ingest.after_prepare`` (datasets, patients and clutter committed, no cell yet),
``ingest.after_commit`` (after each committed chunk of cells), and
``ingest.before_final_commit``; ``ingest.after_extract`` (a zip extracted, not yet
renamed into place) is in :mod:`cytostore.data.detect`.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cytostore.data.detect import READERS, Found, detect
from cytostore.data.images import is_hidden, is_image_name, probe_image
from cytostore.data.listing import CellRecord, DatasetListing, ReadOptions
from cytostore.data.screen import NOT_UTF8, is_utf8, printable_path, screen_files
from cytostore.errors import ImageDecodeError, InvalidArgumentError
from cytostore.store import CATALOG_FILE, Store, fault_point

__all__ = ["ingest", "IngestReport", "DatasetReport", "COMMIT_EVERY", "COMMIT_MIN_S"]

logger = logging.getLogger(__name__)

#: Fewest files per catalog transaction (but for the last) ...
COMMIT_EVERY = 2000
#: ... and fewest seconds between two commits.
COMMIT_MIN_S = 2.0
#: Below this many new files, decode in this process (starting workers costs more).
MIN_PARALLEL = 256
#: Most files sent to a worker at once.
CHUNK = 256
_TCIA = ("lmu", "mll_helmholtz", "bm")


@dataclass
class DatasetReport:
    """What ingest did for one dataset.

    Attributes:
        dataset: Catalog name.
        layout: Reader name.
        root: Dataset root folder (cell paths are relative to it).
        found: Files considered (``added + existing + skipped``).
        added: New cells catalogued by this run.
        existing: Cells already catalogued (not read again).
        skipped: Files recorded in ``skipped`` by this run (with the reason).
        expected: Published cell count, or None if unknown.
        um_per_px: Pixel size recorded for new cells (µm), None if unknown.
    """

    dataset: str
    layout: str
    root: str
    found: int = 0
    added: int = 0
    existing: int = 0
    skipped: int = 0
    expected: int | None = None
    um_per_px: float | None = None


@dataclass
class IngestReport:
    """The result of :func:`ingest`.

    Attributes:
        store: The store folder.
        datasets: One report per dataset found.
        warnings: Count mismatches, missing metadata, other copies passed over.
        elapsed_s: Wall time of the ingest in seconds.
    """

    store: str
    datasets: list[DatasetReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def added(self) -> int:
        """New cells over all datasets."""
        return sum(d.added for d in self.datasets)

    @property
    def skipped(self) -> int:
        """Files skipped over all datasets."""
        return sum(d.skipped for d in self.datasets)

    @property
    def found(self) -> int:
        """Files considered over all datasets."""
        return sum(d.found for d in self.datasets)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-able data (with the totals)."""
        out = asdict(self)
        out.update(found=self.found, added=self.added, skipped=self.skipped)
        return out


_Probed = tuple[int, int, str | None, str | None]


def _probe(path: str) -> _Probed:
    """Worker: ``(width, height, sha256, None)`` or ``(0, 0, None, reason)``.

    One file never stops the ingest: besides the decoding errors Pillow is known to
    raise, anything a decoder plugin raises on a hostile file is recorded too.
    """
    try:
        w, h, digest = probe_image(path)
    except ImageDecodeError as exc:
        return 0, 0, None, str(exc)
    except Exception as exc:  # a decoder's bug on one odd file is data, not a crash
        logger.warning("unexpected error decoding %s", path, exc_info=True)
        return (
            0,
            0,
            None,
            (
                f"could not be decoded ({type(exc).__name__}: {exc}): re-export it as "
                "PNG/JPEG/TIFF"
            ),
        )
    return w, h, digest, None


def _probe_many(paths: Sequence[str]) -> list[_Probed]:
    """Worker: :func:`_probe` over one chunk of paths (one hand-off per chunk)."""
    return [_probe(p) for p in paths]


class _Prober:
    """Maps :func:`_probe` over paths, in order, in a lazily started process pool.

    Paths travel to the workers in chunks of up to :data:`CHUNK` (one pickle and
    one future per chunk, not per file). Workers are forked where the OS can
    (Linux, macOS): they only run Pillow and hashlib, start at once, and never re-run
    the caller's ``__main__`` (a spawned worker re-imports the calling script, which
    breaks unguarded scripts and ``python -`` pipes). Elsewhere they are spawned.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, paths: Sequence[str]) -> Iterator[_Probed]:
        if self.workers <= 1 or len(paths) < MIN_PARALLEL:
            return map(_probe, paths)
        if self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        # Enough chunks to keep every worker busy to the end, none over CHUNK.
        size = max(1, min(CHUNK, len(paths) // (self.workers * 4)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        return itertools.chain.from_iterable(self._pool.map(_probe_many, chunks))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _split_names(found: Found) -> tuple[Found, list[tuple[str, str]]]:
    """Take files whose path is not valid UTF-8 out of ``found``, before any reader.

    Returns:
        ``found`` without them, and ``(printable path, reason)`` of those named like
        images or clutter (other files are ignored as any non-image is).
    """
    if all(is_utf8(f) for f in found.files):
        return found, []
    good: list[str] = []
    rejected: list[tuple[str, str]] = []
    for f in found.files:
        if is_utf8(f):
            good.append(f)
            continue
        name = f.rpartition("/")[2]
        if is_image_name(name) or is_hidden(name):
            rejected.append((printable_path(f), NOT_UTF8))
    return replace(found, files=tuple(good)), rejected


def _read_listings(
    found: Sequence[Found], options: ReadOptions, warnings: list[str]
) -> list[DatasetListing]:
    """Run each dataset's reader; drop datasets whose root or name is not UTF-8."""
    listings: list[DatasetListing] = []
    for f in found:
        clean, rejected = _split_names(f)
        listing = READERS[f.layout].read(
            clean.anchor, clean.files, f.meta_dirs, options
        )
        listing.rejected.extend(rejected)
        root = str(listing.root.resolve())
        if not (is_utf8(root) and is_utf8(listing.dataset)):
            warnings.append(
                f"{printable_path(listing.dataset)}: the dataset folder "
                f"{printable_path(root)} is not valid UTF-8 and cannot be recorded: "
                "not ingested; rename it to UTF-8 and ingest again"
            )
            continue
        listings.append(listing)
    if found and not listings:
        raise InvalidArgumentError(
            "every dataset found sits in a folder whose name is not valid UTF-8: "
            "rename it (e.g. convmv -f latin1 -t utf8) and ingest again"
        )
    return listings


def _options(
    layout: str,
    pattern: str | None,
    patients: str | os.PathLike[str] | None,
    bag_column: str,
    dataset_name: str | None,
    um_per_px: float | None,
) -> tuple[str, ReadOptions]:
    folder_only = {
        "--pattern": pattern,
        "--patients": patients,
        "--dataset-name": dataset_name,
    }
    given = [k for k, v in folder_only.items() if v is not None]
    if given and layout in _TCIA:
        raise InvalidArgumentError(
            f"{', '.join(given)} only apply to --layout folder, not {layout}: drop "
            "them or use --layout folder"
        )
    if given and layout == "auto":
        layout = "folder"
    if um_per_px is not None and not um_per_px > 0:
        raise InvalidArgumentError(
            f"--um-per-px must be a positive pixel size in µm, got {um_per_px}"
        )
    return layout, ReadOptions(
        um_per_px=um_per_px,
        pattern=pattern,
        patients=None if patients is None else Path(patients),
        bag_column=bag_column,
        dataset_name=dataset_name,
    )


def _check_dataset(store: Store, listing: DatasetListing, warnings: list[str]) -> None:
    rows = store.sql(
        "SELECT layout, root FROM datasets WHERE dataset = ?", [listing.dataset]
    ).rows
    if not rows:
        return
    old_layout, old_root = rows[0]
    if old_layout != listing.layout:
        raise InvalidArgumentError(
            f"the store already holds a dataset {listing.dataset!r} of layout "
            f"{old_layout}: give this {listing.layout} data another name with "
            "--dataset-name"
        )
    if Path(old_root) != listing.root.resolve():
        warnings.append(
            f"{listing.dataset}: root moved from {old_root} to "
            f"{listing.root.resolve()}; catalogued paths are kept (they are "
            "relative to the root)"
        )


def _row(
    listing: DatasetListing, cell: CellRecord, w: int, h: int, sha: str
) -> dict[str, Any]:
    return {
        "dataset": listing.dataset,
        "path": cell.path,
        "label": cell.label,
        "patient_id": cell.patient_id,
        "um_per_px": listing.um_per_px,
        "width": w,
        "height": h,
        "sha256": sha,
        "cell_type": cell.cell_type,
        "reannotation1": cell.reannotation1,
        "reannotation2": cell.reannotation2,
    }


def _prepare(
    store: Store,
    listing: DatasetListing,
    report: DatasetReport,
    tick: Callable[[int], None],
) -> list[CellRecord]:
    """Register the dataset, its patients and clutter; return its new cells."""
    store.upsert_dataset(
        listing.dataset,
        listing.layout,
        listing.root,
        listing.um_per_px,
        listing.n_expected,
    )
    store.upsert_patients(listing.dataset, listing.patients)
    store.add_skipped(
        [(listing.dataset, p, "hidden or system file") for p in listing.hidden]
        + [(listing.dataset, p, reason) for p, reason in listing.rejected]
    )
    existing = store.existing_paths(listing.dataset)
    n_refused = len(listing.hidden) + len(listing.rejected)
    report.skipped += n_refused
    tick(n_refused)
    todo = [c for c in listing.cells if c.path not in existing]
    report.existing = len(listing.cells) - len(todo)
    tick(report.existing)
    return todo


def _ingest_all(
    store: Store,
    listings: Sequence[DatasetListing],
    reports: Sequence[DatasetReport],
    prober: _Prober,
    tick: Callable[[int], None],
) -> None:
    """Probe the new files of every dataset in one stream; commit them in order.

    One stream keeps the workers busy across dataset boundaries; a commit holds
    at least :data:`COMMIT_EVERY` files and follows the last by at least
    :data:`COMMIT_MIN_S` seconds (opening the catalog costs tens of milliseconds).
    """
    with store.transaction():
        todos = [
            _prepare(store, li, rep, tick)
            for li, rep in zip(listings, reports, strict=True)
        ]
    fault_point("ingest.after_prepare")
    cells: list[dict[str, Any]] = []
    bad: list[tuple[str, str, str]] = []
    added = [0] * len(listings)
    skipped = [0] * len(listings)
    # Nothing is opened before its stat says it is a regular file inside the root.
    jobs: list[tuple[int, CellRecord]] = []
    for i, todo in enumerate(todos):
        reasons = screen_files(listings[i].root, [c.path for c in todo])
        for cell, reason in zip(todo, reasons, strict=True):
            if reason is None:
                jobs.append((i, cell))
            else:
                bad.append((listings[i].dataset, cell.path, reason))
                skipped[i] += 1
    roots = [str(li.root) for li in listings]
    paths = [os.path.join(roots[i], cell.path) for i, cell in jobs]
    last = time.monotonic()

    def flush() -> None:
        nonlocal last
        with store.transaction():
            store.add_cells(cells)
            store.add_skipped(bad)
        fault_point("ingest.after_commit")
        for i, rep in enumerate(reports):
            rep.added += added[i]
            rep.skipped += skipped[i]
            added[i] = skipped[i] = 0
        tick(len(cells) + len(bad))
        cells.clear()
        bad.clear()
        last = time.monotonic()

    for (i, cell), (w, h, sha, reason) in zip(jobs, prober.map(paths), strict=True):
        li = listings[i]
        if reason is None and sha is not None:
            cells.append(_row(li, cell, w, h, sha))
            added[i] += 1
        else:
            bad.append((li.dataset, cell.path, reason or "unreadable"))
            skipped[i] += 1
        if (
            len(cells) + len(bad) >= COMMIT_EVERY
            and time.monotonic() - last >= COMMIT_MIN_S
        ):
            flush()
    fault_point("ingest.before_final_commit")
    flush()


def _count_warnings(
    store: Store, listing: DatasetListing, rep: DatasetReport
) -> list[str]:
    out: list[str] = []
    n = rep.added + rep.existing
    if listing.expected_range is not None:
        lo, hi = listing.expected_range
        if not lo <= n <= hi:
            published = f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"
            out.append(
                f"{listing.dataset}: {n:,} cells catalogued, {published} published "
                "(a partial or modified download?)"
            )
    dup = store.sql(
        "SELECT count(*) FROM (SELECT sha256 FROM cells WHERE dataset = ? "
        "GROUP BY sha256 HAVING count(*) > 1)",
        [listing.dataset],
    ).rows[0][0]
    if dup:
        out.append(
            f"{listing.dataset}: {dup} distinct images occur more than once "
            "(identical bytes); "
            "find them with: SELECT sha256, list(path) FROM cells GROUP BY sha256 "
            "HAVING count(*) > 1"
        )
    return out


def _new_store_parts(store: Store | str | os.PathLike[str]) -> list[Path]:
    """What creating the store would add: its folder if new, else catalog files."""
    if isinstance(store, Store):
        return []
    root = Path(store)
    if not root.exists():
        return [root]
    if (root / CATALOG_FILE).exists():
        return []
    parts = [CATALOG_FILE, f"{CATALOG_FILE}.wal", "sources"]
    return [root / p for p in parts if not (root / p).exists()]


def _remove(paths: Sequence[Path]) -> None:
    """Remove what a failed first ingest created (``_new_store_parts``)."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def ingest(
    store: Store | str | os.PathLike[str],
    path: str | os.PathLike[str],
    layout: str = "auto",
    *,
    pattern: str | None = None,
    patients: str | os.PathLike[str] | None = None,
    bag_column: str = "bag_label",
    dataset_name: str | None = None,
    um_per_px: float | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Find the datasets under ``path`` and catalogue their cells in ``store``.

    A store folder this call creates is removed again if the call fails before
    any cell is committed, so a failed first ingest leaves no store behind.

    Args:
        store: A :class:`~cytostore.store.Store` or a folder (created if missing).
        path: Folder holding one or more datasets at any depth, or a ``.zip``
            (extracted once to ``STORE/sources/<zip name>/``).
        layout: ``auto`` (detect ``lmu``, ``mll_helmholtz``, ``bm``, else treat the
            path as a ``folder`` dataset), or one of those names.
        pattern: ``folder`` path template, e.g. ``{patient_id}/**/{label}/*.jpg``.
        patients: ``folder`` patient table (CSV/XLSX) keyed by ``patient_id``.
        bag_column: Column of ``patients`` holding the bag label.
        dataset_name: ``folder`` dataset name (default: the folder's name).
        um_per_px: Pixel size in µm for new cells, overriding the layout default
            (lmu 0.07072, mll_helmholtz 0.1725, bm 0.086, folder unknown).
        workers: Decoding processes (default ``os.cpu_count()``; 1 = in-process).
        progress: Called with ``(done, total)`` files.

    Returns:
        Per-dataset counts (found, added, existing, skipped, expected) and warnings.

    Raises:
        InvalidArgumentError: If ``path`` does not exist, is empty, or an option is
            invalid for the layout.
        LayoutNotFoundError: If no dataset of the requested layout is found.
        StoreBusyError: If another process holds the store.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> data = Path(tempfile.mkdtemp()) / "my_lab"
        >>> for label in ("lymphocyte", "ig"):
        ...     (data / label).mkdir(parents=True)
        ...     Image.new("RGB", (8, 8)).save(data / label / "a.png")
        >>> report = ingest(tempfile.mkdtemp() + "/store", data)
        >>> [(d.dataset, d.layout, d.added) for d in report.datasets]
        [('my_lab', 'folder', 2)]
    """
    start = time.perf_counter()
    if workers is not None and workers < 1:
        raise InvalidArgumentError(f"--workers must be at least 1, got {workers}")
    layout, options = _options(
        layout, pattern, patients, bag_column, dataset_name, um_per_px
    )
    created = _new_store_parts(store)
    try:
        st = store if isinstance(store, Store) else Store.create(store)
        found, warnings = detect(
            path, layout, sources_dir=st.root / "sources", exclude=[st.root]
        )
        report = IngestReport(store=str(st.root), warnings=list(warnings))
        listings = _read_listings(found, options, report.warnings)
        with st.connect(read_only=True):
            for listing in listings:
                _check_dataset(st, listing, report.warnings)
                report.warnings.extend(listing.warnings)
    except BaseException:
        _remove(created)
        raise
    total = sum(len(li.cells) + len(li.hidden) + len(li.rejected) for li in listings)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, total)

    report.datasets = [
        DatasetReport(
            dataset=li.dataset,
            layout=li.layout,
            root=str(li.root.resolve()),
            found=len(li.cells) + len(li.hidden) + len(li.rejected),
            expected=li.n_expected,
            um_per_px=li.um_per_px,
        )
        for li in listings
    ]
    prober = _Prober(workers or os.cpu_count() or 1)
    try:
        _ingest_all(st, listings, report.datasets, prober, tick)
    finally:
        prober.close()
    with st.connect(read_only=True):
        for listing, rep in zip(listings, report.datasets, strict=True):
            report.warnings.extend(_count_warnings(st, listing, rep))
            logger.info(
                "%s: %d added, %d existing, %d skipped",
                rep.dataset,
                rep.added,
                rep.existing,
                rep.skipped,
            )
    report.elapsed_s = time.perf_counter() - start
    return report
