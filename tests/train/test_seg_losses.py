"""Segmentation losses against MONAI 1.6 (a test-only reference) to 1e-6, the empty-mask
convention, finite gradients on empty masks, and build_loss / config by name and mapping."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

from dlforge.config import TrainConfig
from dlforge.errors import ConfigError, DataError
from dlforge.train import seg_losses
from dlforge.train.losses import CrossEntropy, FocalLoss, build_loss, cross_entropy
from dlforge.train.seg_losses import (
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    TverskyLoss,
    pixel_weighted_cross_entropy,
)

monai_losses = pytest.importorskip("monai.losses")

TOL = 1e-6
SPATIAL = {"2d": (9, 7), "3d": (5, 6, 4)}
WEIGHT = torch.tensor([0.2, 1.0, 3.0])
MASKS = ("random", "class_2_missing", "all_background")


def _case(dims: str, mask: str, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, C, *S) and a class-index mask (B, *S) with a chosen kind of emptiness."""
    g = torch.Generator().manual_seed(seed)
    shape = SPATIAL[dims]
    out = 2 * torch.randn(2, channels, *shape, generator=g)  # (B, C, *S)
    target = torch.randint(0, max(channels, 2), (2, *shape), generator=g)  # (B, *S)
    if mask == "class_2_missing":
        target[target == 2] = 1
        target[0] = 0  # image 0 has no foreground at all
    elif mask == "all_background":
        target.zero_()
    return out, target


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- MONAI parity

@pytest.mark.parametrize("dims", SPATIAL)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_and_tversky_equal_monai(dims, mask, include_background, batch) -> None:
    out, target = _case(dims, mask)
    kw = {"include_background": include_background, "batch": batch, "softmax": True, "to_onehot_y": True}
    _close(DiceLoss(include_background, batch)(out, target), monai_losses.DiceLoss(**kw)(out, target[:, None]))
    ref_w = WEIGHT if include_background else WEIGHT[1:]
    _close(DiceLoss(include_background, batch, WEIGHT)(out, target),
           monai_losses.DiceLoss(weight=ref_w, **kw)(out, target[:, None]))
    _close(TverskyLoss(0.3, 0.7, include_background, batch)(out, target),
           monai_losses.TverskyLoss(alpha=0.3, beta=0.7, **kw)(out, target[:, None]))


@pytest.mark.parametrize("dims", SPATIAL)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_ce_and_dice_focal_equal_monai(dims, mask, include_background, batch) -> None:
    out, target = _case(dims, mask, seed=1)
    kw = {"include_background": include_background, "batch": batch, "softmax": True, "to_onehot_y": True}
    ours = DiceCELoss(include_background, batch, WEIGHT, lambda_dice=0.7, lambda_ce=1.3)(out, target)
    ref = monai_losses.DiceCELoss(weight=WEIGHT, lambda_dice=0.7, lambda_ce=1.3, **kw)(out, target[:, None])
    _close(ours, ref)
    # MONAI's DiceFocalLoss takes weight and alpha for the scored channels only; ours for all classes
    keep = 0 if include_background else 1
    for alpha in (None, 0.25, [0.5, 0.8, 0.9]):
        ref_alpha = alpha[keep:] if isinstance(alpha, list) else alpha
        ours = DiceFocalLoss(include_background, batch, WEIGHT, gamma=1.5, alpha=alpha, lambda_focal=2.0)
        ref = monai_losses.DiceFocalLoss(weight=WEIGHT[keep:], gamma=1.5, alpha=ref_alpha, lambda_focal=2.0, **kw)
        _close(ours(out, target), ref(out, target[:, None]))


@pytest.mark.parametrize("dims", SPATIAL)
@pytest.mark.parametrize("mask", ["random", "all_background"])
@pytest.mark.parametrize("batch", [False, True])
def test_one_channel_losses_use_sigmoid_like_monai(dims, mask, batch) -> None:
    out, target = _case(dims, mask, channels=1, seed=2)  # target in {0, 1}
    t = target[:, None].float()  # (B, 1, *S), MONAI's binary target
    kw = {"batch": batch, "sigmoid": True}
    _close(DiceLoss(batch=batch)(out, target), monai_losses.DiceLoss(**kw)(out, t))
    _close(TverskyLoss(0.2, 0.8, batch=batch)(out, target), monai_losses.TverskyLoss(alpha=0.2, beta=0.8, **kw)(out, t))
    _close(DiceCELoss(batch=batch)(out, target), monai_losses.DiceCELoss(**kw)(out, t))
    for gamma, alpha in ((2.0, None), (2.0, 0.25), (0.5, 0.75)):
        _close(DiceFocalLoss(batch=batch, gamma=gamma, alpha=alpha)(out, target),
               monai_losses.DiceFocalLoss(gamma=gamma, alpha=alpha, **kw)(out, t))


# ----------------------------------------------------------------------------- empty masks

def _all_losses() -> list:
    return [DiceLoss(), DiceLoss(include_background=False, batch=True), TverskyLoss(0.3, 0.7),
            DiceCELoss(include_background=False), DiceFocalLoss(include_background=False, alpha=0.25)]


@pytest.mark.parametrize("channels", [1, 3])
def test_empty_prediction_on_empty_mask_scores_dice_one(channels) -> None:
    out = torch.full((2, channels, 6, 6), -40.0)  # (B, C, H, W): foreground probability ~ 0
    out[:, 0] = 40.0 if channels > 1 else -40.0  # all background, confidently
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    assert DiceLoss(include_background=False)(out, target).item() == pytest.approx(0.0, abs=1e-6)
    assert TverskyLoss(include_background=False)(out, target).item() == pytest.approx(0.0, abs=1e-6)
    # any predicted foreground mass on the empty mask scores a loss near 1
    assert DiceLoss(include_background=False)(torch.zeros_like(out), target).item() > 0.99


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dims", SPATIAL)
def test_gradients_are_finite_on_empty_masks(channels, dims) -> None:
    for loss in _all_losses():
        for scale in (1.0, 60.0):  # ordinary and saturated logits
            out, target = _case(dims, "all_background", channels=channels)
            out = (out * scale).requires_grad_()
            loss(out, target).backward()
            assert torch.isfinite(out.grad).all(), f"{type(loss).__name__} at scale {scale}"
            assert out.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- pixel-weighted CE

def test_pixel_weighted_ce_equals_torch_and_the_weighted_mean() -> None:
    out, target = _case("2d", "random", seed=3)
    _close(pixel_weighted_cross_entropy(out, target, class_weight=WEIGHT), F.cross_entropy(out, target, weight=WEIGHT))
    w = torch.rand(target.shape, generator=torch.Generator().manual_seed(4))  # (B, H, W)
    ce = F.cross_entropy(out, target, reduction="none")  # (B, H, W)
    _close(pixel_weighted_cross_entropy(out, target, w), (w * ce).sum() / w.sum())
    both = w * WEIGHT[target]
    _close(pixel_weighted_cross_entropy(out, target, w, WEIGHT), (both * ce).sum() / both.sum())


@pytest.mark.parametrize("dims", SPATIAL)
def test_classification_losses_take_segmentation_logits(dims) -> None:
    out, target = _case(dims, "random", seed=5)
    _close(cross_entropy(out, target), F.cross_entropy(out, target))
    _close(CrossEntropy(weight=WEIGHT)(out, target), F.cross_entropy(out, target, weight=WEIGHT))
    _close(FocalLoss(gamma=0.0)(out, target), F.cross_entropy(out, target))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("target", "match"), [
    (torch.zeros(2, 9, 8, dtype=torch.long), "do not fit"),
    (torch.zeros(2, 9, 7), "not class indices"),
    (torch.full((2, 9, 7), 3), "classes must be in"),
])
def test_bad_masks_are_clear_errors(target, match) -> None:
    out = torch.zeros(2, 3, 9, 7)
    with pytest.raises(DataError, match=match):
        DiceLoss()(out, target)


def test_class_weights_must_match_the_channels() -> None:
    with pytest.raises(ConfigError, match="2 class weights"):
        DiceLoss(weight=[1.0, 2.0])(*_case("2d", "random"))
    with pytest.raises(ConfigError, match="at least 2 output channels"):
        DiceCELoss(weight=[1.0, 2.0])(*_case("2d", "random", channels=1))


# ----------------------------------------------------------------------------- build_loss and config

def test_build_loss_by_name_and_by_mapping() -> None:
    assert isinstance(build_loss("dice"), DiceLoss)
    assert isinstance(build_loss("dice_focal"), DiceFocalLoss)
    loss = build_loss({"name": "dice_ce", "include_background": False, "batch": True, "class_weights": "inverse",
                       "lambda_ce": 0.5}, train_counts=[80, 15, 5])
    assert isinstance(loss, DiceCELoss) and loss.lambda_ce == 0.5 and loss.dice.batch
    torch.testing.assert_close(loss.dice.weight, torch.tensor([100 / 240, 100 / 45, 100 / 15]))
    tversky = build_loss({"name": "tversky", "tversky_alpha": 0.3, "tversky_beta": 0.7})
    assert (tversky.alpha, tversky.beta) == (0.3, 0.7)
    focal = build_loss({"name": "dice_focal", "gamma": 1.0, "alpha": 0.25, "lambda_focal": 3.0})
    assert (focal.gamma, focal.scalar_alpha, focal.lambda_focal) == (1.0, 0.25, 3.0)
    out, target = _case("3d", "random")
    assert torch.isfinite(loss(out, target)) and torch.isfinite(tversky(out, target))


def test_train_config_accepts_segmentation_losses() -> None:
    assert TrainConfig(loss="dice_ce").loss == "dice_ce"
    cfg = TrainConfig(loss={"name": "tversky", "tversky_beta": 0.8})
    assert isinstance(build_loss(cfg.loss), TverskyLoss) and cfg.loss.tversky_beta == 0.8


@pytest.mark.parametrize(("loss", "match"), [
    ({"name": "dice", "tversky_alpha": 0.3}, "belongs to tversky"),
    ({"name": "cross_entropy", "include_background": False}, "belongs to dice"),
    ({"name": "dice_ce", "lambda_focal": 2.0}, "belongs to dice_focal"),
    ({"name": "dice", "gamma": 2.0}, "belong to the focal loss"),
    ({"name": "dice_ce", "label_smoothing": 0.1}, "does not apply"),
    ({"name": "tversky", "tversky_alpha": -1}, "not a valid loss"),
    ({"name": "tversky", "class_weights": "inverse"}, "does not apply to tversky"),
    ({"name": "dice_focal", "alpha": [0.5, 0.5]}, "2 entries for 3 classes"),
])
def test_build_loss_rejects_options_of_other_losses(loss, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loss(loss, train_counts=[80, 15, 5])


def test_docstring_examples_run() -> None:
    result = doctest.testmod(seg_losses)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("make", [
    lambda: DiceLoss(), lambda: DiceLoss(include_background=False), lambda: TverskyLoss(0.3, 0.7),
    lambda: DiceCELoss(weight=[1.0, 2.0, 0.5]), lambda: DiceFocalLoss(gamma=2.0, alpha=0.25),
    lambda: DiceFocalLoss(include_background=False),
])
def test_ignored_pixels_carry_no_loss(make):
    """A mask with IGNORE_INDEX pixels scores exactly as the same image cut down to its
    labelled pixels (one image, so Dice's per-image counts see the same pixels)."""
    from dlforge.targets import IGNORE_INDEX

    g = torch.Generator().manual_seed(0)
    out = torch.randn(1, 3, 6, 7, generator=g)
    target = torch.randint(0, 3, (1, 6, 7), generator=g)
    ignored = torch.rand(1, 6, 7, generator=g) < 0.4
    masked = target.masked_fill(ignored, IGNORE_INDEX)
    keep = ~ignored[0]
    cut_out, cut_target = out[0][:, keep][None], target[0][keep][None]  # (1, 3, N), (1, N)
    loss = make()
    torch.testing.assert_close(loss(out, masked), loss(cut_out, cut_target))


def test_ignored_pixels_in_binary_and_pixel_weighted_losses():
    from dlforge.targets import IGNORE_INDEX

    g = torch.Generator().manual_seed(1)
    out = torch.randn(1, 1, 5, 5, generator=g)
    target = torch.randint(0, 2, (1, 5, 5), generator=g)
    target[0, 0] = IGNORE_INDEX
    keep = target[0] != IGNORE_INDEX
    torch.testing.assert_close(DiceCELoss()(out, target), DiceCELoss()(out[0][:, keep][None], target[0][keep][None]))
    out2 = torch.randn(1, 2, 5, 5, generator=g)
    torch.testing.assert_close(pixel_weighted_cross_entropy(out2, target, class_weight=torch.tensor([1.0, 3.0])),
                               pixel_weighted_cross_entropy(out2[0][:, keep][None], target[0][keep][None],
                                                            class_weight=torch.tensor([1.0, 3.0])))
