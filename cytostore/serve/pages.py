"""The HTML pages: the same data as the JSON API, rendered by Jinja templates.

Every page is addressable by URL (filters, sort, page and model are query
parameters). A bad filter or query is shown inside the page, with the status the
API would give (400, 404, ...).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cytostore.errors import CytostoreError
from cytostore.serve import views
from cytostore.serve._request import store_of as _store

__all__ = ["ROUTES", "error_page", "favicon"]


def _q(request: Request, name: str) -> str:
    return request.query_params.get(name, "") or ""


def render(
    request: Request, name: str, context: dict[str, Any], status: int = 200
) -> Response:
    """Render a template with the context every page shares."""
    base = {
        "request": request,
        "read_only": request.app.state.read_only,
        "store_root": str(_store(request).root),
    }
    return request.app.state.templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status
    )


def error_page(request: Request, status: int, message: str) -> Response:
    """Return the error page with ``status``."""
    return render(request, "error.html", {"status": status, "error": message}, status)


def _status(exc: CytostoreError) -> int:
    from cytostore.serve.app import status_of

    return status_of(exc)


def index(request: Request) -> Response:
    """``/``: redirect to the cell grid."""
    return RedirectResponse("/cells", status_code=302)


def favicon(request: Request) -> Response:
    """``/favicon.ico``: none (204), so browsers stop asking."""
    return Response(status_code=204)


def cells_page(request: Request) -> Response:
    """``/cells?where=&order=&page=&model=``: the grid, 100 cells a page."""
    where, order, model = (
        _q(request, "where"),
        _q(request, "order"),
        _q(request, "model"),
    )
    try:
        page = int(_q(request, "page") or 1)
    except ValueError:
        page = 0
    context: dict[str, Any] = {
        "where": where,
        "order": order,
        "model": model,
        "page": page,
        "data": None,
        "where_error": None,
    }
    status = 200
    try:
        if page < 1:
            from cytostore.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"page must be >= 1, got {_q(request, 'page')!r}"
            )
        context["data"] = views.cells(
            _store(request),
            where or None,
            order or None,
            views.PAGE_SIZE,
            (page - 1) * views.PAGE_SIZE,
            cache=request.app.state.catalog_cache,
        )
    except CytostoreError as exc:
        status = _status(exc)
        context["where_error"] = str(exc)
    data = context["data"]
    if data is not None:
        pages_total = max(1, -(-data["total"] // views.PAGE_SIZE))
        context["pages_total"] = pages_total
        params = {"where": where, "order": order, "model": model}
        params = {k: v for k, v in params.items() if v}
        if page > 1:
            context["prev_url"] = "/cells?" + urlencode({**params, "page": page - 1})
        if page < pages_total:
            context["next_url"] = "/cells?" + urlencode({**params, "page": page + 1})
    context["columns"] = views.columns(_store(request), request.app.state.catalog_cache)
    return render(request, "cells.html", context, status)


def cell_page(request: Request) -> Response:
    """``/cells/{id}?model=&k=&where=``: the cell, its metadata and neighbours."""
    store = _store(request)
    cell_id = request.path_params["cell_id"]
    info = views.cell(store, cell_id)
    models = views.model_names(store)
    model = _q(request, "model") or (models[0] if models else "")
    where, k = _q(request, "where"), _q(request, "k") or "10"
    context: dict[str, Any] = {
        "cell": info,
        "models": models,
        "model": model,
        "where": where,
        "k": k,
        "nn": None,
        "nn_error": None,
    }
    status = 200
    if model:
        try:
            context["nn"] = views.neighbors(
                store,
                cell_id,
                model,
                k,
                where or None,
                cache=request.app.state.catalog_cache,
            )
        except CytostoreError as exc:
            status = _status(exc)
            context["nn_error"] = str(exc)
    return render(request, "cell.html", context, status)


async def search_page(request: Request) -> Response:
    """``/search``: a form (GET); POST embeds the upload and shows the neighbours."""
    from cytostore.serve.api import search_upload

    models = views.model_names(_store(request))
    context: dict[str, Any] = {
        "models": models,
        "model": _q(request, "model") or (models[0] if models else ""),
        "result": None,
        "error": None,
        "um_per_px": "",
        "k": "10",
    }
    status = 200
    if request.method == "POST":
        try:
            result, fields = await search_upload(request)
            context["result"] = result
            context.update(
                model=fields.get("model") or result["model"],
                um_per_px=fields.get("um_per_px", ""),
                k=fields.get("k") or "10",
            )
        except CytostoreError as exc:
            status = _status(exc)
            context["error"] = str(exc)
    return render(request, "search.html", context, status)


def patient_page(request: Request) -> Response:
    """``/patients/{patient_id}?dataset=``: MIL predictions, cells by attention."""
    data = views.patient(
        _store(request),
        request.path_params["patient_id"],
        _q(request, "dataset") or None,
    )
    return render(request, "patient.html", {"p": data})


def heads_page(request: Request) -> Response:
    """``/heads``: every head."""
    return render(request, "heads.html", {"heads": views.heads(_store(request))})


def head_page(request: Request) -> Response:
    """``/heads/{name}``: the head's report and confusion matrix."""
    h = views.head(_store(request), request.path_params["name"])
    report = h.get("report") or {}
    confusion = _confusion(h)
    return render(
        request, "head.html", {"h": h, "report": report, "confusion": confusion}
    )


def _confusion(h: dict[str, Any]) -> dict[str, Any] | None:
    """Return the head's confusion matrix with a ``/cells?where=`` link per entry.

    Each link selects the cells behind the count: for a cell-level head, cells of
    that true label whose held-out prediction (``fold IS NOT NULL``) was the
    column's class; for a MIL head, the cells of such patients.
    """
    conf = (h.get("report") or {}).get("confusion")
    label = h.get("label")
    if not isinstance(conf, dict) or not label:
        return None
    classes, counts = conf.get("labels") or [], conf.get("counts") or []
    if not classes or len(counts) != len(classes):
        return None
    name = _literal(h["name"])
    rows = []
    for true, line in zip(classes, counts, strict=False):
        entries = []
        for pred, n in zip(classes, line, strict=False):
            if h.get("kind") == "abmil":
                behind = (
                    "EXISTS (SELECT 1 FROM patient_predictions p WHERE p.dataset = "
                    "cell_meta.dataset AND p.patient_id = cell_meta.patient_id AND "
                    f"p.head = {name} AND p.label = {_literal(pred)} AND "
                    "p.fold IS NOT NULL)"
                )
            else:
                behind = (
                    "cell_id IN (SELECT cell_id FROM predictions WHERE head = "
                    f"{name} AND label = {_literal(pred)} AND fold IS NOT NULL)"
                )
            where = f"{_ident(label)} = {_literal(true)} AND {behind}"
            entries.append(
                {"pred": pred, "n": n, "link": "/cells?" + urlencode({"where": where})}
            )
        rows.append({"true": true, "cells": entries})
    return {"classes": classes, "rows": rows}


def _literal(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def models_page(request: Request) -> Response:
    """``/models``: every model."""
    return render(request, "models.html", {"models": views.models(_store(request))})


def model_page(request: Request) -> Response:
    """``/models/{name}``: the model's card and training curves."""
    m = views.model(_store(request), request.path_params["name"])
    return render(request, "model.html", {"m": m})


def sql_page(request: Request) -> Response:
    """``/sql?q=``: a read-only query box, sandboxed like ``cytostore sql``."""
    q = _q(request, "q")
    context: dict[str, Any] = {"q": q, "result": None, "sql_error": None}
    status = 200
    if q:
        try:
            context["result"] = views.run_sql(_store(request), q)
        except CytostoreError as exc:
            status = _status(exc)
            context["sql_error"] = str(exc)
    return render(request, "sql.html", context, status)


ROUTES = [
    Route("/", index),
    Route("/cells", cells_page),
    Route("/cells/{cell_id:int}", cell_page),
    Route("/search", search_page, methods=["GET", "POST"]),
    Route("/patients/{patient_id}", patient_page),
    Route("/heads", heads_page),
    Route("/heads/{name}", head_page),
    Route("/models", models_page),
    Route("/models/{name}", model_page),
    Route("/sql", sql_page),
]
