"""The web app: one Starlette application over one store.

``create_app`` builds it; ``cytostore serve`` runs it with uvicorn by the import
string ``"cytostore.serve.app:create_app"`` (``factory=True``), passing the store
and the options through environment variables, so the CLI never imports this
package. Every page has a JSON twin under ``/api/`` computed by the same library
calls (see docs/web.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from cytostore.errors import (
    CytostoreError,
    ImageDecodeError,
    InvalidArgumentError,
    NotFoundError,
    QueryTimeoutError,
    StoreBusyError,
    StoreCorruptError,
    UnknownColumnError,
    UploadTooLargeError,
    WriteRefusedError,
)
from cytostore.serve import api, curation_routes, pages, pixels
from cytostore.serve.cache import CatalogCache
from cytostore.serve.images import ThumbnailCache
from cytostore.serve.security import Guard
from cytostore.store import Store

__all__ = ["ENV_HOST", "ENV_READ_ONLY", "ENV_STORE", "ENV_TOKEN", "create_app"]

logger = logging.getLogger(__name__)

ENV_STORE = "CYTOSTORE_SERVE_STORE"
ENV_READ_ONLY = "CYTOSTORE_SERVE_READ_ONLY"
ENV_TOKEN = "CYTOSTORE_SERVE_TOKEN"
ENV_HOST = "CYTOSTORE_SERVE_HOST"
_HERE = Path(__file__).parent


def status_of(exc: BaseException) -> int:
    """Return the HTTP status for an error raised while answering a request.

    Examples:
        >>> from cytostore.errors import UnknownCellError, InvalidWhereError
        >>> status_of(UnknownCellError("x")), status_of(InvalidWhereError("y"))
        (404, 400)
    """
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, UploadTooLargeError):
        return 413
    if isinstance(exc, WriteRefusedError):
        return 403
    if isinstance(exc, UnknownColumnError | QueryTimeoutError):
        return 400  # a bad filter or query, not a missing page
    if isinstance(exc, InvalidArgumentError):
        return 400  # before NotFoundError: an ambiguous set name is both
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, StoreBusyError):
        return 503
    if isinstance(exc, StoreCorruptError):
        return 403 if "outside" in str(exc) or "leads out" in str(exc) else 500
    if isinstance(exc, ImageDecodeError):
        return 422
    return 500


def message_of(exc: BaseException) -> str:
    """Return the one-line message shown for an error (no traceback, ever)."""
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if isinstance(exc, CytostoreError):
        text = str(exc.args[0]) if exc.args else type(exc).__name__
        return text.splitlines()[0] if text else type(exc).__name__
    return "internal error: the server's log has the details"


async def _error(request: Request, exc: Exception) -> Response:
    status = status_of(exc)
    if status == 500:
        logger.exception("error answering %s", request.url.path, exc_info=exc)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message_of(exc)}, status_code=status)
    return pages.error_page(request, status, message_of(exc))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def create_app(
    store: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """Build the web app over a store.

    With ``store=None`` (how ``cytostore serve`` calls it through uvicorn) the
    store, read-only flag, token and bound host come from the environment
    variables ``CYTOSTORE_SERVE_STORE``, ``CYTOSTORE_SERVE_READ_ONLY=1``,
    ``CYTOSTORE_SERVE_TOKEN`` and ``CYTOSTORE_SERVE_HOST``.

    Args:
        store: The store folder.
        read_only: Refuse every write (tags) with 403 and cache no thumbnails.
        token: Require this token on every request (``None``: no token).
        allowed_hosts: Host names accepted in the ``Host`` header besides
            127.0.0.1, localhost and [::1].

    Returns:
        The ASGI application.

    Raises:
        InvalidArgumentError: If no store is given and the environment names none.
        StoreNotFoundError: If the folder holds no store.
    """
    hosts = list(allowed_hosts or [])
    if store is None:
        env_store = os.environ.get(ENV_STORE)
        if not env_store:
            raise InvalidArgumentError(
                f"no store given: pass create_app(STORE) or set {ENV_STORE}"
            )
        store = env_store
        read_only = read_only or _env_flag(ENV_READ_ONLY)
        token = token or os.environ.get(ENV_TOKEN) or None
        if os.environ.get(ENV_HOST):
            hosts.append(os.environ[ENV_HOST])
    st = Store.open(store)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")), autoescape=True
    )
    templates = Jinja2Templates(env=env)
    app = Starlette(
        routes=[
            *pages.ROUTES,
            *curation_routes.ROUTES,
            *api.ROUTES,
            *pixels.ROUTES,
            Mount(
                "/static", StaticFiles(directory=str(_HERE / "static")), name="static"
            ),
            Route("/favicon.ico", pages.favicon),
        ],
        middleware=[Middleware(Guard, allowed_hosts=hosts, token=token)],
        exception_handlers={
            CytostoreError: _error,
            HTTPException: _error,
            Exception: _error,
        },
    )
    writable = not read_only and os.access(st.root, os.W_OK)
    catalog_cache = CatalogCache(st)
    state: dict[str, Any] = {
        "store": st,
        "read_only": read_only,
        "templates": templates,
        "catalog_cache": catalog_cache,
        "thumbnails": ThumbnailCache(st, writable=writable, catalog=catalog_cache),
    }
    for key, value in state.items():
        setattr(app.state, key, value)
    return app
