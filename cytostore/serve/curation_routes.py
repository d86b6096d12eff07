"""Pages and JSON routes of the curation runs (label issues, selections, maps).

Each page has a JSON twin under ``/api/curation/`` computed by the same function of
:mod:`cytostore.serve.curation` (docs/web.md lists them). The review queue marks a
cell reviewed through ``POST /api/tags`` (the tags writer, the server's only
write), so ``--read-only`` hides its buttons.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cytostore.errors import InvalidWhereError, UnknownColumnError
from cytostore.serve import curation, views
from cytostore.serve._request import param as _q
from cytostore.serve._request import store_of as _store
from cytostore.serve.pages import render

__all__ = ["ROUTES"]


def _page_number(request: Request) -> int:
    from cytostore.errors import InvalidArgumentError

    raw = _q(request, "page") or "1"
    try:
        page = int(raw)
    except ValueError:
        page = 0
    if page < 1:
        raise InvalidArgumentError(f"page must be >= 1, got {raw!r}")
    return page


def _pager(request: Request, page: int, total: int, per_page: int) -> dict[str, Any]:
    pages_total = max(1, -(-total // per_page))
    params = {k: v for k, v in request.query_params.items() if k != "page" and v}
    out: dict[str, Any] = {"page": page, "pages_total": pages_total}
    if page > 1:
        out["prev_url"] = "?" + urlencode({**params, "page": page - 1})
    if page < pages_total:
        out["next_url"] = "?" + urlencode({**params, "page": page + 1})
    return out


# -- JSON ----------------------------------------------------------------------------


def api_runs(request: Request) -> JSONResponse:
    """``GET /api/curation``: every curation run, newest first."""
    return JSONResponse(curation.runs(_store(request)))


def api_label_issues(request: Request) -> JSONResponse:
    """``GET /api/curation/label-issues/{run}?limit=&offset=&k=&reviewed=&where=``."""
    return JSONResponse(
        curation.label_issues(
            _store(request),
            request.path_params["run"],
            request.query_params.get("limit", curation.REVIEW_PAGE),
            request.query_params.get("offset", 0),
            request.query_params.get("k", curation.LOOKALIKES),
            _q(request, "reviewed"),
            _q(request, "where"),
        )
    )


def api_selection(request: Request) -> JSONResponse:
    """``GET /api/curation/selections/{run}?limit=&offset=``."""
    return JSONResponse(
        curation.selection(
            _store(request),
            request.path_params["run"],
            request.query_params.get("limit", curation.SELECTION_PAGE),
            request.query_params.get("offset", 0),
        )
    )


def api_selection_csv(request: Request) -> Response:
    """``GET /api/curation/selections/{run}/paths.csv``: ranked image paths."""
    run = request.path_params["run"]
    text = curation.selection_csv(_store(request), run)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="selection-{run}.csv"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def api_map(request: Request) -> JSONResponse:
    """``GET /api/curation/maps/{run}?color=``: the points, coloured."""
    return JSONResponse(
        curation.map_points(
            _store(request),
            request.path_params["run"],
            _q(request, "color"),
            cache=request.app.state.catalog_cache,
        )
    )


def api_map_where(request: Request) -> JSONResponse:
    """``GET /api/curation/maps/{run}/where?x0=&x1=&y0=&y1=``: a box's filter."""
    run = request.path_params["run"]
    q = request.query_params
    where = curation.map_box_where(
        run, q.get("x0"), q.get("x1"), q.get("y0"), q.get("y1")
    )
    return JSONResponse(
        {"where": where, "cells": "/api/cells?" + urlencode({"where": where})}
    )


# -- pages ---------------------------------------------------------------------------


def runs_page(request: Request) -> Response:
    """``/curation``: the runs of each kind, linked to their pages."""
    data = curation.runs(_store(request))
    by_kind: dict[str, list[dict[str, Any]]] = {"audit": [], "select": [], "map": []}
    for r in data["runs"]:
        by_kind.setdefault(r["kind"], []).append(r)
    return render(request, "curation.html", {"by_kind": by_kind})


def label_issues_page(request: Request) -> Response:
    """``/curation/label-issues/{run}?page=&reviewed=&k=&where=``: the review queue.

    A bad filter is shown in the page (status 400), like the grid's.
    """
    page = _page_number(request)
    per_page = curation.REVIEW_PAGE
    reviewed = _q(request, "reviewed") or "hide"
    where = _q(request, "where")
    context: dict[str, Any] = {
        "run": request.path_params["run"],
        "where": where or "",
        "where_error": None,
        "reviewed": reviewed,
        "verdicts": curation.VERDICT_TAGS,
        "reviewed_tag": curation.REVIEWED_TAG,
    }
    status = 200
    try:
        data = curation.label_issues(
            _store(request),
            request.path_params["run"],
            per_page,
            (page - 1) * per_page,
            _q(request, "k") or curation.LOOKALIKES,
            reviewed,
            where,
        )
    except (InvalidWhereError, UnknownColumnError) as exc:
        from cytostore.serve.app import status_of  # app imports this module

        status = status_of(exc)
        context["where_error"] = str(exc)
        data = None
    context["d"] = data
    if data is not None:
        context.update(_pager(request, page, data["total"], per_page))
    return render(request, "label_issues.html", context, status)


def selection_page(request: Request) -> Response:
    """``/curation/selections/{run}?page=``: the ranked cells."""
    page = _page_number(request)
    per_page = curation.SELECTION_PAGE
    data = curation.selection(
        _store(request), request.path_params["run"], per_page, (page - 1) * per_page
    )
    for c in data["cells"]:
        c["caption"] = (
            f"rank {c['rank']} · {c['score']:.3g}"
            if c["score"] is not None
            else f"rank {c['rank']}"
        )
    context = {"d": data, **_pager(request, page, data["total"], per_page)}
    return render(request, "selection.html", context)


def map_page(request: Request) -> Response:
    """``/curation/maps/{run}?color=``: the scatter; a box opens its cells."""
    store = _store(request)
    run = request.path_params["run"]
    columns = views.columns(store, request.app.state.catalog_cache)
    color = _q(request, "color")
    if color is None:
        color = "label" if "label" in columns else None
    info = curation.map_points(store, run, color, cache=request.app.state.catalog_cache)
    context = {
        "run": run,
        "color": color or "",
        "columns": [c for c in columns if c not in ("cell_id", "tags", "path")],
        "info": {k: info[k] for k in ("model", "params", "n", "shown", "created_at")},
    }
    return render(request, "map.html", context)


def map_cells_page(request: Request) -> Response:
    """``/curation/maps/{run}/cells?x0=&x1=&y0=&y1=``: the box's cells in the grid."""
    q = request.query_params
    where = curation.map_box_where(
        request.path_params["run"], q.get("x0"), q.get("x1"), q.get("y0"), q.get("y1")
    )
    return RedirectResponse("/cells?" + urlencode({"where": where}), status_code=303)


ROUTES = [
    Route("/curation", runs_page),
    Route("/curation/label-issues/{run}", label_issues_page),
    Route("/curation/selections/{run}", selection_page),
    Route("/curation/maps/{run}", map_page),
    Route("/curation/maps/{run}/cells", map_cells_page),
    Route("/api/curation", api_runs),
    Route("/api/curation/label-issues/{run}", api_label_issues),
    Route("/api/curation/selections/{run}", api_selection),
    Route("/api/curation/selections/{run}/paths.csv", api_selection_csv),
    Route("/api/curation/maps/{run}", api_map),
    Route("/api/curation/maps/{run}/where", api_map_where),
]
