"""``cytostore serve``: browse a store in a web browser (cells, search, SQL, tags)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from cytostore.cli._common import echo_summary, store_argument

#: The app's import string: the CLI never imports ``cytostore.serve``.
APP = "cytostore.serve.app:create_app"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@click.command("serve")
@store_argument
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback lets others on the network read "
    "the store (a token is then required).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--read-only", is_flag=True, help="Refuse every change (tags) and cache nothing."
)
def serve(store: Path, host: str, port: int, read_only: bool) -> None:
    """Start the web page over a store: browse, filter, find look-alikes, tag.

    Binds 127.0.0.1 unless --host says otherwise; on any other address a token is
    printed with the URL and every request must carry it. The pages and the JSON
    API are described in docs/web.md. Stop it with Ctrl-C.

    \b
    Example:
        cytostore serve demo-out/store
        cytostore serve demo-out/store --port 8080 --read-only
    """
    import uvicorn

    from cytostore.store import Store

    root = Store.open(store).root  # a missing store fails here, before binding
    loopback = host in _LOOPBACK or host.startswith("127.")
    token = None if loopback else secrets.token_urlsafe(16)
    os.environ["CYTOSTORE_SERVE_STORE"] = str(root)
    os.environ["CYTOSTORE_SERVE_HOST"] = host
    if read_only:
        os.environ["CYTOSTORE_SERVE_READ_ONLY"] = "1"
    else:
        os.environ.pop("CYTOSTORE_SERVE_READ_ONLY", None)
    if token:
        os.environ["CYTOSTORE_SERVE_TOKEN"] = token
    else:
        os.environ.pop("CYTOSTORE_SERVE_TOKEN", None)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    mode = " (read-only)" if read_only else ""
    echo_summary(f"serving {root}{mode} at {url}")
    if loopback:
        echo_summary(f"bound to {host} only: other machines cannot reach it")
    else:
        echo_summary(
            f"warning: bound to {host}: anyone who can reach port {port} and has the "
            "token can read the store; bind 127.0.0.1 to keep it private"
        )
    uvicorn.run(APP, factory=True, host=host, port=port, log_level="warning")
