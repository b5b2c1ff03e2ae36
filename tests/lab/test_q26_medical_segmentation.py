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
    assert {"skips_minus_no_skips", "dice_ce_minus_ce_at_smallest", "augmented_minus_plain",
            "pretrained_minus_plain", "patch_whole_agreement", "patch_memory_ratio",
            "cv_reports_interval_and_spread"} == checked


def test_means_are_over_the_seeds_and_the_differences_follow_from_them(numbers):
    f = finding_for(26)
    assert len(f.seeds) >= 3
    for key in ("skips_dice", "no_skips_dice", "one_image_plain_dice", "one_image_augmented_dice",
                "cross_entropy_dice_at_1pct", "dice_ce_minus_ce_at_smallest"):
        assert len(f.per_seed[key]) == len(f.seeds)
        assert numbers[key] == pytest.approx(np.mean(f.per_seed[key]), abs=1e-3)
    # paired within each seed: every difference is the difference of that seed's scores
    ps = f.per_seed
    for i in range(len(f.seeds)):
        assert ps["skips_minus_no_skips"][i] == pytest.approx(ps["skips_dice"][i] - ps["no_skips_dice"][i], abs=1e-3)
        assert ps["dice_ce_minus_ce_at_smallest"][i] == pytest.approx(
            ps["dice_ce_dice_at_1pct"][i] - ps["cross_entropy_dice_at_1pct"][i], abs=1e-3)
        assert ps["augmented_minus_plain"][i] == pytest.approx(
            ps["one_image_augmented_dice"][i] - ps["one_image_plain_dice"][i], abs=1e-3)
    # the skips' effect is large on every seed; the patch agreement is near exact on every seed
    assert min(ps["skips_minus_no_skips"]) > 0
    assert min(ps.get("patch_whole_agreement", [numbers["patch_whole_agreement"]])) >= 0.99


def test_dice_ce_does_not_beat_cross_entropy_at_1pct_and_the_rest_holds_or_leans_its_way():
    f = finding_for(26)
    outcomes = {c.number: r for c, r in zip(f.checks, f.check_results())}
    # Dice+CE minus cross-entropy at 1% foreground: below 0 on each of seeds 0-5 in trials (-0.030 to -0.006), so the
    # whole interval sits under the 0.02 bound and the check fails; the guide's loss advice is not borne out
    assert outcomes["dice_ce_minus_ce_at_smallest"]["outcome"] == "fails"
    assert outcomes["dice_ce_minus_ce_at_smallest"]["high"] < 0.01
    # no other check fails: the one-image gains are positive on average (inconclusive at most)
    assert all(r["outcome"] != "fails" for name, r in outcomes.items() if name != "dice_ce_minus_ce_at_smallest")
    for name in ("skips_minus_no_skips", "patch_whole_agreement", "patch_memory_ratio", "cv_reports_interval_and_spread"):
        assert outcomes[name]["outcome"] == "holds", name
    assert f.verdict == "partly supported", f.rule

def test_cross_validation_reports_four_folds_their_range_and_an_interval_around_the_mean(numbers):
    folds = numbers["cv_fold_dice"]
    assert len(folds) == 4 and len(numbers["cv_otsu_fold_dice"]) == 4
    # folds: element-wise means over seeds; the mean of the seeds' ranges is at least the range of the means
    assert numbers["cv_fold_range"] >= max(folds) - min(folds) - 1e-3
    assert numbers["cv_interval_low"] < numbers["cv_dice_mean"] < numbers["cv_interval_high"]  # means over seeds
    assert numbers["cv_dice_mean"] == pytest.approx(np.mean(folds), abs=1e-3)
    assert numbers["cv_interval_width"] > 0 and numbers["cv_reports_interval_and_spread"] == 1  # on every seed


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
