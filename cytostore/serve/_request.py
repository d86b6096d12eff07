"""What every route reads off a request: the app's store and a query parameter."""

from __future__ import annotations

from starlette.requests import Request

from cytostore.store import Store

__all__ = ["param", "store_of"]


def store_of(request: Request) -> Store:
    """Return the store the app serves (``create_app`` puts it on the app state)."""
    store: Store = request.app.state.store
    return store


def param(request: Request, name: str) -> str | None:
    """Return a query parameter's value; ``None`` when absent or empty."""
    value = request.query_params.get(name)
    return value if value not in (None, "") else None
