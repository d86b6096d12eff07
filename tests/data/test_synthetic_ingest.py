from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from cytostore.data import ingest
from cytostore.store import Store


def _disk_counts(tree: Path) -> dict[tuple[str, str], int]:
    """Oracle: label counts straight from the file system and the synth metadata."""
    counts: Counter[tuple[str, str]] = Counter()
    dat = next(tree.glob("lmu/**/annotations.dat"))
    for line in dat.read_text().splitlines():
        counts[("lmu", line.split()[1])] += 1
    for p in tree.glob("mll_helmholtz/**/image_*.tif"):
        counts[("mll_helmholtz", p.parent.parent.name)] += 1
    for p in tree.glob("bm/**/*.jpg"):
        counts[("bm", p.name.split("_")[0])] += 1
    return dict(counts)


def test_synthetic_store__labels_match_the_files(
    synthetic_tree: Path, synthetic_store: Path
) -> None:
    store = Store.open(synthetic_store)
    rows = store.sql("SELECT dataset, label, count(*) FROM cells GROUP BY ALL").rows
    assert {(d, lab): n for d, lab, n in rows} == _disk_counts(synthetic_tree)
    assert store.sql("SELECT count(*) FROM skipped").rows == [(0,)]
    ids = store.sql("SELECT cell_id FROM cells ORDER BY cell_id").rows
    assert [i for (i,) in ids] == list(range(1, len(ids) + 1))


def test_synthetic_store__patients_match_metadata(
    synthetic_tree: Path, synthetic_store: Path
) -> None:
    meta = next(synthetic_tree.glob("mll_helmholtz/**/metadata.csv"))
    with meta.open(newline="") as fh:
        expected = {r["patient_id"]: r for r in csv.DictReader(fh)}
    store = Store.open(synthetic_store)
    rows = store.sql(
        "SELECT patient_id, bag_label, sex, instance_count, "
        "(SELECT count(*) FROM cells c WHERE c.patient_id = p.patient_id) "
        "FROM patients p"
    ).rows
    assert {r[0] for r in rows} == set(expected)
    for pid, bag, sex, instance_count, n_cells in rows:
        assert bag == expected[pid]["bag_label"]
        assert sex == {"1": "F", "2": "M"}[expected[pid]["sex_1f_2m"]]
        assert instance_count == n_cells


def test_synthetic_store_copy__reingest_is_a_no_op(
    synthetic_tree: Path, synthetic_store_copy: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    before = store.sql("SELECT * FROM cells ORDER BY cell_id").rows
    report = ingest(store, synthetic_tree, workers=1)
    assert report.added == 0 and report.skipped == 0
    assert store.sql("SELECT * FROM cells ORDER BY cell_id").rows == before
