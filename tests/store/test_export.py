from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from vec_helpers import random_vectors

from cytostore.store import Store


def test_export__parquet_is_bit_exact_and_readable(
    vec_store: Store, tmp_path: Path
) -> None:
    es16 = vec_store.create_embedding_set("half", 16, dtype="float16")
    ids32, x32 = vec_store.vectors("m")
    with vec_store.vector_writer(es16) as w:
        w.append(ids32[:50], random_vectors(50, 16, seed=8))
    report = vec_store.export(tmp_path / "out")
    assert [f["file"] for f in report["files"]] == [
        "cells.parquet",
        "embeddings_m.parquet",
        "embeddings_half.parquet",
    ]
    out = tmp_path / "out"
    assert not list(out.glob("*.tmp"))
    table = pq.read_table(out / "embeddings_m.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    got = table.column("embedding").combine_chunks().flatten().to_numpy()
    assert got.tobytes() == np.ascontiguousarray(x32).tobytes()
    assert table.column("cell_id").to_numpy().tolist() == ids32.tolist()
    half = pq.read_table(out / "embeddings_half.parquet")
    _, x16 = vec_store.vectors("half")
    flat16 = half.column("embedding").combine_chunks().flatten().to_numpy()
    assert flat16.dtype == np.float16 and flat16.tobytes() == np.asarray(x16).tobytes()
    df = pd.read_parquet(out / "embeddings_m.parquet")
    np.testing.assert_array_equal(np.stack(df["embedding"].to_list()), x32)
    n, first = duckdb.sql(
        f"SELECT count(*), first(embedding[1] ORDER BY cell_id) "
        f"FROM '{out / 'embeddings_m.parquet'}'"
    ).fetchall()[0]
    assert n == 300 and first == float(x32[0, 0])
    cells = pd.read_parquet(out / "cells.parquet")
    assert list(cells.columns) == vec_store.columns("cell_meta")
    assert cells["cell_id"].tolist() == list(range(1, 301))
