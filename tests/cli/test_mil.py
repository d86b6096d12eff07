"""CLI: mil, then predict and explain --patient with the saved head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from heads.heads_helpers import build_mil_store

from cytostore.cli import main


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_mil_cli__report_tables_and_explain(tmp_path: Path) -> None:
    store, _ = build_mil_store(tmp_path / "s", n_bags=12)
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "mil",
            str(store.root),
            "--model",
            "tiny",
            "--folds",
            "2",
            "--name",
            "ab",
            "--max-epochs",
            "10",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_bags"] == 12 and len(report["folds"]) == 2
    assert len(report["auroc_ci"]) == 2 and report["attention_rows"] == 12 * 25
    assert "attention rows" in result.stderr
    result = runner.invoke(
        main,
        [
            "explain",
            str(store.root),
            "--patient",
            "PT03",
            "--head",
            "ab",
            "-k",
            "2",
            "--top",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("patient mll_helmholtz/PT03: predicted")
    result = runner.invoke(
        main, ["explain", str(store.root), "--cell", "3", "--head", "ab"]
    )
    assert result.exit_code == 2 and "use --patient" in result.stderr


def test_mil_cli__fewer_bags_than_folds_exits_2(tmp_path: Path) -> None:
    store, _ = build_mil_store(tmp_path / "s", n_bags=6)
    result = CliRunner().invoke(main, ["mil", str(store.root), "--folds", "5"])
    assert result.exit_code == 2
    assert "fewer members than folds" in result.stderr


# ------------------------------------------------- a real published split
def _read_patients(path: Path) -> list[tuple[str, str]]:
    """``(patient_name, label id)`` rows of a genbloom split CSV."""
    lines = path.read_text().splitlines()[1:]
    return [(r.split(",")[0], r.split(",")[1]) for r in lines if r.strip()]


def test_mil_cli__published_patient_split_decides_the_folds(
    shared_dir: Path, tmp_path: Path
) -> None:
    """Bags named like the real patients follow genbloom_aml_hehr's rotation 0."""
    import numpy as np

    from cytostore.store import Store

    folder = shared_dir / "datasets" / "splits" / "genbloom_aml_hehr"
    parts = {p: folder / f"data_fold_0__{p}.csv" for p in ("train", "val", "test")}
    if not all(f.is_file() for f in parts.values()):
        pytest.skip(f"published split files absent under {folder}")
    named = {p: _read_patients(f) for p, f in parts.items()}
    chosen = named["train"][:30] + named["val"][:10] + named["test"][:20]
    extra = [("ZZZ", "0"), ("ZZY", "4")]  # patients the split does not name
    store = Store.create(tmp_path / "s")
    rng = np.random.default_rng(0)
    rows, vecs = [], []
    for pid, lab in chosen + extra:
        shift = rng.normal(0, 1, 8) + 3.0 * np.eye(5, 8)[int(lab)]
        for c in range(4):
            rows.append(
                {"dataset": "mll_helmholtz", "path": f"{lab}/{pid}/image_{c}.tif"}
                | {"patient_id": pid, "label": lab}
            )
            vecs.append(shift + rng.normal(0, 0.5, 8))
    ids = store.add_cells(rows)
    store.upsert_patients(
        "mll_helmholtz",
        [{"patient_id": pid, "bag_label": f"L{lab}"} for pid, lab in chosen + extra],
    )
    with store.vector_writer(store.create_embedding_set("tiny", 8, metric="l2")) as w:
        w.append(ids, np.asarray(vecs, dtype=np.float32))
    result = CliRunner().invoke(
        main,
        [
            "mil", str(store.root), "--split", str(parts["test"]),
            "--max-epochs", "3", "--name", "pub", "--format", "json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (fold,) = report["folds"]
    assert (fold["name"], fold["n_train"], fold["n_test"]) == ("data_fold_0", 30, 20)
    assert report["n_bags"] == 62  # the split's val bags and unnamed bags included
    # the rotation names all 189 patients; 60 of them are in this store
    assert sum(len(v) for v in named.values()) == 189
    assert report["excluded"] == {"split_unmatched_entries": 189 - 60}
    assert report["patient_prediction_rows"] == 20
    assert report["attention_rows"] == 20 * 4
    predicted = store.sql(
        "SELECT patient_id FROM patient_predictions WHERE head = 'pub' ORDER BY 1"
    ).rows
    assert [r[0] for r in predicted] == sorted(p for p, _ in named["test"][:20])
