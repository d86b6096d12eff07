"""The on-disk store: DuckDB catalog, vectors, FAISS indexes, search, SQL, export.

``Store`` is the entry point: its methods cover search, vectors, indexes, tags and
the maintenance verbs (``verify``, ``ls``, ``gc``, ``relocate``, ``remove``); the
names below are what the upper floors need besides it.
"""

from cytostore.store.browse import GRID_COLUMNS, browse_cells, count_cells
from cytostore.store.catalog import (
    CATALOG_FILE,
    CELL_COLUMNS,
    Catalog,
    QueryResult,
    safe_identifier,
)
from cytostore.store.checksums import forget_files, record_file, record_tree
from cytostore.store.faults import fault_point
from cytostore.store.index import check_factory
from cytostore.store.inventory import MODEL_COLUMNS, list_models, ls
from cytostore.store.merge import parse_shard
from cytostore.store.paths import is_inside, resolve_inside
from cytostore.store.sandbox import check_query, parse_where
from cytostore.store.search import to_similarity
from cytostore.store.store import EmbeddingSetHandle, Store
from cytostore.store.vectors import DTYPES, EmbeddingSet, VectorWriter
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
    "DTYPES",
    "GRID_COLUMNS",
    "EmbeddingSet",
    "EmbeddingSetHandle",
    "MODEL_COLUMNS",
    "QueryResult",
    "Store",
    "VectorWriter",
    "browse_cells",
    "check_factory",
    "check_query",
    "delete_head_row",
    "delete_model_row",
    "fault_point",
    "count_cells",
    "forget_files",
    "is_inside",
    "list_models",
    "ls",
    "parse_shard",
    "parse_where",
    "record_file",
    "record_tree",
    "resolve_inside",
    "safe_identifier",
    "to_similarity",
    "write_attention",
    "write_head_row",
    "write_model_row",
    "write_patient_predictions",
    "write_predictions",
]
