"""The server's guards: Host allow-list, Origin check on writes, access token.

A pure ASGI middleware in front of every route:

- **Host** (DNS rebinding): the ``Host`` header must name 127.0.0.1, localhost,
  [::1] or the host the server was bound to (plus any ``allowed_hosts`` given);
  anything else gets 400.
- **Origin** (CSRF): a POST whose ``Origin`` (or ``Sec-Fetch-Site: cross-site``)
  points at another site gets 403; requests without an ``Origin`` (curl, scripts)
  pass, and the tags API also insists on a JSON body, which a cross-site form
  cannot send.
- **Token**: when the app has one (``cytostore serve`` makes one on a non-loopback
  host), every request must carry it as ``?token=``, a ``cytostore_token`` cookie
  (set on the first good ``?token=``) or ``Authorization: Bearer``; else 403.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LOOPBACK_HOSTS", "Guard", "host_of", "is_loopback"]

#: Hosts always allowed in the Host header.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
COOKIE = "cytostore_token"


def host_of(value: str) -> str:
    """Return the host part of a ``Host`` header value (no port), lower-cased.

    Examples:
        >>> host_of("127.0.0.1:8000"), host_of("[::1]:80"), host_of("LocalHost")
        ('127.0.0.1', '[::1]', 'localhost')
    """
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.split(":", 1)[0]


def is_loopback(host: str) -> bool:
    """Return whether ``host`` (as given to ``--host``) is a loopback address."""
    h = host.strip().lower()
    return h in LOOPBACK_HOSTS or h.startswith("127.")


class Guard:
    """ASGI middleware that checks Host, Origin (on POST) and the token.

    Args:
        app: The wrapped application.
        allowed_hosts: Hosts accepted in the ``Host`` header besides the loopback
            names.
        token: The access token (``None``: none required).
    """

    def __init__(
        self, app: ASGIApp, allowed_hosts: Iterable[str], token: str | None
    ) -> None:
        self.app = app
        self.hosts = {host_of(h) for h in (*LOOPBACK_HOSTS, *allowed_hosts)}
        self.hosts |= {f"[{h}]" for h in self.hosts if ":" in h and "[" not in h}
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then pass it on or answer with the refusal."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
        }
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _deny(scope, send, *refusal)
            return
        query_token = _query_token(scope)
        if self.token is None or query_token is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [
                    *message.get("headers", []),
                    (b"set-cookie", cookie.encode("latin-1")),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = host_of(headers.get("host", ""))
        if host not in self.hosts:
            return 400, (
                f"Host {host!r} is not allowed: open the page as http://127.0.0.1 "
                "(or the host given to --host)"
            )
        if self.token is not None and not self._has_token(scope, headers):
            return 403, (
                "this server needs its access token: open the URL with ?token=... "
                "that 'cytostore serve' printed"
            )
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and (
                origin == "null" or host_of(urlsplit(origin).netloc) not in self.hosts
            ):
                return 403, (
                    f"cross-site request refused (Origin {origin!r}): change the "
                    "store from this server's own page"
                )
            if headers.get("sec-fetch-site") == "cross-site":
                return 403, "cross-site request refused: use this server's own page"
        return None

    def _has_token(self, scope: Scope, headers: dict[str, str]) -> bool:
        token = (self.token or "").encode()
        given = [_query_token(scope)]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 (a malformed cookie is no token)
            pass
        if COOKIE in cookie:
            given.append(cookie[COOKIE].value)
        return any(
            g is not None and hmac.compare_digest(g.encode(), token) for g in given
        )


def _query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


async def _deny(scope: Scope, send: Send, status: int, message: str) -> None:
    """Answer a refused request: JSON under ``/api/``, a short page elsewhere."""
    if scope["path"].startswith("/api/"):
        body = json.dumps({"error": message}).encode()
        ctype = b"application/json"
    else:
        from html import escape

        body = (
            "<!doctype html><title>cytostore: refused</title>"
            f'<p class="error" id="error">{escape(message)}</p>'
        ).encode()
        ctype = b"text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
    ]
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
