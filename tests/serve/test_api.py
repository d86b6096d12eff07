"""The JSON API in-process (Starlette's TestClient): routes, errors and the guards.

The store is ``demo_store`` (tests/serve/conftest.py): 360 synthetic cells, two
random tiny models, a linear probe ``cell-type`` and a MIL head ``subtype``.
Tests that write work on a private copy.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from cytostore.serve import create_app
from cytostore.store import Store

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def client(demo_store) -> TestClient:  # noqa: ANN001
    """A read-write client over the shared demo store (tests here only read)."""
    return TestClient(create_app(demo_store.root), base_url=BASE)


@pytest.fixture
def store_copy(demo_store, tmp_path: Path) -> Path:  # noqa: ANN001
    """A private copy of the demo store, free to write to."""
    return Path(shutil.copytree(demo_store.root, tmp_path / "store"))


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


# ------------------------------------------------------------------ cells


def test_api_cells__page_and_total_match_sql(client: TestClient, demo_store) -> None:  # noqa: ANN001
    r = client.get("/api/cells", params={"where": "dataset = 'bm'", "limit": 7})
    assert r.status_code == 200
    body = r.json()
    expect = Store.open(demo_store.root).where_ids("dataset = 'bm'")
    assert body["total"] == expect.size
    assert [c["cell_id"] for c in body["cells"]] == expect[:7].tolist()
    assert {c["dataset"] for c in body["counts"]} == {"bm"}
    assert sum(c["n"] for c in body["counts"]) == expect.size


def test_api_cells__offset_and_descending_order(client: TestClient) -> None:
    first = client.get("/api/cells", params={"order": "-cell_id", "limit": 3}).json()
    ids = [c["cell_id"] for c in first["cells"]]
    assert ids == sorted(ids, reverse=True) and ids[0] == first["total"]
    nxt = client.get(
        "/api/cells", params={"order": "-cell_id", "limit": 3, "offset": 3}
    ).json()
    assert [c["cell_id"] for c in nxt["cells"]] == [
        ids[-1] - 1,
        ids[-1] - 2,
        ids[-1] - 3,
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"where": "dataset = "},  # does not parse
        {"where": "1=1) OR (1=1"},  # tries to close the clause
        {"where": "no_such_column = 1"},
        {"where": "1; DROP TABLE cells"},
        {"order": "no_such_column"},
        {"limit": "0"},
        {"limit": "abc"},
    ],
)
def test_api_cells__bad_filter_is_400_with_one_error(
    client: TestClient, params: dict[str, str]
) -> None:
    r = client.get("/api/cells", params=params)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and "Traceback" not in r.text


def test_api_cell__metadata_and_404(client: TestClient, demo_store) -> None:  # noqa: ANN001
    store = Store.open(demo_store.root)
    cell, label = store.sql(
        "SELECT cell_id, label FROM predictions WHERE head = ? ORDER BY 1 LIMIT 1",
        [demo_store.probe_head],
    ).rows[0]
    r = client.get(f"/api/cells/{cell}")
    assert r.status_code == 200
    body = r.json()
    assert body["cell_id"] == cell and body["meta"]["cell_id"] == cell
    assert body["um_per_px"] > 0
    assert {"head": demo_store.probe_head, "label": label} in [
        {k: p[k] for k in ("head", "label")} for p in body["predictions"]
    ]
    missing = client.get("/api/cells/999999")
    assert missing.status_code == 404 and "999999" in missing.json()["error"]


def test_api_image__reencoded_png_of_the_cell(client: TestClient, demo_store) -> None:  # noqa: ANN001
    r = client.get("/api/cells/1/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    path = Store.open(demo_store.root).cell_paths([1])[0]
    with Image.open(path) as img:
        original = np.asarray(img.convert("RGB"))
    with Image.open(io.BytesIO(r.content)) as img:
        served = np.asarray(img.convert("RGB"))
    assert served.shape == original.shape and np.array_equal(served, original)
    assert r.content != path.read_bytes()
    assert client.get("/api/cells/999999/image").status_code == 404


def test_api_thumbnail__small_png_cached_under_cache(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    r = client.get("/api/cells/2/thumbnail")
    assert r.status_code == 200 and max(_png_size(r.content)) <= 128
    cached = store_copy / "cache" / "thumbnails" / "2.png"
    assert cached.read_bytes() == r.content
    assert client.get("/api/cells/2/thumbnail").content == r.content


def test_api_thumbnail__read_only_server_writes_nothing(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy, read_only=True), base_url=BASE)
    assert client.get("/api/cells/3/thumbnail").status_code == 200
    assert not (store_copy / "cache" / "thumbnails").exists()


def test_api_image__path_outside_the_root_is_refused(store_copy: Path) -> None:
    import duckdb

    secret = store_copy.parent / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    with duckdb.connect(str(store_copy / "catalog.duckdb")) as con:
        con.execute("UPDATE cells SET path = ? WHERE cell_id = 5", [str(secret)])
        con.execute("UPDATE cells SET path = '../../secret.png' WHERE cell_id = 6")
    client = TestClient(create_app(store_copy), base_url=BASE)
    for cell in (5, 6):
        for what in ("image", "thumbnail"):
            r = client.get(f"/api/cells/{cell}/{what}")
            assert r.status_code == 403, r.text
            assert r.headers["content-type"] == "application/json"
            assert "outside" in r.json()["error"] or "out" in r.json()["error"]
    assert not (store_copy / "cache" / "thumbnails" / "5.png").exists()


# ------------------------------------------------------------- neighbours


def test_api_neighbors__same_as_store_search(client: TestClient, demo_store) -> None:  # noqa: ANN001
    store = Store.open(demo_store.root)
    for model in demo_store.models:
        r = client.get("/api/cells/1/neighbors", params={"model": model, "k": 5})
        assert r.status_code == 200
        body = r.json()
        _, ids = store.search(1, k=5, model=model)
        assert body["model"] == model
        assert [n["cell_id"] for n in body["neighbors"]] == ids[0].tolist()
        sims = [n["similarity"] for n in body["neighbors"]]
        assert sims == sorted(sims, reverse=True)


def test_api_neighbors__where_restricts_the_hits(client: TestClient) -> None:
    r = client.get(
        "/api/cells/1/neighbors",
        params={"model": "random-tiny", "k": 4, "where": "dataset = 'lmu'"},
    )
    assert r.status_code == 200
    assert {n["dataset"] for n in r.json()["neighbors"]} == {"lmu"}


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/cells/1/neighbors", {"model": "no-such-model"}, 404),
        ("/api/cells/999999/neighbors", {"model": "random-tiny"}, 404),
        ("/api/cells/1/neighbors", {"model": "random-tiny", "where": "x ="}, 400),
        ("/api/cells/1/neighbors", {"model": "random-tiny", "k": "0"}, 400),
        ("/api/patients/NOBODY", {}, 404),
        ("/api/heads/no-such-head", {}, 404),
        ("/api/models/no-such-model", {}, 404),
        ("/api/cells/abc", {}, 404),
    ],
)
def test_api__unknown_names_404_and_bad_values_400(
    client: TestClient, path: str, params: dict[str, str], status: int
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert "error" in r.json() or status == 404


# ------------------------------------------------------------ image search


def test_api_search__uploaded_copy_of_a_cell_finds_it(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    store = Store.open(demo_store.root)
    pixels = np.asarray(Image.open(store.cell_paths([7])[0]).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # re-encoded: a new sha256
    um = store.sql(
        "SELECT coalesce(c.um_per_px, d.um_per_px) FROM cells c "
        "JOIN datasets d USING (dataset) WHERE cell_id = 7"
    ).rows[0][0]
    r = client.post(
        "/api/search",
        files={"image": ("q.png", buf.getvalue(), "image/png")},
        data={"model": "random-tiny", "k": "3", "um_per_px": str(um)},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "random-tiny" and body["query"]["um_per_px"] == um
    assert body["neighbors"][0]["cell_id"] == 7
    assert body["neighbors"][0]["similarity"] > 0.99


def test_api_search__errors(client: TestClient) -> None:
    big = b"\0" * (20 * 1024 * 1024 + 10)
    r = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "MB" in r.json()["error"]
    r = client.post("/api/search", data={"model": "random-tiny"})
    assert r.status_code == 400 and "image" in r.json()["error"]
    r = client.post(
        "/api/search",
        files={"image": ("x.png", b"not an image", "image/png")},
        data={"model": "random-tiny"},
    )
    assert r.status_code == 400, r.text
    png = io.BytesIO()
    Image.new("RGB", (20, 20)).save(png, format="PNG")
    r = client.post(
        "/api/search",
        files={"image": ("x.png", png.getvalue(), "image/png")},
        data={"model": "nope"},
    )
    assert r.status_code == 404


# ------------------------------------------------------ patients, heads, models


def test_api_patient__mil_prediction_and_cells_by_attention(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    dataset, patient = demo_store.patient
    r = client.get(f"/api/patients/{patient}", params={"dataset": dataset})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient_id"] == patient and body["dataset"] == dataset
    assert [p["head"] for p in body["predictions"]] == [demo_store.mil_head]
    att = [c["attention"] for c in body["cells"]]
    assert att and att == sorted(att, reverse=True)
    assert body["explanations"][0]["top_cells"][0]["neighbors"]


def test_api_heads_and_models__listed_with_reports(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    heads = {h["name"] for h in client.get("/api/heads").json()["heads"]}
    assert heads == {demo_store.probe_head, demo_store.mil_head}
    head = client.get(f"/api/heads/{demo_store.probe_head}").json()
    assert head["kind"] and head["report"]["confusion"]["counts"]
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert set(models) == set(demo_store.models) and models["random-tiny"]["embedded"]
    model = client.get("/api/models/random-tiny").json()
    assert model["name"] == "random-tiny" and isinstance(model["card"], dict)


# -------------------------------------------------------------------- SQL


def test_api_sql__rows_like_store_sql(client: TestClient, demo_store) -> None:  # noqa: ANN001
    q = "SELECT dataset, count(*) AS n FROM cell_meta GROUP BY ALL ORDER BY ALL"
    r = client.get("/api/sql", params={"q": q})
    assert r.status_code == 200
    expect = Store.open(demo_store.root).sql(q)
    assert r.json()["columns"] == expect.columns
    assert [tuple(row) for row in r.json()["rows"]] == expect.rows


@pytest.mark.parametrize(
    "q",
    [
        "DROP TABLE cells",
        "DELETE FROM cells",
        "SELECT 1; DELETE FROM cells",
        "COPY cells TO '/tmp/x.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "ATTACH '/tmp/evil.duckdb' AS e",
        "INSTALL httpfs",
        "SELECT * FROM no_such_table",
        "",
    ],
)
def test_api_sql__attack_is_400_and_store_unchanged(store_copy: Path, q: str) -> None:
    before = Store.open(store_copy).sql("SELECT count(*) FROM cells").rows
    client = TestClient(create_app(store_copy), base_url=BASE)
    r = client.get("/api/sql", params={"q": q})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
    assert Store.open(store_copy).sql("SELECT count(*) FROM cells").rows == before


# -------------------------------------------------------------------- tags


def test_api_tags__written_then_found_with_sql(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    r = client.post("/api/tags", json={"cell_ids": [3, 9], "add": ["review"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"cells": 2, "added": 2, "removed": 0}
    q = "SELECT cell_id FROM cell_meta WHERE list_contains(tags, 'review') ORDER BY 1"
    assert client.get("/api/sql", params={"q": q}).json()["rows"] == [[3], [9]]
    r = client.post("/api/tags", json={"cell_ids": [3], "remove": ["review"]})
    assert r.json() == {"cells": 1, "added": 0, "removed": 1}
    assert Store.open(store_copy).sql(q).rows == [(9,)]


@pytest.mark.parametrize(
    "body",
    [
        {"cell_ids": [1], "add": []},
        {"cell_ids": [], "add": ["x"]},
        {"cell_ids": ["1"], "add": ["x"]},
        {"cell_ids": [999999], "add": ["x"]},
        {"cell_ids": [1], "add": "x"},
        [1, 2],
    ],
)
def test_api_tags__bad_body_is_400_and_nothing_written(
    store_copy: Path, body: object
) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    r = client.post("/api/tags", json=body)
    assert r.status_code == 400, r.text
    assert Store.open(store_copy).sql("SELECT count(*) FROM tags").rows == [(0,)]


def test_api_tags__read_only_server_refuses_with_403(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy, read_only=True), base_url=BASE)
    r = client.post("/api/tags", json={"cell_ids": [1], "add": ["x"]})
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert Store.open(store_copy).sql("SELECT count(*) FROM tags").rows == [(0,)]


def test_api_tags__not_json_is_refused(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    r = client.post("/api/tags", data={"cell_ids": "1", "add": "x"})
    assert r.status_code == 400
    assert Store.open(store_copy).sql("SELECT count(*) FROM tags").rows == [(0,)]


# ------------------------------------------------------------------ guards


@pytest.mark.parametrize(
    "host", ["evil.example.com", "attacker.test:8000", "127.0.0.1.evil.test"]
)
def test_guard__foreign_host_header_is_400(client: TestClient, host: str) -> None:
    r = client.get("/api/cells", headers={"host": host})
    assert r.status_code == 400 and "Host" in r.json()["error"]
    page = client.get("/cells", headers={"host": host})
    assert page.status_code == 400 and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "[::1]:8000"])
def test_guard__loopback_host_headers_pass(client: TestClient, host: str) -> None:
    assert client.get("/api/heads", headers={"host": host}).status_code == 200


def test_guard__bound_host_is_allowed(demo_store) -> None:  # noqa: ANN001
    app = create_app(demo_store.root, allowed_hosts=["cells.lab.example"])
    client = TestClient(app, base_url="http://cells.lab.example")
    assert client.get("/api/heads").status_code == 200


def test_guard__cross_site_post_is_403_and_writes_nothing(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    body = {"cell_ids": [1], "add": ["x"]}
    for headers in (
        {"origin": "http://evil.example.com"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
    ):
        r = client.post("/api/tags", json=body, headers=headers)
        assert r.status_code == 403, headers
    ok = client.post(
        "/api/tags", json=body, headers={"origin": "http://127.0.0.1:8000"}
    )
    assert ok.status_code == 200
    assert Store.open(store_copy).sql("SELECT count(*) FROM tags").rows == [(1,)]


def test_guard__token_required_when_set(demo_store) -> None:  # noqa: ANN001
    client = TestClient(create_app(demo_store.root, token="s3cret"), base_url=BASE)
    assert client.get("/api/heads").status_code == 403
    assert client.get("/cells").status_code == 403
    assert client.get("/api/heads?token=wrong").status_code == 403
    bearer = {"authorization": "Bearer s3cret"}
    assert client.get("/api/heads", headers=bearer).status_code == 200
    first = client.get("/cells?token=s3cret")
    assert first.status_code == 200 and "cytostore_token" in first.headers["set-cookie"]
    assert client.get("/api/heads").status_code == 200  # the cookie carries it now


def test_create_app__reads_the_environment(
    demo_store,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setenv("CYTOSTORE_SERVE_STORE", str(demo_store.root))
    monkeypatch.setenv("CYTOSTORE_SERVE_READ_ONLY", "1")
    monkeypatch.setenv("CYTOSTORE_SERVE_TOKEN", "t0k")
    client = TestClient(create_app(), base_url=BASE)
    r = client.post(
        "/api/tags", json={"cell_ids": [1], "add": ["x"]}, headers={"x-t": "1"}
    )
    assert r.status_code == 403 and "token" in r.json()["error"]
    r = client.post("/api/tags?token=t0k", json={"cell_ids": [1], "add": ["x"]})
    assert r.status_code == 403 and "read-only" in r.json()["error"]


def test_server__other_processes_can_write_while_it_serves(store_copy: Path) -> None:
    import subprocess
    import sys

    client = TestClient(create_app(store_copy), base_url=BASE)
    assert client.get("/api/cells", params={"limit": 5}).status_code == 200
    assert client.get("/api/cells/1/neighbors?model=random-tiny").status_code == 200
    run = subprocess.run(
        [sys.executable, "-m", "cytostore", "tag", str(store_copy), "--where",
         "cell_id = 4", "--add", "elsewhere"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    q = "SELECT cell_id FROM cell_meta WHERE list_contains(tags, 'elsewhere')"
    assert client.get("/api/sql", params={"q": q}).json()["rows"] == [[4]]


# --------------------------------------------------- thumbnails: bound, gc, rm


def test_thumbnail_cache__bounded_in_count(store_copy: Path) -> None:
    from cytostore.serve.images import ThumbnailCache

    cache = ThumbnailCache(Store.open(store_copy), writable=True, max_files=4)
    for cell in range(1, 11):
        cache.get(cell)
    kept = list((store_copy / "cache" / "thumbnails").glob("*.png"))
    assert 0 < len(kept) <= 4


def test_thumbnails__gc_cache_and_rm_patient_remove_them(store_copy: Path) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    store = Store.open(store_copy)
    dataset, patient, cell = store.sql(
        "SELECT dataset, patient_id, min(cell_id) FROM cells "
        "WHERE patient_id IS NOT NULL GROUP BY ALL ORDER BY 3 LIMIT 1"
    ).rows[0]
    for c in (1, cell):
        assert client.get(f"/api/cells/{c}/thumbnail").status_code == 200
    folder = store_copy / "cache" / "thumbnails"
    assert (folder / f"{cell}.png").is_file()
    store.remove("patient", patient, dataset=dataset)
    assert not (folder / f"{cell}.png").exists()
    assert client.get(f"/api/cells/{cell}/thumbnail").status_code == 404
    left = {int(p.stem) for p in folder.glob("*.png")}
    assert left <= set(store.where_ids(None).tolist())
    store.gc(cache=True)
    assert not folder.exists()


# ------------------------------------------------------- errors and the command


def test_api__a_bug_is_a_500_with_one_line_and_no_traceback(demo_store) -> None:  # noqa: ANN001
    from starlette.routing import Route

    def boom(request: object) -> None:
        raise RuntimeError("secret internals")

    app = create_app(demo_store.root)
    app.router.routes.append(Route("/api/boom", boom))
    app.router.routes.append(Route("/boom", boom))
    client = TestClient(app, base_url=BASE, raise_server_exceptions=False)
    r = client.get("/api/boom")
    assert r.status_code == 500 and set(r.json()) == {"error"}
    assert "secret" not in r.text and "Traceback" not in r.text
    page = client.get("/boom")
    assert page.status_code == 500 and "secret" not in page.text
    assert client.get("/api/nothing-here").json() == {"error": "Not Found"}


def test_serve_command__off_loopback_prints_a_token_url_and_a_warning(
    demo_store,  # noqa: ANN001
) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "cytostore", "serve", str(demo_store.root),
         "--host", "0.0.0.0", "--port", "0", "--read-only"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first, second = proc.stderr.readline(), proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "(read-only) at http://0.0.0.0:0/?token=" in first
    assert second.startswith("warning: bound to 0.0.0.0") and "token" in second


def test_api_figures__confusion_png_reencoded_and_missing_curves_404(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    r = client.get(f"/api/heads/{demo_store.probe_head}/confusion.png")
    assert r.status_code == 200 and min(_png_size(r.content)) > 10
    head = Store.open(demo_store.root).root / "heads" / demo_store.probe_head
    assert _png_size(r.content) == _png_size((head / "confusion.png").read_bytes())
    assert client.get("/api/models/random-tiny/curves.png").status_code == 404
    assert client.get("/api/heads/nope/confusion.png").status_code == 404
