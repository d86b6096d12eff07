"""Similarity search by cell or by image: the encoder embeds, the store searches.

A query cell uses its stored vector; a query image goes through the set's model with
the model's own preprocessing (:meth:`Encoder.embed`), exactly like the stored cells.
The hits come back with their catalog columns, and optionally as a montage PNG drawn
by :func:`cytostore.data.montage`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import ImageDecodeError, InvalidArgumentError
from cytostore.store import EmbeddingSet, Store

__all__ = ["search", "SearchResult", "RESULT_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of every hit, in order.
RESULT_COLUMNS = (
    "cell_id",
    "rank",
    "distance",
    "dataset",
    "label",
    "cell_type",
    "patient_id",
    "path",
)
_META = ("dataset", "label", "cell_type", "patient_id", "path")


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query.

    Attributes:
        embedding_set: The set searched (its ``metric`` names the distance).
        query: ``{"cell_id": ...}`` or ``{"image": path}``.
        columns: :data:`RESULT_COLUMNS`.
        rows: One tuple per hit, best first (``distance``: cosine similarity for
            metric ``cosine``, squared L2 for ``l2``).
        montage: The PNG written, if one was asked for.
    """

    embedding_set: EmbeddingSet
    query: dict[str, Any]
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    montage: Path | None = None

    def dicts(self) -> list[dict[str, Any]]:
        """Return the hits as dicts keyed by column."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def search(
    store: Store,
    *,
    cell: int | None = None,
    image: str | os.PathLike[str] | None = None,
    model: str | None = None,
    k: int = 10,
    where: str | None = None,
    include_self: bool = False,
    um_per_px: float | None = None,
    montage: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> SearchResult:
    """Find the ``k`` cells most similar to a catalogued cell or to an image file.

    Args:
        store: The store.
        cell: Query by this cell id (its stored vector).
        image: Query by this image file (embedded with the set's model).
        model: The embedding set's model (``None``: the store's only set).
        k: Hits to return.
        where: SQL filter over ``cell_meta``: the exact top-k within the matching
            cells (for exact indexes).
        include_self: With ``cell``, keep the cell itself among the hits.
        um_per_px: The query image's pixel size (``None``: unknown, resized whole).
        montage: Write a PNG of the query and its hits to this path.
        device: Torch device for embedding an image.

    Returns:
        The hits with their catalog columns.

    Raises:
        InvalidArgumentError: If not exactly one of ``cell``/``image`` is given, the
            image file does not exist or is not an image, or the cell has no vector.
        UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError: See
            :meth:`Store.search`.
    """
    if (cell is None) == (image is None):
        raise InvalidArgumentError("give exactly one of --cell ID or --image PATH")
    if int(k) < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    if image is not None and not Path(image).is_file():
        raise InvalidArgumentError(f"no image file {str(image)!r}: check the path")
    searcher = store.searcher(model, where)
    es = searcher.es
    exclude = None
    if cell is not None:
        vec = searcher.vector_of([int(cell)])
        query: dict[str, Any] = {"cell_id": int(cell)}
        if not include_self:
            exclude = np.asarray([int(cell)], np.int64)
    else:
        try:
            vec = _embed_image(store, es, Path(str(image)), um_per_px, device)
        except ImageDecodeError as exc:
            raise InvalidArgumentError(f"--image: {exc}") from None
        query = {"image": str(image)}
    dist, ids = searcher.knn(searcher.prepare(vec), int(k), exclude)
    hits = ids[0][ids[0] >= 0]
    meta = {r[0]: r[1:] for r in store.cell_meta(hits, ("cell_id", *_META)).rows}
    rows = [
        (int(cid), rank, float(d), *meta[int(cid)])
        for rank, (cid, d) in enumerate(zip(hits, dist[0], strict=False), start=1)
    ]
    result = SearchResult(es, query, list(RESULT_COLUMNS), rows)
    if montage is None:
        return result
    out = _draw(store, result, Path(montage), Path(str(image)) if image else None)
    return SearchResult(es, query, list(RESULT_COLUMNS), rows, out)


def _embed_image(
    store: Store, es: EmbeddingSet, path: Path, um_per_px: float | None, device: str
) -> npt.NDArray[np.float32]:
    from cytostore.embedder.encoder import Encoder

    encoder = Encoder.load(store, es.model, device=device)
    if encoder.dim != es.dim:
        from cytostore.errors import DimensionMismatchError

        raise DimensionMismatchError(
            f"model {es.model!r} now gives {encoder.dim}-d vectors but its set holds "
            f"{es.dim}-d ones: re-embed the store with the current model"
        )
    return encoder.embed([path], um_per_px=um_per_px)


def _draw(store: Store, result: SearchResult, out: Path, image: Path | None) -> Path:
    from cytostore.data import load_rgb
    from cytostore.data import montage as draw

    ids = [r[0] for r in result.rows]
    paths = store.cell_paths(ids) if ids else []
    if image is None:
        qid = int(result.query["cell_id"])
        qpath = store.cell_paths([qid])[0]
        qlabel = store.cell_meta([qid], ["label"]).rows[0][0]
        qcaption = f"query #{qid}\n{qlabel or ''}"
    else:
        qpath, qcaption = image, f"query\n{image.name}"
    images = [_tile(load_rgb, qpath)]
    captions = [qcaption]
    metric = result.embedding_set.metric
    for row, path in zip(result.rows, paths, strict=True):
        images.append(_tile(load_rgb, path))
        captions.append(f"{row[1]}. {row[4] or '?'}\n{metric} {row[2]:.3f}")
    title = f"{result.embedding_set.model}: {len(ids)} nearest cells"
    return draw(images, captions, out, title=title, highlight=0)


def _tile(load: Any, path: Path) -> npt.NDArray[np.uint8]:
    try:
        return np.asarray(load(path), dtype=np.uint8)
    except ImageDecodeError as exc:
        logger.warning("montage: %s", exc)
        return np.full((32, 32, 3), 200, dtype=np.uint8)
