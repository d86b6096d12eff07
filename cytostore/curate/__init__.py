"""Curation on the embeddings: label audit, selection for annotation, maps, imports.

Names load on first use (see :mod:`cytostore._lazy`): importing the package imports
neither cleanlab nor torch.
"""

from typing import TYPE_CHECKING

from cytostore._lazy import attach

if TYPE_CHECKING:
    from cytostore.curate.annotate import annotate
    from cytostore.curate.audit import AuditResult, audit, score_label_issues
    from cytostore.curate.map import MAP_METHODS, MapResult, map_cells
    from cytostore.curate.select import STRATEGIES, SelectResult, select

__all__ = [
    "MAP_METHODS",
    "STRATEGIES",
    "AuditResult",
    "MapResult",
    "SelectResult",
    "annotate",
    "audit",
    "map_cells",
    "score_label_issues",
    "select",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "annotate": "annotate",
        "MAP_METHODS": "map",
        "MapResult": "map",
        "map_cells": "map",
        "AuditResult": "audit",
        "audit": "audit",
        "score_label_issues": "audit",
        "STRATEGIES": "select",
        "SelectResult": "select",
        "select": "select",
    },
)
