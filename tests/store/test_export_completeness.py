"""Parquet export: every row bit for bit over row groups, shards, float16; atomic.

A store of 70,000 fake cells (more than one 65,536-row Parquet row group) with a
float32 set, a float16 set and a set sharded in two is exported and read back with
pyarrow. A failure part-way (an injected fault in a child process, or a write that
raises) must leave no file of a final name with partial content.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.store import Store

N_CELLS = 70_000
ROW_GROUP = 65_536
SETS = {  # file name -> (model, shard, dtype, dim)
    "embeddings_big.parquet": ("big", None, "float32", 4),
    "embeddings_half.parquet": ("half", None, "float16", 6),
    "embeddings_sh_shard1of2.parquet": ("sh", "1/2", "float32", 3),
    "embeddings_sh_shard2of2.parquet": ("sh", "2/2", "float32", 3),
}


@pytest.fixture(scope="module")
def _big_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_big") / "store"
    store = Store.create(root)
    ids = add_fake_cells(store, N_CELLS, seed=2)
    half = N_CELLS // 2
    parts = {
        ("big", None): ids,
        ("half", None): ids,
        ("sh", "1/2"): ids[:half],
        ("sh", "2/2"): ids[half:],
    }
    for seed, (model, shard, dtype, dim) in enumerate(SETS.values()):
        rows = parts[(model, shard)]
        es = store.create_embedding_set(
            model, dim, dtype=dtype, metric="l2", shard=shard
        )
        x = random_vectors(rows.size, dim, seed=10 + seed)
        with store.vector_writer(es) as w:
            for lo in range(0, rows.size, 30_000):  # several appends
                w.append(rows[lo : lo + 30_000], x[lo : lo + 30_000])
    return root


@pytest.fixture
def big_store(tmp_path: Path, _big_template: Path) -> Store:
    """A private copy of the 70,000-cell store with four sets (see ``SETS``)."""
    return Store.open(shutil.copytree(_big_template, tmp_path / "store"))


def _stored(store: Store, model: str, shard: str | None) -> tuple[Any, Any]:
    name = model if shard is None else f"{model}@{shard}"
    ids, x = store.vectors(name)
    return np.asarray(ids), np.asarray(x)


def _export_in_child(root: Path, out: Path, fault: str, mode: str) -> int:
    """Run ``Store.open(root).export(out)`` in a child with ``CYTOSTORE_FAULT``."""
    env = {**os.environ, "CYTOSTORE_FAULT": fault}
    if mode == "raise":
        env["CYTOSTORE_FAULT_MODE"] = "raise"
    code = (
        "import sys; from cytostore.store import Store; "
        "Store.open(sys.argv[1]).export(sys.argv[2])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if mode == "raise":
        assert "InjectedFault" in done.stderr
    return done.returncode


def test_export__all_rows_bit_exact_over_row_groups_shards_and_float16(
    big_store: Store, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = big_store.export(out)
    assert {f["file"]: f["rows"] for f in report["files"]} == {
        "cells.parquet": N_CELLS,
        "embeddings_big.parquet": N_CELLS,
        "embeddings_half.parquet": N_CELLS,
        "embeddings_sh_shard1of2.parquet": N_CELLS // 2,
        "embeddings_sh_shard2of2.parquet": N_CELLS - N_CELLS // 2,
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(["cells.parquet", *SETS])
    for name, (model, shard, dtype, dim) in SETS.items():
        ids, x = _stored(big_store, model, shard)
        meta = pq.ParquetFile(out / name)
        assert meta.metadata.num_rows == ids.size
        if ids.size > ROW_GROUP:
            assert meta.metadata.num_row_groups >= 2
        table = pq.read_table(out / name)
        value = pa.float32() if dtype == "float32" else pa.float16()
        assert table.schema.field("embedding").type == pa.list_(value, dim)
        assert table.column("cell_id").to_numpy().tobytes() == ids.tobytes()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy()
        assert flat.dtype == x.dtype
        assert flat.tobytes() == np.ascontiguousarray(x).tobytes()
        described = json.loads(table.schema.metadata[b"cytostore"])
        assert (described["model"], described["shard"]) == (model, shard)
        assert (described["dtype"], described["dim"]) == (dtype, dim)
    cells = pq.ParquetFile(out / "cells.parquet")
    assert cells.metadata.num_rows == N_CELLS
    assert cells.metadata.num_row_groups >= 2
    cell_ids = pq.read_table(out / "cells.parquet", columns=["cell_id"])
    assert cell_ids.column("cell_id").to_pylist() == big_store.where_ids().tolist()


def test_export__shards_together_are_the_cells_once(
    big_store: Store, tmp_path: Path
) -> None:
    big_store.export(tmp_path / "out")
    parts = [
        pq.read_table(tmp_path / "out" / f"embeddings_sh_shard{i}of2.parquet")
        for i in (1, 2)
    ]
    ids = np.concatenate([p.column("cell_id").to_numpy() for p in parts])
    assert ids.tolist() == big_store.where_ids().tolist()


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_export__fault_before_cells_rename_leaves_no_cells_file(
    big_store: Store, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "out"
    rc = _export_in_child(big_store.root, out, "export.before_rename", mode)
    assert rc != 0
    assert not (out / "cells.parquet").exists()
    if mode == "raise":  # the error path also removes its temporary file
        assert list(out.iterdir()) == []


def test_export__fault_keeps_the_previous_export_intact(
    big_store: Store, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    big_store.export(out)
    before = (out / "cells.parquet").read_bytes()
    rc = _export_in_child(big_store.root, out, "export.before_rename", "kill")
    assert rc != 0
    assert (out / "cells.parquet").read_bytes() == before


def test_export__write_failing_midway_leaves_no_partial_set_file(
    big_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second row group of the first 70,000-row set fails to write."""
    real = pq.ParquetWriter.write_batch
    calls: list[int] = []

    def failing(self: pq.ParquetWriter, batch: Any, *a: Any, **kw: Any) -> None:
        if batch.schema.names == ["cell_id", "embedding"]:
            calls.append(batch.num_rows)
            if len(calls) == 2:
                raise OSError("disk full (injected)")
        real(self, batch, *a, **kw)

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="injected"):
        big_store.export(out)
    assert calls == [ROW_GROUP, N_CELLS - ROW_GROUP]
    assert sorted(p.name for p in out.iterdir()) == ["cells.parquet"]
