"""The embedder: preprocessing, cache, backbones, model cards, SSL training, Encoder.

Names load on first use (see :mod:`cytostore._lazy`): ``from cytostore.embedder
import search`` imports no torch; ``pretrain`` alone brings Lightning and lightly.
"""

from typing import TYPE_CHECKING

from cytostore._lazy import attach

if TYPE_CHECKING:
    from cytostore.embedder.backbones import BACKBONES, build_backbone
    from cytostore.embedder.cache import CellCache, build_cache
    from cytostore.embedder.card import ModelCard
    from cytostore.embedder.device import resolve_device
    from cytostore.embedder.embed import embed
    from cytostore.embedder.encoder import Encoder
    from cytostore.embedder.preprocess import Preprocessing
    from cytostore.embedder.pretrain import pretrain
    from cytostore.embedder.query import SearchResult, search
    from cytostore.embedder.registry import (
        list_models,
        load_card,
        register_model,
        register_random_model,
    )

__all__ = [
    "BACKBONES",
    "CellCache",
    "Encoder",
    "ModelCard",
    "Preprocessing",
    "SearchResult",
    "build_backbone",
    "build_cache",
    "embed",
    "list_models",
    "pretrain",
    "load_card",
    "register_model",
    "register_random_model",
    "resolve_device",
    "search",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "BACKBONES": "backbones",
        "build_backbone": "backbones",
        "CellCache": "cache",
        "build_cache": "cache",
        "ModelCard": "card",
        "resolve_device": "device",
        "embed": "embed",
        "Encoder": "encoder",
        "Preprocessing": "preprocess",
        "pretrain": "pretrain",
        "SearchResult": "query",
        "search": "query",
        "list_models": "registry",
        "load_card": "registry",
        "register_model": "registry",
        "register_random_model": "registry",
    },
)
