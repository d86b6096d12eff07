"""Helpers of the heads tests: planted-signal data and small embedded stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cytostore.store import Store

CLASSES = ("BAS", "EOS", "LYT", "MON")
SUBTYPES = ("NPM1", "control")


def gaussian_classes(
    n_per_class: int, dim: int = 16, n_classes: int = 4, sep: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: ``(X (n, dim) float32, y (n,) str)``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, sep, (n_classes, dim))
    X = np.concatenate([rng.normal(m, 1.0, (n_per_class, dim)) for m in means])
    y = np.repeat(
        np.asarray(
            CLASSES[:n_classes]
            if n_classes <= 4
            else [f"C{i}" for i in range(n_classes)]
        ),
        n_per_class,
    )
    return X.astype(np.float32), y


def planted_bags(
    n_bags: int = 24, n_cells: int = 30, n_key: int = 3, dim: int = 16, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Bags of noise; positive bags carry ``n_key`` shifted cells (the signal).

    Returns:
        ``(bags, labels, key_rows)``: ``key_rows[i]`` are the planted rows of bag i
        (empty for negative bags).
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(0, 1, dim)
    direction *= 4.0 / np.linalg.norm(direction)
    bags, labels, keys = [], [], []
    for i in range(n_bags):
        bag = rng.normal(0, 1, (n_cells, dim))
        positive = i % 2 == 1
        rows = (
            rng.choice(n_cells, n_key, replace=False) if positive else np.zeros(0, int)
        )
        bag[rows] += direction
        bags.append(bag.astype(np.float32))
        labels.append(SUBTYPES[0] if positive else SUBTYPES[1])
        keys.append(rows)
    return bags, np.asarray(labels), keys


def build_store(
    root: Path,
    *,
    n_per_class: int = 40,
    dim: int = 16,
    patients: int = 8,
    seed: int = 0,
    model: str = "tiny",
) -> Store:
    """A store with one embedded model: cells of 4 Gaussian classes in 2 datasets.

    Cells of ``lmu`` have no patient; cells of ``bm`` belong to ``patients`` patients
    (with ``sex``); 3 cells have an empty label. The label also sits in cell_type.
    """
    store = Store.create(root)
    X, y = gaussian_classes(n_per_class, dim=dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for ds in ("lmu", "bm"):
        store.upsert_dataset(ds, "folder", root, 0.1)
    rows = []
    for i, lab in enumerate(y.tolist()):
        ds = "bm" if i % 2 else "lmu"
        pid = f"P{int(rng.integers(patients))}" if ds == "bm" else None
        rows.append(
            {
                "dataset": ds,
                "path": f"{lab}/{lab}_{i:05d}.jpg",
                "label": None if i in (0, 1, 2) else lab,
                "cell_type": lab,
                "patient_id": pid,
            }
        )
    ids = store.add_cells(rows)
    store.upsert_patients(
        "bm",
        [
            {"patient_id": f"P{i}", "sex": "f" if i % 2 else "m"}
            for i in range(patients)
        ],
    )
    es = store.create_embedding_set(model, dim)
    with store.vector_writer(es) as w:
        w.append(ids, X)
    return store


def build_mil_store(
    root: Path, *, n_bags: int = 20, n_cells: int = 25, dim: int = 16, seed: int = 0
) -> tuple[Store, dict[str, np.ndarray]]:
    """A store of ``n_bags`` mll_helmholtz patients with planted bag signal.

    Returns:
        ``(store, key_cells)``: ``{patient_id: cell ids of its planted cells}``.
    """
    store = Store.create(root)
    bags, labels, keys = planted_bags(n_bags, n_cells, 3, dim, seed)
    store.upsert_dataset("mll_helmholtz", "mll_helmholtz", root, 0.1725)
    rows, vecs = [], []
    for b, (bag, lab) in enumerate(zip(bags, labels, strict=True)):
        for c in range(bag.shape[0]):
            rows.append(
                {
                    "dataset": "mll_helmholtz",
                    "path": f"{lab}/PT{b:02d}/image_{c}.tif",
                    "label": lab,
                    "patient_id": f"PT{b:02d}",
                }
            )
        vecs.append(bag)
    ids = store.add_cells(rows)
    store.upsert_patients(
        "mll_helmholtz",
        [
            {"patient_id": f"PT{b:02d}", "bag_label": lab}
            for b, lab in enumerate(labels)
        ],
    )
    es = store.create_embedding_set("tiny", dim, metric="l2")
    with store.vector_writer(es) as w:
        w.append(ids, np.concatenate(vecs))
    key_cells = {}
    start = 0
    for b, bag in enumerate(bags):
        key_cells[f"PT{b:02d}"] = ids[start + keys[b]]
        start += bag.shape[0]
    return store, key_cells
