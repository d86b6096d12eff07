"""Heads on frozen embeddings: linear/kNN/MLP probes, attention-MIL, splits, metrics."""

from cytostore.heads.abmil import ABMILHead, GatedAttention
from cytostore.heads.knn import KNNHead
from cytostore.heads.linear import LinearProbe
from cytostore.heads.mlp import MLPHead

__all__ = ["ABMILHead", "GatedAttention", "KNNHead", "LinearProbe", "MLPHead"]
