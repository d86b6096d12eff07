from __future__ import annotations

import numpy as np
import pytest
from vec_helpers import random_vectors

from cytostore.errors import InvalidArgumentError, NotFoundError
from cytostore.store import Store
from cytostore.store.neighbors import similarity_sql


def test_neighbors__table_matches_per_cell_search(vec_store: Store) -> None:
    report = vec_store.neighbors("knn5", 5, where="dataset = 'lmu'")
    assert report["cells"] == 150 and report["rows"] == 750
    rows = vec_store.sql(
        "SELECT cell_id, rank, neighbor_id, similarity, set_id FROM knn5 ORDER BY ALL"
    ).rows
    by_cell: dict[int, list[tuple]] = {}
    for r in rows:
        by_cell.setdefault(r[0], []).append(r)
    lmu = set(vec_store.where_ids("dataset = 'lmu'").tolist())
    assert set(by_cell) == lmu and len(lmu) == 150
    for cell in sorted(lmu):
        dist, ids = vec_store.search(cell, k=5, where="dataset = 'lmu'")
        assert [r[2] for r in by_cell[cell]] == ids[0].tolist()
        np.testing.assert_allclose([r[3] for r in by_cell[cell]], dist[0], rtol=1e-6)
        assert [r[1] for r in by_cell[cell]] == [1, 2, 3, 4, 5]
    assert all(r[0] != r[2] for r in rows)
    assert {r[4] for r in rows} == {1}
    assert {r[2] for r in rows} <= lmu


def _brute_label_agreement(store: Store, k: int) -> dict[str, float]:
    """Mean share of each cell's k nearest others (cosine) with its label."""
    ids, x = store.vectors()
    x = np.asarray(x, np.float64)
    meta = dict(
        zip(
            ids.tolist(),
            store.cell_meta(ids, ["dataset", "label"]).rows,
            strict=True,
        )
    )
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    per: dict[str, list[float]] = {}
    for row, cell in enumerate(ids.tolist()):
        dataset, label = meta[cell]
        for j in nearest[row]:
            per.setdefault(dataset, []).append(float(meta[int(ids[j])][1] == label))
    return {d: float(np.mean(v)) for d, v in per.items()}


def test_neighbors__sql_label_agreement_per_dataset(vec_store: Store) -> None:
    vec_store.neighbors("knn3", 3)
    res = vec_store.sql(
        "SELECT m.dataset, avg((n.label = m.label)::INT) AS agreement "
        "FROM knn3 k JOIN cell_meta m ON m.cell_id = k.cell_id "
        "JOIN cell_meta n ON n.cell_id = k.neighbor_id GROUP BY ALL ORDER BY ALL"
    ).rows
    want = _brute_label_agreement(vec_store, 3)
    assert [r[0] for r in res] == ["bm", "lmu"] == sorted(want)
    for dataset, agreement in res:
        assert agreement == pytest.approx(want[dataset], abs=1e-12)


def test_neighbors__replaces_its_own_table(vec_store: Store) -> None:
    vec_store.neighbors("knn", 4)
    vec_store.neighbors("knn", 2, where="label = 'EOS'")
    n_eos = vec_store.where_ids("label = 'EOS'").size
    assert vec_store.sql("SELECT count(*) FROM knn").rows == [(2 * n_eos,)]
    assert vec_store.sql('SELECT k, "where" FROM neighbor_tables').rows == [
        (2, "label = 'EOS'")
    ]


@pytest.mark.parametrize(
    ("into", "match"),
    [
        ("cells", "not a neighbour table"),
        ("cell_meta", "not a neighbour table"),
        ("embedding_sets", "not a neighbour table"),
        ("knn; DROP TABLE cells", "not a valid table"),
    ],
)
def test_neighbors__refuses_core_tables_and_bad_names(
    vec_store: Store, into: str, match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        vec_store.neighbors(into, 3)
    assert vec_store.sql("SELECT count(*) FROM cells").rows == [(300,)]


def test_neighbors__l2_similarity_is_minus_squared_distance(vec_store: Store) -> None:
    ids, _ = vec_store.vectors("m")
    es = vec_store.create_embedding_set("l2m", 16, metric="l2")
    x = random_vectors(ids.size, 16, seed=3)
    with vec_store.vector_writer(es) as w:
        w.append(ids, x)
    vec_store.neighbors("knn2", 2, model="l2m")
    rows = vec_store.sql(
        "SELECT cell_id, neighbor_id, similarity FROM knn2 WHERE rank = 1 "
        "ORDER BY cell_id LIMIT 5"
    ).rows
    pos = {int(c): i for i, c in enumerate(ids.tolist())}
    for cell, nb, sim in rows:
        want = -float(np.sum((x[pos[cell]] - x[pos[nb]]) ** 2))  # oracle: numpy
        assert sim == pytest.approx(want, rel=1e-4)
        assert sim < 0
    assert similarity_sql(vec_store, "knn2") == "similarity"


def test_similarity_sql__reads_a_table_written_with_distance(vec_store: Store) -> None:
    vec_store.neighbors("knn3", 3)
    with vec_store.transaction() as con:  # the column name before similarity
        con.execute("ALTER TABLE knn3 RENAME COLUMN similarity TO distance")
    expr = similarity_sql(vec_store, "knn3")
    assert expr == "distance"  # a cosine set: the same values
    top = vec_store.sql(f"SELECT max({expr}) FROM knn3 WHERE rank = 1").rows[0][0]
    assert 0 < top <= 1.0 + 1e-6
    with pytest.raises(NotFoundError, match="did you mean 'knn3'"):
        similarity_sql(vec_store, "knn4")
