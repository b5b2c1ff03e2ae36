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


def test_best_rate_reaches_the_target_and_counts_fit_the_grid(numbers):
    lrs = numbers["learning_rates"]
    for name in q15.OPTIMIZERS:
        finals = numbers[f"{name}_final_loss_per_lr"]
        assert len(finals) == len(lrs) and numbers[f"{name}_best_lr"] in lrs
        reached = numbers[f"{name}_lrs_reaching_target"]
        assert 0 <= reached <= len(lrs)
        # a rate whose final loss is under the target reached it at some step
        assert reached >= sum(f is not None and f <= numbers["target_loss"] for f in finals)
        if numbers[f"{name}_reached_target"]:
            assert numbers[f"{name}_steps_to_target"] <= numbers["max_steps"]
    assert 0.0 <= numbers["gd_uphill_fraction"] <= 1.0 and 0.0 <= numbers["sgd_uphill_fraction"] <= 1.0


def test_docstring_examples():
    result = doctest.testmod(q15, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
