"""What the curation pages show: label issues, selections and maps, by run.

The curation commands (``cytostore audit``, ``select``, ``map``) write runs into
the catalog (:mod:`cytostore.store.curation`); these functions read them for the
pages and the JSON API, like :mod:`cytostore.serve.views` does for the rest:

- **label issues** as a review queue: ranked suspects with given vs suggested
  label, score and neighbour agreement, each beside its nearest cells from other
  patients (with their labels), and whether it was reviewed (the ``reviewed`` tag,
  written through the tags writer like any tag);
- **selections**: the ranked cells, and a CSV of their image paths for an
  annotation tool;
- **maps**: the points of a 2-D map coloured by a ``cell_meta`` column, and the
  sandboxed filter selecting the cells inside a box of the map (so the grid can
  show them).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from cytostore._json import jsonable
from cytostore.errors import (
    CytostoreError,
    InvalidArgumentError,
    NotFoundError,
    UnknownColumnError,
)
from cytostore.serve.cache import CatalogCache
from cytostore.serve.views import _int
from cytostore.store import (
    Store,
    curation_runs,
    read_map,
    to_similarity,
    where_clause,
)

__all__ = [
    "LOOKALIKES",
    "MAX_MAP_POINTS",
    "REVIEWED_TAG",
    "VERDICT_TAGS",
    "label_issues",
    "map_box_where",
    "map_points",
    "runs",
    "selection",
    "selection_csv",
]

#: Suspects per page of the review queue.
REVIEW_PAGE = 20
#: Look-alikes shown beside each suspect.
LOOKALIKES = 5
#: Tag of a reviewed suspect; the verdict adds one of :data:`VERDICT_TAGS`.
REVIEWED_TAG = "reviewed"
VERDICT_TAGS = ("label-ok", "label-wrong")
#: Cells per page of a selection.
SELECTION_PAGE = 100
#: Most points a map sends to the page (a seeded sample beyond; boxes still
#: select among all points, by the filter of :func:`map_box_where`).
MAX_MAP_POINTS = 50_000
#: Distinct values coloured one by one; the rest are "other".
MAX_CATEGORIES = 12


def runs(store: Store) -> dict[str, Any]:
    """Return ``{"runs": [...]}``: every curation run, newest first.

    Each run: ``kind`` (``audit``/``select``/``map``), ``run``, ``model``,
    ``params``, ``created_at``, ``rows``.
    """
    return jsonable({"runs": curation_runs(store)})


def _run(store: Store, kind: str, run: str) -> dict[str, Any]:
    """Return run ``(kind, run)``'s ``curation_runs`` row.

    Raises:
        NotFoundError: If there is none (naming close matches).
    """
    known = curation_runs(store, kind)
    for r in known:
        if r["run"] == run:
            return r
    raise NotFoundError.for_name(
        f"{kind} run",
        run,
        [r["run"] for r in known],
        f"run 'cytostore {kind} STORE ... --name {run}' first",
        where=str(store.root),
    )


def _quote(value: Any) -> str:
    """Return ``value`` as a SQL string literal (for a sandboxed filter)."""
    return "'" + str(value).replace("'", "''") + "'"


def other_patients(dataset: str, patient_id: str | None) -> str | None:
    """Return the filter leaving out a cell's own patient (``None``: no patient).

    Cells without a patient stay candidates (``IS NOT DISTINCT FROM``: a missing
    patient id is not the suspect's).

    Examples:
        >>> other_patients("lmu", "P'1")
        "NOT (dataset = 'lmu' AND patient_id IS NOT DISTINCT FROM 'P''1')"
    """
    if patient_id is None:
        return None
    return (
        f"NOT (dataset = {_quote(dataset)} AND "
        f"patient_id IS NOT DISTINCT FROM {_quote(patient_id)})"
    )


def _patient_members(
    store: Store, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], np.ndarray]:
    """Return the cell ids of each ``(dataset, patient_id)``, in one query."""
    if not keys:
        return {}
    rows = store.sql(
        "SELECT c.dataset, c.patient_id, list(c.cell_id) FROM cells c JOIN "
        "(SELECT unnest(?::VARCHAR[]) AS d, unnest(?::VARCHAR[]) AS p) q "
        "ON c.dataset = q.d AND c.patient_id = q.p GROUP BY ALL",
        [[k[0] for k in keys], [k[1] for k in keys]],
    ).rows
    return {(d, p): np.asarray(ids, np.int64) for d, p, ids in rows}


def _lookalikes(
    store: Store, rows: list[dict[str, Any]], model: str, label_column: str, k: int
) -> list[dict[str, Any]]:
    """Return each suspect's k nearest cells from other patients, with their labels.

    One batched search over the model's whole set (kept loaded by the store),
    asking for ``k`` plus the size of the largest patient on the page, then the
    suspect's own patient left out of each list: the exact k nearest cells of
    other patients for an exact index (the answer of ``search(cell,
    where=other_patients(...))``, without a filtered search per suspect: on 200k
    cells that took ~0.2 s each).
    """
    try:
        searcher = store.searcher(model)
    except CytostoreError as exc:  # e.g. the model's set is gone: said in place
        return [{"error": str(exc), "cells": []} for _ in rows]
    out: list[dict[str, Any]] = [{"error": None, "cells": []} for _ in rows]
    queries, at = [], []
    for i, r in enumerate(rows):
        try:
            queries.append(searcher.vector_of([r["cell_id"]])[0])
            at.append(i)
        except CytostoreError as exc:  # a cell without a vector in this set
            out[i]["error"] = str(exc)
    if not queries:
        return out
    keys = sorted({(r["dataset"], r["patient_id"]) for r in rows if r["patient_id"]})
    members = _patient_members(store, keys)
    own = max((m.size for m in members.values()), default=0)
    dist, hits = searcher.knn(searcher.prepare(np.stack(queries)), k + 1 + own)
    sims = to_similarity(dist, searcher.es.metric)
    chosen: list[tuple[int, np.ndarray, np.ndarray]] = []
    for row, (d, h) in zip(at, zip(sims, hits, strict=True), strict=True):
        r = rows[row]
        drop = members.get((r["dataset"], r["patient_id"]), np.zeros(0, np.int64))
        keep = (h >= 0) & (h != r["cell_id"]) & ~np.isin(h, drop)
        chosen.append((row, h[keep][:k], d[keep][:k]))
    wanted = sorted({int(c) for _, h, _ in chosen for c in h})
    meta = {
        m[0]: m[1:]
        for m in store.cell_meta(
            wanted, ["cell_id", label_column, "dataset", "patient_id"]
        ).rows
    }
    for row, h, d in chosen:
        out[row]["cells"] = [
            {
                "cell_id": int(c),
                "similarity": float(s),
                "label": meta[int(c)][0],
                "dataset": meta[int(c)][1],
                "patient_id": meta[int(c)][2],
            }
            for c, s in zip(h, d, strict=True)
        ]
    return out


def label_issues(
    store: Store,
    run: str,
    limit: Any = REVIEW_PAGE,
    offset: Any = 0,
    k: Any = LOOKALIKES,
    reviewed: str | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """Return a page of an audit run's review queue.

    Args:
        store: The store.
        run: The audit run.
        limit: Suspects per page (1..200).
        offset: Suspects skipped (by rank).
        k: Look-alikes per suspect (0..20; 0: none).
        reviewed: ``"hide"`` (default): leave out cells tagged ``reviewed``;
            ``"only"``: only those; ``"show"``: all.
        where: SQL filter over ``cell_meta`` (the sandboxed ``--where``), e.g.
            ``label = 'BLA'`` to review one class.

    Returns:
        ``{"run", "where", "model", "label_column", "params", "total",
        "flagged", "reviewed", "limit", "offset", "issues": [...]}``: ``total``
        counts the suspects the ``reviewed`` choice and ``where`` keep,
        ``flagged`` those of them confident learning flags, ``reviewed`` the
        run's reviewed cells; each
        issue has ``rank``, ``cell_id``, ``given_label``, ``suggested_label``,
        ``score``, ``neighbor_agreement``, ``is_issue``, ``dataset``,
        ``patient_id``, ``tags`` and ``lookalikes`` (``{"error", "cells"}``).

    Raises:
        NotFoundError: If there is no audit run of that name.
        InvalidArgumentError: Bad ``limit``/``offset``/``k``/``reviewed``.
        InvalidWhereError, UnknownColumnError: A bad filter.
    """
    n = _int(limit, "limit", 1, 200, REVIEW_PAGE)
    skip = _int(offset, "offset", 0, 10**12, 0)
    n_look = _int(k, "k", 0, 20, LOOKALIKES)
    mode = reviewed or "hide"
    if mode not in ("hide", "only", "show"):
        raise InvalidArgumentError(
            f"reviewed must be hide, only or show, got {reviewed!r}"
        )
    with store.connect(read_only=True):  # one catalog visit for the queue
        info = _run(store, "audit", run)
        tagged = f"list_contains(m.tags, {_quote(REVIEWED_TAG)})"
        keep = {"hide": f"AND NOT {tagged}", "only": f"AND {tagged}", "show": ""}
        base = "FROM label_issues i JOIN cell_meta m USING (cell_id) WHERE i.run = ? "
        if where:  # the sandboxed filter, in its own subquery over cell_meta
            clause = where_clause(where)
            base += f"AND i.cell_id IN (SELECT cell_id FROM cell_meta {clause}) "
        counts = store.sql(
            f"SELECT count(*) FILTER (WHERE TRUE {keep[mode]}), "
            f"count(*) FILTER (WHERE {tagged}), any_value(i.model), "
            f"any_value(i.label_column), count(*) FILTER (WHERE i.is_issue "
            f"{keep[mode]}) {base}",
            [run],
        ).rows[0]
        rows = store.sql(
            "SELECT i.rank, i.cell_id, i.given_label, i.suggested_label, i.score, "
            "i.neighbor_agreement, i.is_issue, m.dataset, "
            f"m.patient_id, m.tags {base}{keep[mode]} "
            "ORDER BY i.rank, i.cell_id LIMIT ? OFFSET ?",
            [run, n, skip],
        ).dicts()
    model = info["model"] or counts[2]
    label_column = counts[3] or "label"
    looks = (
        _lookalikes(store, rows, model, label_column, n_look)
        if n_look and model and rows
        else [{"error": None, "cells": []} for _ in rows]
    )
    for r, look in zip(rows, looks, strict=True):
        r["lookalikes"] = look
    return jsonable(
        {
            "run": run,
            "where": where or None,
            "model": model,
            "label_column": label_column,
            "params": info["params"],
            "created_at": info["created_at"],
            "total": int(counts[0]),
            "reviewed": int(counts[1]),
            "flagged": int(counts[4]),
            "limit": n,
            "offset": skip,
            "issues": rows,
        }
    )


def selection(
    store: Store, run: str, limit: Any = SELECTION_PAGE, offset: Any = 0
) -> dict[str, Any]:
    """Return a page of a select run: its cells by rank.

    Returns:
        ``{"run", "model", "params", "total", "limit", "offset", "cells"}``; each
        cell has ``rank``, ``cell_id``, ``score``, ``strategy``, ``dataset``,
        ``patient_id``, ``label``, ``cell_type``, ``tags``.

    Raises:
        NotFoundError: If there is no select run of that name.
        InvalidArgumentError: Bad ``limit``/``offset``.
    """
    n = _int(limit, "limit", 1, 10_000, SELECTION_PAGE)
    skip = _int(offset, "offset", 0, 10**12, 0)
    with store.connect(read_only=True):
        info = _run(store, "select", run)
        have = set(store.columns("cell_meta"))
        extra = [c for c in ("label", "cell_type", "tags") if c in have]
        cols = "".join(f', m."{c}"' for c in extra)
        base = "FROM selections s JOIN cell_meta m USING (cell_id) WHERE s.run = ?"
        total = int(store.sql(f"SELECT count(*) {base}", [run]).rows[0][0])
        cells = store.sql(
            "SELECT s.rank, s.cell_id, s.score, s.strategy, m.dataset, m.patient_id"
            f"{cols} {base} ORDER BY s.rank, s.cell_id LIMIT ? OFFSET ?",
            [run, n, skip],
        ).dicts()
    return jsonable(
        {
            "run": run,
            "model": info["model"],
            "params": info["params"],
            "created_at": info["created_at"],
            "total": total,
            "limit": n,
            "offset": skip,
            "cells": cells,
        }
    )


def selection_csv(store: Store, run: str) -> str:
    """Return a select run as CSV: rank, cell_id, score, dataset, label, path.

    ``path`` is the absolute path of the cell's image file, resolved inside its
    dataset's root (:meth:`Store.cell_paths`), ready for an annotation tool.

    Raises:
        NotFoundError: If there is no select run of that name.
        StoreCorruptError: If a cell's path leads outside its dataset's root.
    """
    with store.connect(read_only=True):
        _run(store, "select", run)
        have = set(store.columns("cell_meta"))
        label = ', m."label"' if "label" in have else ", NULL AS label"
        rows = store.sql(
            f"SELECT s.rank, s.cell_id, s.score, m.dataset{label} FROM selections s "
            "JOIN cell_meta m USING (cell_id) WHERE s.run = ? "
            "ORDER BY s.rank, s.cell_id",
            [run],
        ).rows
        paths = store.cell_paths([r[1] for r in rows]) if rows else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "cell_id", "score", "dataset", "label", "path"])
    for (rank, cell_id, score, dataset, lab), path in zip(rows, paths, strict=True):
        writer.writerow([rank, cell_id, score, dataset, lab, str(path)])
    return out.getvalue()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _map_data(store: Store, run: str, color: str | None) -> dict[str, Any]:
    info = _run(store, "map", run)
    ids, xy = read_map(store, run)
    n = int(ids.size)
    if n > MAX_MAP_POINTS:  # a seeded sample, the same on every visit
        keep = np.sort(
            np.random.default_rng(0).choice(n, MAX_MAP_POINTS, replace=False)
        )
        ids, xy = ids[keep], xy[keep]
    values: list[Any] = []
    kind, categories = None, []
    if color:
        if color not in store.columns("cell_meta"):
            raise UnknownColumnError(
                f"cannot colour by {color!r}: not a column of cell_meta; choose "
                "one of the page's list"
            )
        got = dict(store.cell_meta(ids, ["cell_id", color]).rows)
        raw = [got.get(int(i)) for i in ids.tolist()]
        present = [v for v in raw if v is not None]
        if present and all(_is_number(v) for v in present):
            kind = "number"
            values = [
                None if v is None or not math.isfinite(float(v)) else float(v)
                for v in raw
            ]
        else:
            kind = "category"
            keys = [None if v is None else str(v) for v in raw]
            freq: dict[str, int] = {}
            for key in keys:
                if key is not None:
                    freq[key] = freq.get(key, 0) + 1
            categories = sorted(freq, key=lambda c: (-freq[c], c))[:MAX_CATEGORIES]
            at = {c: i for i, c in enumerate(categories)}
            values = [-1 if key is None else at.get(key, -2) for key in keys]
    return {
        "run": run,
        "model": info["model"],
        "params": info["params"],
        "created_at": info["created_at"],
        "n": n,
        "shown": int(ids.size),
        "color": color,
        "kind": kind,
        "categories": categories,
        "cell_id": ids.tolist(),
        "x": [round(float(v), 5) for v in xy[:, 0]],
        "y": [round(float(v), 5) for v in xy[:, 1]],
        "value": values,
    }


def map_points(
    store: Store, run: str, color: str | None = None, cache: CatalogCache | None = None
) -> dict[str, Any]:
    """Return a map run's points, each coloured by a ``cell_meta`` column.

    Returns:
        ``{"run", "model", "params", "n", "shown", "color", "kind",
        "categories", "cell_id", "x", "y", "value"}``: parallel lists; ``kind``
        is ``"category"`` (``value``: index into ``categories``, -2 other, -1
        missing), ``"number"`` (``value``: the number or null) or ``None`` (no
        colour). At most :data:`MAX_MAP_POINTS` points are sent (``shown`` of
        ``n``: a seeded sample).

    Raises:
        NotFoundError: If there is no map run of that name.
        UnknownColumnError: If ``color`` is not a column of ``cell_meta``.
    """
    if cache is None:
        return _map_json(store, run, color or None)
    return cache.get(_map_json, run, color or None)  # shared: not to be changed


def _map_json(store: Store, run: str, color: str | None) -> dict[str, Any]:
    with store.connect(read_only=True):  # one catalog visit for the map
        return jsonable(_map_data(store, run, color))


def map_box_where(run: str, x0: Any, x1: Any, y0: Any, y1: Any) -> str:
    """Return the ``cell_meta`` filter selecting a map's cells inside a box.

    The filter is the sandboxed ``--where`` of every page and command, so the
    cells grid shows the selection (``/cells?where=...``), and the URL can be
    shared.

    Raises:
        InvalidArgumentError: If a bound is not a finite number or the run name
            is unusable.

    Examples:
        >>> map_box_where("m", 0, 1, 2, 3)
        "cell_id IN (SELECT cell_id FROM maps WHERE run = 'm' AND x BETWEEN 0.0 AND 1.0 AND y BETWEEN 2.0 AND 3.0)"
    """  # noqa: E501
    from cytostore.store import check_run_name

    check_run_name(run)
    bounds = []
    for name, v in (("x0", x0), ("x1", x1), ("y0", y0), ("y1", y1)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise InvalidArgumentError(f"{name} must be finite, got {v!r}")
        bounds.append(f)
    xa, xb = sorted(bounds[:2])
    ya, yb = sorted(bounds[2:])
    return (
        f"cell_id IN (SELECT cell_id FROM maps WHERE run = {_quote(run)} AND x "
        f"BETWEEN {xa!r} AND {xb!r} AND y BETWEEN {ya!r} AND {yb!r})"
    )
