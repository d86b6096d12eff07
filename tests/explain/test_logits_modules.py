"""The heads' differentiable forwards agree with their predict_proba."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cytostore.errors import NotFittedError
from cytostore.heads.abmil import ABMILHead
from cytostore.heads.linear import LinearProbe
from cytostore.heads.mlp import MLPHead


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(2, 1, (40, 6))])
    X[:, 0] *= 30  # a wide feature: the probe folds its scaling into coef_
    return X.astype(np.float32), np.array(["a"] * 40 + ["b"] * 40)


@pytest.mark.parametrize(
    "head", [LinearProbe(seed=0), MLPHead(max_epochs=5, seed=0)], ids=["lin", "mlp"]
)
def test_logits_module__softmax_is_predict_proba(head: object) -> None:
    X, y = _data()
    head.fit(X, y)  # type: ignore[attr-defined]
    module = head.logits_module()  # type: ignore[attr-defined]
    x = torch.from_numpy(X).requires_grad_()
    logits = module(x)
    logits[:, 1].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    proba = torch.softmax(logits.double(), 1).detach().numpy()
    np.testing.assert_allclose(proba, head.predict_proba(X), atol=1e-5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("prior_correction", [False, True])
def test_logits_module__abmil_with_and_without_prior(prior_correction: bool) -> None:
    rng = np.random.default_rng(0)
    bags = [rng.normal(0, 1, (12, 8)).astype(np.float32) for _ in range(18)]
    for b in bags[12:]:
        b[:3] += 3.0
    y = [0] * 12 + [1] * 6
    head = ABMILHead(
        max_epochs=12,
        seed=0,
        prior_correction=prior_correction,
        class_weight=None if prior_correction else "balanced",
    ).fit(bags, y)
    module = head.logits_module()
    x = torch.from_numpy(np.stack(bags[:4]))
    logits, att = module(x, torch.ones(x.shape[:2], dtype=torch.bool))
    proba = torch.softmax(logits.double(), 1).detach().numpy()
    np.testing.assert_allclose(proba, head.predict_proba(bags[:4]), atol=1e-5)
    np.testing.assert_allclose(
        att.detach().numpy(), np.stack(head.attention(bags[:4])), atol=1e-5
    )
    # a copy: changing it leaves the head alone
    for p in module.parameters():
        p.data.zero_()
    np.testing.assert_allclose(proba, head.predict_proba(bags[:4]), atol=1e-5)


def test_logits_module__before_fit_raises() -> None:
    for head in (LinearProbe(), MLPHead(), ABMILHead()):
        with pytest.raises(NotFittedError):
            head.logits_module()
