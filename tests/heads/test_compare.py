"""compare: several models, the same heads, the same folds, one table and one PNG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.embedder import embed, register_random_model
from cytostore.errors import InvalidArgumentError, UnknownEmbeddingSetError
from cytostore.heads.compare import compare
from cytostore.heads.probe import probe
from cytostore.store import Store

MLL = "dataset = 'mll_helmholtz'"  # 120 cells of 10 patients, 5 subtypes


@pytest.fixture(scope="module")
def store3(embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """random-tiny, random-copy (the same seed: the same vectors) and random-b.

    random-b embeds only the mll_helmholtz cells.
    """
    path = Path(
        shutil.copytree(embedded_store, tmp_path_factory.mktemp("cmp") / "store")
    )
    store = Store.open(path)
    register_random_model(store, "random-copy", backbone="tiny", crop_px=32, seed=0)
    embed(store, "random-copy", device="cpu")
    register_random_model(store, "random-b", backbone="tiny", crop_px=32, seed=1)
    embed(store, "random-b", where=MLL, device="cpu")
    return path


def test_compare__rows_equal_probe_and_same_weights_give_same_numbers(
    store3: Path, tmp_path: Path
) -> None:
    work = Path(shutil.copytree(store3, tmp_path / "store"))
    report = compare(
        work, ["random-tiny", "random-copy", "random-b"], "label", where=MLL, folds=2
    )
    assert report.split == "patient" and report.n_cells == 120
    rows = {(r["model"], r["head"]): r for r in report.rows}
    assert set(rows) == {
        (m, h)
        for m in ("random-tiny", "random-copy", "random-b")
        for h in ("linear", "knn", "abmil")
    }
    # the same folds: identical vectors under another name give identical rows
    for head in ("linear", "knn", "abmil"):
        a, b = rows[("random-tiny", head)], rows[("random-copy", head)]
        assert {k: v for k, v in a.items() if k != "model"} == {
            k: v for k, v in b.items() if k != "model"
        }
    # the linear row is what probe measures on those folds (probe's own engine)
    ref = probe(work, "random-b", "label", where=MLL, folds=2, seed=0)
    got = rows[("random-b", "linear")]
    assert got["balanced_accuracy"] == pytest.approx(
        ref.summary.mean["balanced_accuracy"]
    )
    assert got["balanced_accuracy_sd"] == pytest.approx(
        ref.summary.sd["balanced_accuracy"]
    )
    assert report.n_bags == 10 and report.bag_label == "bag_label"


def test_compare__only_cells_every_model_embeds(store3: Path) -> None:
    report = compare(
        store3, ["random-tiny", "random-b"], "label", folds=2, bag_label=None
    )
    assert report.n_cells == 120  # random-b embeds the 120 mll_helmholtz cells only
    assert report.excluded == {"not_embedded_by_every_model": 240}
    assert {r["head"] for r in report.rows} == {"linear", "knn"}


def test_compare__refusals(store3: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="given twice"):
        compare(store3, ["random-tiny", "random-tiny"], "label")
    with pytest.raises(InvalidArgumentError, match="name the models"):
        compare(store3, [], "label")
    with pytest.raises(UnknownEmbeddingSetError):
        compare(store3, ["random-tiny", "no-such-model"], "label", where=MLL)


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_compare_cli__table_json_and_png(
    store3: Path, tmp_path: Path, fmt: str
) -> None:
    png = tmp_path / "cmp.png"
    run = CliRunner().invoke(
        main,
        ["compare", str(store3), "--model", "random-tiny", "--model", "random-b",
         "--label", "label", "--where", MLL, "--folds", "2", "--bag-label", "",
         "--png", str(png), "--format", fmt],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = run.stdout
    if fmt == "json":
        doc = json.loads(out)
        assert [(r["model"], r["head"]) for r in doc["rows"]] == [
            ("random-tiny", "linear"), ("random-tiny", "knn"),
            ("random-b", "linear"), ("random-b", "knn"),
        ]  # fmt: skip
        assert doc["png"] == str(png)
    else:
        lines = out.splitlines()
        assert lines[0].split()[:8] == [
            "model", "head", "n", "balanced", "accuracy", "macro", "f1", "accuracy",
        ]  # fmt: skip
        assert lines[2].startswith("random-tiny  linear  120 ") and " ± " in lines[2]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "random-tiny", "--model", "nope"], 1, "no embedding set 'nope'"),
        (["--model", "random-tiny", "--model", "random-tiny"], 2, "given twice"),
    ],
)
def test_compare_cli__errors(
    store3: Path, args: list[str], code: int, message: str
) -> None:
    run = CliRunner().invoke(
        main, ["compare", str(store3), *args, "--label", "label", "--where", MLL]
    )
    assert run.exit_code == code, run.output
    (line,) = [ln for ln in run.output.splitlines() if ln.startswith("Error:")]
    assert message in line


def test_compare__mixing_score_of_each_model_when_the_store_has_one(
    store3: Path,
) -> None:
    import cytostore.store as store_api

    report = compare(store3, ["random-tiny"], "label", where=MLL, folds=2)
    if not hasattr(store_api, "mixing_score"):
        assert report.mixing is None
        return
    store = Store.open(store3)
    ids, X = store.vectors("random-tiny", MLL)
    meta = store.cell_meta(ids, ["dataset", "patient_id", "label"]).rows
    want = store_api.mixing_score(
        X,
        [r[0] for r in meta],
        patients=[f"{r[0]}/{r[1]}" for r in meta],
        labels=[r[2] for r in meta],
    )
    assert report.mixing == {
        "random-tiny": {t: want[t] for t in ("dataset", "patient", "label")}
    }


def test_compare__min_count_leaves_rare_classes_out(store3: Path) -> None:
    report = compare(
        store3, ["random-tiny"], "cell_type", folds=2, min_count=10, bag_label=None
    )
    counts = dict(
        Store.open(store3)
        .sql("SELECT cell_type, count(*) FROM cell_meta GROUP BY 1")
        .rows
    )
    kept = {c: n for c, n in counts.items() if c is not None and n >= 10}
    assert report.n_cells == sum(kept.values())
    assert report.excluded["rare_class"] == {
        c: n for c, n in counts.items() if c is not None and n < 10
    }
