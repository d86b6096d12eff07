"""The web app in a real headless Chromium: click through the pages a user meets.

One browser and one page serve the whole module (see ``conftest.py``); the server is
``cytostore serve`` in a subprocess. Each check compares what the page shows with
what the library computes on the same store. Screenshots are checked to be non-blank;
with ``WEB_SCREENSHOTS=docs/web`` small copies are also saved there (docs/web.md
shows them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cytostore.store import Store

if TYPE_CHECKING:
    from serve.conftest import LiveServer

SCREENSHOT_WIDTH_PX = 800
SCREENSHOT_MAX_BYTES = 100_000
#: Grey-level standard deviation below which a screenshot counts as blank.
BLANK_STD = 8.0
_SCREENSHOTS_DIR = os.environ.get("WEB_SCREENSHOTS")
#: Every rendered image in the viewport has loaded (one inside a closed <details>
#: is not rendered, so a lazy one there never loads: left out).
_IMAGES_IN_VIEW_LOADED = """() => Array.from(document.images)
    .filter(i => i.checkVisibility())
    .filter(i => i.getBoundingClientRect().top < window.innerHeight)
    .every(i => i.complete && i.naturalWidth > 0)"""


def _ids(page: Any, selector: str) -> list[int]:
    """The ``data-cell-id`` of every element matching ``selector``, in page order."""
    values = page.locator(selector).evaluate_all(
        "els => els.map(e => e.dataset.cellId)"
    )
    return [int(v) for v in values]


def _check_screenshot(page: Any, name: str) -> None:
    """Screenshot the page, assert it is not blank, and save a small copy if asked.

    Waits until every image in the viewport has loaded (thumbnails are fetched by
    the browser after the HTML), so a broken image fails here.
    """
    page.wait_for_function(_IMAGES_IN_VIEW_LOADED)
    png = page.screenshot(full_page=False)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    std = float(np.asarray(image.convert("L"), dtype=np.float32).std())
    assert std > BLANK_STD, f"screenshot {name} looks blank (grey std {std:.1f})"
    if _SCREENSHOTS_DIR:
        small = image.resize(
            (
                SCREENSHOT_WIDTH_PX,
                round(image.height * SCREENSHOT_WIDTH_PX / image.width),
            ),
            Image.Resampling.LANCZOS,
        )
        out = Path(_SCREENSHOTS_DIR) / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        for colors in (256, 128, 64, 32):
            small.quantize(colors=colors).save(out, optimize=True)
            if out.stat().st_size <= SCREENSHOT_MAX_BYTES:
                break
        assert out.stat().st_size <= SCREENSHOT_MAX_BYTES


def test_grid__filter_changes_the_cells(page: Any, live_server: LiveServer) -> None:
    page.goto("/")
    assert page.url.endswith("/cells") or "/cells?" in page.url
    assert page.locator(".cell-thumb").count() == 100  # 360 cells, 100 a page
    where = "dataset = 'bm' AND label IN ('EBO', 'LYT', 'NGS')"
    store = Store.open(live_server.store.root)
    rows = store.sql(f"SELECT cell_id, label FROM cell_meta WHERE {where}").rows
    expected = sorted(int(r[0]) for r in rows)
    per_label = {str(r[1]): sum(1 for s in rows if s[1] == r[1]) for r in rows}
    assert 0 < len(expected) < 100 and len(per_label) == 3
    page.fill("#where", where)
    page.click("#apply")
    page.wait_for_url("**/cells?*where=*")
    assert sorted(_ids(page, ".cell-thumb")) == expected
    links = page.locator(".cell-thumb").evaluate_all(
        "els => els.map(e => [e.dataset.cellId, e.querySelector('a').pathname])"
    )
    assert all(path == f"/cells/{cell}" for cell, path in links)
    label_of = {int(r[0]): str(r[1]) for r in rows}
    texts = page.locator(".cell-thumb").evaluate_all(
        "els => els.map(e => [Number(e.dataset.cellId), e.innerText])"
    )
    assert all(label_of[cell] in text for cell, text in texts)
    counts = page.locator("#counts").inner_text()
    for label, n in per_label.items():
        assert re.search(rf"\b{label}\s+{n}\b", counts), (label, n, counts)
    _check_screenshot(page, "grid")


def test_grid__bad_filter_shows_the_error_inline(page: Any) -> None:
    response = page.goto("/cells?where=no_such_column%20%3D%201")
    assert response is not None and response.status == 400
    assert "no_such_column" in page.locator("#where-error").inner_text()
    assert page.locator(".cell-thumb").count() == 0


def test_cell_page__switching_model_changes_the_neighbours(
    page: Any, live_server: LiveServer
) -> None:
    first, second = live_server.store.models
    cell = 5
    page.goto(f"/cells/{cell}?model={first}")
    assert page.locator("#cell-image").evaluate("img => img.naturalWidth") > 0
    assert "lmu" in page.locator("#meta").inner_text()
    shown_first = _ids(page, ".neighbor")
    _check_screenshot(page, "cell")
    page.select_option("#model", second)
    page.wait_for_url(f"**model={second}*")
    shown_second = _ids(page, ".neighbor")
    assert shown_first and shown_second and shown_first != shown_second
    store = Store.open(live_server.store.root)
    for model, shown in ((first, shown_first), (second, shown_second)):
        _, ids = store.search(cell, len(shown), model=model)
        assert shown == ids[0].tolist(), model


def test_search__uploaded_image_gets_neighbours(
    page: Any, live_server: LiveServer
) -> None:
    image = next(iter(sorted((live_server.store.images / "bm").rglob("*.jpg"))))
    page.goto("/search")
    page.set_input_files("#image", str(image))
    if page.locator("#um-per-px").count():
        page.fill("#um-per-px", "0.1")
    model = live_server.store.models[1]
    page.select_option("#model", model)
    page.click("#search-submit")
    page.wait_for_selector(".neighbor")
    ids = _ids(page, ".neighbor")
    # a catalogued file is searched with its stored vector, itself left out
    store = Store.open(live_server.store.root)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    cell = store.sql("SELECT cell_id FROM cells WHERE sha256 = ?", [digest]).rows
    _, expected = store.search(int(cell[0][0]), len(ids), model=model)
    assert ids == expected[0].tolist()


def test_patient_page__mil_prediction_and_cells_by_attention(
    page: Any, live_server: LiveServer
) -> None:
    dataset, patient = live_server.store.patient
    page.goto(f"/patients/{patient}?dataset={dataset}")
    mil = page.locator("#mil").inner_text()
    assert live_server.store.mil_head in mil
    bag_labels = {"control", "CBFB_MYH11", "NPM1", "PML_RARA", "RUNX1_RUNX1T1"}
    assert any(label in mil for label in bag_labels)
    by_attention = Store.open(live_server.store.root).sql(
        "SELECT cell_id FROM attention WHERE head = ? AND dataset = ? "
        "AND patient_id = ? ORDER BY attention DESC, cell_id",
        [live_server.store.mil_head, dataset, patient],
    )
    expected = [int(r[0]) for r in by_attention.rows]
    assert len(expected) >= 2
    assert _ids(page, ".cell-thumb") == expected
    _check_screenshot(page, "patient")


def test_tags__two_cells_tagged_in_the_grid_are_found_with_sql(
    page: Any, live_server: LiveServer
) -> None:
    page.goto("/cells?where=dataset%20%3D%20'mll_helmholtz'")
    boxes = page.locator(".select-cell")
    picked = sorted(int(boxes.nth(i).get_attribute("value") or 0) for i in (0, 1))
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.fill("#tag", "browser-picked")
    with page.expect_response("**/api/tags") as answer:
        page.click("#add-tag")
    assert answer.value.status == 200, answer.value.text()
    assert answer.value.json()["cells"] == 2
    page.wait_for_function(  # the status line shows the answer (2 cells)
        "document.querySelector('#tag-status').textContent.includes('2')"
    )
    assert "error" not in page.locator("#tag-status").inner_text().lower()
    page.goto("/sql")
    page.fill(
        "#q",
        "SELECT cell_id FROM cell_meta WHERE list_contains(tags, 'browser-picked') "
        "ORDER BY cell_id",
    )
    page.click("#run-sql")
    page.wait_for_selector("#sql-results td")
    cells = page.locator("#sql-results td").all_inner_texts()
    assert [int(c) for c in cells] == picked


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``cytostore ARGS`` in a separate process (no user settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOSTORE_")}
    env.update(CYTOSTORE_BUSY_TIMEOUT_S="5", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "cytostore", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_serve__embed_probe_tag_and_sql_succeed_while_serving(
    private_server: LiveServer,
) -> None:
    from cytostore.embedder import register_random_model

    server = private_server
    root = str(server.store.root)
    assert "cli-while-serving" not in server.get_json("/api/cells/7")["tags"]
    register_random_model(
        Store.open(root), "random-tiny-c", backbone="tiny", crop_px=32, seed=2
    )
    embedded = _cli("embed", root, "--model", "random-tiny-c", "--device", "cpu")
    assert embedded.returncode == 0, embedded.stderr
    assert server.get_json("/api/cells/1/neighbors?model=random-tiny-c&k=3")[
        "neighbors"
    ]
    probed = _cli(
        "probe", root, "--model", "random-tiny", "--label", "cell_type",
        "--kind", "knn", "--min-count", "5", "--name", "while-serving",
    )  # fmt: skip
    assert probed.returncode == 0, probed.stderr
    heads = {h["name"] for h in server.get_json("/api/heads")["heads"]}
    assert "while-serving" in heads
    tagged = _cli("tag", root, "--where", "cell_id = 7", "--add", "cli-while-serving")
    assert tagged.returncode == 0, tagged.stderr
    query = _cli(
        "sql", root, "--format", "csv",
        "SELECT cell_id FROM cell_meta WHERE list_contains(tags, 'cli-while-serving')",
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == ["cell_id", "7"]
    assert "cli-while-serving" in server.get_json("/api/cells/7")["tags"]


def test_curation__review_queue_and_map_box_to_grid(
    page: Any, private_server: LiveServer
) -> None:
    server = private_server
    store = Store.open(server.store.root)
    run = server.store.audit_run
    page.goto(server.url + "/curation")
    page.click(f"#runs-audit a:text-is('{run}')")
    page.wait_for_url(f"**/curation/label-issues/{run}")
    queue = [int(r[1]) for r in store.sql(
        "SELECT rank, cell_id FROM label_issues WHERE run = ? ORDER BY rank, cell_id",
        [run],
    ).rows]  # fmt: skip
    shown = _ids(page, ".issue")
    assert shown == queue[: len(shown)] and len(shown) == 20
    first = page.locator(".issue").first
    assert first.locator(".lookalike").count() == 5
    _check_screenshot(page, "review-queue")
    with page.expect_response("**/api/tags") as answer:
        first.locator("button.mark[data-verdict='label-wrong']").click()
    assert answer.value.status == 200, answer.value.text()
    tags = store.cell_meta([queue[0]], ["tags"]).rows[0][0]
    assert sorted(tags) == ["label-wrong", "reviewed"]
    page.reload()
    assert _ids(page, ".issue")[0] == queue[1]  # reviewed: out of the queue

    map_run = server.store.map_run
    page.goto(server.url + f"/curation/maps/{map_run}?color=label")
    n = len(store.sql("SELECT cell_id FROM maps WHERE run = ?", [map_run]).rows)
    page.wait_for_function(f"document.querySelector('#map').dataset.points == '{n}'")
    assert page.locator("#map-legend div").count() >= 2
    _check_screenshot(page, "map")
    box = page.locator("#map").bounding_box()
    assert box is not None
    # a click on a point opens its cell (the nearest point, within 8 canvas px)
    ids, xs, ys = page.evaluate(
        "() => [cytostoreMap.ids, Array.from(cytostoreMap.px), "
        "Array.from(cytostoreMap.py)]"
    )
    scale = box["width"] / 760
    page.mouse.click(box["x"] + xs[0] * scale, box["y"] + ys[0] * scale)
    page.wait_for_url("**/cells/*")
    opened = int(page.url.rsplit("/", 1)[1].split("?")[0])
    near = {
        cell
        for cell, x, y in zip(ids, xs, ys, strict=True)
        if (x - xs[0]) ** 2 + (y - ys[0]) ** 2 <= 64
    }
    assert opened in near
    # a dragged box opens the grid filtered to the cells inside it
    page.goto(server.url + f"/curation/maps/{map_run}?color=label")
    page.wait_for_function(f"document.querySelector('#map').dataset.points == '{n}'")
    x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2
    x1, y1 = box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2)
    page.mouse.move(x1, y1)
    page.mouse.up()
    page.wait_for_url("**/cells?where=*")
    where = page.locator("#where").input_value()
    assert f"FROM maps WHERE run = '{map_run}'" in where
    inside = store.where_ids(where, empty_ok=True).tolist()
    assert 0 < len(inside) < n
    assert sorted(_ids(page, ".cell-thumb")) == inside[:100]
