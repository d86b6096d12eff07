"""``annotate``: a CSV of cell labels becomes filterable, trainable columns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.curate.annotate import annotate
from cytostore.errors import InvalidArgumentError
from cytostore.store import Store


@pytest.fixture(scope="module")
def base(
    synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[int, tuple[str, str, str]]]:
    """The synthetic store's folder and ``{cell_id: (dataset, path, label)}``."""
    rows = (
        Store.open(synthetic_store)
        .sql("SELECT cell_id, dataset, path, label FROM cells ORDER BY cell_id")
        .rows
    )
    return synthetic_store, {r[0]: (r[1], r[2], r[3]) for r in rows}


@pytest.fixture
def store(base: tuple[Path, dict], tmp_path: Path) -> Path:
    return Path(shutil.copytree(base[0], tmp_path / "store"))


def _snapshot(path: Path) -> tuple:
    st = Store.open(path)
    return (
        st.columns("cell_meta"),
        st.sql("SELECT * FROM annotations ORDER BY cell_id").rows,
        st.sql("SELECT * FROM annotation_columns ORDER BY name").rows,
    )


def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_annotate__by_cell_id_then_filter_on_the_new_column(
    store: Path, tmp_path: Path
) -> None:
    f = _csv(tmp_path / "notes.csv", "cell_id,quality,note\n1,3,blurry\n2,5,\n7,,nan\n")
    report = annotate(store, f)
    assert report == {
        "file": str(f),
        "key": "cell_id",
        "rows": 3,
        "cells": 3,
        "columns": ["quality", "note"],
        "new_columns": ["quality", "note"],
        "added": 3,
        "changed": 0,
        "unchanged": 0,
    }
    st = Store.open(store)
    assert st.where_ids("quality >= 4").tolist() == [2]
    assert st.sql(
        "SELECT cell_id, quality, note FROM cell_meta WHERE cell_id IN (1, 2, 7) "
        "ORDER BY 1"
    ).rows == [(1, 3, "blurry"), (2, 5, None), (7, None, None)]


def test_annotate__by_dataset_and_path_semicolons_and_bom(
    base: tuple[Path, dict], store: Path, tmp_path: Path
) -> None:
    cells = base[1]
    chosen = [i for i in sorted(cells) if cells[i][0] == "bm"][:3]
    lines = ["dataset;path;expert"] + [
        f"{cells[i][0]};./{cells[i][1]};X{i}" for i in chosen
    ]
    f = _csv(tmp_path / "excel.csv", "\n".join(lines) + "\n", encoding="utf-8-sig")
    report = annotate(store, f, key="path")
    assert report["cells"] == 3 and report["key"] == "path"
    got = (
        Store.open(store)
        .sql(
            "SELECT cell_id, expert FROM cell_meta WHERE expert IS NOT NULL ORDER BY 1"
        )
        .rows
    )
    assert got == [(i, f"X{i}") for i in chosen]


def test_annotate__absolute_paths_inside_the_dataset_root(
    base: tuple[Path, dict], store: Path, tmp_path: Path
) -> None:
    cells = base[1]
    st = Store.open(store)
    root = st.dataset_roots()["lmu"]
    i = next(i for i in sorted(cells) if cells[i][0] == "lmu")
    f = _csv(tmp_path / "abs.csv", f"dataset,path,seen\nlmu,{root / cells[i][1]},yes\n")
    annotate(store, f)
    assert st.where_ids("seen = 'yes'").tolist() == [i]


def test_annotate__a_cell_meta_name_needs_as(
    base: tuple[Path, dict], store: Path, tmp_path: Path
) -> None:
    f = _csv(tmp_path / "second.csv", "cell_id,label\n1,LYT\n2,BAS\n")
    before = _snapshot(store)
    with pytest.raises(
        InvalidArgumentError, match="cell_meta already has column 'label'"
    ):
        annotate(store, f)
    assert _snapshot(store) == before
    report = annotate(store, f, prefix="expert2_")
    assert report["columns"] == ["expert2_label"]
    assert Store.open(store).sql(
        "SELECT label, expert2_label FROM cell_meta WHERE cell_id = 1"
    ).rows == [(base[1][1][2], "LYT")]


def test_annotate__columns_chooses_what_to_import(store: Path, tmp_path: Path) -> None:
    # A select CSV handed back by an annotator: keep only the column they filled.
    f = _csv(
        tmp_path / "sel.csv",
        "cell_id,rank,score,dataset,path,answer\n3,1,0.9,bm,x.jpg,BLA\n",
    )
    report = annotate(store, f, columns=["answer"])
    assert report["columns"] == ["answer"]
    assert "rank" not in Store.open(store).columns("cell_meta")


def test_annotate__bad_rows_are_listed_by_line_and_nothing_changes(
    base: tuple[Path, dict], store: Path, tmp_path: Path
) -> None:
    annotate(store, _csv(tmp_path / "first.csv", "cell_id,expert\n1,BAS\n"))
    cells = base[1]
    good = next(i for i in sorted(cells) if cells[i][0] == "bm")
    text = (
        "cell_id,expert\n"
        "2,EOS\n"  # line 2: fine
        "99999,LYT\n"  # line 3: unknown cell
        "2,EOS\n"  # line 4: cell 2 again
        "1,MON\n"  # line 5: conflicts with BAS
        "abc,MON\n"  # line 6: not a number
        f"{good},BLA,extra\n"  # line 7: too many fields
    )
    before = _snapshot(store)
    with pytest.raises(InvalidArgumentError) as err:
        annotate(store, _csv(tmp_path / "bad.csv", text))
    msg = str(err.value)
    assert msg.startswith(
        "bad.csv: 5 bad rows, nothing imported (line 3: no cell 99999"
    )
    for part in (
        "line 4: cell 2 again (first on line 2)",
        "line 5: expert 'MON' conflicts with the stored 'BAS' of cell 1",
        "line 6: cell_id 'abc' is not a whole number",
        "line 7: 3 fields, the header has 2",
    ):
        assert part in msg
    assert _snapshot(store) == before


def test_annotate__unknown_paths_name_the_dataset_or_the_path(
    store: Path, tmp_path: Path
) -> None:
    f = _csv(
        tmp_path / "p.csv",
        "dataset,path,expert\nlmx,BAS/BAS_0001.tiff,a\nlmu,BAS/nope.tiff,b\n",
    )
    with pytest.raises(InvalidArgumentError) as err:
        annotate(store, f)
    assert "line 2: no dataset 'lmx' in the store" in str(err.value)
    assert "line 3: no cell 'BAS/nope.tiff' in dataset 'lmu'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("", {}, "is empty"),
        ("path,expert\nBAS/BAS_0001.tiff,a\n", {}, "no 'dataset' column"),
        ("cell_id\n1\n", {}, "no column to import"),
        ("cell_id,expert\n1,a\n", {"key": "path"}, "no 'path' or 'dataset'"),
        ("cell_id,expert\n1,a\n", {"columns": ["expret"]}, "no column 'expret'"),
        ("cell_id,my note\n1,a\n", {}, "not a valid table/column name"),
        ("cell_id,expert\n1,a\n", {"prefix": "_"}, "--as needs a prefix"),
    ],
)
def test_annotate__malformed_files(
    store: Path, tmp_path: Path, text: str, kwargs: dict, match: str
) -> None:
    before = _snapshot(store)
    with pytest.raises(InvalidArgumentError, match=match):
        annotate(store, _csv(tmp_path / "f.csv", text), **kwargs)
    assert _snapshot(store) == before


def test_annotate__a_file_that_is_not_utf8(store: Path, tmp_path: Path) -> None:
    f = tmp_path / "latin.csv"
    f.write_bytes("cell_id,note\n1,d\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(InvalidArgumentError, match="is not UTF-8 text"):
        annotate(store, f)


def test_annotate__the_column_trains_a_probe(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    from cytostore.heads import probe

    st = Store.open(embedded_store_copy)
    rows = st.sql(
        "SELECT cell_id, dataset FROM cells WHERE dataset <> 'mll_helmholtz'"
    ).rows
    f = tmp_path / "origin.csv"
    f.write_text("cell_id,origin\n" + "".join(f"{i},{d}\n" for i, d in rows))
    annotate(embedded_store_copy, f)
    report = probe(
        embedded_store_copy,
        "random-tiny",
        "origin",
        kind="knn",
        where="origin IS NOT NULL",
        folds=2,
        name="origin-knn",
    )
    assert report.label == "origin"
    assert set(report.classes) == {"bm", "lmu"}


def test_annotate__real_lmu_reannotations(
    shared_dir: Path, base: tuple[Path, dict], store: Path, tmp_path: Path
) -> None:
    """The LMU second expert's labels (annotations.dat) for the paths we hold."""
    dat = shared_dir / "datasets" / "lmu" / "annotations.dat"
    if not dat.is_file():
        pytest.skip(f"real LMU re-annotations not available: {dat} is absent")
    held = {p for d, p, _ in base[1].values() if d == "lmu"}
    real = {}
    for line in dat.read_text().splitlines():
        path, _, first, second = line.split(" ")
        if path in held and first != "nan":
            real[path] = (first, second)
    assert real, "no synthetic lmu path is re-annotated in annotations.dat"
    f = tmp_path / "second.csv"
    f.write_text(
        "dataset,path,reannotation1,reannotation2\n"
        + "".join(f"lmu,{p},{a},{b}\n" for p, (a, b) in sorted(real.items()))
    )
    with pytest.raises(InvalidArgumentError, match="already has columns"):
        annotate(store, f)  # the store's own reannotation columns stay apart
    report = annotate(store, f, prefix="real")
    assert report["columns"] == ["real_reannotation1", "real_reannotation2"]
    got = (
        Store.open(store)
        .sql(
            "SELECT path, real_reannotation1, real_reannotation2 FROM cell_meta "
            "WHERE real_reannotation1 IS NOT NULL"
        )
        .rows
    )
    assert {p: (a, b) for p, a, b in got} == real


def _cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), prog_name="cytostore")


def test_annotate_cli__summary_and_json_report(store: Path, tmp_path: Path) -> None:
    f = _csv(tmp_path / "n.csv", "cell_id,label\n1,a\n2,b\n")
    result = _cli("annotate", str(store), str(f), "--as", "expert2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert '"new_columns": [\n    "expert2_label"\n  ]' in result.stdout
    assert result.stderr == (
        "imported expert2_label for 2 cells: 2 values added, 0 changed, 0 unchanged "
        "(new columns: expert2_label)\n"
    )
    again = _cli("annotate", str(store), str(f), "--as", "expert2")
    assert again.exit_code == 0
    assert again.stderr.endswith("0 values added, 0 changed, 2 unchanged\n")


def test_annotate_cli__bad_rows_exit_2_with_one_line(
    store: Path, tmp_path: Path
) -> None:
    f = _csv(tmp_path / "bad.csv", "cell_id,expert\n99999,a\n")
    before = _snapshot(store)
    result = _cli("annotate", str(store), str(f))
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: cytostore annotate [OPTIONS]")
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
    assert errors == [
        "Error: bad.csv: 1 bad row, nothing imported (line 2: no cell 99999 in the "
        "store): correct or remove those rows and import again (--replace lets the "
        "file overwrite stored values)"
    ]
    assert _snapshot(store) == before


def test_annotate__a_select_csv_comes_back_with_the_annotators_column(
    embedded_store_copy: Path, tmp_path: Path
) -> None:
    import csv

    from cytostore.curate import select

    sheet = tmp_path / "to_annotate.csv"
    select(
        embedded_store_copy, "random-tiny", 6, "diversity", balance_by="dataset",
        where="dataset <> 'mll_helmholtz'", csv=sheet,
    )  # fmt: skip
    rows = list(csv.DictReader(sheet.open()))
    with sheet.open("w", newline="") as fh:  # the annotator adds a column
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "expert"])
        writer.writeheader()
        writer.writerows({**r, "expert": f"E{r['rank']}"} for r in rows)
    report = annotate(embedded_store_copy, sheet)
    assert report["columns"] == ["expert"] and report["cells"] == 6
    got = (
        Store.open(embedded_store_copy)
        .sql(
            "SELECT cell_id, expert FROM cell_meta WHERE expert IS NOT NULL ORDER BY 1"
        )
        .rows
    )
    assert got == sorted((int(r["cell_id"]), f"E{r['rank']}") for r in rows)


def test_annotate_cli__drop_removes_a_column(store: Path, tmp_path: Path) -> None:
    f = _csv(tmp_path / "n.csv", "cell_id,note,other\n1,a,b\n")
    assert _cli("annotate", str(store), str(f)).exit_code == 0
    result = _cli("annotate", str(store), "--drop", "note", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr == "removed column note\n"
    assert "note" not in Store.open(store).columns("cell_meta")
    missing = _cli("annotate", str(store), "--drop", "note")
    assert missing.exit_code == 1 and "no annotation column 'note'" in missing.stderr
    both = _cli("annotate", str(store), str(f), "--drop", "other")
    assert both.exit_code == 2 and "give FILE.csv to import, or --drop" in both.stderr


def test_annotate__quoted_values_keep_delimiters_and_line_breaks(
    store: Path, tmp_path: Path
) -> None:
    text = (
        'cell_id,note\n1,"round; pale, large"\n2,"two\nlines"\n'
        "99999,x\n"  # line 5: the record above spans lines 3-4
    )
    with pytest.raises(InvalidArgumentError, match="line 5: no cell 99999"):
        annotate(store, _csv(tmp_path / "q.csv", text))
    annotate(store, _csv(tmp_path / "q2.csv", text.rsplit("99999", 1)[0]))
    got = (
        Store.open(store)
        .sql("SELECT cell_id, note FROM cell_meta WHERE note IS NOT NULL ORDER BY 1")
        .rows
    )
    assert got == [(1, "round; pale, large"), (2, "two\nlines")]
