"""The web app (``cytostore serve``): pages and a JSON API over the Python API."""

from cytostore.serve.app import create_app

__all__ = ["create_app"]
