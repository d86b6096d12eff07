"""The server's memo of catalog reads: kept while the catalog is unchanged, and
missed after any write (by the server, by another process), so the grid never
shows stale tags and a thumbnail is served only while its cell is catalogued."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from cytostore.serve import create_app
from cytostore.serve.cache import CatalogCache
from cytostore.store import Store, catalog_stamp

BASE = "http://127.0.0.1"


@pytest.fixture
def store_copy(demo_store, tmp_path: Path) -> Path:  # noqa: ANN001
    """A private copy of the demo store, its catalog last written an hour ago."""
    root = Path(shutil.copytree(demo_store.root, tmp_path / "store"))
    hour_ago = time.time() - 3600
    for f in root.glob("catalog.duckdb*"):
        os.utime(f, (hour_ago, hour_ago))
    return root


def _client(root: Path) -> tuple[TestClient, CatalogCache]:
    app = create_app(root)
    cache: CatalogCache = app.state.catalog_cache
    cache.settle_s = 0.0  # keep results at once (the tests write right after)
    return TestClient(app, base_url=BASE), cache


def test_catalog_stamp__changes_with_each_write_and_is_none_while_fresh(
    store_copy: Path,
) -> None:
    store = Store.open(store_copy)
    before = catalog_stamp(store, settle_s=0)
    assert before is not None and before == catalog_stamp(store, settle_s=0)
    assert catalog_stamp(store) is not None  # settled an hour ago
    store.tag(None, ["seen"], ids=[1])
    assert catalog_stamp(store) is None  # written just now: vouches for nothing
    after = catalog_stamp(store, settle_s=0)
    assert after is not None and after != before
    store.tag(None, [], ["seen"], ids=[1])
    assert catalog_stamp(store, settle_s=0) not in (before, after)


def test_grid__kept_while_unchanged(store_copy: Path) -> None:
    client, cache = _client(store_copy)
    first = client.get("/api/cells?limit=5").json()
    hits = cache._memo.cache_info().hits
    assert client.get("/api/cells?limit=5").json() == first
    assert client.get("/cells").status_code == 200
    assert cache._memo.cache_info().hits > hits


def test_grid__tags_written_by_another_process_show_at_once(
    store_copy: Path,
) -> None:
    client, _ = _client(store_copy)
    where = "cell_id <= 3"
    assert all(
        c["tags"] == [] for c in client.get(f"/api/cells?where={where}").json()["cells"]
    )
    script = (
        "import sys; from cytostore.store import Store; "
        "Store.open(sys.argv[1]).tag(None, ['outside'], ids=[2, 3])"
    )
    subprocess.run([sys.executable, "-c", script, str(store_copy)], check=True)
    got = client.get(f"/api/cells?where={where}").json()["cells"]
    assert [c["tags"] for c in got] == [[], ["outside"], ["outside"]]
    page = client.get("/cells", params={"where": "list_contains(tags, 'outside')"})
    assert page.status_code == 200 and "2 cells match" in page.text


def test_grid__tags_written_by_the_server_show_at_once(store_copy: Path) -> None:
    client, _ = _client(store_copy)
    assert client.get("/api/cells?where=cell_id = 4").json()["cells"][0]["tags"] == []
    r = client.post(
        "/api/tags", json={"cell_ids": [4], "add": ["mine"]}, headers={"Origin": BASE}
    )
    assert r.status_code == 200, r.text
    assert client.get("/api/cells?where=cell_id = 4").json()["cells"][0]["tags"] == [
        "mine"
    ]


def test_thumbnail__cached_file_of_an_uncatalogued_cell_is_not_served(
    store_copy: Path,
) -> None:
    client, cache = _client(store_copy)
    assert client.get("/api/cells/1/thumbnail").status_code == 200  # ids now kept
    assert cache._ids[0] is not None
    folder = store_copy / "cache" / "thumbnails"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "999999.png")
    r = client.get("/api/cells/999999/thumbnail")
    assert r.status_code == 404 and "999999" in r.json()["error"]


# ------------------------------------------------------------- neighbours


def test_neighbors__kept_columns_answer_as_the_catalog_does(
    store_copy: Path,
    demo_store,  # noqa: ANN001
) -> None:
    from cytostore.serve import views

    client, cache = _client(store_copy)
    store = Store.open(store_copy)
    for model in demo_store.models:
        for cid in (1, 7, 40):
            got = client.get(f"/api/cells/{cid}/neighbors?model={model}&k=8").json()
            assert got == views.neighbors(store, cid, model, 8)  # no cache: catalog
    hits = cache._memo.cache_info().hits
    where = "dataset = 'lmu'"
    model = demo_store.models[0]
    got = client.get(f"/api/cells/1/neighbors?model={model}&k=5&where={where}").json()
    assert got == views.neighbors(store, 1, model, 5, where)
    assert {n["dataset"] for n in got["neighbors"]} == {"lmu"}
    assert cache._memo.cache_info().hits > hits  # the columns came from memory


def test_neighbors__a_patient_removed_by_another_process_is_gone_at_once(
    store_copy: Path,
    demo_store,  # noqa: ANN001
) -> None:
    client, _ = _client(store_copy)
    dataset, patient = demo_store.patient
    store = Store.open(store_copy)
    rows = store.sql(
        "SELECT cell_id FROM cells WHERE dataset = ? AND patient_id = ? ORDER BY 1",
        [dataset, patient],
    ).rows
    gone, other = int(rows[0][0]), 1
    q = f"model={demo_store.models[0]}"
    assert client.get(f"/api/cells/{gone}/neighbors?{q}&k=5").status_code == 200
    before = client.get(f"/api/cells/{other}/neighbors?{q}&k=200").json()["neighbors"]
    assert patient in {n["patient_id"] for n in before}
    script = (
        "import sys; from cytostore.store import Store; "
        "Store.open(sys.argv[1]).remove('patient', sys.argv[3], dataset=sys.argv[2], "
        "cascade=True)"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(store_copy), dataset, patient], check=True
    )
    assert client.get(f"/api/cells/{gone}/neighbors?{q}&k=5").status_code == 404
    after = client.get(f"/api/cells/{other}/neighbors?{q}&k=200").json()["neighbors"]
    assert after and patient not in {n["patient_id"] for n in after}


def test_neighbors__a_store_too_large_to_keep_reads_the_catalog(
    store_copy: Path,
    demo_store,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    from cytostore.serve import cache as cache_module
    from cytostore.serve import views

    monkeypatch.setattr(cache_module, "MAX_HIT_CELLS", 10)
    client, _ = _client(store_copy)
    assert cache_module.hit_columns(Store.open(store_copy), ("label",)) is None
    model = demo_store.models[1]
    got = client.get(f"/api/cells/3/neighbors?model={model}&k=6").json()
    assert got == views.neighbors(Store.open(store_copy), 3, model, 6)
    assert len(got["neighbors"]) == 6


def test_hit_columns__rows_by_id_with_repeated_values_dictionary_encoded(
    store_copy: Path,
) -> None:
    from cytostore.serve.cache import hit_columns

    store = Store.open(store_copy)
    kept = hit_columns(store, ("dataset", "label", "path"))
    assert kept is not None
    assert str(kept.table.schema.field("dataset").type).startswith("dictionary")
    assert not str(kept.table.schema.field("path").type).startswith("dictionary")
    want = store.cell_meta([5, 2, 9], ("cell_id", "dataset", "label", "path")).rows
    assert kept.rows([5, 2, 9, 10**9]) == {r[0]: tuple(r[1:]) for r in want}


_READS: list[int] = []


def _slow_count(store: Store) -> int:
    _READS.append(1)
    time.sleep(0.2)  # long enough for every thread to miss at once
    return int(store.sql("SELECT count(*) FROM cells").rows[0][0])


def test_catalog_cache__threads_missing_one_result_at_once_read_it_once(
    store_copy: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = CatalogCache(Store.open(store_copy), settle_s=0.0)
    _READS.clear()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: cache.get(_slow_count), range(8)))
    assert len(set(got)) == 1 and got[0] > 0
    assert len(_READS) == 1
