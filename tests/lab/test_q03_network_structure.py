"""Topic 3: a perceptron cannot fit XOR, one hidden layer can."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.lab import q03_network_structure as q03

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(3)


def test_corners_are_xor():
    x, y = q03.xor_corners().tensors
    assert torch.equal(y, ((x[:, 0] > 0) != (x[:, 1] > 0)).long())


def test_no_line_gets_all_four_corners():
    # The premise of the claim, by brute force: many random lines, none above 3 of 4.
    x, y = q03.xor_corners().tensors
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(20_000, 2, generator=g), torch.randn(20_000, generator=g)
    predictions = (x @ w.T + b > 0).long()  # (4, lines)
    accuracy = (predictions == y[:, None]).float().mean(0)
    assert accuracy.max().item() == 0.75


def test_perceptron_stays_at_a_coin_flip_on_the_corners(finding):
    n = finding.numbers
    assert finding.seeds == list(range(q03.SEEDS["quick"]))
    assert n["perceptron_corners_accuracy"] <= 0.75 and n["perceptron_square_accuracy"] <= 0.75
    assert n["perceptron_corners_beats_one_line"] == n["perceptron_square_beats_one_line"] == 0.0
    # cross-entropy's best line gives every corner probability 1/2: loss log 2 on every seed
    for loss in finding.per_seed.get("perceptron_corners_loss", [n["perceptron_corners_loss"]]):
        assert loss == pytest.approx(math.log(2), abs=1e-3)


def test_one_hidden_layer_fits_xor(finding):
    n = finding.numbers
    assert n["hidden_corners_accuracy"] == 1.0  # on every seed: a mean of 1.0 leaves no other value
    assert "hidden_corners_accuracy" not in finding.intervals
    assert n["hidden_corners_loss"] < 0.01
    square = finding.intervals["hidden_square_accuracy"]
    assert square.low >= 0.95 and square.n == len(finding.seeds)
    assert square.mean == pytest.approx(sum(finding.per_seed["hidden_square_accuracy"]) / len(finding.seeds), abs=1e-4)
    assert finding.verdict == "supported"


def test_train_builds_a_perceptron_for_an_empty_hidden_list():
    model = q03.train([], q03.xor_corners(), steps=1, batch_size=4, seed=0)
    assert len(model.layers) == 0 and model.head.in_features == 2
