"""The one loader of embedded cells and the missing-value rule (real DuckDB store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vec_helpers import add_fake_cells, random_vectors

from cytostore.errors import (
    EmptySelectionError,
    InvalidArgumentError,
    InvalidWhereError,
    StoreCorruptError,
    UnknownColumnError,
    UnknownEmbeddingSetError,
)
from cytostore.store import Cells, Store, is_missing, load_cells

N_CELLS = 40
#: The ids of the cells set ``m`` embeds, in the order they were appended.
ORDER = np.random.default_rng(5).permutation(np.arange(1, N_CELLS + 1))[:30]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """40 fake cells; L2 set ``m`` (float32) holds 30 of them in :data:`ORDER`."""
    st = Store.create(tmp_path / "store")
    ids = add_fake_cells(st, N_CELLS, seed=3)
    assert ids.tolist() == list(range(1, N_CELLS + 1))
    with st.vector_writer(st.create_embedding_set("m", 8, metric="l2")) as w:
        w.append(ORDER, random_vectors(30, 8, seed=7))
    return st


def _catalog(st: Store, column: str) -> dict[int, object]:
    """The oracle: each cell's value of ``column``, read by plain SQL."""
    return dict(st.sql(f'SELECT cell_id, "{column}" FROM cell_meta').rows)


def test_load_cells__rows_in_set_order_with_aligned_columns(store: Store) -> None:
    cells = load_cells(store, "m", None, ["label", "patient_id"])

    assert cells.ids.dtype == np.int64 and cells.ids.tolist() == ORDER.tolist()
    assert cells.X.dtype == np.float32
    np.testing.assert_array_equal(cells.X, random_vectors(30, 8, seed=7))
    assert list(cells.meta) == ["label", "patient_id"]
    for col in ("label", "patient_id"):
        assert cells.meta[col].dtype == object
        truth = _catalog(store, col)
        assert cells.meta[col].tolist() == [truth[int(i)] for i in cells.ids]
    assert len(cells) == 30


def test_load_cells__where_keeps_only_embedded_matching_cells(store: Store) -> None:
    embedded = set(ORDER.tolist())
    bm = {i for i, d in _catalog(store, "dataset").items() if d == "bm"}

    cells = load_cells(store, "m", "dataset = 'bm'", ["dataset"])

    assert set(cells.ids.tolist()) == embedded & bm
    assert len(embedded & bm) < len(bm)  # some bm cells have no vector: left out
    assert set(cells.meta["dataset"].tolist()) == {"bm"}
    order = {int(i): r for r, i in enumerate(ORDER)}
    assert [order[int(i)] for i in cells.ids] == sorted(order[i] for i in cells.ids)


def test_load_cells__float16_set_keeps_its_dtype(store: Store) -> None:
    ids = store.vectors("m")[0]
    with store.vector_writer(store.create_embedding_set("h", 4, dtype="float16")) as w:
        w.append(ids[:5], random_vectors(5, 4))

    cells = load_cells(store, "h")

    assert cells.X.dtype == np.float16 and cells.meta == {}
    assert cells.ids.tolist() == ids[:5].tolist()


def test_load_cells__none_and_repeated_columns_left_out(store: Store) -> None:
    cells = load_cells(store, "m", None, ["label", None, "dataset", "label"])

    assert list(cells.meta) == ["label", "dataset"]


def test_load_cells__list_column_stays_one_value_per_cell(store: Store) -> None:
    ids = store.vectors("m")[0]
    store.add_tags(None, ["a", "b"], ids=ids[:2].tolist())

    cells = load_cells(store, "m", f"cell_id IN ({ids[0]}, {ids[1]})", ["tags"])

    assert cells.meta["tags"].shape == (2,)
    assert [sorted(t) for t in cells.meta["tags"]] == [["a", "b"], ["a", "b"]]


@pytest.mark.parametrize(
    ("columns", "error", "text"),
    [
        (["labell"], UnknownColumnError, "labell"),
        (
            ["label; DROP TABLE cells"],
            InvalidArgumentError,
            "not a valid table/column name",
        ),
        ([""], InvalidArgumentError, "not a valid table/column name"),
    ],
)
def test_load_cells__bad_column_refused(
    store: Store, columns: list[str], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        load_cells(store, "m", None, columns)


def test_load_cells__bad_where_refused(store: Store) -> None:
    with pytest.raises(InvalidWhereError):
        load_cells(store, "m", "label = ", [])


def test_load_cells__where_without_embedded_cell_is_empty_selection(
    store: Store,
) -> None:
    with pytest.raises(EmptySelectionError, match="selects no cell"):
        load_cells(store, "m", "label = 'none of them'", [])


def test_load_cells__set_without_vectors_is_empty_selection(store: Store) -> None:
    store.create_embedding_set("empty", 8)

    with pytest.raises(EmptySelectionError, match="holds no vectors"):
        load_cells(store, "empty")


def test_load_cells__unknown_model(store: Store) -> None:
    with pytest.raises(UnknownEmbeddingSetError):
        load_cells(store, "nope")


def test_load_cells__vector_of_uncatalogued_cell_is_corrupt(store: Store) -> None:
    ids = store.vectors("m")[0]
    with store.transaction() as con:  # a catalog row lost behind the store's back
        con.execute("DELETE FROM cells WHERE cell_id = ?", [int(ids[3])])

    with pytest.raises(
        StoreCorruptError,
        match=r"cells the catalog lacks \(1 of 30\): run 'cytostore verify STORE'",
    ):
        load_cells(store, "m", None, ["label"])
    # A filter reads the catalog, so it only ever selects catalogued cells.
    assert len(load_cells(store, "m", "dataset IN ('bm', 'lmu')")) == 29


@pytest.mark.parametrize(
    "value",
    [
        None,
        float("nan"),
        np.float64("nan"),
        "",
        "  ",
        "nan",
        " NA ",
        "n/a",
        "None",
        "NULL",
    ],  # fmt: skip
)
def test_is_missing__unset_values(value: object) -> None:
    assert is_missing(value)


@pytest.mark.parametrize("value", ["BAS", "0", 0, 0.0, False, "nana", "N/A/B"])
def test_is_missing__set_values(value: object) -> None:
    assert not is_missing(value)


def test_cells_take__indices_and_mask_agree() -> None:
    cells = Cells(
        np.arange(10, 15, dtype=np.int64),
        np.arange(10, dtype=np.float32).reshape(5, 2),
        {"label": np.array(list("abcde"), dtype=object)},
    )
    mask = np.array([True, False, True, False, False])

    by_mask, by_rows = cells.take(mask), cells.take(np.array([0, 2]))

    for sub in (by_mask, by_rows):
        assert sub.ids.tolist() == [10, 12] and len(sub) == 2
        assert sub.X.tolist() == [[0.0, 1.0], [4.0, 5.0]]
        assert sub.meta["label"].tolist() == ["a", "c"]
    assert cells.take(np.array([4, 0])).ids.tolist() == [14, 10]
