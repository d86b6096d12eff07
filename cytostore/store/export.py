"""Export the catalog and the embedding sets as Parquet (pandas, Polars, DuckDB, Spark).

``OUT/cells.parquet`` holds the columns of the view ``cell_meta``, one row per cell,
by ``cell_id``. ``OUT/embeddings_<set>.parquet`` holds ``cell_id`` (int64) and
``embedding``, a fixed-size list of the stored values (float32 or float16, bit for bit),
in the set's row order; the file's metadata records model, metric and dtype. Each file
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cytostore.store.faults import fault_point
from cytostore.store.vectors import EmbeddingSet, list_sets, read_vectors

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = ["export", "embeddings_file_name"]

logger = logging.getLogger(__name__)

_ROW_GROUP_ROWS = 65_536


def embeddings_file_name(es: EmbeddingSet) -> str:
    """Return ``embeddings_<model>.parquet`` (``..._shard<i>of<n>`` for a shard).

    Examples:
        >>> es = EmbeddingSet(1, "simclr-tiny", "2/4", 8, "float32", "cosine", "Flat")
        >>> embeddings_file_name(es)
        'embeddings_simclr-tiny_shard2of4.parquet'
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", es.model)
    if es.shard is not None:
        i, _, n = es.shard.partition("/")
        stem += f"_shard{i}of{n}"
    return f"embeddings_{stem}.parquet"


def export(
    store: Store,
    out: str | os.PathLike[str],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``cells.parquet`` and one ``embeddings_<set>.parquet`` per set to ``out``.

    Args:
        store: The store.
        out: Output folder (created if missing); files of the same names are replaced.
        progress: Called with ``(rows written, rows)`` over all embedding files.

    Returns:
        A report: ``out`` and ``files``, a list of ``{"file", "rows"}``.

    Raises:
        StoreCorruptError: If a set's files are shorter than the catalog records.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [{"file": "cells.parquet", "rows": _export_cells(store, out_dir)}]
    sets = list_sets(store)
    total = sum(s.n_vectors for s in sets)
    done = 0
    for es in sets:
        name = embeddings_file_name(es)
        rows = 0
        for rows in _export_set(store, es, out_dir / name):
            if progress is not None:
                progress(done + rows, total)
        done += rows
        files.append({"file": name, "rows": rows})
    logger.info("exported %d files to %s", len(files), out_dir)
    return {"out": str(out_dir), "files": files}


def _export_cells(store: Store, out_dir: Path) -> int:
    """Write ``cell_meta`` as Parquet, streamed in record batches.

    The catalog's connections cannot write files (see
    :mod:`cytostore.store.sandbox`), so DuckDB hands Arrow batches to pyarrow,
    which writes them.
    """
    import pyarrow.parquet as pq

    final = out_dir / "cells.parquet"
    tmp = final.with_name(final.name + ".tmp")
    n = 0
    try:
        with store.connect(read_only=True) as con:
            reader = con.sql(
                "SELECT * FROM cell_meta ORDER BY cell_id"
            ).to_arrow_reader(_ROW_GROUP_ROWS)
            with pq.ParquetWriter(tmp, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    n += batch.num_rows
        fault_point("export.before_rename")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return n


def _export_set(store: Store, es: EmbeddingSet, final: Path) -> Any:
    """Write one set; yields the rows written so far after each row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value_type = pa.float32() if es.dtype == "float32" else pa.float16()
    schema = pa.schema(
        [("cell_id", pa.int64()), ("embedding", pa.list_(value_type, es.dim))],
        metadata={
            "cytostore": json.dumps(
                {
                    k: es.as_dict()[k]
                    for k in (
                        "set_id",
                        "model",
                        "shard",
                        "dim",
                        "dtype",
                        "metric",
                        "preprocessing",
                    )
                }
            )
        },
    )
    ids, mat = read_vectors(store, es)
    tmp = final.with_name(final.name + ".tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            if ids.size == 0:
                writer.write_table(schema.empty_table())
            for lo in range(0, ids.size, _ROW_GROUP_ROWS):
                chunk = np.ascontiguousarray(mat[lo : lo + _ROW_GROUP_ROWS])
                values = pa.array(chunk.reshape(-1), type=value_type)
                emb = pa.FixedSizeListArray.from_arrays(values, es.dim)
                batch = pa.record_batch(
                    [pa.array(np.asarray(ids[lo : lo + _ROW_GROUP_ROWS])), emb],
                    schema=schema,
                )
                writer.write_batch(batch)
                yield min(lo + _ROW_GROUP_ROWS, ids.size)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    yield int(ids.size)
