"""Segmentation metrics against MONAI (the reference, test-only) and a hand-computed
instance example."""

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from monai.networks.utils import one_hot
from scipy import ndimage

from dlforge.errors import ConfigError, DataError
from dlforge.evaluate import (
    average_precision,
    dice_per_class,
    dsb_score,
    hd95_per_class,
    iou_per_class,
    segmentation_scores,
)


def _blobs(rng, shape, num_classes):
    """(B, *spatial) class maps made of smooth blobs, so boundaries look like organs'."""
    noise = ndimage.gaussian_filter(rng.standard_normal((num_classes, *shape)),
                                    sigma=[0, 0, *[3] * (len(shape) - 1)])
    return torch.from_numpy(noise.argmax(0)).long()  # (B, *spatial)


def _masks(shape, num_classes, seed):
    """Random truth and prediction with the empty cases: class C-1 missing from image 0 in
    both, missing from image 1's prediction only, and missing from the last truth only."""
    rng = np.random.default_rng(seed)
    truth, pred = _blobs(rng, shape, num_classes), _blobs(rng, shape, num_classes)
    # Overlap the prediction with the truth over most of the image, as a trained model would.
    pred = torch.where(torch.from_numpy(rng.random(shape) < 0.6), truth, pred)
    last = num_classes - 1
    truth[0][truth[0] == last] = 0
    pred[0][pred[0] == last] = 0
    pred[1][pred[1] == last] = 0
    truth[-1][truth[-1] == last] = 0
    return pred, truth


def _monai(metric, pred, truth, num_classes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty class
        return metric(one_hot(pred[:, None], num_classes), one_hot(truth[:, None], num_classes))


@pytest.mark.parametrize("shape", [(3, 40, 48), (3, 14, 18, 20)], ids=["2d", "3d"])
def test_dice_and_iou_match_monai_ignore_empty_false(shape):
    pred, truth = _masks(shape, num_classes=4, seed=0)
    ours_dice, ours_iou = dice_per_class(pred, truth, 4), iou_per_class(pred, truth, 4)
    dice = _monai(DiceMetric(include_background=True, reduction="none", ignore_empty=False),
                  pred, truth, 4)
    iou = _monai(MeanIoU(include_background=True, reduction="none", ignore_empty=False),
                 pred, truth, 4)
    torch.testing.assert_close(ours_dice.float(), dice.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_iou.float(), iou.float(), atol=1e-5, rtol=1e-5)
    # The empty cases are really exercised: both empty -> 1, false positive -> 0.
    assert ours_dice[0, 3] == 1.0 and ours_dice[-1, 3] == 0.0


def _monai_hd95(pred, truth, num_classes, spacing=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty class
        metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        return metric(one_hot(pred[:, None], num_classes), one_hot(truth[:, None], num_classes),
                      spacing=spacing)


@pytest.mark.parametrize("shape", [(3, 40, 48), (3, 14, 18, 20)], ids=["2d", "3d"])
def test_hd95_matches_monai(shape):
    pred, truth = _masks(shape, num_classes=4, seed=1)
    ours, ref = hd95_per_class(pred, truth, 4), _monai_hd95(pred, truth, 4)
    torch.testing.assert_close(ours[:, :3].float(), ref[:, :3].float(), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ours[:, :3]).all() and (ours[:, :3] > 0).all()
    # Empty cases: both empty is NaN, as in MONAI. One empty is inf by our convention;
    # MONAI 1.6.1 gives NaN there (the quantile of all-inf distances is NaN).
    assert math.isnan(ours[0, 3]) and math.isnan(ref[0, 3])
    assert math.isinf(ours[1, 3]) and math.isinf(ours[-1, 3])
    assert math.isnan(ref[1, 3]) and math.isnan(ref[-1, 3])


def test_hd95_with_spacing_matches_monai():
    pred, truth = _masks((3, 10, 16, 16), num_classes=3, seed=2)
    spacing = (2.5, 0.8, 0.8)
    ours, ref = hd95_per_class(pred, truth, 3, spacing=spacing), _monai_hd95(pred, truth, 3, spacing)
    torch.testing.assert_close(ours[:, :2].float(), ref[:, :2].float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[:, :2], hd95_per_class(pred, truth, 3)[:, :2])


def _strips():
    """3 true objects 2x25 px; 3 predictions covering 23, 16 and 8 px of each row:
    IoU 0.92, 0.64 and 0.32."""
    truth = np.zeros((10, 25), dtype=np.int64)
    pred = np.zeros_like(truth)
    for k, width in enumerate([23, 16, 8]):
        truth[3 * k:3 * k + 2, :] = k + 1
        pred[3 * k:3 * k + 2, :width] = k + 1
    return pred, truth


def test_instance_scores_by_hand():
    pred, truth = _strips()
    # IoU > 0.5: 0.92 and 0.64 match -> TP 2, FP 1, FN 1 -> 2 / 4.
    assert average_precision(pred, truth, 0.5) == 0.5
    # Thresholds 0.5, 0.55, 0.6: AP 2/4; 0.65 .. 0.9 (six): only 0.92 matches, AP 1/5;
    # 0.95: nothing matches, AP 0. Mean (3 * 0.5 + 6 * 0.2 + 0) / 10.
    assert dsb_score(pred, truth) == pytest.approx(0.27)
    assert average_precision(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # nothing to find
    assert average_precision(np.eye(4, dtype=int), np.zeros((4, 4))) == 0.0  # 4 false hits


def test_segmentation_scores_labels_components_and_summarises():
    pred, truth = _strips()
    pred, truth = torch.from_numpy(pred > 0)[None].long(), torch.from_numpy(truth > 0)[None].long()
    scores = segmentation_scores(pred, truth, num_classes=2)
    assert scores["ap50"] == 0.5 and scores["dsb"] == pytest.approx(0.27)
    assert scores["dice"] == pytest.approx(2 * 94 / (150 + 94))  # 47 px of 75 per row pair
    assert scores["dice"] == scores["dice_per_class"][1]
    assert len(scores["iou_per_class"]) == 2 and scores["hd95"] > 0


def test_bad_inputs_say_what_to_do():
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(DataError, match="argmax"):
        dice_per_class(torch.zeros(1, 2, 4, 4), truth, 2)
    with pytest.raises(DataError, match="check num_classes"):
        iou_per_class(truth + 3, truth, 2)
    with pytest.raises(DataError, match="batch dimension"):
        hd95_per_class(truth[0, 0], truth[0, 0], 2)
    with pytest.raises(ConfigError, match="0.5"):
        average_precision(truth[0], truth[0], 0.3)
