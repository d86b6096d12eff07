"""An annotation column and a patients column never hide each other in cell_meta.

``cell_meta`` keeps a ``patients`` column over an imported annotation of the same
name, so each side refuses the other's name, whichever comes later, and changes
nothing: in the library and through the CLI (exit 2, one ``Error:`` line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cytostore.cli import main
from cytostore.errors import InvalidArgumentError
from cytostore.store import Store, write_annotations


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Three cells of dataset ``bm``, two of them with a patient."""
    st = Store.create(tmp_path / "s")
    st.upsert_dataset("bm", "folder", tmp_path, 0.1)
    st.add_cells(
        [
            {"dataset": "bm", "path": f"c{i}.png", "label": "BLA", "patient_id": p}
            for i, p in enumerate(["P1", "P2", None])
        ]
    )
    return st


def _snapshot(st: Store) -> tuple:
    return (
        st.columns("cell_meta"),
        st.sql("SELECT * FROM patients ORDER BY patient_id").rows,
        st.sql("SELECT * FROM annotations ORDER BY cell_id").rows,
        st.sql("SELECT name FROM annotation_columns ORDER BY name").rows,
    )


@pytest.mark.parametrize("name", ["grade", "GRADE"])
def test_upsert_patients__an_annotation_name_is_refused(
    store: Store, name: str
) -> None:
    write_annotations(store, [1, 2], {"grade": ["high", "low"]})
    before = _snapshot(store)
    with pytest.raises(InvalidArgumentError) as err:
        store.upsert_patients(
            "bm", [{"patient_id": "P1", "bmi": 20.5, name: 3}, {"patient_id": "P3"}]
        )
    assert str(err.value) == (
        f"patients column {name!r} would hide the annotation column 'grade' in "
        "cell_meta: rename it in the patients table, or drop the annotation "
        "('cytostore annotate STORE --drop grade') and import it again under "
        "another name with --as PREFIX"
    )
    assert _snapshot(store) == before  # neither bmi nor patient P3 came in
    assert store.sql("SELECT grade FROM cell_meta ORDER BY cell_id").rows == [
        ("high",),
        ("low",),
        (None,),
    ]


def test_upsert_patients__other_names_keep_the_annotation(store: Store) -> None:
    write_annotations(store, [1], {"grade": ["high"]})
    store.upsert_patients("bm", [{"patient_id": "P1", "grading": 2}])
    rows = store.sql("SELECT grade, grading FROM cell_meta WHERE cell_id = 1").rows
    assert rows == [("high", 2.0)]


@pytest.mark.parametrize("name", ["diagnosis", "Diagnosis"])
def test_write_annotations__a_patients_column_name_is_refused(
    store: Store, name: str
) -> None:
    store.upsert_patients("bm", [{"patient_id": "P1", "diagnosis": "NPM1"}])
    before = _snapshot(store)
    with pytest.raises(
        InvalidArgumentError, match=f"cell_meta already has column '{name}'"
    ):
        write_annotations(store, [3], {name: ["control"]})
    assert _snapshot(store) == before


# ----------------------------------------------------------------------- CLI
def _tree(root: Path, patients: list[str]) -> Path:
    for i, p in enumerate(patients):
        path = root / p / "lymphocyte" / f"{i}.png"
        path.parent.mkdir(parents=True)
        rgb = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(path)
    return root


def _ingest(store: Path, root: Path, name: str, patients: Path) -> list[str]:
    return [
        "ingest",
        str(store),
        str(root),
        "--pattern",
        "{patient_id}/{label}/*.png",
        "--patients",
        str(patients),
        "--dataset-name",
        name,
    ]


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_cli__ingest_of_patients_naming_an_annotation_exits_2(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = tmp_path / "p1.csv"
    first.write_text("patient_id,bag_label,age\nP1,AML,70\n")
    run = CliRunner().invoke
    ok = run(main, _ingest(store, _tree(tmp_path / "a", ["P1"]), "ward7", first))
    assert ok.exit_code == 0, ok.output
    notes = tmp_path / "notes.csv"
    notes.write_text("cell_id,diagnosis\n1,AML\n")
    ok = run(main, ["annotate", str(store), str(notes)])
    assert ok.exit_code == 0, ok.output
    before = _snapshot(Store.open(store))
    second = tmp_path / "p2.csv"
    second.write_text("patient_id,bag_label,diagnosis\nP2,AML,NPM1\n")
    result = run(main, _ingest(store, _tree(tmp_path / "b", ["P2"]), "ward8", second))
    assert result.exit_code == 2, result.output
    assert "Usage: main ingest" in result.output
    assert _one_error_line(result.output) == (
        "Error: patients column 'diagnosis' would hide the annotation column "
        "'diagnosis' in cell_meta: rename it in the patients table, or drop the "
        "annotation ('cytostore annotate STORE --drop diagnosis') and import it "
        "again under another name with --as PREFIX"
    )
    st = Store.open(store)
    assert _snapshot(st) == before
    assert st.sql("SELECT dataset FROM datasets").rows == [("ward7",)]


def test_cli__annotate_naming_a_patients_column_exits_2(tmp_path: Path) -> None:
    store = tmp_path / "store"
    patients = tmp_path / "p.csv"
    patients.write_text("patient_id,bag_label,diagnosis\nP1,AML,NPM1\n")
    run = CliRunner().invoke
    ok = run(main, _ingest(store, _tree(tmp_path / "a", ["P1"]), "ward7", patients))
    assert ok.exit_code == 0, ok.output
    before = _snapshot(Store.open(store))
    notes = tmp_path / "notes.csv"
    notes.write_text("cell_id,diagnosis\n1,AML\n")
    result = run(main, ["annotate", str(store), str(notes)])
    assert result.exit_code == 2, result.output
    assert "Usage: main annotate" in result.output
    assert _one_error_line(result.output) == (
        "Error: cell_meta already has column 'diagnosis': import under another "
        "name with --as PREFIX (e.g. --as expert2 makes expert2_diagnosis)"
    )
    assert _snapshot(Store.open(store)) == before
    ok = run(main, ["annotate", str(store), str(notes), "--as", "expert2"])
    assert ok.exit_code == 0, ok.output
    rows = Store.open(store).sql("SELECT diagnosis, expert2_diagnosis FROM cell_meta")
    assert rows.rows == [("NPM1", "AML")]
