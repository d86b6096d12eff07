"""The on-disk store: DuckDB catalog, vectors, FAISS indexes, search, SQL, export."""

from cytostore.store.catalog import CATALOG_FILE, CELL_COLUMNS, QueryResult, Store
from cytostore.store.vectors import EmbeddingSet, VectorWriter

__all__ = [
    "CATALOG_FILE",
    "CELL_COLUMNS",
    "EmbeddingSet",
    "QueryResult",
    "Store",
    "VectorWriter",
]
