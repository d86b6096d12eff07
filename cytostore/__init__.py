"""cytostore: a self-supervised feature store for leukaemia cytomorphology."""

from cytostore.store import Store

__version__ = "0.1.0"
__all__ = ["Store", "__version__"]
