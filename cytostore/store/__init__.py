"""The on-disk store: DuckDB catalog, vectors, FAISS indexes, search, SQL, export."""

from cytostore.store.catalog import CATALOG_FILE, CELL_COLUMNS, Catalog, QueryResult
from cytostore.store.checksums import forget_files, record_file, record_tree
from cytostore.store.paths import is_inside, resolve_inside
from cytostore.store.remove import remove
from cytostore.store.sandbox import check_query, parse_where
from cytostore.store.store import Store
from cytostore.store.vectors import EmbeddingSet, VectorWriter
from cytostore.store.writers import (
    delete_head_row,
    delete_model_row,
    write_attention,
    write_head_row,
    write_model_row,
    write_patient_predictions,
    write_predictions,
)

__all__ = [
    "CATALOG_FILE",
    "CELL_COLUMNS",
    "Catalog",
    "EmbeddingSet",
    "QueryResult",
    "Store",
    "VectorWriter",
    "forget_files",
    "record_file",
    "record_tree",
    "remove",
    "check_query",
    "is_inside",
    "parse_where",
    "resolve_inside",
    "delete_head_row",
    "delete_model_row",
    "write_attention",
    "write_head_row",
    "write_model_row",
    "write_patient_predictions",
    "write_predictions",
]
