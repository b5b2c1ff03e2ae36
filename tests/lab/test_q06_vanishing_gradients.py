"""Topic 6 at the quick budget: per-layer gradient norms of a 20-layer MLP."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from dlforge.lab import q06_vanishing_gradients as q06
from dlforge.models import build
from dlforge.train import GradientMonitor, fit, seed_everything

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(6)


@pytest.fixture(scope="module")
def numbers(finding) -> dict:
    return finding.numbers


def test_every_variant_has_one_finite_positive_norm_per_layer(finding, numbers):
    depth = q06.BUDGETS["quick"]["depth"]
    for name in q06.VARIANTS:
        norms = numbers[f"{name}_grad_norms"]  # the element-wise mean over seeds
        assert len(norms) == depth
        assert all(math.isfinite(v) and v > 0 for v in norms)
        # the log ratio is the mean of each seed's log10(first / last): a geometric mean
        ratios = finding.per_seed.get(f"{name}_first_last_ratio", [numbers[f"{name}_first_last_ratio"]])
        logs = [math.log10(r) for r in ratios]
        assert numbers[f"{name}_log10_ratio"] == pytest.approx(sum(logs) / len(logs), abs=2e-3)


def test_sigmoid_gradient_shrinks_by_more_than_ten_derivative_bounds(finding, numbers):
    # sigmoid' <= 1/4: over 19 layers the product of derivatives alone is below 4**-19; a
    # ratio above 4**-10 on any seed would mean the gradient barely shrank.
    for name in ("sigmoid", "sigmoid_xavier"):
        assert finding.intervals[f"{name}_log10_ratio"].high < 10 * math.log10(0.25)
        assert max(finding.per_seed[f"{name}_first_last_ratio"]) < 0.25 ** 10
    norms = numbers["sigmoid_grad_norms"]
    assert sum(a < b for a, b in zip(norms, norms[1:])) >= len(norms) - 3  # shrinks towards input


def test_relu_he_and_batch_norm_keep_gradients_within_a_decade(finding):
    for name in ("relu_he", "sigmoid_bn", "tanh_xavier"):
        ratios = finding.per_seed.get(f"{name}_first_last_ratio")
        assert ratios is not None and len(ratios) == len(finding.seeds)
        assert all(0.1 <= r <= 10 for r in ratios)


def test_a_net_whose_early_layers_get_no_gradient_stays_at_chance(finding, numbers):
    assert numbers["sigmoid_val_accuracy"] <= 0.2  # 10 classes
    assert numbers["sigmoid_bn_val_accuracy"] >= 0.5
    gain = finding.intervals["sigmoid_bn_accuracy_gain"]
    assert gain.low > 0 and gain.mean >= 0.3 and gain.n == len(finding.seeds)
    assert finding.verdict == "supported"


def test_monitor_norms_equal_autograd_norms_on_the_first_step():
    # One full-batch step: GradientMonitor's step-0 norms must be the norms of the gradient
    # autograd gives for the same weights and the same (whole) batch.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 5, generator=g), torch.randint(0, 3, (48,), generator=g)
    spec = {"arch": "mlp", "hidden": [8, 8, 8], "activation": "sigmoid"}
    seed_everything(0)
    model = build(spec, input_shape=(5,), num_outputs=3)
    reference = build(spec, input_shape=(5,), num_outputs=3)
    reference.load_state_dict(model.state_dict())
    result = fit(model, TensorDataset(x, y), epochs=1, batch_size=48, optim="sgd", device="cpu",
                 callbacks=[GradientMonitor()], log_every_n_steps=1)
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    expected = torch.stack([reference.layers[i][0].weight.grad.norm() for i in range(3)])
    measured = torch.tensor(q06.layer_grad_norms(result.history, depth=3, steps=1))
    torch.testing.assert_close(measured, expected, rtol=1e-5, atol=0)
