"""``select``: choose the next N cells to annotate, into ``selections``.

Three strategies over a model's embeddings (unit-length, compared by cosine):

- ``diversity``: greedy k-center [0]: each next cell is the one farthest from every
  cell chosen (or already labelled) so far. ``score`` is that distance (1 - cosine)
  when it was picked: how much of the space it newly covers.
- ``typicality``: TypiClust [1]: k-means into N clusters (plus one per labelled
  cell), the clusters holding the fewest labelled cells and then the largest
  first, and from each its most typical cell: the highest inverse mean distance
  to its ``k`` nearest cells in the cluster. ``score`` is that typicality.
- ``uncertainty``: smallest margin between a saved head's two most probable
  classes (``head`` required). ``score`` is ``1 - margin``.

``balance_by`` spreads the N evenly over a ``cell_meta`` column's values (a
patient, a dataset; ``predicted`` for the head's predicted class) on top of any
strategy: each value gets an equal share (what a small value cannot fill goes to
the others) and the strategy runs within it; ranks then take turns between the
values. ``exclude_labelled`` skips the cells where that column is set: they are
already annotated (and anchor diversity and typicality).

[0] Sener, Savarese, Active Learning for Convolutional Neural Networks: A Core-Set
Approach, ICLR 2018, https://arxiv.org/abs/1708.00489
[1] Hacohen, Dekel, Weinshall, Active Learning on a Budget: Opposite Strategies
Suit High and Low Budgets (TypiClust), ICML 2022, https://arxiv.org/abs/2202.02794
"""

from __future__ import annotations

import csv as _csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cytostore.curate._common import (
    GROUP_COLUMNS,
    open_store,
    tiles,
    unit_rows,
)
from cytostore.errors import InvalidArgumentError
from cytostore.store import (
    Store,
    check_run_name,
    is_missing,
    load_cells,
    write_selection,
)

__all__ = [
    "STRATEGIES",
    "SelectResult",
    "balanced_quotas",
    "k_center_greedy",
    "select",
    "smallest_margin",
    "typiclust",
]

logger = logging.getLogger(__name__)

#: The selection strategies.
STRATEGIES = ("diversity", "typicality", "uncertainty")
#: ``balance_by`` value meaning the head's predicted class.
PREDICTED = "predicted"
#: Neighbours of the typicality estimate (TypiClust's default).
K_TYPICALITY = 20
#: Clusters smaller than this are taken last (TypiClust's MIN_CLUSTER_SIZE).
MIN_CLUSTER_SIZE = 5
#: Most tiles drawn in the montage.
MONTAGE_TILES = 64


# ------------------------------------------------------------------ strategies
def k_center_greedy(
    X: npt.ArrayLike,
    n: int,
    *,
    anchors: npt.ArrayLike | None = None,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return ``n`` rows of ``X`` chosen by greedy k-center (farthest first).

    Args:
        X: (m, dim) vectors (compared by cosine distance).
        n: Rows to choose (``n <= m``).
        anchors: (a, dim) vectors already covered (labelled cells), or ``None``.
        seed: Picks the first row when there are no anchors.

    Returns:
        ``(rows, distance)``: the chosen row indices in pick order and each one's
        cosine distance to the nearest earlier pick or anchor (NaN for a first
        pick without anchors, which is random).

    Examples:
        >>> import numpy as np
        >>> X = np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
        >>> k_center_greedy(X, 2, anchors=X[:1])[0].tolist()
        [3, 2]
    """
    U = unit_rows(X)
    m = U.shape[0]
    best = np.full(m, np.inf)
    if anchors is not None and np.asarray(anchors).size:
        A = unit_rows(np.asarray(anchors).reshape(-1, U.shape[1]))
        for lo in range(0, A.shape[0], 4096):
            best = np.minimum(best, (1.0 - U @ A[lo : lo + 4096].T).min(axis=1))
    rows = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    chosen = np.zeros(m, dtype=bool)
    for j in range(n):
        if np.isinf(best).all():
            pick = int(np.random.default_rng(seed).integers(m))
            dist[j] = np.nan
        else:
            pick = int(np.argmax(np.where(chosen, -np.inf, best)))
            dist[j] = float(best[pick])
        rows[j] = pick
        chosen[pick] = True
        best = np.minimum(best, 1.0 - U @ U[pick])
    return rows, dist


def _typicality(U: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float64]:
    """Inverse mean Euclidean distance to the ``k`` nearest other rows of ``U``."""
    from sklearn.neighbors import NearestNeighbors

    m = U.shape[0]
    if m == 1:
        return np.zeros(1)
    kk = max(1, min(k, m // 2))  # TypiClust's min(K, cluster size // 2)
    d, _ = NearestNeighbors(n_neighbors=kk + 1).fit(U).kneighbors(U)
    return 1.0 / (d[:, 1:].mean(axis=1) + 1e-8)


def typiclust(
    X: npt.ArrayLike,
    n: int,
    *,
    anchors: npt.ArrayLike | None = None,
    k: int = K_TYPICALITY,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return ``n`` rows of ``X`` chosen by TypiClust, and each one's typicality.

    k-means clusters the rows and the anchors together into ``n + len(anchors)``
    clusters (at most the number of rows); clusters are taken by fewest anchors,
    then size (largest first; those under :data:`MIN_CLUSTER_SIZE` last), and from
    each its most typical row: the inverse mean distance to its
    ``min(k, cluster size // 2)`` nearest rows in the cluster, as in the authors'
    code.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = np.r_[rng.normal(0, .1, (30, 2)) + [5, 0], rng.normal(0, .1, (9, 2))
        ...           + [0, 5], [[4, 4]]]
        >>> rows, _ = typiclust(X, 2)
        >>> sorted(int(r) // 30 for r in rows)
        [0, 1]
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    U = unit_rows(X)
    A = (
        unit_rows(np.asarray(anchors).reshape(-1, U.shape[1]))
        if anchors is not None and np.asarray(anchors).size
        else np.zeros((0, U.shape[1]), np.float32)
    )
    m = U.shape[0]
    n_clusters = min(n + A.shape[0], m + A.shape[0])
    both = np.concatenate([U, A])
    kmeans_cls = MiniBatchKMeans if both.shape[0] > 50_000 else KMeans
    km = kmeans_cls(n_clusters=n_clusters, n_init=1, random_state=seed).fit(both)
    lab = np.asarray(km.labels_, dtype=np.int64)
    own, anchored = lab[:m], lab[m:]
    size = np.bincount(own, minlength=n_clusters)
    covered = np.bincount(anchored, minlength=n_clusters)
    small = size < MIN_CLUSTER_SIZE  # TypiClust takes these last
    order = np.lexsort((np.arange(n_clusters), -size, covered, small))
    rows: list[int] = []
    score: list[float] = []
    taken = np.zeros(m, dtype=bool)
    for c in order.tolist():
        if len(rows) == n:
            break
        members = np.flatnonzero(own == c)
        if members.size == 0:
            continue
        t = _typicality(U[members], k)
        j = int(members[int(np.argmax(t))])
        rows.append(j)
        score.append(float(t.max()))
        taken[j] = True
    if len(rows) < n:  # fewer non-empty clusters than n: most typical of the rest
        rest = np.flatnonzero(~taken)
        t = _typicality(U[rest], k)
        for j in np.argsort(-t, kind="stable")[: n - len(rows)].tolist():
            rows.append(int(rest[j]))
            score.append(float(t[j]))
    return np.asarray(rows, dtype=np.int64), np.asarray(score, dtype=np.float64)


def smallest_margin(
    probs: npt.ArrayLike, n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return the ``n`` rows with the smallest top-two margin, and ``1 - margin``.

    Examples:
        >>> smallest_margin([[.9, .1], [.5, .5], [.6, .4]], 2)[0].tolist()
        [1, 2]
    """
    P = np.asarray(probs, dtype=np.float64)
    top2 = np.sort(P, axis=1)[:, -2:] if P.shape[1] > 1 else np.c_[np.zeros(len(P)), P]
    margin = top2[:, 1] - top2[:, 0]
    rows = np.lexsort((np.arange(P.shape[0]), margin))[:n].astype(np.int64)
    return rows, 1.0 - margin[rows]


def balanced_quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split ``n`` as evenly as the group ``sizes`` allow (water-filling).

    Raises:
        InvalidArgumentError: If the groups hold fewer than ``n`` cells.

    Examples:
        >>> balanced_quotas({"a": 2, "b": 10, "c": 10}, 10)
        {'a': 2, 'b': 4, 'c': 4}
        >>> balanced_quotas({"a": 5, "b": 5, "c": 5}, 7)
        {'a': 2, 'b': 2, 'c': 3}
    """
    if sum(sizes.values()) < n:
        raise InvalidArgumentError(
            f"-n {n} is more than the {sum(sizes.values())} cells to choose from"
        )
    quota = dict.fromkeys(sizes, 0)
    left = n
    ascending = sorted(sizes, key=lambda g: (sizes[g], g))
    for i, g in enumerate(ascending):
        quota[g] = min(sizes[g], left // (len(ascending) - i))
        left -= quota[g]
    for g in reversed(ascending):  # what floor division left: the largest first
        give = min(left, sizes[g] - quota[g])
        quota[g] += give
        left -= give
    return quota


# --------------------------------------------------------------------- select
@dataclass
class SelectResult:
    """What :func:`select` chose and wrote.

    Attributes:
        run: The run's name (rows in ``selections``).
        model: The model.
        strategy: The strategy.
        n_candidates: Cells it chose from.
        n_labelled: Cells skipped as already labelled (anchors).
        rows: The chosen cells by rank: ``rank``, ``cell_id``, ``score``,
            ``dataset``, ``path`` and the ``balance_by`` value.
        per_group: Chosen cells per ``balance_by`` value (empty without).
        csv: The CSV of paths written, if any.
        montage: The PNG written, if any.
    """

    run: str
    model: str
    strategy: str
    n_candidates: int
    n_labelled: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_group: dict[str, int] = field(default_factory=dict)
    csv: str | None = None
    montage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        return {
            "run": self.run,
            "model": self.model,
            "strategy": self.strategy,
            "n": len(self.rows),
            "n_candidates": self.n_candidates,
            "n_labelled": self.n_labelled,
            "per_group": self.per_group,
            "csv": self.csv,
            "montage": self.montage,
            "rows": self.rows,
        }


def _head_predictor(
    st: Store, head: str, model: str
) -> tuple[Callable[[npt.NDArray[Any]], npt.NDArray[np.float64]], list[str]]:
    """Return ``(predict_proba over vectors, classes)`` of a saved cell-level head."""
    from cytostore.heads import load_head

    estimator, meta = load_head(st, head)
    if meta.get("kind") == "abmil":
        raise InvalidArgumentError(
            f"head {head!r} is a MIL head (patients, not cells): give a cell-level "
            "head from 'cytostore probe'"
        )
    trained_on = meta.get("model")
    if trained_on is not None and str(trained_on) != str(model):
        raise InvalidArgumentError(
            f"head {head!r} was trained on model {trained_on!r}, not {model!r}: "
            f"pass --model {trained_on}"
        )
    classes = [str(c) for c in estimator.classes_.tolist()]

    def predict(X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        if X.shape[0] == 0:
            return np.zeros((0, len(classes)))
        return np.concatenate(
            [
                np.asarray(
                    estimator.predict_proba(np.asarray(X[lo : lo + 65536], np.float32)),
                    np.float64,
                )
                for lo in range(0, X.shape[0], 65536)
            ]
        )

    return predict, classes


def _choose(
    strategy: str,
    X: npt.NDArray[Any],
    probs: npt.NDArray[np.float64] | None,
    n: int,
    anchors: npt.NDArray[Any],
    seed: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    if strategy == "diversity":
        return k_center_greedy(X, n, anchors=anchors, seed=seed)
    if strategy == "typicality":
        return typiclust(X, n, anchors=anchors, seed=seed)
    if probs is None:
        raise InvalidArgumentError("--strategy uncertainty needs --head")
    return smallest_margin(probs, n)


def select(
    store: Store | str | os.PathLike[str],
    model: str,
    n: int,
    strategy: str,
    *,
    head: str | None = None,
    balance_by: str | None = None,
    where: str | None = None,
    exclude_labelled: str | None = None,
    name: str | None = None,
    csv: str | os.PathLike[str] | None = None,
    montage: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SelectResult:
    """Choose ``n`` cells to annotate next; write the run, a CSV and a montage.

    See the module docstring for the strategies. A second selection under the same
    ``name`` replaces that run's rows only.

    Args:
        store: The store (or its folder).
        model: The model whose embeddings are used.
        n: Cells to choose.
        strategy: One of :data:`STRATEGIES`.
        head: A saved cell-level head (required by ``uncertainty``; with it,
            ``balance_by="predicted"`` balances over its predicted class).
        balance_by: Spread the ``n`` evenly over this column's values.
        where: SQL filter over ``cell_meta`` choosing the candidates.
        exclude_labelled: Skip cells where this column is set.
        name: Run name (default ``<strategy>-<model>``).
        csv: Write the chosen cells here (``rank, cell_id, dataset, path, image,
            score``): ``path`` relative to the dataset's root, ``image`` absolute.
        montage: Write a PNG of the chosen cells (the first 64) here.
        seed: Seed of the first k-center pick and of k-means.
        progress: ``progress(done, total)`` over the ``balance_by`` groups.

    Returns:
        The :class:`SelectResult`.

    Raises:
        InvalidArgumentError: Unknown strategy; ``uncertainty`` (or
            ``balance_by="predicted"``) without a head; ``n`` < 1 or more than the
            candidates; an unusable run name; a head of another model.
        UnknownColumnError: If ``balance_by`` or ``exclude_labelled`` is not a
            ``cell_meta`` column.
        UnknownHeadError: If ``head`` is not a saved head.
        InvalidWhereError, EmptySelectionError, UnknownEmbeddingSetError: From
            loading the cells.
    """
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(
            f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}"
        )
    if head is None and (strategy == "uncertainty" or balance_by == PREDICTED):
        what = (
            "--strategy uncertainty"
            if strategy == "uncertainty"
            else ("--balance-by predicted")
        )
        raise InvalidArgumentError(
            f"{what} needs a saved head: pass --head NAME (train one with "
            "'cytostore probe')"
        )
    if n < 1:
        raise InvalidArgumentError(f"-n must be at least 1, got {n}")
    st = open_store(store)
    run = check_run_name(name or f"{strategy}-{model}")
    columns = [c for c in (exclude_labelled,) if c]
    if balance_by and balance_by != PREDICTED:
        columns.append(balance_by)
    cells = load_cells(st, model, where, [*columns, "path", *GROUP_COLUMNS])
    if exclude_labelled:
        labelled = np.asarray(
            [not is_missing(v) for v in cells.meta[exclude_labelled]], dtype=bool
        )
    else:
        labelled = np.zeros(len(cells), dtype=bool)
    pool = cells.take(np.flatnonzero(~labelled))
    anchors_all = cells.take(np.flatnonzero(labelled))
    if len(pool) < n:
        raise InvalidArgumentError(
            f"-n {n} is more than the {len(pool)} cells to choose from"
            + (
                f" (after skipping {int(labelled.sum())} labelled)"
                if labelled.any()
                else ""
            )
            + ": lower -n or widen --where"
        )
    probs = None
    keys = np.full(len(pool), "", dtype=object)
    anchor_keys = np.full(len(anchors_all), "", dtype=object)
    if head is not None:
        predict, classes = _head_predictor(st, head, model)
        probs = predict(np.asarray(pool.X))
        if balance_by == PREDICTED:
            names = np.asarray(classes, dtype=object)
            keys = names[probs.argmax(axis=1)]
            anchor_keys = names[predict(np.asarray(anchors_all.X)).argmax(axis=1)]
    if balance_by and balance_by != PREDICTED:
        keys = np.asarray([_key(v) for v in pool.meta[balance_by]], dtype=object)
        anchor_keys = np.asarray(
            [_key(v) for v in anchors_all.meta[balance_by]], dtype=object
        )
    values, sizes = np.unique(keys.astype(str), return_counts=True)
    quotas = balanced_quotas(dict(zip(values.tolist(), sizes.tolist(), strict=True)), n)
    picked: list[tuple[int, int, float, str]] = []  # (turn, row, score, group)
    groups = [g for g in values.tolist() if quotas[g] > 0]
    for i, g in enumerate(groups):
        rows_g = np.flatnonzero(keys.astype(str) == g)
        anchors = np.asarray(anchors_all.X)[anchor_keys.astype(str) == g]
        chosen, score = _choose(
            strategy,
            np.asarray(pool.X)[rows_g],
            None if probs is None else probs[rows_g],
            quotas[g],
            anchors,
            seed,
        )
        picked += [
            (turn, int(rows_g[r]), float(s), g)
            for turn, (r, s) in enumerate(zip(chosen, score, strict=True))
        ]
        if progress is not None:
            progress(i + 1, len(groups))
    picked.sort(key=lambda t: (t[0], t[3]))  # ranks take turns between groups
    rows_sel = np.asarray([p[1] for p in picked], dtype=np.int64)
    scores = np.asarray([p[2] for p in picked], dtype=np.float64)
    ids = pool.ids[rows_sel]
    params = {
        "n": n,
        "strategy": strategy,
        "head": head,
        "balance_by": balance_by,
        "where": where,
        "exclude_labelled": exclude_labelled,
        "seed": seed,
    }
    write_selection(
        st,
        run,
        model=model,
        strategy=strategy,
        params=params,
        cell_ids=ids,
        rank=np.arange(1, ids.size + 1),
        score=np.nan_to_num(scores, nan=0.0),
    )
    images = st.cell_paths(ids)
    out_rows = []
    for r, (row, cid, img) in enumerate(zip(rows_sel, ids, images, strict=True), 1):
        item: dict[str, Any] = {
            "rank": r,
            "cell_id": int(cid),
            "score": None
            if np.isnan(scores[r - 1])
            else round(float(scores[r - 1]), 4),
            "dataset": str(pool.meta["dataset"][row]),
            "path": str(pool.meta["path"][row]),
        }
        if balance_by:
            item[balance_by] = picked[r - 1][3]
        item["image"] = str(img)
        out_rows.append(item)
    result = SelectResult(
        run=run,
        model=model,
        strategy=strategy,
        n_candidates=len(pool),
        n_labelled=int(labelled.sum()),
        rows=out_rows,
        per_group={g: int(quotas[g]) for g in groups} if balance_by else {},
    )
    if csv is not None:
        result.csv = str(_write_csv(Path(csv), out_rows))
    if montage is not None:
        result.montage = str(_draw(st, out_rows, Path(montage), result, balance_by))
    logger.info("select %s: %d of %d cells", run, ids.size, len(pool))
    return result


def _key(value: Any) -> str:
    return "(none)" if is_missing(value) else str(value)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the rows as CSV (``.tmp`` then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = _csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def _draw(
    st: Store,
    rows: list[dict[str, Any]],
    out: Path,
    result: SelectResult,
    balance_by: str | None,
) -> Path:
    from cytostore.data import montage

    shown = rows[:MONTAGE_TILES]
    pictures = tiles(st, [r["cell_id"] for r in shown])
    captions = []
    for r in shown:
        extra = f" {r[balance_by]}" if balance_by else ""
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        captions.append(f"#{r['rank']} cell {r['cell_id']}\n{score}{extra}")
    title = (
        f"select {result.run}: {len(rows)} cells by {result.strategy} on "
        f"{result.model}" + (f", first {len(shown)}" if len(shown) < len(rows) else "")
    )
    return montage(
        [pictures[r["cell_id"]] for r in shown], captions, out, ncols=8, title=title
    )
