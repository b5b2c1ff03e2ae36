"""Topic 15 at the quick budget, and the full-training-loss probe it relies on."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils.data import TensorDataset

from dlforge.lab import q15_optimizers as q15
from dlforge.train import evaluate_loss, fit

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(15).numbers


def test_probe_matches_full_batch_losses_that_fit_logs():
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    start = evaluate_loss(model, TensorDataset(x, y), torch.nn.CrossEntropyLoss())["loss"]
    probe = q15.TrainLossProbe(x, y, max_steps=6)
    result = fit(model, TensorDataset(x, y), epochs=50, optim={"name": "gd", "lr": 0.5}, device="cpu",
                 callbacks=[probe], log_every_n_steps=1)
    assert result.steps == 6  # the probe stopped training at max_steps
    logged = [r["loss"] for r in result.history if r["type"] == "step"]
    # gd's step-k loss is the full-batch loss before step k: the probe's value after step k-1
    torch.testing.assert_close(torch.tensor(probe.losses[:-1]), torch.tensor(logged), rtol=1e-5, atol=1e-6)
    assert probe.losses[0] == pytest.approx(start, rel=1e-5)
    assert len(probe.elapsed) == 7 and all(b >= a for a, b in zip(probe.elapsed, probe.elapsed[1:]))


def test_steps_and_epochs_to_target_agree_with_batch_counts(numbers):
    steps_per_epoch = -(-503 // q15.BATCH_SIZE)  # 503 training images in batches of 32
    assert numbers["gd_epochs_to_target"] == numbers["gd_steps_to_target"]  # one step per pass
    for name in ("sgd", "momentum", "adam"):
        expected = numbers[f"{name}_steps_to_target"] / steps_per_epoch
        assert numbers[f"{name}_epochs_to_target"] == pytest.approx(expected, rel=1e-4)


def _per_seed(key: str) -> list:
    f = finding_for(15)
    return f.per_seed.get(key, [f.numbers[key]] * len(f.seeds))


def test_best_rate_reaches_the_target_and_counts_fit_the_grid(numbers):
    lrs = numbers["learning_rates"]
    for name in q15.OPTIMIZERS:
        assert len(numbers[f"{name}_final_loss_per_lr"]) == len(lrs)
        assert all(lr in lrs for lr in _per_seed(f"{name}_best_lr"))
        assert all(0 <= r <= len(lrs) for r in _per_seed(f"{name}_lrs_reaching_target"))
        for reached, steps in zip(_per_seed(f"{name}_reached_target"), _per_seed(f"{name}_steps_to_target")):
            # never reached counts as one step more than the budget
            assert steps <= numbers["max_steps"] if reached else steps == numbers["max_steps"] + 1
    assert 0.0 <= numbers["gd_uphill_fraction"] <= 1.0 and 0.0 <= numbers["sgd_uphill_fraction"] <= 1.0


def test_paired_differences_are_the_per_seed_differences(numbers):
    f = finding_for(15)
    assert len(f.seeds) == q15.SEEDS["quick"]
    pairs = {"momentum_steps_saved": ("sgd_steps_to_target", "momentum_steps_to_target"),
             "adam_minus_sgd_lrs_reaching_target": ("adam_lrs_reaching_target", "sgd_lrs_reaching_target"),
             "gd_minus_sgd_epochs_to_target": ("gd_epochs_to_target", "sgd_epochs_to_target")}
    for diff, (a, b) in pairs.items():
        for d, x, y in zip(_per_seed(diff), _per_seed(a), _per_seed(b)):
            assert d == pytest.approx(x - y, abs=1e-3)
        assert numbers[diff] == pytest.approx(numbers[a] - numbers[b], abs=1e-3)
    # the claim's numbers, with margins: Adam reaches the target at more grid rates on average,
    # and momentum saves steps on every seed
    assert numbers["adam_minus_sgd_lrs_reaching_target"] >= 0.5
    assert min(_per_seed("momentum_steps_saved")) > 0


def test_docstring_examples():
    result = doctest.testmod(q15, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
