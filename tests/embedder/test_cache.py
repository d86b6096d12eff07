from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from embedder_helpers import add_cells

from cytostore.data import load_rgb
from cytostore.embedder import CellCache, Preprocessing, build_cache
from cytostore.errors import InvalidArgumentError
from cytostore.store import Store

PREP = Preprocessing.for_input(48)


def _reference(store: Store, ids: np.ndarray) -> np.ndarray:
    ums = [r[0] for r in store.cell_meta(ids, ["um_per_px"]).rows]
    return np.stack(
        [
            PREP.apply(load_rgb(p), um)
            for p, um in zip(store.cell_paths(ids), ums, strict=True)
        ]
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_build_cache__rows_equal_preprocessed_files(
    cell_store: Store, workers: int
) -> None:
    cache = build_cache(cell_store, PREP, workers=workers)
    ids = cell_store.where_ids()
    assert sorted(cache.ids.tolist()) == ids.tolist()
    assert cache.shape == (12, 48, 48, 3)
    np.testing.assert_array_equal(cache.rows(ids), _reference(cell_store, ids))
    header = json.loads(
        (cell_store.root / "cache" / f"{PREP.prep_id}.json").read_text()
    )
    assert header["shape"] == [12, 48, 48, 3]
    assert header["prep"] == PREP.to_dict()
    assert len(cache.skipped) == 0


def test_build_cache__second_build_reuses_without_decoding(cell_store: Store) -> None:
    first = build_cache(cell_store, PREP, workers=0)
    data, ids_file, _ = CellCache.paths(first.root, PREP)
    before = (data.stat().st_mtime_ns, ids_file.stat().st_mtime_ns)
    # Remove every image: a re-decode would now skip them all.
    for path in cell_store.cell_paths(cell_store.where_ids()):
        path.unlink()
    again = build_cache(cell_store, PREP, workers=0)
    assert (data.stat().st_mtime_ns, ids_file.stat().st_mtime_ns) == before
    np.testing.assert_array_equal(again.ids, first.ids)
    np.testing.assert_array_equal(again.array, first.array)
    assert cell_store.sql("SELECT count(*) FROM skipped").rows == [(0,)]


def test_build_cache__incremental_append_keeps_old_rows(cell_store: Store) -> None:
    old = build_cache(cell_store, PREP, ids=[1, 2, 6, 7], workers=0)
    old_rows = np.array(old.array)
    new_ids = add_cells(cell_store, "coarse", 3, seed=5)
    grown = build_cache(cell_store, PREP, workers=0)
    assert len(grown) == 4 + 8 + 3
    np.testing.assert_array_equal(grown.ids[:4], [1, 2, 6, 7])
    np.testing.assert_array_equal(grown.array[:4], old_rows)  # bit-identical
    np.testing.assert_array_equal(grown.rows(new_ids), _reference(cell_store, new_ids))


def test_build_cache__vanished_file_is_skipped_and_build_goes_on(
    cell_store: Store,
) -> None:
    gone = cell_store.cell_paths([3])[0]
    gone.unlink()
    (cell_store.cell_paths([8])[0]).write_bytes(b"not an image")
    cache = build_cache(cell_store, PREP, workers=2)
    assert sorted(cache.skipped.tolist()) == [3, 8]
    assert not cache.contains([3, 8]).any()
    assert len(cache) == 10
    skipped = cell_store.sql(
        "SELECT dataset, path, reason FROM skipped ORDER BY path"
    ).rows
    assert [(d, p) for d, p, _ in skipped] == [
        ("fine", "cell_2.png"),
        ("coarse", "cell_2.tif"),
    ]
    assert "not found" in skipped[0][2]
    assert "cannot preprocess" in skipped[1][2]
    with pytest.raises(InvalidArgumentError, match="not in cache"):
        cache.rows([3])
    assert cache.index_of([3, 4], missing_ok=True)[0] == -1


def test_build_cache__crash_leftover_rows_are_ignored_then_overwritten(
    cell_store: Store,
) -> None:
    build_cache(cell_store, PREP, ids=[1, 2], workers=0)
    data = CellCache.paths(cell_store.root / "cache", PREP)[0]
    with open(data, "ab") as fh:  # a crashed build wrote a row, not its id
        fh.write(b"\xff" * (48 * 48 * 3 + 100))
    cache = CellCache.open(cell_store, PREP)
    assert cache.ids.tolist() == [1, 2]
    grown = build_cache(cell_store, PREP, ids=[1, 2, 3], workers=0)
    assert os.path.getsize(data) == 3 * 48 * 48 * 3
    np.testing.assert_array_equal(
        grown.rows([3]), _reference(cell_store, np.array([3]))
    )


def test_cell_cache__index_of_and_rows_follow_request_order(cell_store: Store) -> None:
    cache = build_cache(cell_store, PREP, workers=0)
    want = np.array([9, 1, 9, 4])
    rows = cache.index_of(want)
    np.testing.assert_array_equal(cache.ids[rows], want)
    np.testing.assert_array_equal(cache.rows(want)[0], cache.rows(want)[2])
    np.testing.assert_array_equal(cache.rows(want), cache.array[rows])


def test_cell_cache__pickles_without_pixels(cell_store: Store) -> None:
    cache = build_cache(cell_store, PREP, workers=0)
    _ = cache.array
    blob = pickle.dumps(cache)
    assert len(blob) < 48 * 48 * 3  # not even one row of pixels travels
    np.testing.assert_array_equal(pickle.loads(blob).rows([1, 12]), cache.rows([1, 12]))


def test_build_cache__unknown_id_raises(cell_store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown cell ids"):
        build_cache(cell_store, PREP, ids=[1, 999], workers=0)


def test_build_cache__synthetic_tcia_layouts(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    # The images belong to the session's shared tree: delete from a private copy.
    bm_root = shutil.copytree(store.dataset_roots()["bm"], tmp_path / "bm")
    with store.transaction() as con:
        con.execute("UPDATE datasets SET root = ? WHERE dataset = 'bm'", [str(bm_root)])
    ids = store.where_ids()
    first = {d: int(store.where_ids(f"dataset = '{d}'")[0]) for d in ("lmu", "bm")}
    store.cell_paths([first["bm"]])[0].unlink()
    cache = build_cache(store, PREP, workers=2)
    assert cache.skipped.tolist() == [first["bm"]]
    assert len(cache) == len(ids) - 1
    sample = np.array(
        [first["lmu"], int(store.where_ids("dataset = 'mll_helmholtz'")[0])]
    )
    np.testing.assert_array_equal(cache.rows(sample), _reference(store, sample))
