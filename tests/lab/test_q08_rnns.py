"""Topic 8 at the quick budget: a plain RNN on recall-first at growing T."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.lab import q08_rnns as q08
from dlforge.models import build

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(8)


@pytest.fixture(scope="module")
def numbers(finding) -> dict:
    return finding.numbers


def test_accuracy_falls_from_solved_to_near_chance_as_t_grows(numbers):
    lengths = q08.BUDGETS["quick"]["lengths"]
    accs = [numbers[f"accuracy_T{t}"] for t in lengths]
    assert accs[0] >= 0.9
    assert accs[0] >= accs[1] >= accs[2]
    # long T: far below the short T's accuracy on average; whether a seed learns it varies
    assert accs[-1] <= accs[0] - 0.2 and accs[-1] >= numbers["chance_accuracy"] - 0.05


def test_input_gradient_shrinks_with_distance_from_the_loss(finding, numbers):
    norms = numbers["grad_norms_per_step"]  # the element-wise mean over seeds
    T = q08.BUDGETS["quick"]["lengths"][-1]
    assert len(norms) == T and all(math.isfinite(v) and v > 0 for v in norms)
    ratios = finding.per_seed.get("grad_first_last_ratio", [numbers["grad_first_last_ratio"]])
    logs = finding.per_seed.get("grad_log10_first_last_ratio", [numbers["grad_log10_first_last_ratio"]])
    assert len(ratios) == len(logs) == len(finding.seeds)
    assert [math.log10(max(r, q08.RATIO_FLOOR)) for r in ratios] == pytest.approx(logs, abs=2e-3)
    assert numbers["grad_log10_first_last_ratio"] == pytest.approx(sum(logs) / len(logs), abs=2e-3)
    # On every seed whose RNN failed the long T, the answer's step got a starved gradient.
    long_ = finding.per_seed.get(f"accuracy_T{T}", [numbers[f"accuracy_T{T}"]] * len(finding.seeds))
    assert all(r < q08.SHRUNK_BELOW for r, a in zip(ratios, long_) if a < q08.FAILED_BELOW)


def test_the_untrained_rnn_starves_the_answers_step_on_every_seed(finding, numbers):
    logs = finding.per_seed.get("init_grad_log10_first_last_ratio", [numbers["init_grad_log10_first_last_ratio"]])
    assert len(logs) == len(finding.seeds)
    assert all(v < q08.LOG_SHRUNK_BELOW for v in logs)  # what the check reads, seed by seed
    assert numbers["init_grad_norm_first_step"] < numbers["init_grad_norm_last_step"]


def test_untrained_is_the_network_training_starts_from():
    data = q08.prepare(q08.recall_first(50, 6, q08.N_SYMBOLS, seed=3), val=0.2, test=0.0,
                       standardize=False, seed=3)
    a, b = q08._untrained(data, 3), q08._untrained(data, 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert not torch.equal(next(q08._untrained(data, 4).parameters()), next(a.parameters()))


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
