"""Topic 8 at the quick budget: a plain RNN on recall-first at growing T."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.lab import q08_rnns as q08
from dlforge.models import build

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(8).numbers


def test_accuracy_falls_from_solved_to_near_chance_as_t_grows(numbers):
    lengths = q08.BUDGETS["quick"]["lengths"]
    accs = [numbers[f"accuracy_T{t}"] for t in lengths]
    assert accs[0] >= 0.9
    assert accs[0] >= accs[1] >= accs[2]
    assert abs(accs[-1] - numbers["chance_accuracy"]) < 0.15  # long T: about chance (0.25)


def test_input_gradient_shrinks_with_distance_from_the_loss(numbers):
    norms = numbers["grad_norms_per_step"]
    T = q08.BUDGETS["quick"]["lengths"][-1]
    assert len(norms) == T and all(math.isfinite(v) and v > 0 for v in norms)
    assert numbers["grad_first_last_ratio"] == pytest.approx(norms[0] / norms[T - 2], rel=1e-3)
    # Over the distractor steps the norm mostly rises towards the end of the sequence.
    steps = norms[: T - 1]
    assert sum(a < b for a, b in zip(steps, steps[1:])) >= 0.75 * (len(steps) - 1)
    assert norms[0] < 0.01 * max(norms)


def test_input_grad_norms_equal_per_sample_autograd():
    torch.manual_seed(0)
    model = build({"arch": "rnn", "kind": "rnn", "hidden_size": 6}, input_shape=(7, 3),
                  num_outputs=2)
    x, y = torch.randn(4, 7, 3), torch.tensor([0, 1, 1, 0])
    measured = torch.tensor(q08.input_grad_norms(model, x, y))
    # Reference: one sample at a time, each with its own loss.
    per_sample = []
    for b in range(4):
        xb = x[b:b + 1].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xb), y[b:b + 1]).backward()
        per_sample.append(xb.grad[0].norm(dim=1))  # (T,)
    torch.testing.assert_close(measured, torch.stack(per_sample).mean(dim=0))
