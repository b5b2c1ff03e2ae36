"""Segmentation losses: soft Dice, Tversky, Dice + cross-entropy, Dice + focal, pixel-weighted CE.

Outputs are logits (B, C, H, W) or (B, C, D, H, W); targets are class indices (B, H, W) or
(B, D, H, W). With C >= 2 channels the logits are softmax-ed; one channel is the foreground
logit of a binary task, sigmoid-ed, with targets 0/1. :func:`dlforge.train.build_loss` makes
these from ``train.loss: dice`` (``dice_ce``, ``dice_focal``, ``tversky``). Formulas and
defaults are MONAI 1.6's, and the tests hold them to MONAI's losses to 1e-6.

Empty masks (the one convention): every overlap ratio adds ``SMOOTH`` = 1e-5 to its numerator
and to its denominator (MONAI's ``smooth_nr`` / ``smooth_dr``). An empty prediction on an empty
mask therefore scores Dice 1 (loss 0); a predicted mass S on an empty mask scores
1e-5 / (S + 1e-5), a loss near 1 that pushes that class's probability down. With
``batch=False`` (the default) each image's classes are scored on their own, so an image
without foreground counts fully; ``batch=True`` pools the batch before dividing, so only a
class missing from the whole batch meets the convention.

Pixels marked ``IGNORE_INDEX`` (unlabelled pixels of a pseudo-labelled image) carry no loss in
any of them: they drop out of the Dice counts, the cross-entropy and the focal mean. Masks
without such pixels are scored exactly as MONAI scores them.

Example:
    >>> import torch
    >>> loss = DiceLoss(include_background=False)
    >>> logits = torch.stack([torch.full((1, 2, 2), 30.0), torch.zeros(1, 2, 2)], dim=1)  # all class 0
    >>> round(loss(logits, torch.zeros(1, 2, 2, dtype=torch.long)).item(), 3)  # empty on empty
    0.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX

SMOOTH = 1e-5  # MONAI's smooth_nr and smooth_dr: the empty-mask convention above


def _as_weight(weight: torch.Tensor | Sequence[float] | None) -> torch.Tensor | None:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


def probs_and_onehot(out: torch.Tensor, target: torch.Tensor,
                     include_background: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and one-hot targets, both (B, C', *spatial) float.

    Softmax for C >= 2 channels (C' = C, or C - 1 without the background class 0);
    sigmoid for one channel (C' = 1, targets must be 0/1; ``include_background`` is moot).

    Example:
        >>> import torch
        >>> p, t = probs_and_onehot(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 2]]]), False)
        >>> p.shape, t[0, 1].tolist()
        (torch.Size([1, 2, 2, 2]), [[0.0, 0.0], [1.0, 1.0]])
    """
    t = _one_hot(out, target)  # (B, C, *S)
    p = torch.sigmoid(out.float()) if out.shape[1] == 1 else torch.softmax(out.float(), dim=1)  # (B, C, *S)
    ignored = target == IGNORE_INDEX
    if bool(ignored.any()):  # an ignored pixel adds to no TP, FP or FN
        p = p * (~ignored)[:, None]
    if out.shape[1] == 1:
        return p, t
    return (p, t) if include_background else (p[:, 1:], t[:, 1:])


def _one_hot(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The checked mask as float one-hot (B, C, *S); for one channel, the 0/1 mask (B, 1, *S).
    ``IGNORE_INDEX`` pixels are all zeros."""
    check_seg_target(out, target)
    ignored = target == IGNORE_INDEX
    clean = target.masked_fill(ignored, 0)
    if out.shape[1] == 1:
        t = clean[:, None].float()
    else:
        t = F.one_hot(clean, out.shape[1]).movedim(-1, 1).float()  # (B, *S, C) -> (B, C, *S)
    return t * (~ignored)[:, None] if bool(ignored.any()) else t


def _valid_mean(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of per-pixel ``values`` (B, C', *S) over the pixels not marked ``IGNORE_INDEX``."""
    ignored = target == IGNORE_INDEX
    if not bool(ignored.any()):
        return values.mean()
    keep = (~ignored)[:, None].expand_as(values)
    return values[keep].mean() if bool(keep.any()) else values.sum() * 0.0


def check_seg_target(out: torch.Tensor, target: torch.Tensor) -> None:
    """Raise :class:`DataError` unless ``target`` is a class-index mask that fits ``out``.

    Example:
        >>> import torch
        >>> check_seg_target(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    """
    expected = (out.shape[0], *out.shape[2:])
    if out.ndim < 3 or tuple(target.shape) != expected:
        raise DataError(f"segmentation logits {tuple(out.shape)} and mask {tuple(target.shape)} do not fit",
                        hint=f"logits are (B, C, H, W[, D]) and the mask is class indices {expected}")
    if torch.is_floating_point(target) or target.dtype == torch.bool:
        raise DataError(f"the segmentation mask has dtype {target.dtype}, not class indices",
                        hint="give the mask as int64 class indices, e.g. mask.long()")
    n_classes = max(out.shape[1], 2)
    labelled = target[target != IGNORE_INDEX]
    if labelled.numel() and (labelled.min() < 0 or labelled.max() >= n_classes):
        raise DataError(f"mask values span [{int(labelled.min())}, {int(labelled.max())}] but the model has "
                        f"{out.shape[1]} output channel(s), so classes must be in [0, {n_classes - 1}]",
                        hint="give the model one channel per class (or one channel for 0/1 masks)")


def _overlap(p: torch.Tensor, t: torch.Tensor, batch: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft true positives, false positives, false negatives: (B, C') each, or (C',) if ``batch``."""
    dims = ([0] if batch else []) + list(range(2, p.ndim))
    tp = (p * t).sum(dims)
    return tp, p.sum(dims) - tp, t.sum(dims) - tp


def _class_weight(weight: torch.Tensor | None, out: torch.Tensor, include_background: bool) -> torch.Tensor | None:
    """The per-class weight (C',) matching :func:`probs_and_onehot`'s channels, or None."""
    if weight is None:
        return None
    n_classes = out.shape[1]
    if n_classes == 1 or len(weight) != n_classes:
        raise ConfigError(f"{len(weight)} class weights for a model with {n_classes} output channel(s)",
                          hint="give one weight per class (class 0 included) and at least 2 output channels")
    weight = weight.to(out.device)
    return weight if include_background else weight[1:]


class DiceLoss(nn.Module):
    """Soft Dice loss 1 - (2 TP + s) / (2 TP + FP + FN + s), averaged over images and classes.

    ``include_background=False`` drops class 0 (helps when the foreground is small);
    ``batch=True`` sums TP/FP/FN over the batch before dividing; ``weight`` (C,) weighs
    each class's loss. Empty masks: see the module docstring.

    Example:
        >>> import torch
        >>> loss = DiceLoss()
        >>> round(loss(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [0, 1]]])).item(), 4)
        0.5
    """

    def __init__(self, include_background: bool = True, batch: bool = False,
                 weight: torch.Tensor | Sequence[float] | None = None) -> None:
        super().__init__()
        self.include_background, self.batch = include_background, batch
        self.register_buffer("weight", _as_weight(weight))

    def per_class(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The unreduced loss, (B, C') or (C',) with ``batch``, class weights applied."""
        p, t = probs_and_onehot(out, target, self.include_background)
        tp, fp, fn = _overlap(p, t, self.batch)
        loss = 1 - (2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)
        weight = _class_weight(self.weight, out, self.include_background)
        return loss if weight is None else loss * weight

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_class(out, target).mean()


class TverskyLoss(nn.Module):
    """Tversky loss 1 - (TP + s) / (TP + alpha FP + beta FN + s) (Salehi et al. 2017).

    ``alpha`` weighs false positives, ``beta`` false negatives: beta > alpha trades
    precision for recall on small structures; alpha = beta = 0.5 is Dice up to smoothing.

    Example:
        >>> import torch
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7)
        >>> round(loss(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [0, 1]]])).item(), 4)
        0.5
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, include_background: bool = True,
                 batch: bool = False) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ConfigError(f"Tversky alpha={alpha}, beta={beta}", hint="use alpha, beta >= 0, e.g. 0.3 and 0.7")
        self.alpha, self.beta = alpha, beta
        self.include_background, self.batch = include_background, batch

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = probs_and_onehot(out, target, self.include_background)
        tp, fp, fn = _overlap(p, t, self.batch)
        return (1 - (tp + SMOOTH) / (tp + self.alpha * fp + self.beta * fn + SMOOTH)).mean()


class DiceCELoss(nn.Module):
    """``lambda_dice`` * Dice + ``lambda_ce`` * cross-entropy (nnU-Net's default loss).

    The cross-entropy always covers every class (``include_background`` only affects Dice)
    and uses ``weight`` as PyTorch's class weights; one channel uses binary cross-entropy.

    Example:
        >>> import torch
        >>> loss = DiceCELoss()
        >>> round(loss(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [0, 1]]])).item(), 4)  # 0.5 + ln 2
        1.1931
    """

    def __init__(self, include_background: bool = True, batch: bool = False,
                 weight: torch.Tensor | Sequence[float] | None = None,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background, batch, weight)
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(out, target)
        if out.shape[1] == 1:
            bce = F.binary_cross_entropy_with_logits(out.float(), target[:, None].clamp_min(0).float(), reduction="none")
            ce = _valid_mean(bce, target)
        else:
            weight = None if self.dice.weight is None else self.dice.weight.to(out.device)
            ce = F.cross_entropy(out.float(), target, weight=weight, ignore_index=IGNORE_INDEX)  # (B, C, *S), (B, *S)
        return self.lambda_dice * dice + self.lambda_ce * ce


def sigmoid_focal(out: torch.Tensor, t: torch.Tensor, gamma: float, alpha: float | torch.Tensor | None) -> torch.Tensor:
    """Per-element focal loss of each channel as its own binary task (Lin et al.'s RetinaNet form).

    ``out`` logits and ``t`` one-hot targets, both (B, C', *S); returns (B, C', *S).
    Scalar ``alpha`` weighs positives (1 - alpha the negatives); a per-class ``alpha`` (C',)
    weighs only the positives, as MONAI does.

    Example:
        >>> import torch
        >>> round(sigmoid_focal(torch.zeros(1, 1), torch.ones(1, 1), 2.0, None).item(), 4)  # 0.5^2 ln 2
        0.1733
    """
    bce = out - out * t - F.logsigmoid(out)  # binary cross-entropy with logits, stable
    loss = torch.exp(gamma * F.logsigmoid(-out * (2 * t - 1))) * bce  # (1 - p_t)^gamma, in log space
    if alpha is None:
        return loss
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(out.device).view(-1, *[1] * (out.ndim - 2))  # (C', 1, ...)
        return torch.where(t == 1, alpha, torch.ones_like(alpha)) * loss
    return (t * alpha + (1 - t) * (1 - alpha)) * loss


class DiceFocalLoss(nn.Module):
    """``lambda_dice`` * Dice + ``lambda_focal`` * focal loss, as MONAI's ``DiceFocalLoss``.

    The focal term scores each channel as a binary sigmoid task (:func:`sigmoid_focal`) on
    the one-hot target; ``include_background`` and ``weight`` (C,) apply to both terms, and
    a per-class ``alpha`` is given for all C classes (class 0 is dropped with the background).

    Example:
        >>> import torch
        >>> loss = DiceFocalLoss(gamma=0.0)
        >>> round(loss(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [0, 1]]])).item(), 4)  # 0.5 + ln 2
        1.1931
    """

    def __init__(self, include_background: bool = True, batch: bool = False,
                 weight: torch.Tensor | Sequence[float] | None = None, gamma: float = 2.0,
                 alpha: float | Sequence[float] | None = None, lambda_dice: float = 1.0,
                 lambda_focal: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"train.loss.gamma is {gamma}", hint="use gamma >= 0; 0 is cross-entropy, 2 is usual")
        self.dice = DiceLoss(include_background, batch, weight)
        self.gamma, self.lambda_dice, self.lambda_focal = float(gamma), lambda_dice, lambda_focal
        self.scalar_alpha = float(alpha) if isinstance(alpha, (int, float)) else None
        self.register_buffer("alpha", None if alpha is None or self.scalar_alpha is not None
                             else torch.tensor(list(alpha), dtype=torch.float32))

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(out, target)
        keep = 0 if self.dice.include_background or out.shape[1] == 1 else 1  # first channel scored
        t = _one_hot(out, target)[:, keep:]  # (B, C', *S)
        alpha = self.scalar_alpha
        if self.alpha is not None:
            if len(self.alpha) != out.shape[1]:
                raise ConfigError(f"focal alpha has {len(self.alpha)} entries for {out.shape[1]} classes",
                                  hint="give one alpha per class, class 0 included")
            alpha = self.alpha[keep:]
        focal = sigmoid_focal(out.float()[:, keep:], t, self.gamma, alpha)  # (B, C', *S)
        weight = _class_weight(self.dice.weight, out, keep == 0)
        if weight is not None:
            focal = focal * weight.view(-1, *[1] * (out.ndim - 2))
        return self.lambda_dice * dice + self.lambda_focal * _valid_mean(focal, target)


def pixel_weighted_cross_entropy(out: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None,
                                 class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy weighted per pixel: sum(w * CE) / sum(w), w = pixel_weight * class_weight[target].

    ``pixel_weight`` (B, *S) is a weight map such as U-Net's border weights; ``class_weight``
    (C,) weighs each class. With no pixel weights this is exactly
    ``F.cross_entropy(out, target, weight=class_weight)``.

    Example:
        >>> import torch
        >>> out, target = torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]])
        >>> round(pixel_weighted_cross_entropy(out, target, torch.tensor([[[1.0, 3.0]]])).item(), 4)
        0.6931
    """
    check_seg_target(out, target)
    if out.shape[1] < 2:
        raise DataError("pixel-weighted cross-entropy needs at least 2 output channels",
                        hint="give the model one channel per class, background included")
    ce = F.cross_entropy(out.float(), target, reduction="none", ignore_index=IGNORE_INDEX)  # (B, *S)
    w = torch.ones_like(ce) if pixel_weight is None else pixel_weight.to(ce)
    if w.shape != ce.shape:
        raise DataError(f"pixel weight map {tuple(w.shape)} does not match the mask {tuple(ce.shape)}",
                        hint="give one weight per mask pixel")
    ignored = target == IGNORE_INDEX
    if bool(ignored.any()):
        w = w * ~ignored
    if class_weight is not None:
        w = w * torch.as_tensor(class_weight, dtype=ce.dtype, device=ce.device)[target.masked_fill(ignored, 0)]
    return (w * ce).sum() / w.sum().clamp_min(torch.finfo(ce.dtype).tiny)





def supervised_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], out: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    """``loss_fn(out, target)``, or for a deep-supervised model's training output
    ``(main, aux_1, aux_2, ...)`` (see :mod:`dlforge.models.unet`) the weighted mean of each
    output's loss, with weights 1, 1/2, 1/4, ... normalised to sum 1 as in nnU-Net.

    Each output gets the target sliced to its size: an output at 1/s of the main one's
    side is compared with ``target[..., ::s, ::s]``, the pixels its own pixels sit over.

    Example:
        >>> out = (torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))  # (B, C, H, W) each
        >>> ce, mask = torch.nn.functional.cross_entropy, torch.zeros(1, 4, 4, dtype=torch.long)
        >>> round(supervised_loss(ce, out, mask).item(), 4)
        0.6931
    """
    if not isinstance(out, tuple):
        return loss_fn(out, target)
    weights = [0.5**i for i in range(len(out))]
    spatial = out[0].ndim - 2  # 2 or 3
    lead = (slice(None),) * (target.ndim - spatial)  # (B,) or (B, C) for soft targets
    loss = torch.zeros((), device=out[0].device)
    for o, w in zip(out, weights):
        steps = [full // part for full, part in zip(out[0].shape[2:], o.shape[2:])]
        loss = loss + w / sum(weights) * loss_fn(o, target[lead + tuple(slice(None, None, s) for s in steps)])
    return loss


__all__ = ["SMOOTH", "DiceCELoss", "DiceFocalLoss", "DiceLoss", "TverskyLoss", "check_seg_target", "supervised_loss",
           "pixel_weighted_cross_entropy", "probs_and_onehot", "sigmoid_focal"]
