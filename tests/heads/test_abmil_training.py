"""ABMILHead's training: class balance, early stopping, refit length, prior correction.

Oracles: a planted, learnable minority class (balanced training must find it), the
exponential moving average recomputed from the recorded validation losses, the
median rule on hand-made best epochs, and the prior-corrected posterior computed by
hand for a head whose logits are fixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from heads_helpers import build_mil_store
from sklearn.metrics import balanced_accuracy_score

from cytostore.cli import main
from cytostore.errors import InvalidArgumentError
from cytostore.heads.abmil import ABMILHead, refit_epochs
from cytostore.heads.mil import mil
from cytostore.heads.registry import load_head, retrain_command

SMALL = {"hidden": 32, "attention_dim": 16}


def imbalanced_bags(
    n_major: int, n_minor: int, seed: int, shift: float = 2.0, n_key: int = 4
) -> tuple[list[np.ndarray], np.ndarray]:
    """Noise bags of 20 cells; ``minor`` bags carry ``n_key`` shifted cells."""
    rng = np.random.default_rng(seed)
    direction = np.full(8, shift / np.sqrt(8))
    bags, labels = [], []
    for i in range(n_major + n_minor):
        bag = rng.normal(0, 1, (20, 8))
        if i >= n_major:
            bag[:n_key] += direction
        bags.append(bag.astype(np.float32))
        labels.append("minor" if i >= n_major else "major")
    return bags, np.asarray(labels)


def test_abmil__balanced_default_beats_unweighted_training_on_a_3_to_1_cohort() -> None:
    X, y = imbalanced_bags(45, 15, seed=0)  # 75 % major
    X_test, y_test = imbalanced_bags(40, 40, seed=1)
    scores: dict[str | None, list[float]] = {"balanced": [], None: []}
    for class_weight in scores:
        for seed in (0, 1):
            head = ABMILHead(
                class_weight=class_weight, max_epochs=25, seed=seed, **SMALL
            )
            head.fit(X, y)
            scores[class_weight].append(
                balanced_accuracy_score(y_test, head.predict(X_test))
            )
    assert ABMILHead().class_weight == "balanced"
    balanced, unweighted = np.mean(scores["balanced"]), np.mean(scores[None])
    assert balanced >= 0.75
    assert balanced - unweighted >= 0.08, scores


def _noise_bags() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    bags = [rng.normal(0, 1, (10, 8)).astype(np.float32) for _ in range(40)]
    return bags, np.asarray(["a", "b"] * 20)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_abmil__early_stopping_keeps_the_smoothed_best_at_or_after_min_epochs(
    seed: int,
) -> None:
    bags, y = _noise_bags()  # labels carry no signal: the raw loss is noise
    head = ABMILHead(min_epochs=6, patience=3, max_epochs=20, seed=seed, **SMALL)
    head.fit(bags, y)
    assert 6 <= head.best_epoch_ <= head.n_epochs_
    losses = np.asarray(head.val_losses_)
    assert losses.size == head.n_epochs_
    ema = [losses[0]]
    for loss in losses[1:]:
        ema.append(head.smoothing * ema[-1] + (1 - head.smoothing) * loss)
    kept = ema[head.best_epoch_ - 1]
    assert kept <= min(ema[5:]) + 1e-6
    assert head.n_epochs_ == 20 or head.n_epochs_ - head.best_epoch_ == 3


def test_abmil__raw_loss_without_min_epochs_can_lock_onto_an_early_epoch() -> None:
    # the failure the defaults prevent: on seed 2 the raw loss keeps epoch 4
    bags, y = _noise_bags()
    raw = ABMILHead(
        min_epochs=1, smoothing=0.0, patience=3, max_epochs=20, seed=2, **SMALL
    ).fit(bags, y)
    assert raw.best_epoch_ < 6


def test_abmil__min_epochs_above_max_epochs_is_capped() -> None:
    bags, y = _noise_bags()
    head = ABMILHead(min_epochs=10, max_epochs=3, seed=0, **SMALL).fit(bags, y)
    assert head.best_epoch_ == head.n_epochs_ == 3


@pytest.mark.parametrize(
    ("best_epochs", "min_epochs", "expected"),
    [
        ([1, 1, 10, 1, 9], 10, 10),  # the real cohort's folds: no 1-epoch refit
        ([1, 1, 10, 1, 9], 1, 1),
        ([12, 30, 17, 14], 10, 16),  # median 15.5, rounded up
        ([25, 11, 40], 10, 25),
        ([3], 1, 3),
    ],
)
def test_refit_epochs__median_rounded_up_at_least_min_epochs(
    best_epochs: list[int], min_epochs: int, expected: int
) -> None:
    assert refit_epochs(best_epochs, min_epochs=min_epochs) == expected


def test_refit_epochs__no_fold_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError, match="cross-validate first"):
        refit_epochs([], min_epochs=10)


def _fixed_posterior_head(posterior: list[float]) -> ABMILHead:
    """A head fitted on 6 ``major`` / 2 ``minor`` bags whose softmax is fixed."""
    X, y = imbalanced_bags(6, 2, seed=0)
    head = ABMILHead(
        class_weight=None, prior_correction=True, max_epochs=2, seed=0, **SMALL
    )
    head.fit(X, y)
    with torch.no_grad():
        head.module_.classifier.weight.zero_()
        head.module_.classifier.bias.copy_(torch.log(torch.tensor(posterior)))
    return head


def test_abmil__prior_correction_divides_out_the_training_prior_by_hand() -> None:
    bags, _ = imbalanced_bags(2, 1, seed=5)
    head = _fixed_posterior_head([0.6, 0.4])
    np.testing.assert_array_equal(head.class_prior_, [0.75, 0.25])
    # (0.6 / 0.75, 0.4 / 0.25) = (0.8, 1.6) -> (1/3, 2/3): the decision flips
    np.testing.assert_allclose(head.predict_proba(bags), [[1 / 3, 2 / 3]] * 3)
    assert head.predict(bags).tolist() == ["minor"] * 3
    head.set_params(prior_correction=False)  # the argmax of the plain posterior
    np.testing.assert_allclose(head.predict_proba(bags), [[0.6, 0.4]] * 3)
    assert head.predict(bags).tolist() == ["major"] * 3
    # 0.2 < prior 0.25: (0.8 / 0.75, 0.2 / 0.25) = (1.0667, 0.8) stays major
    head = _fixed_posterior_head([0.8, 0.2])
    np.testing.assert_allclose(head.predict_proba(bags)[0], [4 / 7, 3 / 7])
    assert head.predict(bags).tolist() == ["major"] * 3


def test_abmil__prior_correction_on_balanced_weights_is_refused() -> None:
    X, y = imbalanced_bags(6, 2, seed=0)
    with pytest.raises(InvalidArgumentError, match="class_weight=None"):
        ABMILHead(prior_correction=True).fit(X, y)


@pytest.mark.parametrize(
    "params",
    [{"min_epochs": 0}, {"smoothing": 1.0}, {"smoothing": -0.1}, {"class_weight": "x"}],
)
def test_abmil__bad_training_parameters_are_refused(params: dict) -> None:
    X, y = imbalanced_bags(6, 2, seed=0)
    with pytest.raises(InvalidArgumentError, match=next(iter(params))):
        ABMILHead(**params).fit(X, y)


def test_abmil__class_prior_comes_from_the_fit_bags_not_validation_or_test() -> None:
    X, y = imbalanced_bags(9, 3, seed=0)
    X_val, y_val = imbalanced_bags(2, 2, seed=1)
    X_test, _ = imbalanced_bags(3, 3, seed=2)
    params = {"class_weight": None, "prior_correction": True, "max_epochs": 6}
    a = ABMILHead(**params, **SMALL).fit(X, y, validation=(X_val, y_val))
    b = ABMILHead(**params, **SMALL).fit(X, y, validation=(X_val, y_val[::-1]))
    np.testing.assert_array_equal(a.class_prior_, [0.75, 0.25])
    np.testing.assert_array_equal(b.class_prior_, [0.75, 0.25])
    # validation labels steer early stopping only; the prior, hence the
    # correction, is the same, and predictions do not depend on test labels at all
    plain = ABMILHead(**params | {"early_stopping": False}, **SMALL).fit(X, y)
    again = ABMILHead(**params | {"early_stopping": False}, **SMALL).fit(X, y)
    np.testing.assert_array_equal(
        plain.predict_proba(X_test), again.predict_proba(X_test)
    )


def test_abmil__state_round_trip_keeps_the_prior_and_the_decisions() -> None:
    X, y = imbalanced_bags(9, 3, seed=0)
    head = ABMILHead(
        class_weight=None, prior_correction=True, max_epochs=4, seed=0, **SMALL
    ).fit(X, y)
    arrays, doc = head.get_state()
    back = ABMILHead.from_state(arrays, doc)
    assert isinstance(back, ABMILHead) and back.prior_correction
    np.testing.assert_array_equal(back.class_prior_, head.class_prior_)
    np.testing.assert_array_equal(back.predict_proba(X), head.predict_proba(X))
    doc["learned"]["class_prior_"] = [0.5]
    with pytest.raises(ValueError, match="class_prior_"):
        ABMILHead.from_state(arrays, doc)


def test_mil__refit_length_is_the_robust_choice_of_the_folds_best_epochs(
    tmp_path: Path,
) -> None:
    store, _ = build_mil_store(tmp_path / "s")
    report = mil(store, "tiny", folds=3, name="ab", n_boot=20, max_epochs=14)
    out = report.to_dict()
    best = [f["best_epoch"] for f in out["folds"]]
    assert len(best) == 3 and all(10 <= b <= 14 for b in best)
    assert out["refit_epochs"] == refit_epochs(best, min_epochs=10)
    assert out["decision_rule"].startswith("argmax of the posterior")
    head, meta = load_head(store, "ab")
    assert isinstance(head, ABMILHead) and not head.prior_correction
    assert head.n_epochs_ == head.best_epoch_ == out["refit_epochs"]
    assert meta["best_epochs"] == best and meta["refit_epochs"] == out["refit_epochs"]


def _split(folder: Path, test: list[str], train: list[str]) -> Path:
    folder.mkdir()
    for part, ids in (("test", test), ("train", train)):
        text = "patient_name,labels\n" + "".join(f"{i},0\n" for i in ids)
        (folder / f"cohort_{part}.csv").write_text(text)
    return folder / "cohort_test.csv"


def test_mil__prior_comes_from_training_patients_only(tmp_path: Path) -> None:
    ids = [f"PT{i:02d}" for i in range(20)]
    split = _split(tmp_path / "split", ids[:6], ids[6:])
    probabilities = []
    for relabel in (False, True):
        store, _ = build_mil_store(tmp_path / f"s{relabel}")
        if relabel:  # only the test patients' labels change (and the class counts)
            rows = [{"patient_id": p, "bag_label": "control"} for p in ids[:6]]
            store.upsert_patients("mll_helmholtz", rows)
        mil(
            store,
            "tiny",
            split=str(split),
            name="ab",
            n_boot=20,
            max_epochs=12,
            prior_correction=True,
        )
        probabilities.append(
            store.sql(
                "SELECT patient_id, probabilities, true_label FROM patient_predictions "
                "WHERE head = 'ab' ORDER BY patient_id"
            ).rows
        )
    before, after = probabilities
    assert [r[0] for r in before] == ids[:6] == [r[0] for r in after]
    assert [r[2] for r in after] == ["control"] * 6 != [r[2] for r in before]
    assert [r[1] for r in before] == [r[1] for r in after]


def test_mil_cli__prior_correction_flag_is_used_saved_and_retrained_with(
    tmp_path: Path,
) -> None:
    store, _ = build_mil_store(tmp_path / "s")
    args = ["mil", str(store.root), "--model", "tiny", "--folds", "2", "--name", "ab"]
    args += ["--max-epochs", "3", "--prior-correction", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["decision_rule"].startswith("argmax of posterior / training")
    head, meta = load_head(store, "ab")
    assert isinstance(head, ABMILHead) and head.prior_correction
    assert head.class_weight is None
    np.testing.assert_array_equal(head.class_prior_, [0.5, 0.5])
    command = retrain_command(store, "ab", meta)
    assert " --prior-correction " in command and "True" not in command
