"""Saved heads: arrays + JSON (never pickle), atomic replacement, refusals."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from heads_helpers import build_store, gaussian_classes

from cytostore.cli import main
from cytostore.errors import (
    PickledHeadError,
    StaleHeadError,
    StoreCorruptError,
)
from cytostore.heads import KNNHead, predict
from cytostore.heads.registry import head_dir, load_head, save_head
from cytostore.store import Store

ROOT = Path(__file__).resolve().parents[2]
META = {"kind": "knn", "model": "tiny", "label": "label"}


class _Planted:
    """A pickle whose loading creates ``marker`` (what an attacker would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _data() -> tuple[np.ndarray, np.ndarray]:
    return gaussian_classes(20, dim=16, seed=3)


def _old_head() -> KNNHead:
    return KNNHead(k=1).fit(*_data())


def _new_head() -> KNNHead:
    return KNNHead(k=5, weighting="uniform").fit(*_data())


def _planted_pickle(marker: Path) -> bytes:
    payload = pickle.dumps(_Planted(marker))
    probe = marker.with_name("payload-works")
    pickle.loads(pickle.dumps(_Planted(probe)))  # noqa: S301 - proves the payload
    assert probe.exists()
    probe.unlink()
    return payload


def test_save_head__folder_holds_arrays_and_json_only(probe_store: Store) -> None:
    folder = save_head(probe_store, "h", _old_head(), META, {"accuracy": 1.0})
    assert sorted(p.name for p in folder.iterdir()) == [
        "head.json",
        "head.npz",
        "report.json",
    ]
    doc = json.loads((folder / "head.json").read_text())
    assert doc["format"] == "cytostore-head-1"
    assert doc["estimator"]["class"] == "KNNHead"
    assert doc["estimator"]["params"]["k"] == 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    row = probe_store.sql("SELECT kind, model, path FROM heads WHERE name = 'h'").rows
    assert row == [("knn", "tiny", "heads/h")]


def test_save_head__replacing_leaves_the_new_head_and_no_temp_folders(
    probe_store: Store,
) -> None:
    X, _ = _data()
    save_head(probe_store, "h", _old_head(), META, {"v": "old"})
    save_head(probe_store, "h", _new_head(), META, {"v": "new"})
    head, _ = load_head(probe_store, "h")
    np.testing.assert_array_equal(head.predict_proba(X), _new_head().predict_proba(X))
    assert [p.name for p in (probe_store.root / "heads").iterdir()] == ["h"]
    report = probe_store.sql("SELECT report FROM heads WHERE name = 'h'").rows[0][0]
    assert json.loads(report) == {"v": "new"}


_CHILD = textwrap.dedent(
    """
    import sys
    from cytostore.heads import KNNHead
    from cytostore.heads.registry import save_head
    from cytostore.store import Store
    sys.path.insert(0, sys.argv[2])
    from heads_helpers import gaussian_classes

    head = KNNHead(k=5, weighting="uniform").fit(*gaussian_classes(20, dim=16, seed=3))
    meta = {"kind": "knn", "model": "tiny", "label": "label"}
    save_head(Store.open(sys.argv[1]), "h", head, meta, {"v": "new"})
    """
)


@pytest.mark.parametrize(
    ("point", "survivor"),
    [
        ("head.written", "old"),
        ("head.aside", "old"),
        ("head.in_place", "new"),
        ("head.registered", "new"),
    ],
)
def test_save_head__killed_at_each_step_leaves_old_or_new_whole(
    probe_store: Store, point: str, survivor: str
) -> None:
    X, _ = _data()
    save_head(probe_store, "h", _old_head(), META, {"v": "old"})
    env = dict(os.environ, CYTOSTORE_FAULT=point)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(probe_store.root),
            str(Path(__file__).parent),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr
    store = Store.open(probe_store.root)
    head, meta = load_head(store, "h")
    expected = _old_head() if survivor == "old" else _new_head()
    assert head.get_params() == expected.get_params()
    np.testing.assert_array_equal(head.predict_proba(X), expected.predict_proba(X))
    # the next save finishes the crashed one's work and leaves one folder
    save_head(store, "h", _old_head(), META, {"v": "again"})
    assert [p.name for p in (store.root / "heads").iterdir()] == ["h"]
    assert load_head(store, "h")[0].get_params() == _old_head().get_params()


def test_load_head__old_pickle_is_refused_and_never_run(
    probe_store: Store, tmp_path: Path
) -> None:
    save_head(probe_store, "h", _old_head(), META, {})
    folder = head_dir(probe_store, "h")
    marker = tmp_path / "pwned"
    (folder / "head.npz").unlink()
    (folder / "head.pkl").write_bytes(_planted_pickle(marker))
    with pytest.raises(PickledHeadError) as err:
        load_head(probe_store, "h")
    message = str(err.value)
    assert "a pickle can run code" in message and "\n" not in message
    assert f"cytostore probe {probe_store.root} --model tiny --kind knn" in message
    assert message.endswith("--name h")
    assert not marker.exists()


def test_load_head__pickle_in_place_of_the_arrays_is_refused_and_never_run(
    probe_store: Store, tmp_path: Path
) -> None:
    save_head(probe_store, "h", _old_head(), META, {})
    marker = tmp_path / "pwned"
    npz = head_dir(probe_store, "h") / "head.npz"
    npz.write_bytes(_planted_pickle(marker))
    with pytest.raises(StoreCorruptError, match="retrain it"):
        load_head(probe_store, "h")
    doc = json.loads(npz.with_name("head.json").read_text())
    doc["arrays_sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    npz.with_name("head.json").write_text(json.dumps(doc))
    with pytest.raises(StoreCorruptError, match="do not describe a KNNHead"):
        load_head(probe_store, "h")
    result = CliRunner().invoke(main, ["predict", str(probe_store.root), "--head", "h"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "head 'h'" in result.stderr
    assert not marker.exists()


def test_load_head__unknown_class_or_altered_arrays_are_refused(
    probe_store: Store,
) -> None:
    save_head(probe_store, "h", _old_head(), META, {})
    folder = head_dir(probe_store, "h")
    arrays = dict(np.load(folder / "head.npz", allow_pickle=False))
    arrays["X_fit_"] = arrays["X_fit_"] * 0
    np.savez(folder / "head.npz", **arrays)
    with pytest.raises(StoreCorruptError, match="differs from the sha256"):
        load_head(probe_store, "h")
    save_head(probe_store, "h", _old_head(), META, {})
    doc = json.loads((folder / "head.json").read_text())
    doc["estimator"]["class"] = "os.system"
    (folder / "head.json").write_text(json.dumps(doc))
    with pytest.raises(StoreCorruptError, match="no known head class"):
        load_head(probe_store, "h")


@pytest.mark.parametrize("path", ["/etc", "../..", "heads/../../x", ""])
def test_load_head__catalog_path_outside_the_store_is_refused(
    probe_store: Store, path: str
) -> None:
    save_head(probe_store, "h", _old_head(), META, {})
    with probe_store.transaction() as con:
        con.execute("UPDATE heads SET path = ? WHERE name = 'h'", [path])
    with pytest.raises(StoreCorruptError, match="head 'h' folder"):
        load_head(probe_store, "h")


def test_load_head__refuses_a_head_whose_model_weights_changed(tmp_path: Path) -> None:
    store = build_store(tmp_path / "s")
    with store.transaction() as con:
        con.execute("UPDATE embedding_sets SET weights_sha256 = ?", ["a" * 64])
    save_head(store, "h", KNNHead(k=3).fit(*gaussian_classes(40)), META, {})
    assert store.sql("SELECT weights_sha256 FROM heads").rows == [("a" * 64,)]
    assert predict(store, "h")["n_predicted"] == 160
    with store.transaction() as con:  # the set was re-embedded with other weights
        con.execute("UPDATE embedding_sets SET weights_sha256 = ?", ["b" * 64])
    with pytest.raises(StaleHeadError) as err:
        predict(store, "h")
    message = str(err.value)
    assert "aaaaaaaaaaaa" in message and "bbbbbbbbbbbb" in message
    assert "retrain the head with cytostore probe" in message
    assert "\n" not in message
    head, _ = load_head(store, "h", check_weights=False)
    assert head.k == 3


def test_load_head__old_release_head_names_the_retrain_command_that_works(
    tmp_path: Path,
) -> None:
    fixture = ROOT / "tests" / "fixtures" / "store_v0"
    root = Path(shutil.copytree(fixture, tmp_path / "old"))
    with gzip.open(root / "catalog.duckdb.gz", "rb") as src:
        (root / "catalog.duckdb").write_bytes(src.read())
    (root / "catalog.duckdb.gz").unlink()
    store = Store.open(root)
    with pytest.raises(PickledHeadError) as err:
        load_head(store, "lin")
    command = str(err.value).split("retrain it with ", 1)[1]
    assert command == (
        f"cytostore probe {root} --model rand --kind linear --label dataset --name lin"
    )
    result = CliRunner().invoke(main, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    assert not (root / "heads" / "lin" / "head.pkl").exists()
    assert predict(store, "lin")["n_predicted"] == 63
