"""Topic 26 at the quick budget: the five challenges are all measured, over the seeds the
method names, and the patch and memory helpers measure what they say."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from dlforge.lab import q26_medical_segmentation as q26
from dlforge.models import build

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(26).numbers


def test_every_challenge_has_a_check():
    f = finding_for(26)
    checked = {c.number for c in f.checks}
    assert {"skips_minus_no_skips", "overlap_minus_ce_at_smallest", "augmented_minus_plain",
            "pretrained_minus_plain", "patch_whole_agreement", "patch_memory_ratio", "cv_interval_width"} == checked


def test_means_are_over_the_seeds_and_the_differences_follow_from_them(numbers):
    seeds = q26.BUDGETS["quick"]["seeds"]
    for key in ("skips_dice_per_seed", "no_skips_dice_per_seed", "one_image_plain_dice_per_seed",
                "one_image_augmented_dice_per_seed", "cross_entropy_dice_per_seed_at_smallest"):
        assert len(numbers[key]) == seeds
    assert numbers["skips_dice"] == pytest.approx(np.mean(numbers["skips_dice_per_seed"]), abs=1e-3)
    assert numbers["skips_minus_no_skips"] == pytest.approx(numbers["skips_dice"] - numbers["no_skips_dice"], abs=1e-3)
    best = max(numbers["dice_ce_dice_at_1pct"], numbers["dice_focal_dice_at_1pct"])
    assert numbers["overlap_minus_ce_at_smallest"] == pytest.approx(best - numbers["cross_entropy_dice_at_1pct"],
                                                                    abs=1e-3)


def test_cross_validation_reports_four_folds_their_range_and_an_interval_around_the_mean(numbers):
    folds = numbers["cv_fold_dice"]
    assert len(folds) == 4 and len(numbers["cv_otsu_fold_dice"]) == 4
    assert numbers["cv_fold_range"] == pytest.approx(max(folds) - min(folds), abs=1e-3)
    assert numbers["cv_interval_low"] < numbers["cv_dice_mean"] < numbers["cv_interval_high"]


def test_batch_norm_unet_gives_the_same_labels_by_windows_in_fewer_activation_bytes():
    torch.manual_seed(0)
    model = build({"arch": "unet", "widths": [4, 8], "norm": "batch"}, input_shape=(1, 32, 32), num_outputs=2)
    found = q26._agreement(model.eval(), torch.rand(1, 1, 96, 96), 32)
    assert found["agreement"] > 0.99
    assert found["patch_bytes"] < found["whole_bytes"]


def test_activation_bytes_keeps_the_largest_forward_call():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    big, _ = q26.activation_bytes(net, lambda: [net(torch.zeros(1, 1, 4, 4)), net(torch.zeros(1, 1, 8, 8))])
    assert big == 2 * 8 * 8 * 4


def test_doctests():
    result = doctest.testmod(q26, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
