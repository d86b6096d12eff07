"""``map``: 2-D coordinates in table maps, a coloured scatter PNG, the mixing score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cytostore.cli import main
from cytostore.curate.map import draw_map, map_cells, project
from cytostore.errors import InvalidArgumentError, UnknownColumnError
from cytostore.store import Store, read_map, store_mixing_score

MODEL = "random-tiny"


def _maps(path: Path) -> list[tuple]:
    st = Store.open(path)
    return st.sql("SELECT run, count(*) FROM maps GROUP BY run ORDER BY run").rows


def test_map_cells__pca_rows_equal_sklearn_pca_of_the_unit_vectors(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    from sklearn.decomposition import PCA

    result = map_cells(
        embedded_store_copy,
        MODEL,
        method="pca",
        where="dataset <> 'mll_helmholtz'",
        out=tmp_path / "m.png",
    )
    st = Store.open(embedded_store_copy)
    ids, x = st.vectors(MODEL, "dataset <> 'mll_helmholtz'")
    order = np.argsort(ids)
    x = np.asarray(x[order], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = PCA(n_components=2, random_state=0).fit_transform(x)
    got_ids, got_xy = read_map(st, "random-tiny-pca")
    assert got_ids.tolist() == ids[order].tolist() == result.ids.tolist()
    np.testing.assert_allclose(got_xy, want, atol=1e-4)
    run = st.sql(
        "SELECT model, params FROM curation_runs WHERE kind = 'map' AND run = ?",
        ["random-tiny-pca"],
    ).rows[0]
    params = json.loads(run[1])
    assert run[0] == MODEL and params["method"] == "pca"
    assert params["mixing"]["dataset"] == result.mixing["dataset"]


def test_map_cells__the_printed_score_is_the_store_score(
    embedded_store_copy: Path,
) -> None:
    result = map_cells(embedded_store_copy, MODEL, method="pca", label="label")
    want = store_mixing_score(Store.open(embedded_store_copy), MODEL, label="label")
    for key in ("dataset", "patient", "label", "per_dataset", "per_label"):
        assert result.mixing[key] == want[key]
    assert result.png is None  # no out: no picture


def test_map_cells__png_has_one_colour_per_category(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "by-dataset.png"
    map_cells(embedded_store_copy, MODEL, method="pca", out=out)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 700
    # tab10's first three colours (blue, orange, green) mark the three datasets.
    for rgb in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        near = np.abs(img.astype(int) - rgb).sum(axis=2) < 30
        assert near.sum() > 20, rgb


def test_map_cells__same_name_replaces_its_rows_only(
    embedded_store_copy: Path,
) -> None:
    map_cells(embedded_store_copy, MODEL, method="pca", name="a")
    map_cells(embedded_store_copy, MODEL, method="pca", name="b", sample=50)
    map_cells(
        embedded_store_copy, MODEL, method="pca", name="a", where="dataset = 'bm'"
    )
    assert _maps(embedded_store_copy) == [("a", 120), ("b", 50)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "tsne"}, InvalidArgumentError, "unknown map method 'tsne'"),
        ({"color_by": "colour"}, UnknownColumnError, "--color-by 'colour'"),
        ({"label": "celltype"}, UnknownColumnError, "--label 'celltype'"),
        ({"name": "a b"}, InvalidArgumentError, "run name 'a b'"),
        ({"sample": 2}, InvalidArgumentError, "--sample must be >= 4"),
        ({"where": "cell_id < 3"}, InvalidArgumentError, "at least 4 cells"),
    ],
)
def test_map_cells__bad_input_changes_nothing(
    embedded_store_copy: Path, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        map_cells(embedded_store_copy, MODEL, **{"method": "pca", **kwargs})
    assert _maps(embedded_store_copy) == []


def test_project__umap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(6, 1, (30, 8))])
    a = project(x, "umap", metric="l2", seed=3)
    b = project(x, "umap", metric="l2", seed=3)
    assert a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # The two blobs stay apart: each point's nearest map neighbour is in its blob.
    d = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert ((d.argmin(axis=1) < 30) == (np.arange(60) < 30)).all()


def test_project__umap_progress_counts_every_epoch_and_changes_nothing() -> None:
    import umap

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(6, 1, (30, 8))])
    calls: list[tuple[int, int]] = []
    a = project(
        x, "umap", metric="l2", seed=2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[0] == (0, 500) and calls[-1] == (500, 500)
    done = [d for d, _ in calls]
    assert done == sorted(set(done)) and {t for _, t in calls} == {500}
    assert len(calls) > 10  # epochs are reported as they run, not just at the end
    np.testing.assert_array_equal(a, project(x, "umap", metric="l2", seed=2))
    # the oracle: umap-learn with its default epoch count, unwrapped
    ref = umap.UMAP(n_neighbors=15, random_state=2, n_jobs=1).fit_transform(
        x.astype(np.float32)
    )
    np.testing.assert_array_equal(a, np.asarray(ref, dtype=np.float32))


def test_draw_map__numbers_get_a_colour_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(200, 2))
    values = [None if i % 10 == 0 else float(i) for i in range(200)]
    out = draw_map(xy, values, tmp_path / "n.png", color_by="age")
    assert Image.open(out).size[0] > 700


def _cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), prog_name="cytostore")


def test_map_cli__table_rows_and_summary(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.png"
    result = _cli(
        "map", str(embedded_store_copy), "--model", MODEL, "--method", "pca",
        "--out", str(out), "--label", "label",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "group", "cells", "same_dataset", "expected_dataset", "dataset_score",
        "same_label", "expected_label", "label_score",
    ]  # fmt: skip
    assert lines[2].startswith("all ") and lines[3].startswith("dataset=bm ")
    m = store_mixing_score(Store.open(embedded_store_copy), MODEL, label="label")
    assert result.stderr == (
        f"map run {MODEL}-pca: 360 cells by pca in "
        f"{result.stderr.split(' in ')[1].split(' s,')[0]} s, picture {out}; "
        f"mixing (k=10, 0 = mixed, 1 = separated): dataset {m['dataset']:.3f}, "
        f"patient {m['patient']:.3f}, label {m['label']:.3f}\n"
    )
    assert out.is_file()


def test_map_cli__json_is_the_whole_report(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    result = _cli(
        "map", str(embedded_store_copy), "--model", MODEL, "--method", "pca",
        "--out", str(tmp_path / "m.png"), "--format", "json",
    )  # fmt: skip
    doc = json.loads(result.stdout)
    assert doc["run"] == f"{MODEL}-pca" and doc["cells"] == 360
    assert [r["dataset"] for r in doc["mixing"]["per_dataset"]] == [
        "bm", "lmu", "mll_helmholtz",
    ]  # fmt: skip


def test_map_cli__umap_in_a_pipe_prints_only_the_summary(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    result = _cli(
        "map", str(embedded_store_copy), "--model", MODEL, "--sample", "60",
        "--out", str(tmp_path / "m.png"), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cells"] == 60
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"map run {MODEL}-umap: 60 cells ")
    assert "\r" not in result.stderr


def test_map_cli__the_compile_note_shows_once_and_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from cytostore.cli.map import _compile_note

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, notes in ((io.StringIO(), 0), (Terminal(), 1)):
        monkeypatch.setattr("sys.stderr", stream)
        seen: list[tuple[int, int]] = []
        update = _compile_note(lambda d, t, seen=seen: seen.append((d, t)))
        update(0, 500)
        update(7, 500)
        assert seen == [(0, 500), (7, 500)]
        assert stream.getvalue().count("compiles numba code") == notes


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["--model", "random-tiyn"], 1, "did you mean 'random-tiny'?"),
        (["--model", MODEL, "--color-by", "lable"], 1, "--color-by 'lable'"),
        (["--model", MODEL, "--method", "tsne"], 2, "'tsne' is not one of"),
        (["--model", MODEL, "--where", "cell_id <"], 2, "invalid --where"),
    ],
)
def test_map_cli__errors(
    embedded_store_copy: Path, tmp_path: Path, args: list, code: int, line: str
) -> None:
    out = tmp_path / "m.png"
    result = _cli("map", str(embedded_store_copy), *args, "--out", str(out))
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and line in errors[0], result.stderr
    assert not out.exists() and _maps(embedded_store_copy) == []


def test_pretrain_card__records_the_monitor_cells_mixing_score(
    synthetic_store_copy: Path,
) -> None:
    from cytostore.embedder import pretrain

    card = pretrain(
        synthetic_store_copy, "m", method="simclr", epochs=1, backbone="tiny",
        crop_px=32, batch_size=32, device="cpu", workers=1, monitor_cells=60,
        label_column="cell_type",
    )  # fmt: skip
    mixing = card.knn_monitor["mixing"]
    assert mixing["k"] == 10 and set(mixing["per_dataset"]) <= {"bm", "lmu"}
    assert -1.0 <= mixing["dataset"] <= 1.0 and -1.0 <= mixing["label"] <= 1.0
    assert card.knn_monitor["mixing_history"] == [mixing["dataset"]]
