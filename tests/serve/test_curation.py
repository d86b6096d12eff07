"""The curation pages and their JSON routes: label issues as a review queue with
look-alikes from other patients, selections with a CSV of paths, maps whose box
becomes the grid's filter. Each answer is compared with the store's readers."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from starlette.testclient import TestClient

from cytostore.serve import create_app
from cytostore.store import Store, read_label_issues, read_map, read_selection

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def client(demo_store) -> TestClient:  # noqa: ANN001
    """A read-only server on the demo store (nothing here writes)."""
    return TestClient(create_app(demo_store.root, read_only=True), base_url=BASE)


@pytest.fixture
def store_copy(demo_store, tmp_path: Path) -> Path:  # noqa: ANN001
    return Path(shutil.copytree(demo_store.root, tmp_path / "store"))


def test_api_curation__lists_every_run(client: TestClient, demo_store) -> None:  # noqa: ANN001
    runs = {
        (r["kind"], r["run"]): r for r in client.get("/api/curation").json()["runs"]
    }
    store = Store.open(demo_store.root)
    assert runs[("audit", demo_store.audit_run)]["rows"] == len(
        read_label_issues(store, demo_store.audit_run).rows
    )
    assert runs[("select", demo_store.select_run)]["rows"] == 40
    assert runs[("map", demo_store.map_run)]["params"] == {"method": "pca"}


def test_api_label_issues__ranked_page_with_lookalikes_from_other_patients(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    store = Store.open(demo_store.root)
    expected = read_label_issues(store, demo_store.audit_run).dicts()
    r = client.get(
        f"/api/curation/label-issues/{demo_store.audit_run}?limit=6&offset=16&k=3"
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["total"] == len(expected) and d["reviewed"] == 0
    assert d["flagged"] == sum(bool(e["is_issue"]) for e in expected) > 0
    assert d["model"] == "random-tiny" and d["label_column"] == "label"
    got = d["issues"]
    assert [g["cell_id"] for g in got] == [e["cell_id"] for e in expected[16:22]]
    with_patient = {g["patient_id"] is not None for g in got}
    assert with_patient == {True, False}  # both kinds of suspect on this page
    for g, e in zip(got, expected[16:22], strict=True):
        assert (g["rank"], g["given_label"], g["suggested_label"]) == (
            e["rank"], e["given_label"], e["suggested_label"]
        )  # fmt: skip
        assert g["score"] == pytest.approx(e["score"])
        assert g["neighbor_agreement"] == pytest.approx(e["neighbor_agreement"])
        look = g["lookalikes"]
        assert look["error"] is None and len(look["cells"]) == 3
        where = (
            f"NOT (dataset = '{g['dataset']}' AND "
            f"patient_id IS NOT DISTINCT FROM '{g['patient_id']}')"
            if g["patient_id"] is not None
            else None
        )
        _, ids = store.search(g["cell_id"], 3, model="random-tiny", where=where)
        assert [c["cell_id"] for c in look["cells"]] == ids[0].tolist()
        meta = dict(store.cell_meta(ids[0], ["cell_id", "label"]).rows)
        assert [c["label"] for c in look["cells"]] == [meta[i] for i in ids[0]]
        if g["patient_id"] is not None:
            assert all(
                (c["dataset"], c["patient_id"]) != (g["dataset"], g["patient_id"])
                for c in look["cells"]
            )


def test_api_label_issues__reviewed_cells_leave_the_queue(
    store_copy: Path,
    demo_store,  # noqa: ANN001
) -> None:
    client = TestClient(create_app(store_copy), base_url=BASE)
    url = f"/api/curation/label-issues/{demo_store.audit_run}?k=0"
    before = client.get(url).json()
    first = before["issues"][0]["cell_id"]
    r = client.post(
        "/api/tags",
        json={"cell_ids": [first], "add": ["reviewed", "label-wrong"]},
        headers={"Origin": BASE},
    )
    assert r.status_code == 200, r.text
    after = client.get(url).json()
    assert after["total"] == before["total"] - 1 and after["reviewed"] == 1
    assert first not in [i["cell_id"] for i in after["issues"]]
    only = client.get(url + "&reviewed=only").json()
    assert [i["cell_id"] for i in only["issues"]] == [first]
    assert only["issues"][0]["tags"] == ["label-wrong", "reviewed"]
    everything = client.get(url + "&reviewed=show").json()
    assert everything["total"] == before["total"]


def test_api_curation__unknown_run_and_bad_arguments(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    r = client.get("/api/curation/label-issues/label-audi")
    assert r.status_code == 404 and demo_store.audit_run in r.json()["error"]
    assert client.get("/api/curation/selections/nope").status_code == 404
    assert client.get("/api/curation/maps/nope").status_code == 404
    run = demo_store.audit_run
    assert client.get(f"/api/curation/label-issues/{run}?reviewed=x").status_code == 400
    assert client.get(f"/api/curation/label-issues/{run}?k=99").status_code == 400
    r = client.get(f"/api/curation/maps/{demo_store.map_run}?color=no_such_column")
    assert r.status_code == 400 and "no_such_column" in r.json()["error"]
    r = client.get(f"/api/curation/maps/{demo_store.map_run}/where?x0=a&x1=1&y0=0&y1=1")
    assert r.status_code == 400


def test_api_selection__ranked_cells_and_csv_of_paths(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    store = Store.open(demo_store.root)
    expected = read_selection(store, demo_store.select_run).dicts()
    d = client.get(f"/api/curation/selections/{demo_store.select_run}?limit=15").json()
    assert d["total"] == 40 and d["model"] == "random-tiny"
    assert [c["cell_id"] for c in d["cells"]] == [e["cell_id"] for e in expected[:15]]
    assert [c["rank"] for c in d["cells"]] == list(range(1, 16))
    r = client.get(f"/api/curation/selections/{demo_store.select_run}/paths.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["cell_id"]) for x in rows] == [e["cell_id"] for e in expected]
    paths = store.cell_paths([e["cell_id"] for e in expected])
    assert [x["path"] for x in rows] == [str(p) for p in paths]
    assert all(Path(x["path"]).is_file() for x in rows)


def test_api_map__points_coloured_by_a_column(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    store = Store.open(demo_store.root)
    ids, xy = read_map(store, demo_store.map_run)
    d = client.get(f"/api/curation/maps/{demo_store.map_run}?color=label").json()
    assert d["cell_id"] == ids.tolist() and d["n"] == d["shown"] == ids.size
    assert np.allclose(d["x"], xy[:, 0], atol=1e-4)
    assert np.allclose(d["y"], xy[:, 1], atol=1e-4)
    assert d["kind"] == "category"
    labels = dict(store.cell_meta(ids, ["cell_id", "label"]).rows)
    for cid, v in zip(d["cell_id"], d["value"], strict=True):
        if labels[cid] is None:
            assert v == -1
        elif v >= 0:
            assert d["categories"][v] == labels[cid]
        else:
            assert v == -2 and labels[cid] not in d["categories"]
    numeric = client.get(f"/api/curation/maps/{demo_store.map_run}?color=width").json()
    assert numeric["kind"] == "number"
    widths = dict(store.cell_meta(ids, ["cell_id", "width"]).rows)
    assert numeric["value"] == [widths[c] for c in numeric["cell_id"]]


def test_api_map__a_box_is_the_grids_filter(client: TestClient, demo_store) -> None:  # noqa: ANN001
    store = Store.open(demo_store.root)
    ids, xy = read_map(store, demo_store.map_run)
    x0, x1 = float(np.median(xy[:, 0])), float(xy[:, 0].max()) + 1
    y0, y1 = float(xy[:, 1].min()) - 1, float(np.median(xy[:, 1]))
    inside = ids[
        (xy[:, 0] >= np.float32(x0)) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0)
        & (xy[:, 1] <= np.float32(y1))
    ]  # fmt: skip
    assert 0 < inside.size < ids.size
    box = f"x0={x1}&x1={x0}&y0={y1}&y1={y0}"  # any corner order
    r = client.get(f"/api/curation/maps/{demo_store.map_run}/where?{box}")
    assert r.status_code == 200, r.text
    cells = client.get(r.json()["cells"] + "&limit=10000").json()
    assert sorted(c["cell_id"] for c in cells["cells"]) == sorted(inside.tolist())
    page = client.get(
        f"/curation/maps/{demo_store.map_run}/cells?{box}", follow_redirects=False
    )
    assert page.status_code == 303
    target = urlsplit(page.headers["location"])
    assert target.path == "/cells"
    assert parse_qs(target.query)["where"] == [r.json()["where"]]


def test_pages__curation_index_queue_selection_and_map(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    index = client.get("/curation")
    assert index.status_code == 200
    for run in (demo_store.audit_run, demo_store.select_run, demo_store.map_run):
        assert run in index.text
    store = Store.open(demo_store.root)
    top = read_label_issues(store, demo_store.audit_run, limit=1).dicts()[0]
    queue = client.get(f"/curation/label-issues/{demo_store.audit_run}")
    assert queue.status_code == 200
    assert f'class="issue" data-cell-id="{top["cell_id"]}"' in queue.text
    assert 'class="mark"' not in queue.text  # read-only: no review buttons
    sel = client.get(f"/curation/selections/{demo_store.select_run}")
    assert sel.status_code == 200 and "paths.csv" in sel.text and "rank 1" in sel.text
    m = client.get(f"/curation/maps/{demo_store.map_run}?color=label")
    assert m.status_code == 200 and 'id="map"' in m.text
    missing = client.get("/curation/label-issues/nope")
    assert missing.status_code == 404 and "nope" in missing.text


def test_label_issues__filtered_with_the_sandboxed_where(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    run = demo_store.audit_run
    where = "dataset = 'mll_helmholtz'"
    store = Store.open(demo_store.root)
    expected = [
        int(r[0])
        for r in store.sql(
            "SELECT i.cell_id FROM label_issues i JOIN cell_meta m USING (cell_id) "
            f"WHERE i.run = ? AND m.{where} ORDER BY i.rank",
            [run],
        ).rows
    ]
    d = client.get(
        f"/api/curation/label-issues/{run}", params={"where": where, "k": 0}
    ).json()
    assert 0 < d["total"] == len(expected) < 30
    assert [i["cell_id"] for i in d["issues"]] == expected
    bad = client.get(f"/api/curation/label-issues/{run}", params={"where": "nope = 1"})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    attack = client.get(
        f"/api/curation/label-issues/{run}", params={"where": "1=1) OR (1=1"}
    )
    assert attack.status_code == 400
    page = client.get(f"/curation/label-issues/{run}", params={"where": "nope = 1"})
    assert page.status_code == 400 and 'id="where-error"' in page.text
    page = client.get(f"/curation/label-issues/{run}", params={"where": where})
    assert page.status_code == 200
    assert page.text.count('class="issue"') == min(len(expected), 20)


def test_cell_page__lists_the_curation_runs_of_the_cell(
    client: TestClient,
    demo_store,  # noqa: ANN001
) -> None:
    store = Store.open(demo_store.root)
    top = read_label_issues(store, demo_store.audit_run, limit=1).dicts()[0]
    info = client.get(f"/api/cells/{top['cell_id']}").json()
    audit = [c for c in info["curation"] if c["kind"] == "audit"]
    assert audit == [
        {
            "kind": "audit",
            "run": demo_store.audit_run,
            "rank": 1,
            "given_label": top["given_label"],
            "suggested_label": top["suggested_label"],
            "score": pytest.approx(top["score"]),
        }
    ]
    page = client.get(f"/cells/{top['cell_id']}")
    assert page.status_code == 200 and 'id="curation"' in page.text
    assert f"/curation/label-issues/{demo_store.audit_run}?" in page.text
    chosen = read_selection(store, demo_store.select_run).dicts()[0]["cell_id"]
    runs = client.get(f"/api/cells/{chosen}").json()["curation"]
    assert {"kind": "select", "run": demo_store.select_run} in [
        {"kind": c["kind"], "run": c["run"]} for c in runs
    ]
