"""What each page shows, computed once for both renderers (HTML and JSON).

Each function here calls the Python API and returns plain data (dicts and lists
ready for :func:`cytostore._json.jsonable`); ``api`` renders it as JSON and
``pages`` through a template. No function here holds logic the library lacks: it
picks the library calls and names their results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytostore._json import jsonable
from cytostore.embedder.query import RESULT_COLUMNS
from cytostore.errors import (
    InvalidArgumentError,
    UnknownCellError,
    UnknownHeadError,
    UnknownModelError,
    UnknownPatientError,
)
from cytostore.serve.cache import CatalogCache, hit_columns
from cytostore.store import (
    Store,
    browse_cells,
    count_cells,
    list_models,
    to_similarity,
)

__all__ = [
    "PAGE_SIZE",
    "cell",
    "cells",
    "columns",
    "head",
    "heads",
    "model",
    "models",
    "neighbors",
    "patient",
    "run_sql",
    "search_image",
    "tag_cells",
]

#: Cells per grid page.
PAGE_SIZE = 100
#: Most rows an SQL query returns to the page.
SQL_MAX_ROWS = 1000
#: Seconds before a page's SQL query is interrupted.
SQL_TIMEOUT_S = 10.0
#: Most neighbours one request asks for.
MAX_K = 200
#: The catalog columns of a neighbour (after cell_id, rank, similarity).
_HIT_META = tuple(RESULT_COLUMNS[3:])


def _int(value: Any, name: str, lo: int, hi: int, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"{name} must be an integer, got {value!r}"
        ) from None
    if not lo <= n <= hi:
        raise InvalidArgumentError(f"{name} must be in {lo}..{hi}, got {n}")
    return n


def _grid(
    store: Store, where: str | None, order: str | None, limit: int, offset: int
) -> dict[str, Any]:
    with store.connect(read_only=True):  # one catalog visit for page and counts
        total, page = browse_cells(store, where, order, limit=limit, offset=offset)
        counts = count_cells(store, where, ("dataset", "label"))
    return jsonable(
        {
            "total": total,
            "limit": limit,
            "offset": offset,
            "cells": page.dicts(),
            "counts": counts[:50],
        }
    )


def cells(
    store: Store,
    where: str | None = None,
    order: str | None = None,
    limit: Any = PAGE_SIZE,
    offset: Any = 0,
    cache: CatalogCache | None = None,
) -> dict[str, Any]:
    """Return ``{"total", "cells", "counts", "limit", "offset"}`` for a grid page.

    With a ``cache`` the answer is kept while the catalog is unchanged (and is
    then shared: do not change it).

    Raises:
        InvalidArgumentError: Bad ``limit``/``offset``.
        InvalidWhereError, UnknownColumnError: A bad filter or sort column.
    """
    n = _int(limit, "limit", 1, 10_000, PAGE_SIZE)
    skip = _int(offset, "offset", 0, 10**12, 0)
    if cache is None:
        return _grid(store, where or None, order or None, n, skip)
    return cache.get(_grid, where or None, order or None, n, skip)


def _columns(store: Store) -> list[str]:
    return store.columns("cell_meta")


def columns(store: Store, cache: CatalogCache | None = None) -> list[str]:
    """Return the columns of ``cell_meta`` (the grid's sort and filter choices)."""
    return _columns(store) if cache is None else cache.get(_columns)


def _check_cell(store: Store, cell_id: int) -> None:
    if not store.cell_meta([int(cell_id)], ["cell_id"]).rows:
        raise UnknownCellError(
            f"no cell {cell_id} in the store: list ids with 'cytostore sql STORE "
            '"SELECT cell_id FROM cells"\''
        )


def cell(store: Store, cell_id: int) -> dict[str, Any]:
    """Return a cell's metadata, tags, predictions, um_per_px and curation runs.

    ``curation`` lists the audit runs that scored the cell (``kind`` ``audit``:
    ``rank``, ``given_label``, ``suggested_label``, ``score``) and the select runs
    that chose it (``kind`` ``select``: ``rank``, ``score``).

    Raises:
        UnknownCellError: If the id is not a catalogued cell.
    """
    with store.connect(read_only=True):  # one catalog visit for the five reads
        _check_cell(store, cell_id)
        columns = store.columns("cell_meta")
        meta = store.cell_meta([int(cell_id)], columns).dicts()[0]
        um = store.sql(
            "SELECT coalesce(c.um_per_px, d.um_per_px) FROM cells c "
            "JOIN datasets d USING (dataset) "
            "WHERE c.cell_id = ?",
            [int(cell_id)],
        ).rows
        predictions = store.sql(
            "SELECT p.head, p.label, p.probability, h.kind FROM predictions p "
            "LEFT JOIN heads h ON h.name = p.head WHERE p.cell_id = ? "
            "ORDER BY p.head",
            [int(cell_id)],
        ).dicts()
        curation = store.sql(
            "SELECT 'audit' AS kind, run, rank, given_label, suggested_label, score "
            "FROM label_issues WHERE cell_id = ? UNION ALL "
            "SELECT 'select', run, rank, NULL, NULL, score FROM selections "
            "WHERE cell_id = ? ORDER BY kind, run",
            [int(cell_id), int(cell_id)],
        ).dicts()
    return jsonable(
        {
            "cell_id": int(cell_id),
            "meta": meta,
            "tags": meta.get("tags") or [],
            "um_per_px": um[0][0] if um else None,
            "predictions": predictions,
            "curation": curation,
        }
    )


def model_names(store: Store) -> list[str]:
    """Return the models that have an embedding set, sorted."""
    return sorted({es.model for es in store.embedding_sets() if es.shard is None})


def neighbors(
    store: Store,
    cell_id: int,
    model: str | None,
    k: Any = 10,
    where: str | None = None,
    cache: CatalogCache | None = None,
) -> dict[str, Any]:
    """Return a cell's k nearest cells in a model's set, filtered by ``where``.

    With a ``cache``, the cell check and the neighbours' columns come from
    memory kept while the catalog is unchanged (:func:`~cytostore.serve.cache.
    hit_columns`), and the search reuses the store's loaded set, so a request
    opens no catalog connection (a ``where`` not asked before opens one).

    Returns:
        ``{"model", "metric", "cell_id", "neighbors": [{"cell_id", "rank",
        "similarity", "dataset", "label", ...}]}`` (the cell itself left out).

    Raises:
        UnknownCellError: If the id is not a catalogued cell.
        UnknownEmbeddingSetError: If the model has no embedding set.
        InvalidWhereError, EmptySelectionError: A bad or empty filter.
    """
    from cytostore.embedder import search

    n = _int(k, "k", 1, MAX_K, 10)
    kept = None if cache is None else cache.get(hit_columns, _HIT_META)
    if cache is None or kept is None:
        with store.connect(read_only=True):  # one catalog visit for the whole answer
            _check_cell(store, cell_id)
            result = search(
                store, cell=int(cell_id), model=model or None, k=n, where=where or None
            )
        es, hits = result.embedding_set, result.dicts()
    else:
        if not cache.catalogued(int(cell_id)):
            _check_cell(store, cell_id)  # raises, naming the fix
        es = store.searcher(model or None, where or None).es
        dist, ids = store.search(
            int(cell_id), n, where=where or None, model=model or None
        )
        found = ids[0][ids[0] >= 0]
        sim = to_similarity(dist[0][ids[0] >= 0], es.metric)
        meta = kept.rows(found)
        hits = [
            dict(zip(RESULT_COLUMNS, (int(c), r, float(s), *meta[int(c)]), strict=True))
            for r, (c, s) in enumerate(zip(found, sim, strict=True), start=1)
        ]
    return jsonable(
        {
            "model": es.model,
            "metric": es.metric,
            "cell_id": int(cell_id),
            "neighbors": hits,
        }
    )


def search_image(
    store: Store,
    image: Path,
    model: str | None,
    k: Any = 10,
    um_per_px: Any = None,
    where: str | None = None,
) -> dict[str, Any]:
    """Embed an image file with the model's preprocessing and return its neighbours.

    Returns:
        ``{"model", "query", "neighbors"}``; ``query["um_per_px"]`` is ``None``
        when the scale was unknown (the page then asks for it).

    Raises:
        InvalidArgumentError: A bad ``k``/``um_per_px`` or an unreadable image.
        UnknownEmbeddingSetError: If the model has no embedding set.
    """
    from cytostore.embedder import search

    n = _int(k, "k", 1, MAX_K, 10)
    um: float | None = None
    if um_per_px not in (None, ""):
        try:
            um = float(um_per_px)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"um_per_px must be a number (µm per pixel), got {um_per_px!r}"
            ) from None
    result = search(
        store,
        image=image,
        model=model or None,
        k=n,
        where=where or None,
        um_per_px=um,
        device="cpu",
    )
    query = dict(result.query)
    query.pop("image", None)  # a temporary file's name means nothing to the user
    return jsonable(
        {
            "model": result.embedding_set.model,
            "query": query,
            "neighbors": result.dicts(),
        }
    )


def _patient_rows(
    store: Store, patient_id: str, dataset: str | None
) -> list[dict[str, Any]]:
    rows = store.sql(
        "SELECT * FROM patients WHERE patient_id = ? AND (? IS NULL OR dataset = ?) "
        "ORDER BY dataset",
        [patient_id, dataset, dataset],
    ).dicts()
    if not rows:
        where = f" in dataset {dataset!r}" if dataset else ""
        raise UnknownPatientError(
            f"no patient {patient_id!r}{where}: list them with 'cytostore sql STORE "
            '"SELECT dataset, patient_id FROM patients"\''
        )
    return rows


def patient(
    store: Store, patient_id: str, dataset: str | None = None, explain: bool = True
) -> dict[str, Any]:
    """Return a patient's metadata, MIL predictions, cells by attention, look-alikes.

    Args:
        store: The store.
        patient_id: The patient's id.
        dataset: Its dataset (``None``: the first dataset holding that id).
        explain: Also explain each MIL head's prediction with labelled look-alikes
            of the top-attention cells (:func:`cytostore.heads.explain`).

    Raises:
        UnknownPatientError: If no such patient exists.
    """
    rows = _patient_rows(store, patient_id, dataset or None)
    meta = rows[0]
    ds = str(meta["dataset"])
    predictions = store.sql(
        "SELECT head, label, probability, fold FROM patient_predictions "
        "WHERE dataset = ? AND patient_id = ? ORDER BY head",
        [ds, patient_id],
    ).dicts()
    cell_rows = store.sql(
        "SELECT c.cell_id, c.label, c.cell_type, max(a.attention) AS attention, "
        "arg_max(a.head, a.attention) AS head FROM cells c LEFT JOIN attention a "
        "ON a.cell_id = c.cell_id WHERE c.dataset = ? AND c.patient_id = ? "
        "GROUP BY ALL ORDER BY attention DESC NULLS LAST, c.cell_id LIMIT 500",
        [ds, patient_id],
    ).dicts()
    explanations: list[dict[str, Any]] = []
    if explain:
        from cytostore.errors import CytostoreError
        from cytostore.heads import explain as run_explain

        for p in predictions:
            try:
                ex = run_explain(store, p["head"], patient=f"{ds}/{patient_id}", k=5)
                explanations.append({"head": p["head"], "top_cells": ex["top_cells"]})
            except CytostoreError as exc:
                explanations.append({"head": p["head"], "error": str(exc)})
    return jsonable(
        {
            "dataset": ds,
            "patient_id": patient_id,
            "meta": meta,
            "other_datasets": [r["dataset"] for r in rows[1:]],
            "predictions": predictions,
            "cells": cell_rows,
            "explanations": explanations,
        }
    )


def heads(store: Store) -> list[dict[str, Any]]:
    """Return one row per head (name, kind, model, label, created, disk_bytes)."""
    return jsonable(store.ls("heads")["heads"])


def head(store: Store, name: str) -> dict[str, Any]:
    """Return a head's row with its report (per-class metrics, confusion matrix).

    Raises:
        UnknownHeadError: If there is no such head.
    """
    rows = store.sql(
        "SELECT name, kind, model, label, report, created_at FROM heads WHERE name = ?",
        [name],
    ).dicts()
    if not rows:
        raise UnknownHeadError(
            f"no head {name!r}: list them with 'cytostore ls STORE heads'"
        )
    row = rows[0]
    try:
        report = json.loads(row.pop("report") or "{}")
    except ValueError:
        report = {}
    row["report"] = report if isinstance(report, dict) else {}
    row["confusion_png"] = _file_in(store, f"heads/{name}/confusion.png")
    return jsonable(row)


def models(store: Store) -> list[dict[str, Any]]:
    """Return one row per model (card included) and whether it has vectors."""
    with_sets = set(model_names(store))
    rows = list_models(store)
    for r in rows:
        r["embedded"] = r["name"] in with_sets
    return jsonable(rows)


def model(store: Store, name: str) -> dict[str, Any]:
    """Return a model's row with its card and whether ``curves.png`` exists.

    Raises:
        UnknownModelError: If there is no such model.
    """
    for row in models(store):
        if row["name"] == name:
            row["curves_png"] = _file_in(store, f"models/{name}/curves.png")
            return row
    raise UnknownModelError(
        f"no model {name!r}: list them with 'cytostore models STORE'"
    )


def _file_in(store: Store, rel: str) -> bool:
    from cytostore.errors import StoreCorruptError
    from cytostore.store import resolve_inside

    try:
        return resolve_inside(store.root, rel, what=rel).is_file()
    except (StoreCorruptError, OSError, ValueError):
        return False


def store_file(store: Store, rel: str) -> Path:
    """Return a store file's path, confined to the store (for a figure PNG).

    Raises:
        UnknownModelError: If the file does not exist.
        StoreCorruptError: If the path leads outside the store.
    """
    from cytostore.store import resolve_inside

    path = resolve_inside(store.root, rel, what=rel)
    if not path.is_file():
        raise UnknownModelError(f"no file {rel!r} in the store")
    return path


def run_sql(store: Store, q: str) -> dict[str, Any]:
    """Run one sandboxed read-only query (like ``cytostore sql``).

    Returns:
        ``{"columns", "rows", "truncated"}`` (at most :data:`SQL_MAX_ROWS` rows).

    Raises:
        InvalidArgumentError: An empty query.
        QueryRefusedError, ReadOnlyError, InvalidWhereError, UnknownColumnError,
        QueryTimeoutError: See :meth:`Store.sql`.
    """
    if not q.strip():
        raise InvalidArgumentError(
            "give a query, e.g. SELECT * FROM cell_meta LIMIT 10"
        )
    res = store.sql(q, timeout_s=SQL_TIMEOUT_S)
    return jsonable(
        {
            "columns": res.columns,
            "rows": [list(r) for r in res.rows[:SQL_MAX_ROWS]],
            "truncated": len(res.rows) > SQL_MAX_ROWS,
        }
    )


def tag_cells(store: Store, body: Any) -> dict[str, int]:
    """Add and remove tags on cells by id (the JSON of ``POST /api/tags``).

    Args:
        store: The store.
        body: ``{"cell_ids": [int, ...], "add": [str, ...], "remove": [str, ...]}``.

    Returns:
        ``{"cells", "added", "removed"}`` (see :meth:`Store.tag`).

    Raises:
        InvalidArgumentError: A malformed body, no tag, an unusable tag or an
            unknown cell id.
    """
    if not isinstance(body, dict):
        raise InvalidArgumentError(
            'send a JSON object {"cell_ids": [...], "add": [...], "remove": [...]}'
        )
    ids = _int_list(body.get("cell_ids"))
    add = _str_list(body.get("add", []), "add")
    remove = _str_list(body.get("remove", []), "remove")
    return store.tag(None, add=add, remove=remove, ids=ids)


def _int_list(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidArgumentError("cell_ids must be a non-empty list of cell ids")
    return [int(v) for v in value]


def _str_list(value: Any, name: str) -> Sequence[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{name} must be a list of tag strings")
    return value


def is_writable_dir(path: Path) -> bool:
    """Return whether the server may write under ``path``."""
    return os.access(path, os.W_OK)
