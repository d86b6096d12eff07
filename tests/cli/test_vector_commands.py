from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from cytostore.cli import main
from cytostore.store import Store

MODEL = "random-tiny"


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_embed__json_report_then_rerun_embeds_nothing(
    embedded_store_copy: Path,
) -> None:
    code, out, err = _run(
        "embed", embedded_store_copy, "--model", MODEL, "--format", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["embedded"] == 0 and report["already"] == report["n_vectors"] == 360
    assert "embedded 0 cells (360 already done" in err
    rows = (
        Store.open(embedded_store_copy)
        .sql(
            "SELECT model, dim, dtype, metric, index_factory, n_vectors "
            "FROM embedding_sets"
        )
        .rows
    )
    assert rows == [(MODEL, 128, "float32", "cosine", "Flat", 360)]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "nope"], 1, "no model 'nope'"),
        (["--model", MODEL, "--where", "label = "], 2, "invalid --where"),
        (["--model", MODEL, "--where", "colour = 1"], 1, "colour"),
        (["--model", MODEL, "--where", "label = 'none'"], 2, "selects no cells"),
        (["--model", MODEL, "--index", "Bogus"], 2, "invalid FAISS index factory"),
        (["--model", MODEL, "--shard", "3/2"], 2, "--shard"),
        (["--model", MODEL, "--dtype", "float16"], 2, "rerun with --dtype float32"),
    ],
)
def test_embed__bad_input_is_a_one_line_error(
    embedded_store_copy: Path, args: list[str], code: int, message: str
) -> None:
    exit_code, out, err = _run("embed", embedded_store_copy, *args)
    assert exit_code == code
    assert message in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_search__cell_in_every_format(embedded_store: Path, fmt: str) -> None:
    code, out, err = _run(
        "search", embedded_store, "--cell", 5, "-k", 3, "--format", fmt
    )
    assert code == 0, err
    dist, ids = Store.open(embedded_store).search(5, k=3)
    if fmt == "json":
        docs = json.loads(out)
        assert [d["cell_id"] for d in docs] == ids[0].tolist()
        assert [d["rank"] for d in docs] == [1, 2, 3]
        assert set(docs[0]) == {
            "cell_id",
            "rank",
            "similarity",
            "dataset",
            "label",
            "cell_type",
            "patient_id",
            "path",
        }
        np.testing.assert_allclose([d["similarity"] for d in docs], dist[0], rtol=1e-5)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [int(r["cell_id"]) for r in rows] == ids[0].tolist()
    else:
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["cell_id", "rank", "similarity"]
        assert [int(line.split()[0]) for line in lines[2:]] == ids[0].tolist()
    assert "3 hits in set 1 (random-tiny, cosine)" in err


def test_search__where_include_self_and_montage(
    embedded_store: Path, tmp_path: Path
) -> None:
    png = tmp_path / "hits.png"
    code, out, err = _run(
        "search",
        embedded_store,
        "--cell",
        5,
        "-k",
        4,
        "--include-self",
        "--where",
        "dataset = 'bm' OR cell_id = 5",
        "--montage",
        png,
        "--format",
        "json",
    )
    assert code == 0, err
    docs = json.loads(out)
    assert docs[0]["cell_id"] == 5 and docs[0]["similarity"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert {d["dataset"] for d in docs[1:]} == {"bm"}
    with Image.open(png) as img:
        assert img.format == "PNG"
    assert f"montage written to {png}" in err


def test_search__by_image(embedded_store: Path) -> None:
    store = Store.open(embedded_store)
    path = store.cell_paths([7])[0]
    um = store.cell_meta([7], ["um_per_px"]).rows[0][0]
    code, out, err = _run(
        "search",
        embedded_store,
        "--image",
        path,
        "--um-per-px",
        um,
        "-k",
        1,
        "--format",
        "json",
        "--model",
        MODEL,
        "--device",
        "cpu",
    )
    assert code == 0, err
    # A catalogued file is searched with its cell's stored vector, itself left out.
    assert "catalogued as cell 7" in err
    assert json.loads(out)[0]["cell_id"] != 7


def test_search__by_uncatalogued_image_finds_the_same_pixels(
    embedded_store: Path, tmp_path: Path
) -> None:
    store = Store.open(embedded_store)
    path = store.cell_paths([7])[0]
    um = store.cell_meta([7], ["um_per_px"]).rows[0][0]
    copy = tmp_path / "copy.png"  # same pixels, other bytes: embedded afresh
    with Image.open(path) as im:
        im.convert("RGB").save(copy)
    code, out, err = _run(
        "search", embedded_store, "--image", copy, "--um-per-px", um, "-k", 1,
        "--format", "json", "--model", MODEL, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "catalogued" not in err
    assert json.loads(out)[0]["cell_id"] == 7


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--cell", 1, "--model", "nope"], 1, "no embedding set 'nope'"),
        (["--cell", 1, "--where", "x y z"], 2, "invalid --where"),
        (["--cell", 1, "--where", "label = 'none'"], 2, "selects no cells"),
        (["--image", "/no/such/file.png"], 2, "no image file"),
        (["--cell", 99999], 1, "no cell 99999"),
        ([], 2, "exactly one of --cell ID or --image PATH"),
    ],
)
def test_search__bad_input(
    embedded_store: Path, args: list, code: int, message: str
) -> None:
    exit_code, out, err = _run("search", embedded_store, *args)
    assert exit_code == code and message in err and "Traceback" not in err


def test_search__not_an_image_is_a_usage_error(
    embedded_store: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "cell.png"
    bad.write_bytes(b"not a png at all")
    code, _, err = _run("search", embedded_store, "--image", bad)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("Error: --image: ")
    assert "not an image" in err


def test_search__corrupt_vector_file_is_detected(embedded_store_copy: Path) -> None:
    vec = next((embedded_store_copy / "vectors").glob("*.f32"))
    with open(vec, "r+b") as f:
        f.truncate(100)
    code, _, err = _run("search", embedded_store_copy, "--cell", 1)
    assert code == 1 and "catalog records 360" in err and "Traceback" not in err


def test_neighbors_then_sql_and_refusals(embedded_store_copy: Path) -> None:
    code, out, err = _run("neighbors", embedded_store_copy, "-k", 3, "--into", "knn3")
    assert code == 0, err
    assert "wrote 1080 rows for 360 cells into knn3" in err
    code, out, _ = _run(
        "sql",
        embedded_store_copy,
        "SELECT count(*) AS n, count(DISTINCT cell_id) AS cells FROM knn3",
        "--format",
        "json",
    )
    assert json.loads(out) == [{"n": 1080, "cells": 360}]
    code, _, err = _run("neighbors", embedded_store_copy, "-k", 3, "--into", "cells")
    assert code == 2 and "not a neighbour table" in err
    code, _, err = _run("neighbors", embedded_store_copy, "-k", 3, "--into", "x-y")
    assert code == 2 and "not a valid table" in err


def test_export__writes_parquet(embedded_store: Path, tmp_path: Path) -> None:
    code, out, err = _run("export", embedded_store, tmp_path / "pq", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["files"] == [
        {"file": "cells.parquet", "rows": 360},
        {"file": f"embeddings_{MODEL}.parquet", "rows": 360},
    ]
    table = pq.read_table(tmp_path / "pq" / f"embeddings_{MODEL}.parquet")
    _, x = Store.open(embedded_store).vectors()
    flat = table.column("embedding").combine_chunks().flatten().to_numpy()
    assert flat.tobytes() == np.ascontiguousarray(x).tobytes()


def test_build_index_and_sql_see_embedding_sets(embedded_store_copy: Path) -> None:
    code, out, err = _run(
        "build-index",
        embedded_store_copy,
        "--index",
        "HNSW32",
        "--ef-search",
        64,
        "--format",
        "json",
    )
    assert code == 0, err
    assert json.loads(out)["search_params"] == {"efSearch": 64}
    code, out, _ = _run(
        "sql",
        embedded_store_copy,
        "SELECT index_factory, n_indexed FROM embedding_sets",
    )
    assert "HNSW32" in out and "360" in out


def test_embed_shards_then_merge(embedded_store_copy: Path) -> None:
    store = Store.open(embedded_store_copy)
    _, want = store.vectors()
    want = np.array(want)
    for i in (1, 2):
        code, _, err = _run(
            "embed",
            embedded_store_copy,
            "--model",
            "shard-model",
            "--shard",
            f"{i}/2",
            "--device",
            "cpu",
        )
        assert code == 1 and "shard-model" in err  # not registered yet
    from cytostore.embedder import register_random_model

    register_random_model(store, "shard-model", backbone="tiny", crop_px=32, seed=0)
    for i in (1, 2):
        code, _, err = _run(
            "embed",
            embedded_store_copy,
            "--model",
            "shard-model",
            "--shard",
            f"{i}/2",
            "--device",
            "cpu",
        )
        assert code == 0, err
    code, out, err = _run("merge", embedded_store_copy, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["n_vectors"] == 360
    ids, got = store.vectors("shard-model")
    ref_ids, ref = store.vectors(MODEL)
    order = np.argsort(ids)
    np.testing.assert_allclose(
        np.asarray(got)[order], want[np.argsort(ref_ids)], atol=1e-5
    )


def test_search__reports_busy_store_without_traceback(
    embedded_store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "c.execute('BEGIN'); print('locked', flush=True); time.sleep(30)",
            str(embedded_store_copy / "catalog.duckdb"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert (
            holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        )
        monkeypatch.setenv("CYTOSTORE_BUSY_TIMEOUT_S", "0.5")
        code, _, err = _run("search", embedded_store_copy, "--cell", 1)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and "is busy" in err and "Traceback" not in err
