"""The pixel-attribution API (cytostore/serve/pixels.py) and its links on the pages."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from starlette.testclient import TestClient

from cytostore.explain import explain_pixels
from cytostore.serve import create_app
from cytostore.store import Store

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def client(demo_store) -> TestClient:  # noqa: ANN001
    return TestClient(create_app(demo_store.root), base_url=BASE)


def _predicted_cell(demo_store) -> int:  # noqa: ANN001
    rows = (
        Store.open(demo_store.root)
        .sql(
            "SELECT min(cell_id) FROM predictions WHERE head = ?",
            [demo_store.probe_head],
        )
        .rows
    )
    return int(rows[0][0])


def _png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_api_cell_pixels__the_library_result_and_its_png(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    cell = _predicted_cell(demo_store)
    head = demo_store.probe_head
    r = client.get(f"/api/cells/{cell}/pixels?head={head}&method=gradxinput")
    assert r.status_code == 200, r.text
    doc = r.json()
    want = explain_pixels(demo_store.root, head, cell=cell, method="gradxinput")
    assert doc["target"] == want["target"]
    assert doc["cells"][0]["cell_id"] == cell
    assert doc["cells"][0]["total_attribution"] == pytest.approx(
        want["cells"][0]["total_attribution"], rel=1e-4, abs=1e-6
    )
    assert doc["cells"][0]["peak"] == want["cells"][0]["peak"]
    png = client.get(doc["overlay_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    path = Store.open(demo_store.root).cell_paths([cell])[0]
    w, h = Image.open(path).size
    assert _png(png.content) == (2 * w + 4, h)


def test_api_patient_pixels__top_cells_and_montage(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    dataset, pid = demo_store.patient
    q = f"head={demo_store.mil_head}&dataset={dataset}&cells=2&method=gradxinput"
    r = client.get(f"/api/patients/{pid}/pixels?{q}")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["patient"] == f"{dataset}/{pid}" and len(doc["cells"]) == 2
    att = [c["attention"] for c in doc["cells"]]
    assert att == sorted(att, reverse=True)
    png = client.get(doc["montage_url"])
    assert png.status_code == 200
    w, h = _png(png.content)
    assert w > 200 and h > 200


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/api/cells/{cell}/pixels", 400, "?head=NAME"),
        ("/api/cells/{cell}/pixels?head=nope", 404, "nope"),
        ("/api/cells/{cell}/pixels.png?head={mil}", 400, "MIL head"),
        ("/api/cells/{cell}/pixels?head={probe}&method=lrp", 400, "lrp"),
        ("/api/cells/{cell}/pixels?head={probe}&class=NOPE", 400, "NOPE"),
        ("/api/patients/NOPE/pixels?head={mil}", 404, "NOPE"),
        ("/api/patients/X/pixels.png?head={mil}&cells=99", 400, "cells"),
    ],
)
def test_api_pixels__errors_are_one_json_line(
    client: TestClient,
    demo_store,
    url: str,
    status: int,
    message: str,  # noqa: ANN001
) -> None:
    path = url.format(
        cell=_predicted_cell(demo_store),
        mil=demo_store.mil_head,
        probe=demo_store.probe_head,
    )
    r = client.get(path)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_pages__cell_and_patient_link_their_overlays(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    cell = _predicted_cell(demo_store)
    page = client.get(f"/cells/{cell}").text
    assert f"/api/cells/{cell}/pixels.png?head={demo_store.probe_head}" in page
    dataset, pid = demo_store.patient
    page = client.get(f"/patients/{pid}?dataset={dataset}").text
    assert f"/api/patients/{pid}/pixels.png?head={demo_store.mil_head}" in page
