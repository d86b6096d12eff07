"""Fixtures of the web tests: a demo-like store, a live server, a headless Chromium.

The server runs ``cytostore serve`` in a subprocess bound to 127.0.0.1, exactly as a
user starts it; the browser is Debian's ``chromium`` driven by Playwright (its own
browser download cannot work offline). Without chromium the browser tests skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytostore.store import Store

#: Flags checked to run Debian's chromium as root in a container, offline.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoStore:
    """The web tests' store: two models, a linear head and a MIL head."""

    root: Path
    models: tuple[str, str]
    probe_head: str
    mil_head: str
    patient: tuple[str, str]  # (dataset, patient_id) of a patient with a MIL bag
    images: Path  # the synthetic image tree the store was ingested from
    audit_run: str = "label-audit"  # curation runs (see write_curation_runs)
    select_run: str = "to-annotate"
    map_run: str = "pca"


def write_curation_runs(store: Store, model: str) -> None:
    """Write one audit, one select and one map run through the store's writers.

    The audit ranks 30 labelled cells (every 7th) with a suggested label that
    differs from the given one;
    the selection is 40 cells far apart in the model's space (greedy k-centre);
    the map is the vectors' first two principal components.
    """
    from cytostore.store import write_label_issues, write_map, write_selection

    ids, X = store.vectors(model)
    X = np.asarray(X, np.float64)
    meta = store.cell_meta(ids, ["cell_id", "label"]).rows
    labelled = [(int(c), str(lab)) for c, lab in meta if lab is not None]
    labels = sorted({lab for _, lab in labelled})
    chosen = labelled[::7][:30]
    n = len(chosen)
    write_label_issues(
        store,
        DemoStore.audit_run,
        model=model,
        label_column="label",
        params={"k": 5, "folds": 2},
        cell_ids=[c for c, _ in chosen],
        given_label=[lab for _, lab in chosen],
        suggested_label=[
            labels[(labels.index(lab) + 1) % len(labels)] for _, lab in chosen
        ],
        score=np.linspace(0.95, 0.40, n),
        rank=np.arange(1, n + 1),
        neighbor_agreement=np.linspace(0.0, 0.6, n),
        is_issue=np.arange(n) < 10,
    )
    picked = [0]
    dist = np.linalg.norm(X - X[0], axis=1)
    while len(picked) < 40:
        nxt = int(np.argmax(dist))
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
    write_selection(
        store,
        DemoStore.select_run,
        model=model,
        strategy="diversity",
        params={"n": 40},
        cell_ids=ids[picked],
        rank=np.arange(1, 41),
        score=np.linspace(1.0, 0.1, 40),
    )
    centred = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    write_map(
        store, DemoStore.map_run, model, {"method": "pca"}, ids, xy[:, 0], xy[:, 1]
    )


@dataclass(frozen=True)
class LiveServer:
    """A running ``cytostore serve`` process."""

    url: str
    store: DemoStore
    process: subprocess.Popen[bytes]
    log: Path

    def get_json(self, path: str) -> Any:
        """GET ``url + path`` and decode its JSON body.

        Returns:
            The decoded JSON document.
        """
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture(scope="session")
def demo_store(
    embedded_store: Path,
    synthetic_tree: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> DemoStore:
    """A copy of ``embedded_store`` with a second model, a linear and a MIL head."""
    import torch

    from cytostore.embedder import embed, register_random_model
    from cytostore.heads import mil, probe

    torch.set_num_threads(1)
    root = Path(shutil.copytree(embedded_store, tmp_path_factory.mktemp("web") / "s"))
    store = Store.open(root)
    register_random_model(store, "random-tiny-b", backbone="tiny", crop_px=32, seed=1)
    embed(store, "random-tiny-b", device="cpu")
    probe(store, "random-tiny", "cell_type", name="cell-type", min_count=5, seed=0)
    mil(
        store,
        "random-tiny",
        where="dataset = 'mll_helmholtz'",
        folds=2,
        name="subtype",
        max_epochs=5,
        n_boot=50,
        seed=0,
    )
    rows = store.sql(
        "SELECT dataset, patient_id FROM cell_meta WHERE dataset = 'mll_helmholtz' "
        "GROUP BY ALL ORDER BY patient_id LIMIT 1"
    ).rows
    dataset, patient = rows[0]
    write_curation_runs(store, "random-tiny")
    return DemoStore(
        root=root,
        models=("random-tiny", "random-tiny-b"),
        probe_head="cell-type",
        mil_head="subtype",
        patient=(str(dataset), str(patient)),
        images=synthetic_tree,
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(home: Path) -> dict[str, str]:
    """The subprocess's environment: no user settings, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOSTORE_")}
    env.update(
        HOME=str(home),
        TORCH_HOME=str(home / "torch"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        CYTOSTORE_BUSY_TIMEOUT_S="5",
    )
    return env


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll ``GET /api/heads`` until it answers 200, the process dies or time is up.

    Raises:
        RuntimeError: The server exited or did not answer in time (its log attached).
    """
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/heads", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        try:
            code = process.wait(timeout=0.2)  # the poll's pause; notices an exit
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(
            f"cytostore serve exited with {code} before answering:\n{log.read_text()}"
        )
    raise RuntimeError(
        f"cytostore serve did not answer {url}/api/heads within "
        f"{SERVER_START_TIMEOUT_S:.0f} s:\n{log.read_text()}"
    )


@contextlib.contextmanager
def serving(store: DemoStore, tmp: Path) -> Iterator[LiveServer]:
    """Run ``cytostore serve`` on ``store`` on 127.0.0.1 until the block ends.

    Yields:
        The server, once it answers; it is terminated (then killed) afterwards.
    """
    port = _free_port()
    log = tmp / "serve.log"
    command = [sys.executable, "-m", "cytostore", "serve", str(store.root)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=_server_env(tmp)
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url, log)
        yield LiveServer(url=url, store=store, process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def live_server(
    demo_store: DemoStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """``cytostore serve`` on :func:`demo_store`, shared by a module's tests."""
    with serving(demo_store, tmp_path_factory.mktemp("serve")) as server:
        yield server


@pytest.fixture
def private_server(demo_store: DemoStore, tmp_path: Path) -> Iterator[LiveServer]:
    """``cytostore serve`` on a private copy of :func:`demo_store`, free to write."""
    root = Path(shutil.copytree(demo_store.root, tmp_path / "store"))
    with serving(dataclasses.replace(demo_store, root=root), tmp_path) as server:
        yield server


def chromium_path() -> str | None:
    """Debian's chromium, or ``None`` when it is not installed."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).is_file() else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a test module; skips when chromium is absent."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "browser tests need Debian's chromium at /usr/bin/chromium: "
            "apt-get install chromium (.ci/run does this when it can)"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def page(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    """One browser page (1280x900) shared by a test module, on the live server."""
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(20_000)
    tab = context.new_page()
    yield tab
    context.close()
