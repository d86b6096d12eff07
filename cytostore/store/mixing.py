"""The neighbourhood mixing score: are cells grouped by what they are or where from?

For every query cell ``i`` with group ``g(i)`` (its dataset, its patient or its cell
type) and its ``k`` nearest other cells in the embedding:

- ``o_i`` is the share of those neighbours in the same group as ``i``;
- ``e_i = (n_g - 1) / (n - 1)`` is the share expected if neighbours were drawn at
  random from the ``n`` cells of the pool, ``n_g`` of which are in ``i``'s group
  (``i`` itself is never its own neighbour, hence the ``- 1``).

Over a set ``C`` of query cells (a dataset, a cell type, all cells) the score is::

    S(C) = (sum_i o_i - sum_i e_i) / (sum_i (1 - e_i))

so ``S = 0`` when neighbours share the group no more often than chance (perfectly
mixed), ``S = 1`` when every neighbour is in the cell's own group (fully separated),
and ``S < 0`` when neighbours come from *other* groups more often than chance. ``S`` is
``None`` where it cannot be told apart: when every pool cell is in one group (a store
of one dataset: every neighbour is from that dataset, and so is expected). Cells with
no value for the group (no patient, no cell type) are left out of that term as
queries and never count as a neighbour's match.

Read the dataset and patient terms as *batch effects* (lower is better for a backbone
meant to be shared across datasets) and the label term as *biology* (higher is
better: the cell types form neighbourhoods). A dataset term above 0 is partly
expected where datasets hold different mixes of cell types; the per-cell-type rows
(dataset score among the cells of one type) separate the two.

Neighbours come from FAISS: exact search in memory (:func:`mixing_score`), or the
embedding set's own index (:func:`store_mixing_score`), in batches; the queries are
a seeded sample of at most ``sample`` cells, the pool is every cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    InvalidArgumentError,
    StoreCorruptError,
    UnknownColumnError,
)
from cytostore.store.catalog import safe_identifier

if TYPE_CHECKING:
    from cytostore.store.catalog import Catalog as Store

__all__ = [
    "mixing_score",
    "store_mixing_score",
    "neighbourhood_report",
    "same_group_share",
    "separation",
    "MIXING_K",
    "MIXING_SAMPLE",
]

logger = logging.getLogger(__name__)

#: Neighbours per cell of the mixing score.
MIXING_K = 10
#: Most query cells (a seeded sample; every cell stays a candidate neighbour).
MIXING_SAMPLE = 20_000
_BATCH = 2048


def same_group_share(
    query_codes: npt.ArrayLike, neighbour_codes: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Return each query's share of neighbours in its own group.

    Args:
        query_codes: int (nq,) group code of each query; negative: no group.
        neighbour_codes: int (nq, k) group codes of its neighbours: -1 for a
            neighbour without a group (never a match), -2 where no neighbour was
            found (not counted).

    Returns:
        float64 (nq,): matching neighbours over neighbours found; NaN where the
        query has no group or no neighbour.

    Examples:
        >>> same_group_share([0, 1, -1], [[0, 0, 1], [0, -2, 1], [0, 0, 0]]).tolist()
        [0.6666666666666666, 0.5, nan]
    """
    q = np.asarray(query_codes, dtype=np.int64)
    nb = np.asarray(neighbour_codes, dtype=np.int64).reshape(q.size, -1)
    found = (nb != _NO_NEIGHBOUR).sum(axis=1)
    same = ((nb == q[:, None]) & (q[:, None] >= 0)).sum(axis=1)
    out = np.full(q.size, np.nan)
    ok = (q >= 0) & (found > 0)
    out[ok] = same[ok] / found[ok]
    return out


def separation(
    observed: npt.ArrayLike, expected: npt.ArrayLike
) -> tuple[float | None, int]:
    """Return ``S = (sum o - sum e) / sum (1 - e)`` over the cells where both exist.

    Args:
        observed: float (m,) same-group shares ``o_i`` (NaN: left out).
        expected: float (m,) chance shares ``e_i`` (NaN: left out).

    Returns:
        ``(S, cells)``: ``S`` is ``None`` when no cell is left or chance is already 1
        (every pool cell in one group); ``cells`` is the number of cells used.

    Examples:
        >>> separation([1.0, 1.0], [0.5, 0.5])
        (1.0, 2)
        >>> separation([0.5, 0.5], [0.5, 0.5])
        (0.0, 2)
        >>> separation([1.0], [1.0])
        (None, 1)
    """
    o = np.asarray(observed, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    ok = ~(np.isnan(o) | np.isnan(e))
    if not ok.any():
        return None, 0
    room = float((1.0 - e[ok]).sum())
    if room <= 1e-9 * ok.sum():
        return None, int(ok.sum())
    return float((o[ok].sum() - e[ok].sum()) / room), int(ok.sum())


_NO_NEIGHBOUR = -2  # code of a missing neighbour (-1 is a neighbour without group)


def _codes(values: Sequence[Any]) -> tuple[npt.NDArray[np.int64], list[Any]]:
    """Factorise values into codes 0..m-1 (sorted by value), -1 for None/NaN."""
    keep = [v is not None and v == v for v in values]
    names = sorted({v for v, k in zip(values, keep, strict=True) if k}, key=str)
    at = {v: i for i, v in enumerate(names)}
    codes = np.fromiter(
        (at[v] if k else -1 for v, k in zip(values, keep, strict=True)),
        dtype=np.int64,
        count=len(values),
    )
    return codes, names


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def neighbourhood_report(
    query_rows: npt.NDArray[np.int64],
    neighbour_rows: npt.NDArray[np.int64],
    groups: dict[str, Sequence[Any]],
    *,
    label: str | None = None,
) -> dict[str, Any]:
    """Score neighbourhoods already found against the groups of the pool's cells.

    Args:
        query_rows: int (nq,) pool row of each query cell.
        neighbour_rows: int (nq, k) pool rows of its neighbours, the query itself
            excluded; -1 where fewer than ``k`` were found.
        groups: Pool-aligned values (length n, ``None`` for no value) under the
            keys ``dataset`` (required), ``patient`` and ``label`` (optional).
        label: Name of the label column, for the report.

    Returns:
        A report: ``cells`` (queries), ``pool``, ``k``; the scores ``dataset``,
        ``patient``, ``label`` (each ``S`` over all queries, or ``None``);
        ``per_dataset`` (one row per dataset: ``dataset``, ``cells``,
        ``same_dataset`` mean ``o``, ``expected`` mean ``e``, ``score``) and
        ``per_label`` (one row per label value: ``label``, ``cells``,
        ``same_dataset``, ``expected_dataset``, ``dataset_score``, ``same_label``,
        ``expected_label``, ``label_score``).

    Raises:
        InvalidArgumentError: If ``groups`` lacks ``dataset`` or a value list is
            not pool-aligned.
    """
    if "dataset" not in groups:
        raise InvalidArgumentError("the mixing score needs each cell's dataset")
    n = len(groups["dataset"])
    q = np.asarray(query_rows, dtype=np.int64)
    nb = np.asarray(neighbour_rows, dtype=np.int64).reshape(q.size, -1)
    obs: dict[str, npt.NDArray[np.float64]] = {}
    exp: dict[str, npt.NDArray[np.float64]] = {}
    names: dict[str, list[Any]] = {}
    qcodes: dict[str, npt.NDArray[np.int64]] = {}
    for term in ("dataset", "patient", "label"):
        values = groups.get(term)
        if values is None:
            continue
        if len(values) != n:
            raise InvalidArgumentError(
                f"{term} values cover {len(values)} cells, the pool has {n}"
            )
        codes, names[term] = _codes(list(values))
        nb_codes = np.where(nb >= 0, codes[np.maximum(nb, 0)], _NO_NEIGHBOUR)
        qc = codes[q]
        counts = np.bincount(codes[codes >= 0], minlength=len(names[term]))
        e = np.full(q.size, np.nan)
        has = qc >= 0
        e[has] = (counts[qc[has]] - 1) / max(n - 1, 1)
        obs[term], exp[term], qcodes[term] = same_group_share(qc, nb_codes), e, qc
    report: dict[str, Any] = {
        "cells": int(q.size),
        "pool": n,
        "k": int(nb.shape[1]),
        "label_column": label if "label" in obs else None,
    }
    for term in ("dataset", "patient", "label"):
        report[term] = (
            _round(separation(obs[term], exp[term])[0]) if term in obs else None
        )
    per_dataset = []
    for code, name in enumerate(names["dataset"]):
        sel = qcodes["dataset"] == code
        if not sel.any():
            continue
        score, cells = separation(obs["dataset"][sel], exp["dataset"][sel])
        per_dataset.append(
            {
                "dataset": name,
                "cells": cells,
                "same_dataset": _round(float(np.nanmean(obs["dataset"][sel]))),
                "expected": _round(float(np.nanmean(exp["dataset"][sel]))),
                "score": _round(score),
            }
        )
    report["per_dataset"] = per_dataset
    per_label = []
    for code, name in enumerate(names.get("label", [])):
        sel = qcodes["label"] == code
        if not sel.any():
            continue
        d_score, cells = separation(obs["dataset"][sel], exp["dataset"][sel])
        l_score, _ = separation(obs["label"][sel], exp["label"][sel])
        per_label.append(
            {
                "label": name,
                "cells": cells,
                "same_dataset": _round(float(np.nanmean(obs["dataset"][sel]))),
                "expected_dataset": _round(float(np.nanmean(exp["dataset"][sel]))),
                "dataset_score": _round(d_score),
                "same_label": _round(float(np.nanmean(obs["label"][sel]))),
                "expected_label": _round(float(np.nanmean(exp["label"][sel]))),
                "label_score": _round(l_score),
            }
        )
    report["per_label"] = per_label
    return report


def _check(k: int, sample: int | None) -> None:
    if int(k) < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    if sample is not None and int(sample) < 1:
        raise InvalidArgumentError(f"sample must be >= 1 (or None), got {sample}")


def _query_rows(n: int, sample: int | None, seed: int) -> npt.NDArray[np.int64]:
    if sample is None or n <= sample:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(sample), replace=False)).astype(np.int64)


def mixing_score(
    vectors: npt.ArrayLike,
    datasets: Sequence[Any],
    *,
    patients: Sequence[Any] | None = None,
    labels: Sequence[Any] | None = None,
    k: int = MIXING_K,
    metric: str = "cosine",
    sample: int | None = MIXING_SAMPLE,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the mixing score of vectors held in memory (exact FAISS search).

    Args:
        vectors: float (n, dim) embeddings of the pool.
        datasets: n dataset names.
        patients: n patient keys (``None`` entries: no patient); ``None``: no
            patient term. Make them unique across datasets (e.g. ``"lmu/P1"``).
        labels: n cell types or labels (``None`` entries: unlabelled); ``None``:
            no label term and no per-label rows.
        k: Neighbours per cell (capped at n - 1).
        metric: ``cosine`` (rows normalised, inner product) or ``l2``.
        sample: Most query cells (a seeded sample); ``None``: every cell.
        seed: Seed of the sample.

    Returns:
        The report of :func:`neighbourhood_report`, plus ``metric``.

    Raises:
        InvalidArgumentError: If ``k`` < 1, fewer than 2 cells, a bad metric, or
            value lists of another length than ``vectors``.

    Examples:
        >>> x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=np.float32)
        >>> mixing_score(x, ["a", "a", "b", "b"], k=1)["dataset"]
        1.0
        >>> mixing_score(x, ["a", "b", "a", "b"], k=1)["dataset"]
        -0.5
    """
    import faiss

    _check(k, sample)
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidArgumentError(
            f"the mixing score needs at least 2 cells, got shape {x.shape}"
        )
    if metric not in ("cosine", "l2"):
        raise InvalidArgumentError(f"metric must be cosine or l2, got {metric!r}")
    n = x.shape[0]
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0))
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    kk = min(int(k), n - 1)
    q = _query_rows(n, sample, seed)
    parts = []
    for lo in range(0, q.size, _BATCH):
        rows = q[lo : lo + _BATCH]
        _, idx = faiss.knn(x[rows], x, kk + 1, metric=faiss_metric)
        parts.append(_drop_self(idx.astype(np.int64), rows, kk))
    groups: dict[str, Sequence[Any]] = {"dataset": list(datasets)}
    if patients is not None:
        groups["patient"] = list(patients)
    if labels is not None:
        groups["label"] = list(labels)
    report = neighbourhood_report(
        q, np.concatenate(parts), groups, label="label" if labels is not None else None
    )
    report["metric"] = metric
    return report


def _drop_self(
    idx: npt.NDArray[np.int64], self_ids: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """Remove each row's own id from its k + 1 hits (else its last hit)."""
    hit = idx == self_ids[:, None]
    no_self = ~hit.any(axis=1)
    hit[no_self, -1] = True  # a tie pushed the cell itself out: drop the farthest
    first = hit.cumsum(axis=1) == 1
    keep = ~(hit & first)
    return idx[keep].reshape(idx.shape[0], idx.shape[1] - 1)[:, :k]


def store_mixing_score(
    store: Store,
    model: str | int | None = None,
    *,
    where: str | None = None,
    label: str | None = "cell_type",
    k: int = MIXING_K,
    sample: int | None = MIXING_SAMPLE,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Return the mixing score of an embedding set of the store.

    The pool is every cell of the set that ``where`` selects; the query cells a
    seeded sample of at most ``sample`` of them. Neighbours come from the set's
    FAISS index (exact for Flat sets), restricted to the pool, in batches.

    Args:
        store: The store.
        model: Set id or model name (``None``: the store's only set).
        where: SQL filter over ``cell_meta`` choosing the pool.
        label: ``cell_meta`` column of the label term and the per-label rows
            (``cell_type``: the harmonised type; ``None``: none).
        k: Neighbours per cell.
        sample: Most query cells; ``None``: every cell.
        seed: Seed of the sample.
        progress: Called with ``(queries done, queries)``.

    Returns:
        The report of :func:`neighbourhood_report`, plus ``model``, ``set_id``,
        ``metric`` and ``where``. The patient term pairs ``dataset`` with
        ``patient_id`` (cells without one are left out of it).

    Raises:
        InvalidArgumentError: If ``k`` < 1 or ``sample`` < 1, or the pool has
            fewer than 2 cells.
        UnknownColumnError: If ``label`` is not a ``cell_meta`` column.
        StoreCorruptError: If the set holds vectors of cells the catalog lacks.
        UnknownEmbeddingSetError, InvalidWhereError, EmptySelectionError: As for
            :class:`~cytostore.store.search.Searcher`.
    """
    from cytostore.store.search import Searcher

    _check(k, sample)
    if label is not None:
        safe_identifier(label)
        if label not in store.columns("cell_meta"):
            raise UnknownColumnError(
                f"--label {label!r} is not a column of cell_meta: name one "
                "('cytostore sql STORE \"DESCRIBE cell_meta\"'), e.g. cell_type"
            )
    searcher = Searcher(store, model, where)
    pool = np.sort(searcher.ids if searcher.subset is None else searcher.subset)
    if pool.size < 2:
        raise InvalidArgumentError(
            f"the mixing score needs at least 2 embedded cells, the selection has "
            f"{pool.size}: widen --where"
        )
    cols = "cell_id, dataset, patient_id" + (f', "{label}"' if label else "")
    meta = store.sql(f"SELECT {cols} FROM cell_meta ORDER BY cell_id")
    meta_ids = np.asarray(meta.column("cell_id"), dtype=np.int64)
    at = np.minimum(np.searchsorted(meta_ids, pool), max(meta_ids.size - 1, 0))
    if meta_ids.size == 0 or not np.array_equal(meta_ids[at], pool):
        raise StoreCorruptError(
            f"set {searcher.es.name!r} holds vectors of cells the catalog lacks: "
            "run 'cytostore verify STORE'"
        )
    rows = [meta.rows[i] for i in at.tolist()]
    groups: dict[str, Sequence[Any]] = {
        "dataset": [r[1] for r in rows],
        "patient": [None if r[2] is None else f"{r[1]}\0{r[2]}" for r in rows],
    }
    if label:
        groups["label"] = [r[3] for r in rows]
    if all(p is None for p in groups["patient"]):
        del groups["patient"]
    q = _query_rows(pool.size, sample, seed)
    kk = min(int(k), pool.size - 1)
    parts = []
    for lo in range(0, q.size, _BATCH):
        batch = pool[q[lo : lo + _BATCH]]
        _, ids = searcher.knn(searcher.prepare(searcher.vector_of(batch)), kk, batch)
        pos = np.searchsorted(pool, np.maximum(ids, 0))
        pos = np.minimum(pos, pool.size - 1)
        parts.append(np.where((ids >= 0) & (pool[pos] == ids), pos, -1))
        if progress is not None:
            progress(min(lo + _BATCH, q.size), int(q.size))
    report = neighbourhood_report(q, np.concatenate(parts), groups, label=label)
    report.update(
        model=searcher.es.model,
        set_id=searcher.es.set_id,
        metric=searcher.es.metric,
        where=where,
    )
    return report
