"""Pixel-attribution overlays for the cell and patient pages (``explain --pixels``).

- ``GET /api/cells/{cell_id}/pixels?head=&method=&class=``: the summary of
  :func:`cytostore.explain.explain_pixels` for a cell head (JSON), with the URL of
- ``GET /api/cells/{cell_id}/pixels.png?head=&method=&class=``: the cell and its
  heat map side by side;
- ``GET /api/patients/{patient_id}/pixels?head=&dataset=&cells=&method=&class=``
  and ``.../pixels.png``: the same for a MIL head's top-attention cells (the PNG
  is the montage).

Maps are computed on request (one at a time: they are CPU-heavy) and the last
few are kept in memory, keyed by the head's creation time so a retrained head is
explained anew. Nothing is written to the store.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cytostore.errors import InvalidArgumentError
from cytostore.serve._request import store_of as _store
from cytostore.store import Store

__all__ = ["ROUTES"]

_LOCK = threading.Lock()
_MAX_CELLS = 8


def _params(request: Request) -> dict[str, Any]:
    q = request.query_params
    head = q.get("head") or ""
    if not head:
        raise InvalidArgumentError("give the head to explain: ?head=NAME")
    method = q.get("method") or "ig"
    try:
        cells = int(q.get("cells") or 3)
    except ValueError:
        raise InvalidArgumentError("cells must be an integer") from None
    if not 1 <= cells <= _MAX_CELLS:
        raise InvalidArgumentError(f"cells must be between 1 and {_MAX_CELLS}")
    return {
        "head": head,
        "method": method,
        "target": q.get("class") or None,
        "cells": cells,
    }


def _explain(
    store: Store, who: tuple[str, str], p: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Return the explanation and its PNGs (``montage`` and one per cell id)."""
    rows = store.sql("SELECT created_at FROM heads WHERE name = ?", [p["head"]]).rows
    stamp = str(rows[0][0]) if rows else ""
    key = (str(store.root), who, p["head"], stamp, p["method"], p["target"])
    return _cached(key, p["cells"] if who[0] == "patient" else 1)


@functools.lru_cache(maxsize=32)
def _cached(
    key: tuple[Any, ...], cells: int
) -> tuple[dict[str, Any], dict[str, bytes]]:
    from cytostore.explain import explain_pixels

    root, (kind, ident), head, _, method, target = key
    with _LOCK, tempfile.TemporaryDirectory() as tmp:
        montage = Path(tmp) / "pixels.png"
        where = {"cell": int(ident)} if kind == "cell" else {"patient": ident}
        out = explain_pixels(
            root,
            head,
            method=method,
            target=target,
            cells=cells,
            montage=montage,
            **where,
        )
        pngs = {"montage": montage.read_bytes()}
        for c in out["cells"]:
            pngs[str(c["cell_id"])] = Path(c["overlay"]).read_bytes()
            c["overlay"] = None
        out["montage"] = None
    return out, pngs


def _png(data: bytes) -> Response:
    return Response(
        data,
        media_type="image/png",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _query(p: dict[str, Any], extra: dict[str, str] | None = None) -> str:
    q = {"head": p["head"], "method": p["method"], **(extra or {})}
    if p["target"]:
        q["class"] = p["target"]
    return urlencode(q)


def api_cell_pixels(request: Request) -> JSONResponse:
    """``GET /api/cells/{cell_id}/pixels``: the attribution summary (JSON)."""
    cell_id = request.path_params["cell_id"]
    p = _params(request)
    out, _ = _explain(_store(request), ("cell", str(cell_id)), p)
    out = dict(out)
    out["overlay_url"] = f"/api/cells/{cell_id}/pixels.png?{_query(p)}"
    return JSONResponse(out)


def api_cell_pixels_png(request: Request) -> Response:
    """``GET /api/cells/{cell_id}/pixels.png``: the cell and its heat map."""
    cell_id = request.path_params["cell_id"]
    _, pngs = _explain(_store(request), ("cell", str(cell_id)), _params(request))
    return _png(pngs[str(cell_id)])


def _patient(request: Request) -> str:
    pid = str(request.path_params["patient_id"])
    dataset = request.query_params.get("dataset")
    return f"{dataset}/{pid}" if dataset else pid


def api_patient_pixels(request: Request) -> JSONResponse:
    """``GET /api/patients/{patient_id}/pixels``: the summary of the top cells."""
    p = _params(request)
    who = _patient(request)
    out, _ = _explain(_store(request), ("patient", who), p)
    out = dict(out)
    extra = {"cells": str(p["cells"])}
    if request.query_params.get("dataset"):
        extra["dataset"] = request.query_params["dataset"]
    pid = request.path_params["patient_id"]
    out["montage_url"] = f"/api/patients/{pid}/pixels.png?{_query(p, extra)}"
    return JSONResponse(out)


def api_patient_pixels_png(request: Request) -> Response:
    """``GET /api/patients/{patient_id}/pixels.png``: the montage of the top cells."""
    _, pngs = _explain(
        _store(request), ("patient", _patient(request)), _params(request)
    )
    return _png(pngs["montage"])


ROUTES = [
    Route("/api/cells/{cell_id:int}/pixels", api_cell_pixels),
    Route("/api/cells/{cell_id:int}/pixels.png", api_cell_pixels_png),
    Route("/api/patients/{patient_id}/pixels", api_patient_pixels),
    Route("/api/patients/{patient_id}/pixels.png", api_patient_pixels_png),
]
