"""The on-disk store: DuckDB catalog, vectors, FAISS indexes, search, SQL, export.

``Store`` is the entry point: its methods cover search, vectors, indexes, tags and
the maintenance verbs (``verify``, ``ls``, ``gc``, ``relocate``, ``remove``); the
names below are what the upper floors need besides it.
"""

from cytostore.store.annotations import (
    annotation_columns,
    drop_annotations,
    find_cells,
    refuse_rows,
    write_annotations,
)
from cytostore.store.browse import (
    GRID_COLUMNS,
    browse_cells,
    catalog_stamp,
    count_cells,
    where_clause,
)
from cytostore.store.catalog import (
    CATALOG_FILE,
    CELL_COLUMNS,
    Catalog,
    QueryResult,
    safe_identifier,
)
from cytostore.store.cellsets import MISSING_TEXTS, Cells, is_missing, load_cells
from cytostore.store.checksums import forget_files, record_file, record_tree
from cytostore.store.curation import (
    CURATION_KINDS,
    check_run_name,
    curation_runs,
    delete_curation_run,
    read_label_issues,
    read_map,
    read_selection,
    write_label_issues,
    write_map,
    write_selection,
)
from cytostore.store.faults import fault_point
from cytostore.store.index import check_factory
from cytostore.store.inventory import MODEL_COLUMNS, list_models, ls
from cytostore.store.merge import parse_shard
from cytostore.store.mixing import MIXING_K, mixing_score, store_mixing_score
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
    "CURATION_KINDS",
    "Cells",
    "Catalog",
    "DTYPES",
    "GRID_COLUMNS",
    "MIXING_K",
    "MISSING_TEXTS",
    "EmbeddingSet",
    "EmbeddingSetHandle",
    "MODEL_COLUMNS",
    "QueryResult",
    "Store",
    "VectorWriter",
    "annotation_columns",
    "browse_cells",
    "catalog_stamp",
    "check_factory",
    "check_query",
    "check_run_name",
    "curation_runs",
    "delete_curation_run",
    "delete_head_row",
    "delete_model_row",
    "drop_annotations",
    "fault_point",
    "count_cells",
    "find_cells",
    "forget_files",
    "is_missing",
    "is_inside",
    "list_models",
    "load_cells",
    "ls",
    "mixing_score",
    "parse_shard",
    "parse_where",
    "read_label_issues",
    "read_map",
    "read_selection",
    "record_file",
    "record_tree",
    "refuse_rows",
    "resolve_inside",
    "safe_identifier",
    "store_mixing_score",
    "to_similarity",
    "write_annotations",
    "write_attention",
    "write_head_row",
    "write_label_issues",
    "write_map",
    "write_model_row",
    "write_patient_predictions",
    "write_predictions",
    "where_clause",
    "write_selection",
]
