"""cytostore: a self-supervised feature store for leukaemia cytomorphology."""

from typing import TYPE_CHECKING

from cytostore._lazy import attach

if TYPE_CHECKING:
    from cytostore.store import Store

__version__ = "0.1.0"
__all__ = ["Store", "__version__"]

# ``Store`` loads on first use, so ``cytostore --help`` starts without DuckDB.
__getattr__, __dir__ = attach(__name__, {"Store": "store"})
