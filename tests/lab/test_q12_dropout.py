"""Topic 12 at the quick budget: overfitting with/without dropout, inverted dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlforge.lab import q12_dropout as q12

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(12).numbers


def test_the_big_net_overfits_the_small_set_and_dropout_narrows_the_gap(numbers):
    assert numbers["plain_train_accuracy"] - numbers["plain_test_accuracy"] >= 0.05
    assert numbers["dropout_accuracy_gap"] < numbers["plain_accuracy_gap"]
    for name in ("plain", "dropout"):
        gap = numbers[f"{name}_train_accuracy"] - numbers[f"{name}_test_accuracy"]
        assert numbers[f"{name}_accuracy_gap"] == pytest.approx(gap, abs=3e-4)  # roundings, then means
    reduction = numbers["plain_accuracy_gap"] - numbers["dropout_accuracy_gap"]
    assert numbers["gap_reduction"] == pytest.approx(reduction, abs=3e-4)
    assert finding_for(12).intervals["gap_reduction"].low > 0  # on every seed set, not just on average


def test_the_paired_differences_are_per_seed_and_their_mean_is_the_number():
    f = finding_for(12)
    assert len(f.seeds) >= 3 and len(f.seed_seconds) == len(f.seeds)
    for key in ("gap_reduction", "test_accuracy_gain", "plain_accuracy_gap"):
        if key in f.per_seed:  # a number equal on every seed has no interval
            values = f.per_seed[key]
            assert len(values) == len(f.seeds)
            assert f.numbers[key] == pytest.approx(sum(values) / len(values), abs=1e-4)
            assert f.intervals[key].low <= f.numbers[key] <= f.intervals[key].high
    drop, plain = f.per_seed["dropout_accuracy_gap"], f.per_seed["plain_accuracy_gap"]
    for r, p, d in zip(f.per_seed["gap_reduction"], plain, drop):
        assert r == pytest.approx(p - d, abs=2e-4)


def test_mask_average_matches_eval_output_within_sampling_error(numbers):
    k, p = numbers["masks"], numbers["dropout_p"]
    standard_error = math.sqrt(p / ((1 - p) * k))
    assert numbers["expectation_tolerance"] == pytest.approx(3 * standard_error, rel=1e-3)
    assert numbers["expectation_rel_error"] <= numbers["expectation_tolerance"]
    # a mask average should not be suspiciously exact either: its error is ~1 standard error
    assert numbers["expectation_rel_error"] > 0.1 * standard_error


def test_pytorch_scales_at_training_time_not_at_inference(numbers):
    assert numbers["kept_scale"] == 2.0 and numbers["kept_scale_error"] == 0.0
    assert numbers["eval_identity_error"] == 0.0
    assert numbers["non_inverted_mean_ratio"] == pytest.approx(1 - numbers["dropout_p"], abs=0.02)


def test_expectation_check_against_a_hand_written_inverted_dropout():
    # Reference: the same statistics computed from explicit Bernoulli masks.
    g = torch.Generator().manual_seed(0)
    h = torch.rand(8, 64, generator=g) + 0.5  # (N, F), no zeros
    torch.manual_seed(0)
    result = q12.expectation_check(nn.Dropout(0.25), h, masks=4000)
    masks = torch.rand(4000, 8, 64, generator=g) >= 0.25  # (K, N, F) kept units
    ref_mean = (masks * h / 0.75).double().mean(0)
    ref_error = ((ref_mean - h.double()).norm() / h.double().norm()).item()
    assert result["kept_scale_error"] < 1e-6 and result["eval_identity_error"] == 0.0
    # two independent mask draws: over 512 elements their error norms agree to a few %
    assert result["rel_error"] == pytest.approx(ref_error, rel=0.2)
    assert result["rel_error"] <= result["tolerance"]


def test_whole_network_average_is_close_but_not_identical_to_eval(numbers):
    assert 0 < numbers["network_mc_vs_eval_rel_diff"] < 0.5
    assert numbers["network_mc_vs_eval_agreement"] >= 0.9
