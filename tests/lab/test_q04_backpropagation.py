"""Topic 4: the hand-written backward pass against autograd and finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dlforge.lab import q04_backpropagation as q04
from dlforge.models import build

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(4)


def _net(activation: str, hidden=(7, 5, 4)):
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": list(hidden), "activation": activation},
                  input_shape=(6,), num_outputs=3).double()
    x = torch.randn(11, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (11,))
    return model, x, y


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_hand_gradients_equal_autograd(activation):
    model, x, y = _net(activation)
    loss, hand = q04.hand_forward_backward(q04.mlp_params(model), x, y, activation)
    reference = F.cross_entropy(model(x), y)
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-14)
    assert list(hand) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert_close(hand[name], p.grad, rtol=1e-12, atol=1e-14)


def test_finite_differences_approximate_autograd():
    model, x, y = _net("tanh", hidden=(3,))
    estimate = q04.finite_differences(q04.mlp_params(model), x, y, "tanh")
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert_close(estimate[name], p.grad, rtol=1e-6, atol=1e-8)


def test_finding_measures_float64_agreement(finding):
    n = finding.numbers
    assert n["n_weights"] == 13 * 16 + 16 + 16 * 16 + 16 + 16 * 3 + 3  # wine: 13 features, 3 classes
    assert n["loss_difference"] < 1e-14
    assert n["max_rel_error_vs_autograd"] < 1e-12
    assert 0 < n["max_rel_error_vs_finite_differences"] < 1e-6  # FD is never exact
    assert n["loss_curve_max_rel_gap"] < 1e-10
    assert n["loss_last_hand"] == n["loss_last_autograd"] < 0.5 * n["loss_first"]


def test_relative_errors_are_scale_free():
    a = {"w": torch.tensor([1.0, 2.0, 4.0])}
    b = {"w": torch.tensor([1.0, 2.0, 4.4])}
    assert q04.relative_errors(a, b)["w"] == pytest.approx(0.4 / 4.4)
    scaled = {"w": a["w"] * 1e6}, {"w": b["w"] * 1e6}
    assert q04.relative_errors(*scaled)["w"] == pytest.approx(0.4 / 4.4)
