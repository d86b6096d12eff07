"""Numbered schema migrations of the catalog, applied in order when a store is opened.

A migration is ``(number, name, sql)``; the applied numbers are kept in the table
``schema_migrations``. Never edit an applied migration: add a new one. Ranges by owner:
1-9 catalog core, 10-19 embedder, 20-29 vectors and indexes, 30-39 heads.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "Migration"]

Migration = tuple[int, str, str]

_M001_CATALOG = """
CREATE TABLE datasets (
    dataset      VARCHAR PRIMARY KEY,
    layout       VARCHAR NOT NULL,
    root         VARCHAR NOT NULL,
    um_per_px    DOUBLE,
    n_expected   BIGINT,
    ingested_at  TIMESTAMP
);
CREATE TABLE patients (
    dataset      VARCHAR NOT NULL,
    patient_id   VARCHAR NOT NULL,
    bag_label    VARCHAR,
    age          DOUBLE,
    sex          VARCHAR,
    PRIMARY KEY (dataset, patient_id)
);
CREATE TABLE cells (
    cell_id       BIGINT PRIMARY KEY,
    dataset       VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    label         VARCHAR,
    patient_id    VARCHAR,
    um_per_px     DOUBLE,
    width         INTEGER,
    height        INTEGER,
    sha256        VARCHAR,
    cell_type     VARCHAR,
    reannotation1 VARCHAR,
    reannotation2 VARCHAR,
    UNIQUE (dataset, path)
);
CREATE TABLE skipped (
    dataset     VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL,
    skipped_at  TIMESTAMP,
    PRIMARY KEY (dataset, path)
);
"""

_M002_LATER_FLOORS = """
CREATE TABLE models (
    name        VARCHAR PRIMARY KEY,
    method      VARCHAR NOT NULL,
    backbone    VARCHAR NOT NULL,
    dim         INTEGER NOT NULL,
    path        VARCHAR NOT NULL,
    sha256      VARCHAR,
    card        JSON,
    created_at  TIMESTAMP
);
CREATE TABLE heads (
    name        VARCHAR PRIMARY KEY,
    kind        VARCHAR NOT NULL,
    model       VARCHAR,
    label       VARCHAR,
    path        VARCHAR NOT NULL,
    report      JSON,
    created_at  TIMESTAMP
);
CREATE TABLE predictions (
    cell_id        BIGINT NOT NULL,
    head           VARCHAR NOT NULL,
    label          VARCHAR,
    probability    DOUBLE,
    probabilities  JSON,
    predicted_at   TIMESTAMP,
    PRIMARY KEY (cell_id, head)
);
CREATE TABLE patient_predictions (
    dataset      VARCHAR NOT NULL,
    patient_id   VARCHAR NOT NULL,
    head         VARCHAR NOT NULL,
    label        VARCHAR,
    probability  DOUBLE,
    fold         INTEGER,
    PRIMARY KEY (dataset, patient_id, head)
);
CREATE TABLE attention (
    cell_id     BIGINT NOT NULL,
    head        VARCHAR NOT NULL,
    patient_id  VARCHAR,
    attention   DOUBLE,
    fold        INTEGER,
    PRIMARY KEY (cell_id, head)
);
"""

_M020_EMBEDDING_SETS = """
CREATE TABLE embedding_sets (
    set_id         INTEGER PRIMARY KEY,
    model          VARCHAR NOT NULL,
    shard          VARCHAR,
    dim            INTEGER NOT NULL,
    dtype          VARCHAR NOT NULL,
    metric         VARCHAR NOT NULL,
    index_factory  VARCHAR NOT NULL,
    search_params  JSON,
    preprocessing  JSON,
    n_vectors      BIGINT NOT NULL,
    n_indexed      BIGINT NOT NULL,
    created_at     TIMESTAMP,
    updated_at     TIMESTAMP
);
CREATE TABLE neighbor_tables (
    name        VARCHAR PRIMARY KEY,
    set_id      INTEGER NOT NULL,
    k           INTEGER NOT NULL,
    "where"     VARCHAR,
    n_rows      BIGINT NOT NULL,
    created_at  TIMESTAMP
);
"""

_M021_SET_WEIGHTS = """
ALTER TABLE embedding_sets ADD COLUMN weights_sha256 VARCHAR;
"""

_M030_PATIENT_PREDICTIONS = """
ALTER TABLE patient_predictions ADD COLUMN true_label VARCHAR;
ALTER TABLE patient_predictions ADD COLUMN probabilities JSON;
ALTER TABLE patient_predictions ADD COLUMN predicted_at TIMESTAMP;
ALTER TABLE attention ADD COLUMN dataset VARCHAR;
"""

_M031_HEAD_WEIGHTS = """
ALTER TABLE heads ADD COLUMN weights_sha256 VARCHAR;
"""

_M032_FILES = """
CREATE TABLE files (
    path        VARCHAR PRIMARY KEY,
    kind        VARCHAR NOT NULL,
    owner       VARCHAR,
    bytes       BIGINT NOT NULL,
    sha256      VARCHAR NOT NULL,
    written_at  TIMESTAMP
);
"""

_M033_TAGS = """
CREATE TABLE tags (
    cell_id     BIGINT NOT NULL,
    tag         VARCHAR NOT NULL,
    created_at  TIMESTAMP,
    PRIMARY KEY (cell_id, tag)
);
"""

_M034_ID_HIGH_WATER = """
CREATE TABLE id_counters (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO id_counters SELECT 'cell_id', coalesce(max(cell_id), 0) FROM cells;
"""

_M035_PREDICTION_PROVENANCE = """
ALTER TABLE predictions ADD COLUMN in_training BOOLEAN;
ALTER TABLE predictions ADD COLUMN fold INTEGER;
ALTER TABLE predictions ADD COLUMN train_similarity DOUBLE;
ALTER TABLE predictions ADD COLUMN out_of_distribution BOOLEAN;
"""

_M036_CURATION = """
CREATE TABLE curation_runs (
    kind        VARCHAR NOT NULL,
    run         VARCHAR NOT NULL,
    model       VARCHAR,
    params      VARCHAR,
    created_at  TIMESTAMP,
    PRIMARY KEY (kind, run)
);
CREATE TABLE label_issues (
    run                 VARCHAR NOT NULL,
    model               VARCHAR NOT NULL,
    label_column        VARCHAR NOT NULL,
    cell_id             BIGINT NOT NULL,
    given_label         VARCHAR,
    suggested_label     VARCHAR,
    score               DOUBLE,
    rank                INTEGER,
    neighbor_agreement  DOUBLE,
    is_issue            BOOLEAN,
    PRIMARY KEY (run, cell_id)
);
CREATE TABLE selections (
    run       VARCHAR NOT NULL,
    cell_id   BIGINT NOT NULL,
    rank      INTEGER NOT NULL,
    strategy  VARCHAR NOT NULL,
    score     DOUBLE,
    PRIMARY KEY (run, cell_id)
);
CREATE TABLE maps (
    run      VARCHAR NOT NULL,
    cell_id  BIGINT NOT NULL,
    x        REAL,
    y        REAL,
    PRIMARY KEY (run, cell_id)
);
"""

_M037_ANNOTATIONS = """
CREATE TABLE annotations (
    cell_id  BIGINT PRIMARY KEY
);
CREATE TABLE annotation_columns (
    name        VARCHAR PRIMARY KEY,
    type        VARCHAR NOT NULL,
    source      VARCHAR,
    key         VARCHAR,
    created_at  TIMESTAMP,
    updated_at  TIMESTAMP
);
"""

MIGRATIONS: list[Migration] = [
    (1, "m001_catalog", _M001_CATALOG),
    (2, "m002_models_heads_predictions", _M002_LATER_FLOORS),
    (20, "m020_embedding_sets", _M020_EMBEDDING_SETS),
    (21, "m021_embedding_set_weights", _M021_SET_WEIGHTS),
    (30, "m030_heads_patient_prediction_columns", _M030_PATIENT_PREDICTIONS),
    (31, "m031_head_weights", _M031_HEAD_WEIGHTS),
    (32, "m032_files_checksums", _M032_FILES),
    (33, "m033_tags", _M033_TAGS),
    (34, "m034_cell_id_high_water", _M034_ID_HIGH_WATER),
    (35, "m035_prediction_provenance", _M035_PREDICTION_PROVENANCE),
    (36, "m036_curation", _M036_CURATION),
    (37, "m037_annotations", _M037_ANNOTATIONS),
]
