"""The HTML pages in-process: elements the contract names, errors shown in the page.

Uses ``demo_store`` (tests/serve/conftest.py): two models, a linear probe and a MIL
head. The browser tests (test_browser.py) click through the same pages in Chromium.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from cytostore.serve import create_app
from cytostore.store import Store

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def client(demo_store) -> TestClient:  # noqa: ANN001
    return TestClient(create_app(demo_store.root), base_url=BASE)


def _ids(html: str, cls: str) -> list[int]:
    return [
        int(m) for m in re.findall(rf'class="{cls}[^"]*" data-cell-id="(\d+)"', html)
    ]


def test_index__redirects_to_cells(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/cells"


def test_cells_page__grid_of_100_with_controls_and_counts(client: TestClient) -> None:
    r = client.get("/cells")
    assert r.status_code == 200
    html = r.text
    assert _ids(html, "cell-thumb") == list(range(1, 101))
    for element in ('id="where"', 'id="apply"', 'id="counts"', 'id="tag"'):
        assert element in html
    assert 'id="add-tag"' in html and 'id="remove-tag"' in html
    assert 'id="tag-status"' in html and 'class="select-cell" value="1"' in html
    assert '<a href="/cells/1">' in html and 'id="read-only"' not in html
    assert 'id="next"' in html and 'id="prev"' not in html


def test_cells_page__filter_sort_and_page(client: TestClient, demo_store) -> None:  # noqa: ANN001
    expect = Store.open(demo_store.root).where_ids("dataset = 'lmu'")[::-1]
    r = client.get(
        "/cells", params={"where": "dataset = 'lmu'", "order": "-cell_id", "page": 1}
    )
    assert r.status_code == 200
    assert _ids(r.text, "cell-thumb") == expect[:100].tolist()
    r2 = client.get(
        "/cells", params={"where": "dataset = 'lmu'", "order": "-cell_id", "page": 2}
    )
    assert _ids(r2.text, "cell-thumb") == expect[100:200].tolist()


@pytest.mark.parametrize(
    "where", ["dataset = ", "no_such_column = 1", "1=1) OR (1=1", "1; DROP TABLE cells"]
)
def test_cells_page__bad_filter_shown_inline_with_400(
    client: TestClient, where: str
) -> None:
    r = client.get("/cells", params={"where": where})
    assert r.status_code == 400
    assert 'id="where-error"' in r.text and "Traceback" not in r.text
    assert 'id="where"' in r.text  # the form is still there to fix it


def test_pages__user_text_is_escaped(client: TestClient) -> None:
    attack = "<script>alert(1)</script>"
    r = client.get("/cells", params={"where": f"label = '{attack}'"})
    assert attack not in r.text and "&lt;script&gt;" in r.text
    r = client.get("/sql", params={"q": f"SELECT '{attack}' AS x"})
    assert r.status_code == 200 and attack not in r.text


def test_cell_page__image_meta_and_neighbours_per_model(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    store = Store.open(demo_store.root)
    pages = {}
    for model in demo_store.models:
        r = client.get("/cells/5", params={"model": model, "k": 6})
        assert r.status_code == 200
        for element in ('id="cell-image"', 'id="meta"', '<select id="model"'):
            assert element in r.text
        _, ids = store.search(5, k=6, model=model)
        pages[model] = _ids(r.text, "neighbor")
        assert pages[model] == ids[0].tolist()
    assert pages[demo_store.models[0]] != pages[demo_store.models[1]]


def test_cell_page__where_filter_and_errors(client: TestClient) -> None:
    r = client.get(
        "/cells/5", params={"model": "random-tiny", "where": "dataset = 'bm'", "k": 3}
    )
    assert r.status_code == 200 and len(_ids(r.text, "neighbor")) == 3
    bad = client.get("/cells/5", params={"model": "random-tiny", "where": "x ="})
    assert bad.status_code == 400 and 'id="where-error"' in bad.text
    assert client.get("/cells/5", params={"model": "nope"}).status_code == 404
    missing = client.get("/cells/999999")
    assert missing.status_code == 404 and 'id="error"' in missing.text


def test_search_page__form_and_upload_results(client: TestClient, demo_store) -> None:  # noqa: ANN001
    r = client.get("/search")
    assert r.status_code == 200
    for element in ('id="image"', 'id="um-per-px"', 'id="model"', 'id="search-submit"'):
        assert element in r.text
    path = Store.open(demo_store.root).cell_paths([11])[0]
    r = client.post(
        "/search",
        files={"image": (path.name, path.read_bytes(), "application/octet-stream")},
        data={"model": "random-tiny", "k": "4"},
    )
    assert r.status_code == 200, r.text
    assert "catalogued as" in r.text and len(_ids(r.text, "neighbor")) == 4
    empty = client.post("/search", data={"model": "random-tiny"})
    assert empty.status_code == 400 and 'id="search-error"' in empty.text


def test_patient_page__mil_and_cells_by_attention(
    client: TestClient, demo_store
) -> None:  # noqa: ANN001
    dataset, patient = demo_store.patient
    r = client.get(f"/patients/{patient}", params={"dataset": dataset})
    assert r.status_code == 200
    assert 'id="mil"' in r.text and demo_store.mil_head in r.text
    att = (
        Store.open(demo_store.root)
        .sql(
            "SELECT a.cell_id FROM attention a JOIN cells c USING (cell_id) WHERE "
            "c.dataset = ? AND c.patient_id = ? ORDER BY a.attention DESC, 1",
            [dataset, patient],
        )
        .column("cell_id")
    )
    assert _ids(r.text, "cell-thumb")[: len(att)] == att
    assert client.get("/patients/NOBODY").status_code == 404


def test_head_page__confusion_links_select_the_cells_behind_each_count(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    assert demo_store.probe_head in client.get("/heads").text
    r = client.get(f"/heads/{demo_store.probe_head}")
    assert r.status_code == 200 and 'id="confusion"' in r.text
    links = re.findall(r'<a href="(/cells\?where=[^"]+)">(\d+)</a>', r.text)
    assert links
    store = Store.open(demo_store.root)
    for href, n in links[:4]:
        where = parse_qs(urlsplit(href.replace("&amp;", "&")).query)["where"][0]
        assert store.where_ids(where).size == int(n)
    mil = client.get(f"/heads/{demo_store.mil_head}")
    assert mil.status_code == 200
    assert client.get("/heads/nope").status_code == 404


def test_models_pages__list_card_and_404(client: TestClient, demo_store) -> None:  # noqa: ANN001
    r = client.get("/models")
    assert r.status_code == 200 and all(m in r.text for m in demo_store.models)
    r = client.get(f"/models/{demo_store.models[0]}")
    assert r.status_code == 200 and 'id="card"' in r.text
    assert client.get("/models/nope").status_code == 404


def test_sql_page__results_table_and_inline_error(client: TestClient) -> None:
    r = client.get("/sql")
    assert r.status_code == 200 and 'id="q"' in r.text and 'id="run-sql"' in r.text
    r = client.get("/sql", params={"q": "SELECT cell_id FROM cells ORDER BY 1 LIMIT 3"})
    assert r.status_code == 200 and 'id="sql-results"' in r.text
    assert '<a href="/cells/3">3</a>' in r.text
    bad = client.get("/sql", params={"q": "DELETE FROM cells"})
    assert bad.status_code == 400 and 'id="sql-error"' in bad.text


def test_read_only__banner_and_no_tag_controls(demo_store, tmp_path: Path) -> None:  # noqa: ANN001
    root = Path(shutil.copytree(demo_store.root, tmp_path / "s"))
    client = TestClient(create_app(root, read_only=True), base_url=BASE)
    for path in ("/cells", "/cells/1", "/sql"):
        html = client.get(path).text
        assert 'id="read-only"' in html
        assert 'id="add-tag"' not in html and 'class="select-cell"' not in html


def test_static__css_and_js_served(client: TestClient) -> None:
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
