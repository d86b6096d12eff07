"""The embedder: preprocessing, cache, backbones, model cards, SSL training, Encoder."""

from cytostore.embedder.backbones import BACKBONES, build_backbone

__all__ = [
    "BACKBONES",
    "build_backbone",
]
