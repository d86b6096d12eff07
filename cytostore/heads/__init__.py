"""Heads on frozen embeddings: linear/kNN/MLP probes, attention-MIL, splits, metrics."""

from cytostore.heads.abmil import ABMILHead, GatedAttention
from cytostore.heads.compare import compare
from cytostore.heads.explain import explain
from cytostore.heads.knn import KNNHead
from cytostore.heads.linear import LinearProbe
from cytostore.heads.mil import mil
from cytostore.heads.mlp import MLPHead
from cytostore.heads.predict import predict
from cytostore.heads.probe import probe
from cytostore.heads.registry import list_heads, load_head, save_head

__all__ = [
    "ABMILHead",
    "GatedAttention",
    "KNNHead",
    "LinearProbe",
    "MLPHead",
    "compare",
    "explain",
    "list_heads",
    "load_head",
    "mil",
    "predict",
    "probe",
    "save_head",
]
