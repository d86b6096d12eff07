"""Floor 3: pixel-level explanations through a frozen backbone and a saved head."""

from cytostore.explain.attribution import (
    DEFAULT_BASELINE_SIGMA_UM,
    DEFAULT_STEPS,
    METHODS,
    Attribution,
    CellModel,
    attribute,
)
from cytostore.explain.checks import (
    DELETION_FRACTIONS,
    RANDOMISATION_MAX_RHO,
    deletion_curve,
    deletion_summary,
    pointing,
    rank_correlation,
)
from cytostore.explain.explainer import ExplainedCell, Explainer
from cytostore.explain.pixels import explain_pixels, run_checks

__all__ = [
    "DEFAULT_BASELINE_SIGMA_UM",
    "DEFAULT_STEPS",
    "DELETION_FRACTIONS",
    "METHODS",
    "RANDOMISATION_MAX_RHO",
    "Attribution",
    "CellModel",
    "ExplainedCell",
    "Explainer",
    "attribute",
    "deletion_curve",
    "deletion_summary",
    "explain_pixels",
    "pointing",
    "rank_correlation",
    "run_checks",
]
