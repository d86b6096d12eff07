"""2-D maps of the embeddings (UMAP or PCA), a scatter PNG and the mixing score.

:func:`map_cells` projects the vectors of the cells a filter selects onto two
coordinates, stores them as a ``map`` run (table ``maps``: ``run, cell_id, x, y``),
draws them coloured by any ``cell_meta`` column, and scores the neighbourhoods with
the store's mixing score (:func:`cytostore.store.store_mixing_score`): whether the
backbone groups cells by dataset (and patient) or by cell type. The score is
computed on the embedding itself, not on the 2-D picture (UMAP distorts distances).

The function is named ``map_cells`` rather than ``map`` so as not to shadow the
builtin in modules that import it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import InvalidArgumentError, UnknownColumnError
from cytostore.store import (
    MIXING_K,
    Store,
    check_run_name,
    safe_identifier,
    store_mixing_score,
    write_map,
)

__all__ = ["MAP_METHODS", "MapResult", "map_cells", "project", "draw_map"]

logger = logging.getLogger(__name__)

#: The projections :func:`map_cells` offers.
MAP_METHODS = ("umap", "pca")
#: Most categories a legend lists; the rarer ones are drawn grey as "other".
MAX_LEGEND = 20
_MIN_CELLS = 4
#: Above this many cells, a UMAP map warns that it will take minutes.
_LARGE_UMAP = 50_000
#: umap-learn runs 500 epochs up to this many rows, 200 above.
_UMAP_FEW_ROWS = 10_000
#: One frame of the epoch bar (``_epoch_tqdm_kwds``): done/total.
_FRAME = re.compile(r"(\d+)/(\d+)")


@dataclass
class MapResult:
    """A map run: the coordinates, where the picture went, and the mixing score.

    Attributes:
        run: The run's name (rows of ``maps`` and ``curation_runs``).
        model: The model whose vectors were mapped.
        method: ``umap`` or ``pca``.
        ids: int64 ``(n,)`` cell ids of the points.
        xy: float32 ``(n, 2)`` coordinates.
        png: Path of the scatter PNG (``None``: not drawn).
        color_by: The ``cell_meta`` column colouring the points (``None``: dataset).
        mixing: The mixing report (see :func:`cytostore.store.store_mixing_score`).
        elapsed_s: Seconds the projection took.
        params: The settings recorded with the run.
    """

    run: str
    model: str
    method: str
    ids: npt.NDArray[np.int64]
    xy: npt.NDArray[np.float32]
    png: Path | None
    color_by: str | None
    mixing: dict[str, Any]
    elapsed_s: float
    params: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """Return a flat summary for the CLI (the per-group rows stay in ``mixing``).

        Returns:
            ``run``, ``model``, ``method``, ``cells``, ``png``, ``color_by``, ``k``,
            ``dataset_mixing``, ``patient_mixing``, ``label_column``,
            ``label_grouping``, ``elapsed_s`` and ``per_dataset`` (one
            ``dataset=score`` text per dataset).
        """
        m = self.mixing
        return {
            "run": self.run,
            "model": self.model,
            "method": self.method,
            "cells": int(self.ids.size),
            "png": None if self.png is None else str(self.png),
            "color_by": self.color_by,
            "k": m.get("k"),
            "dataset_mixing": m.get("dataset"),
            "patient_mixing": m.get("patient"),
            "label_column": m.get("label_column"),
            "label_grouping": m.get("label"),
            "per_dataset": ", ".join(
                f"{r['dataset']}={_fmt(r['score'])}" for r in m.get("per_dataset", [])
            ),
            "elapsed_s": round(self.elapsed_s, 2),
        }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def project(
    X: npt.ArrayLike,
    method: str = "umap",
    *,
    metric: str = "cosine",
    seed: int = 0,
    n_neighbors: int = 15,
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Return 2-D coordinates of the rows of ``X``.

    Args:
        X: float (n, dim) vectors, n >= 4.
        method: ``umap`` (umap-learn, ``random_state=seed``, one thread, so the
            same seed gives the same map) or ``pca`` (scikit-learn, the first two
            principal components).
        metric: ``cosine`` (rows are scaled to unit length first) or ``l2``.
        seed: Seed of the projection.
        n_neighbors: UMAP's neighbourhood size (capped at n - 1).
        progress: UMAP only: called as ``progress(done, total)`` over its
            optimisation epochs (umap's default count: 500, or 200 above 10,000
            rows), first with ``done=0`` before the neighbour search, which on a
            process's first UMAP also compiles umap's numba code.

    Returns:
        float32 (n, 2) coordinates.

    Raises:
        InvalidArgumentError: If ``method`` is unknown or there are fewer than 4 rows.

    Examples:
        >>> x = np.random.default_rng(0).normal(size=(20, 5))
        >>> project(x, "pca").shape
        (20, 2)
    """
    if method not in MAP_METHODS:
        raise InvalidArgumentError(
            f"unknown map method {method!r}: choose one of {', '.join(MAP_METHODS)}"
        )
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < _MIN_CELLS:
        raise InvalidArgumentError(
            f"a map needs at least {_MIN_CELLS} cells, got {x.shape[0]}: widen --where"
        )
    if metric == "cosine":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    else:
        import warnings

        import umap

        # umap's own default, fixed here so the total is known before the fit
        n_epochs = 500 if x.shape[0] <= _UMAP_FEW_ROWS else 200
        tqdm_kwds: dict[str, Any] = {"disable": True}
        if progress is not None:
            progress(0, n_epochs)
            tqdm_kwds = _epoch_tqdm_kwds(progress)
        with warnings.catch_warnings():
            # umap warns that a random_state forces one thread: that is the point.
            warnings.simplefilter("ignore", UserWarning)
            reducer = umap.UMAP(
                n_neighbors=min(n_neighbors, x.shape[0] - 1),
                n_components=2,
                metric="euclidean",
                n_epochs=n_epochs,
                random_state=seed,
                n_jobs=1,
                init="spectral" if x.shape[0] > n_neighbors + 1 else "random",
                verbose=False,
                tqdm_kwds=tqdm_kwds,
            )
            xy = reducer.fit_transform(x)
    return np.ascontiguousarray(np.asarray(xy, dtype=np.float32))


class _EpochSink:
    """A file for umap's tqdm bar that passes its ``n/total`` frames to a callback.

    umap-learn reports its epochs only through a tqdm bar (``tqdm_kwds``), with no
    callback: the bar is drawn in the fixed format ``{n}/{total}`` into this object,
    which reads the two numbers back instead of printing them.
    """

    def __init__(self, progress: Callable[[int, int], None]) -> None:
        self._progress = progress
        self._done = 0  # project() reports 0 itself, before the neighbour search

    def write(self, text: str) -> int:
        for match in _FRAME.finditer(text):
            done, total = int(match[1]), int(match[2])
            if done > self._done:  # tqdm redraws the last frame on close
                self._done = done
                self._progress(done, total)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def _epoch_tqdm_kwds(progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Return umap's ``tqdm_kwds`` that report every epoch to ``progress``."""
    return {
        "disable": False,
        "file": _EpochSink(progress),
        "bar_format": "{n}/{total}",
        "mininterval": 0,
        "miniters": 1,
        "leave": True,
    }


def _is_numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool)
        for v in present
    )


def _palette(n: int) -> list[Any]:
    """Return ``n`` distinct colours, none of them grey (grey means none/other)."""
    import matplotlib

    if n <= 9:
        ten = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
        return [c for i, c in enumerate(ten) if i != 7][:n]
    twenty = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined]
    extra = matplotlib.colormaps["tab20b"].colors  # type: ignore[attr-defined]
    colours = [c for i, c in enumerate(twenty) if i not in (14, 15)]
    return (colours + list(extra[::4]))[:n]


def _dot(colour: Any, label: str) -> Any:
    """A legend entry: a round marker of ``colour``."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="", marker="o", ms=6, color=colour, label=label)


def draw_map(
    xy: npt.ArrayLike,
    values: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    color_by: str = "dataset",
) -> Path:
    """Draw the points coloured by ``values`` into a PNG (written atomically).

    Categories (text, or numbers with at most :data:`MAX_LEGEND` distinct values)
    get one colour each and a legend with their counts, the rarest beyond
    :data:`MAX_LEGEND` drawn grey as "other"; other numbers a colour scale. Cells
    without a value are drawn light grey underneath as "(none)".

    Args:
        xy: float (n, 2) coordinates.
        values: n values of the colouring column (``None``: no value).
        path: Output PNG.
        title: Figure title.
        color_by: The column's name (legend title).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
    vals = [
        None if (v is None or (isinstance(v, float) and math.isnan(v))) else v
        for v in values
    ]
    n = pts.shape[0]
    size = float(np.clip(12000.0 / max(n, 1), 1.0, 24.0))
    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=110)
    none = np.asarray([v is None for v in vals], dtype=bool)
    if none.any():  # cells without a value: grey, underneath
        ax.scatter(pts[none, 0], pts[none, 1], s=size, c="#d0d0d0", lw=0)
    have = np.flatnonzero(~none)
    # One scatter in a seeded random order, so no category hides under another.
    have = have[np.random.default_rng(0).permutation(have.size)]
    counts = Counter(v for v in vals if v is not None)
    if _is_numeric(vals) and len(counts) > MAX_LEGEND:
        sc = ax.scatter(
            pts[have, 0],
            pts[have, 1],
            s=size,
            c=np.asarray([vals[i] for i in have], dtype=np.float64),
            cmap="viridis",
            lw=0,
        )
        fig.colorbar(sc, ax=ax, label=color_by)
        if none.any():
            ax.legend(
                handles=[_dot("#d0d0d0", f"(none) {none.sum()}")],
                loc="upper right",
                fontsize=8,
                frameon=False,
            )
    else:
        ordered = [
            v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        ]
        shown = ordered[:MAX_LEGEND]
        palette = dict(zip(shown, _palette(len(shown)), strict=True))
        other = (0.6, 0.6, 0.6)
        colours = [palette.get(vals[i], other) for i in have]
        ax.scatter(pts[have, 0], pts[have, 1], s=size, c=colours, lw=0)
        handles = [_dot(palette[v], f"{v} {counts[v]}") for v in shown]
        n_other = sum(counts[v] for v in ordered[MAX_LEGEND:])
        if n_other:
            handles.append(_dot(other, f"other {n_other}"))
        if none.any():
            handles.append(_dot("#d0d0d0", f"(none) {none.sum()}"))
        ax.legend(
            handles=handles,
            title=color_by,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=8,
            frameon=False,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


def map_cells(
    store: Store | str | os.PathLike[str],
    model: str,
    *,
    method: str = "umap",
    color_by: str | None = None,
    where: str | None = None,
    name: str | None = None,
    label: str | None = "cell_type",
    k: int = MIXING_K,
    sample: int | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    umap_progress: Callable[[int, int], None] | None = None,
) -> MapResult:
    """Map the embedded cells to 2-D, store the run, draw it and score the mixing.

    Args:
        store: The store (or its folder).
        model: The model whose vectors to map.
        method: ``umap`` or ``pca`` (see :func:`project`).
        color_by: ``cell_meta`` column colouring the picture (``None``: dataset).
        where: SQL filter over ``cell_meta`` choosing the cells.
        name: The run's name (``None``: ``MODEL-METHOD``); a second run of the same
            name replaces the first.
        label: ``cell_meta`` column of the mixing score's label term and
            per-label rows (``None``: none).
        k: Neighbours per cell of the mixing score.
        sample: Map at most this many cells (a seeded sample; ``None``: all). The
            mixing score always uses every selected cell as a neighbour.
        seed: Seed of the projection and the samples.
        out: The PNG's path (``None``: no picture).
        progress: Called with ``(done, total)`` while the mixing score runs.
        umap_progress: Called with ``(done, total)`` over UMAP's optimisation
            epochs, from 0 before its neighbour search (see :func:`project`).

    Returns:
        The :class:`MapResult`.

    Raises:
        InvalidArgumentError: If the method, run name, ``k`` or ``sample`` is
            invalid, or fewer than 4 cells are selected.
        UnknownColumnError: If ``color_by`` or ``label`` is not a ``cell_meta``
            column.
        UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError: If the
            model has no vectors or ``where`` selects none.
    """
    store = store if isinstance(store, Store) else Store.open(store)
    if method not in MAP_METHODS:
        raise InvalidArgumentError(
            f"unknown map method {method!r}: choose one of {', '.join(MAP_METHODS)}"
        )
    run = check_run_name(name if name is not None else f"{model}-{method}")
    if sample is not None and int(sample) < _MIN_CELLS:
        raise InvalidArgumentError(f"--sample must be >= {_MIN_CELLS}, got {sample}")
    colour = color_by or "dataset"
    have = store.columns("cell_meta")
    for option, column in (("--color-by", colour), ("--label", label)):
        if column is not None and safe_identifier(column) not in have:
            raise UnknownColumnError(
                f"{option} {column!r} is not a column of cell_meta: name one "
                "('cytostore sql STORE \"DESCRIBE cell_meta\"')"
            )
    mixing = store_mixing_score(
        store, model, where=where, label=label, k=k, seed=seed, progress=progress
    )
    ids, matrix = store.vectors(model, where)
    order = np.argsort(ids, kind="stable")
    if sample is not None and ids.size > int(sample):
        rng = np.random.default_rng(seed)
        order = np.sort(rng.choice(order, size=int(sample), replace=False))
        order = order[np.argsort(ids[order], kind="stable")]
    ids = np.asarray(ids[order], dtype=np.int64)
    if method == "umap" and ids.size > _LARGE_UMAP:
        logger.warning(
            "UMAP of %d cells takes minutes on a CPU: --sample %d maps a seeded "
            "sample (the mixing score still uses every cell), --method pca is fast",
            ids.size,
            _LARGE_UMAP,
        )
    started = time.monotonic()
    xy = project(
        np.asarray(matrix[order]),
        method,
        metric=mixing["metric"],
        seed=seed,
        progress=umap_progress,
    )
    elapsed = time.monotonic() - started
    params = {
        "method": method,
        "where": where,
        "color_by": colour,
        "seed": seed,
        "sample": sample,
        "mixing": {
            key: mixing[key]
            for key in (
                "k",
                "cells",
                "pool",
                "dataset",
                "patient",
                "label",
                "label_column",
                "per_dataset",
            )
        },
    }
    write_map(store, run, model, params, ids, xy[:, 0], xy[:, 1])
    png = None
    if out is not None:
        values = store.cell_meta(ids, [colour]).column(colour)
        title = (
            f"{model} · {method} · {ids.size} cells · mixing (k={mixing['k']}): "
            f"dataset {_fmt(mixing['dataset'])}"
            + (
                f", {label} {_fmt(mixing['label'])}"
                if mixing.get("label_column")
                else ""
            )
        )
        png = draw_map(xy, values, out, title=title, color_by=colour)
    logger.info("map run %s: %d cells by %s in %.1f s", run, ids.size, method, elapsed)
    return MapResult(
        run=run,
        model=str(mixing["model"]),
        method=method,
        ids=ids,
        xy=xy,
        png=png,
        color_by=colour,
        mixing=mixing,
        elapsed_s=elapsed,
        params=params,
    )
