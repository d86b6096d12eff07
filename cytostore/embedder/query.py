"""Similarity search by cell or by image: the encoder embeds, the store searches.

A query cell uses its stored vector. A query image that is already catalogued (a
cell with the same sha256 has a vector in the set) uses that cell's stored vector too;
any other image goes through the set's model with the model's own preprocessing
(:meth:`Encoder.embed`), exactly like the stored cells, at its µm/px: given, or that of
the dataset whose root folder holds it. An image of unknown µm/px is resized whole,
which for a model trained at a physical scale usually means the wrong scale: a
warning is logged.
The hits come back with their catalog columns, and optionally as a montage PNG drawn
by :func:`cytostore.data.montage`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import ImageDecodeError, InvalidArgumentError
from cytostore.store import EmbeddingSet, Store, to_similarity

__all__ = ["search", "SearchResult", "RESULT_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of every hit, in order.
RESULT_COLUMNS = (
    "cell_id",
    "rank",
    "similarity",
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
        embedding_set: The set searched (its ``metric`` defines the similarity).
        query: ``{"cell_id": ...}``; or for an image ``{"image": path,
            "matched_cell": id or None, "um_per_px": float or None,
            "um_per_px_from": "given" | "dataset NAME" | None}``
            (``matched_cell``: the catalogued cell of the same sha256 whose stored
            vector was used; ``um_per_px``: the pixel size the image was embedded at,
            ``None``: unknown or not embedded).
        columns: :data:`RESULT_COLUMNS`.
        rows: One tuple per hit, best first (``similarity``, higher is closer:
            cosine similarity for metric ``cosine``, minus the squared L2 distance
            for ``l2``; see :func:`cytostore.store.to_similarity`).
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
        include_self: Keep the query cell itself among the hits (with ``cell``, or
            an ``image`` catalogued as a cell: all cells of its sha256).
        um_per_px: The query image's pixel size (``None``: that of the dataset whose
            root folder holds the image, else unknown: resized whole, with a
            warning when the model was trained at a physical scale). Not used for
            a catalogued image (its stored vector is).
        montage: Write a PNG of the query and its hits to this path.
        device: Torch device for embedding an image.

    Returns:
        The hits with their catalog columns.

    Raises:
        InvalidArgumentError: If not exactly one of ``cell``/``image`` is given, the
            image file does not exist or is not an image, the cell has no vector,
            or ``um_per_px`` is not positive.
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
    also_drop = np.zeros(0, np.int64)  # byte-identical copies of a catalogued image
    if cell is not None:
        vec = searcher.vector_of([int(cell)])
        query: dict[str, Any] = {"cell_id": int(cell)}
        if not include_self:
            exclude = np.asarray([int(cell)], np.int64)
    else:
        path = Path(str(image))
        same = _catalogued(store, searcher.ids, path)
        if same.size:
            vec = searcher.vector_of(same[:1])
            query = {"image": str(image), "matched_cell": int(same[0])}
            query.update(um_per_px=None, um_per_px_from=None)
            if not include_self:
                exclude, also_drop = same[:1], same[1:]
        else:
            um, origin = _image_scale(store, path, um_per_px)
            try:
                vec = _embed_image(store, es, path, um, device)
            except ImageDecodeError as exc:
                raise InvalidArgumentError(f"--image: {exc}") from None
            query = {"image": str(image), "matched_cell": None, "um_per_px": um}
            query["um_per_px_from"] = origin
    dist, ids = searcher.knn(searcher.prepare(vec), int(k) + also_drop.size, exclude)
    keep = (ids[0] >= 0) & ~np.isin(ids[0], also_drop)
    hits, dist = ids[0][keep][: int(k)], dist[:, keep][:, : int(k)]
    sim = to_similarity(dist[0], es.metric)
    meta = {r[0]: r[1:] for r in store.cell_meta(hits, ("cell_id", *_META)).rows}
    rows = [
        (int(cid), rank, float(d), *meta[int(cid)])
        for rank, (cid, d) in enumerate(zip(hits, sim, strict=False), start=1)
    ]
    result = SearchResult(es, query, list(RESULT_COLUMNS), rows)
    if montage is None:
        return result
    out = _draw(store, result, Path(montage), Path(str(image)) if image else None)
    return SearchResult(es, query, list(RESULT_COLUMNS), rows, out)


def _catalogued(
    store: Store, with_vector: npt.NDArray[np.int64], path: Path
) -> npt.NDArray[np.int64]:
    """Return the sorted ids of cells with ``path``'s sha256 and a vector in the set."""
    digest = hashlib.sha256()  # (hashlib, not card.sha256_file: no torch import)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    rows = store.sql(
        "SELECT cell_id FROM cells WHERE sha256 = ? ORDER BY cell_id",
        [digest.hexdigest()],
    ).rows
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return ids[np.isin(ids, with_vector)]


def _image_scale(
    store: Store, path: Path, um_per_px: float | None
) -> tuple[float | None, str | None]:
    """Return ``(µm/px, where it came from)`` for an uncatalogued query image."""
    if um_per_px is not None:
        if not um_per_px > 0:
            raise InvalidArgumentError(
                f"--um-per-px must be a positive pixel size in µm, got {um_per_px}"
            )
        return float(um_per_px), "given"
    here = path.resolve()
    rows = store.sql("SELECT dataset, root, um_per_px FROM datasets").rows
    for dataset, root, um in sorted(rows, key=lambda r: -len(str(r[1]))):
        if um is not None and here.is_relative_to(Path(root).resolve()):
            return float(um), f"dataset {dataset}"
    return None, None


def _embed_image(
    store: Store, es: EmbeddingSet, path: Path, um_per_px: float | None, device: str
) -> npt.NDArray[np.float32]:
    from cytostore.embedder.encoder import Encoder

    encoder = Encoder.load(store, es.model, device=device)
    if um_per_px is None and encoder.preprocessing.um_per_px:
        logger.warning(
            "the µm/px of %s is unknown, so it is resized whole, but model %r was "
            "trained at %.4g µm/px: the hits may be wrong for its scale; give "
            "--um-per-px (the image's pixel size in µm)",
            path.name,
            es.model,
            encoder.preprocessing.um_per_px,
        )
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
    for row, path in zip(result.rows, paths, strict=True):
        images.append(_tile(load_rgb, path))
        captions.append(f"{row[1]}. {row[4] or '?'}\nsim {row[2]:.3f}")
    title = f"{result.embedding_set.model}: {len(ids)} nearest cells"
    return draw(images, captions, out, title=title, highlight=0)


def _tile(load: Any, path: Path) -> npt.NDArray[np.uint8]:
    try:
        return np.asarray(load(path), dtype=np.uint8)
    except ImageDecodeError as exc:
        logger.warning("montage: %s", exc)
        return np.full((32, 32, 3), 200, dtype=np.uint8)
