"""The JSON API under ``/api/``: the same data as the pages (docs/web.md).

Handlers are plain functions (Starlette runs them in its thread pool) except the
ones reading an upload or a body. Errors raised here become ``{"error": ...}``
with the status of :func:`cytostore.serve.app.status_of`.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cytostore.errors import (
    InvalidArgumentError,
    UploadTooLargeError,
    WriteRefusedError,
)
from cytostore.serve import views
from cytostore.serve._request import param as _q
from cytostore.serve._request import store_of as _store
from cytostore.serve.images import cell_png

__all__ = ["MAX_UPLOAD_BYTES", "ROUTES", "read_upload"]

#: Largest accepted upload (the whole multipart body), in bytes.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


def _png(data: bytes, cache: bool) -> Response:
    headers = {"Cache-Control": "private, max-age=3600" if cache else "no-store"}
    headers["X-Content-Type-Options"] = "nosniff"
    return Response(data, media_type="image/png", headers=headers)


def api_cells(request: Request) -> JSONResponse:
    """``GET /api/cells?where=&order=&limit=&offset=``."""
    data = views.cells(
        _store(request),
        _q(request, "where"),
        _q(request, "order"),
        request.query_params.get("limit", views.PAGE_SIZE),
        request.query_params.get("offset", 0),
        cache=request.app.state.catalog_cache,
    )
    return JSONResponse(data)


def api_cell(request: Request) -> JSONResponse:
    """``GET /api/cells/{cell_id}``."""
    return JSONResponse(views.cell(_store(request), request.path_params["cell_id"]))


def api_image(request: Request) -> Response:
    """``GET /api/cells/{cell_id}/image``: full resolution, re-encoded PNG."""
    return _png(cell_png(_store(request), request.path_params["cell_id"]), cache=False)


async def api_thumbnail(request: Request) -> Response:
    """``GET /api/cells/{cell_id}/thumbnail``: small PNG, cached on disk.

    A cached thumbnail of a cell known to be catalogued is read on the event loop
    (a small local file; no thread hop); anything else is made in a thread.
    """
    thumbs = request.app.state.thumbnails
    cell_id = request.path_params["cell_id"]
    data = thumbs.cached(cell_id)
    if data is None:
        data = await run_in_threadpool(thumbs.get, cell_id)
    return _png(data, cache=True)


def api_neighbors(request: Request) -> JSONResponse:
    """``GET /api/cells/{cell_id}/neighbors?model=&k=&where=``."""
    data = views.neighbors(
        _store(request),
        request.path_params["cell_id"],
        _q(request, "model"),
        request.query_params.get("k", 10),
        _q(request, "where"),
        cache=request.app.state.catalog_cache,
    )
    return JSONResponse(data)


async def read_upload(request: Request) -> tuple[Path | None, dict[str, str]]:
    """Read a multipart upload: the ``image`` file to a temporary path, the fields.

    Returns:
        ``(path or None, fields)``; the caller deletes the file.

    Raises:
        UploadTooLargeError: If the body is over :data:`MAX_UPLOAD_BYTES`.
        InvalidArgumentError: If the body is not a multipart form.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
        raise UploadTooLargeError(
            f"the upload is {int(length) / 2**20:.1f} MB; the limit is "
            f"{MAX_UPLOAD_BYTES // 2**20} MB: send a single cell image"
        )
    try:
        form = await request.form(
            max_files=1, max_fields=20, max_part_size=MAX_UPLOAD_BYTES
        )
    except MultiPartException as exc:
        raise InvalidArgumentError(f"cannot read the upload: {exc.message}") from None
    fields: dict[str, str] = {}
    path: Path | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image" or path is not None:
                    continue
                data = await value.read(MAX_UPLOAD_BYTES + 1)
                if len(data) > MAX_UPLOAD_BYTES:
                    raise UploadTooLargeError(
                        f"the image is over {MAX_UPLOAD_BYTES // 2**20} MB: send a "
                        "single cell image"
                    )
                if not data:
                    continue
                suffix = Path(value.filename or "").suffix.lower()
                suffix = suffix if suffix in _SUFFIXES else ".img"
                with tempfile.NamedTemporaryFile(
                    prefix="cytostore-upload-", suffix=suffix, delete=False
                ) as fh:
                    fh.write(data)
                path = Path(fh.name)
            else:
                fields[key] = str(value)
    finally:
        await form.close()
    return path, fields


async def search_upload(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
    """Run an image search from a multipart request (``image``, ``model``, ...).

    Returns:
        ``(result of views.search_image, the form's fields)``.

    Raises:
        InvalidArgumentError: No image in the form.
        UploadTooLargeError: See :func:`read_upload`.
    """
    path, fields = await read_upload(request)
    if path is None:
        raise InvalidArgumentError(
            "no image in the upload: send the file in the multipart field 'image'"
        )
    try:
        result = await run_in_threadpool(
            views.search_image,
            _store(request),
            path,
            fields.get("model") or None,
            fields.get("k") or 10,
            fields.get("um_per_px") or None,
            fields.get("where") or None,
        )
    finally:
        path.unlink(missing_ok=True)
    return result, fields


async def api_search(request: Request) -> JSONResponse:
    """``POST /api/search``: multipart ``image`` (``um_per_px``, ``model``, ``k``)."""
    result, _ = await search_upload(request)
    return JSONResponse(result)


def api_patient(request: Request) -> JSONResponse:
    """``GET /api/patients/{patient_id}?dataset=``."""
    data = views.patient(
        _store(request), request.path_params["patient_id"], _q(request, "dataset")
    )
    return JSONResponse(data)


def api_heads(request: Request) -> JSONResponse:
    """``GET /api/heads``."""
    return JSONResponse({"heads": views.heads(_store(request))})


def api_head(request: Request) -> JSONResponse:
    """``GET /api/heads/{name}``."""
    return JSONResponse(views.head(_store(request), request.path_params["name"]))


def api_models(request: Request) -> JSONResponse:
    """``GET /api/models``."""
    return JSONResponse({"models": views.models(_store(request))})


def api_model(request: Request) -> JSONResponse:
    """``GET /api/models/{name}``."""
    return JSONResponse(views.model(_store(request), request.path_params["name"]))


def api_sql(request: Request) -> JSONResponse:
    """``GET /api/sql?q=``: one sandboxed read-only query."""
    return JSONResponse(
        views.run_sql(_store(request), request.query_params.get("q", ""))
    )


async def api_tags(request: Request) -> JSONResponse:
    """``POST /api/tags`` with JSON ``{"cell_ids", "add", "remove"}``."""
    if request.app.state.read_only:
        raise WriteRefusedError(
            "this server is read-only (--read-only): tags cannot be changed here; "
            "use 'cytostore tag' or restart without --read-only"
        )
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/json"
    ):
        raise InvalidArgumentError(
            "send the tags as JSON (Content-Type: application/json)"
        )
    raw = await request.body()
    if len(raw) > 1_000_000:
        raise UploadTooLargeError("the request is over 1 MB: tag fewer cells at once")
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidArgumentError(
            'the body is not JSON: send {"cell_ids": [...], "add": [...]}'
        ) from None
    report = await run_in_threadpool(views.tag_cells, _store(request), body)
    return JSONResponse(report)


def figure(request: Request) -> Response:
    """``GET /api/models/{name}/curves.png`` and ``/api/heads/{name}/confusion.png``."""
    kind = "models" if request.url.path.startswith("/api/models/") else "heads"
    file = "curves.png" if kind == "models" else "confusion.png"
    path = views.store_file(
        _store(request), f"{kind}/{request.path_params['name']}/{file}"
    )
    with Image.open(path) as img:  # decoded and re-encoded, like the cells
        img.load()
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return _png(buf.getvalue(), cache=False)


ROUTES = [
    Route("/api/cells", api_cells),
    Route("/api/cells/{cell_id:int}", api_cell),
    Route("/api/cells/{cell_id:int}/image", api_image),
    Route("/api/cells/{cell_id:int}/thumbnail", api_thumbnail),
    Route("/api/cells/{cell_id:int}/neighbors", api_neighbors),
    Route("/api/search", api_search, methods=["POST"]),
    Route("/api/patients/{patient_id}", api_patient),
    Route("/api/heads", api_heads),
    Route("/api/heads/{name}", api_head),
    Route("/api/heads/{name}/confusion.png", figure),
    Route("/api/models", api_models),
    Route("/api/models/{name}", api_model),
    Route("/api/models/{name}/curves.png", figure),
    Route("/api/sql", api_sql),
    Route("/api/tags", api_tags, methods=["POST"]),
]
