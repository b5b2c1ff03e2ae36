"""Every loss, and the one function that turns a ``train.loss`` setting into a loss.

``train.loss`` names a loss, or configures one as :class:`LossConfig`::

    train:
      loss: {name: focal, gamma: 2.0, class_weights: effective, beta: 0.999}

:func:`cross_entropy` is the default classification loss (per-token outputs and
``IGNORE_INDEX`` targets included), :class:`CrossEntropy` adds class weights and label
smoothing, :class:`FocalLoss` is the loss of Lin et al. 2017, :func:`class_weights` turns
training-split class counts into per-class weights, and :func:`build_loss` makes the
``loss(out, target)`` callable from a name, mapping, :class:`LossConfig`, callable or
nothing: :func:`dlforge.train.fit` and the pipeline both call it. The segmentation losses
(``dice``, ``dice_ce``, ``dice_focal``, ``tversky``, and their empty-mask convention) live in
:mod:`dlforge.train.seg_losses`; ``build_loss`` makes them too. Cross-entropy and focal loss
also take segmentation logits (B, C, H, W[, D]) with class-index masks (B, H, W[, D]).

Example:
    >>> import torch
    >>> loss = build_loss(LossConfig(name="focal", gamma=2.0), train_counts=[90, 10])
    >>> round(loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).item(), 5)
    0.0018
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX
from dlforge.train.seg_losses import DiceCELoss, DiceFocalLoss, DiceLoss, TverskyLoss

WEIGHT_METHODS = ("none", "inverse", "effective")
SEG_LOSSES = ("dice", "dice_ce", "dice_focal", "tversky")
# which losses each segmentation option belongs to; setting it for another loss is an error
SEG_OPTIONS = {"include_background": SEG_LOSSES, "batch": SEG_LOSSES, "lambda_dice": ("dice_ce", "dice_focal"),
               "lambda_ce": ("dice_ce",), "lambda_focal": ("dice_focal",), "tversky_alpha": ("tversky",),
               "tversky_beta": ("tversky",)}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for (B, C) outputs or per-token (B, T, C) outputs with (B, T) targets.

    Exactly ``torch.nn.functional.cross_entropy``; targets equal to ``IGNORE_INDEX``
    (-100) are skipped, as in masked-LM training, and soft targets (B, C) work as in PyTorch.

    Example:
        >>> import torch
        >>> round(cross_entropy(torch.zeros(1, 3, 2), torch.tensor([[0, -100, 1]])).item(), 4)
        0.6931
    """
    if out.ndim > 2:
        out, target = _flatten(out, target)  # (N, C), (N,)
    return F.cross_entropy(out, target, ignore_index=IGNORE_INDEX)


class LossConfig(BaseModel):
    """The ``train.loss`` section when it is more than a name.

    ``class_weights`` weights each class's samples: ``inverse`` frequency N/(K n_c), or
    the ``effective`` number of samples of Cui et al. 2019 with ``beta``. ``gamma`` and
    ``alpha`` are the focal loss's; ``alpha`` is a float for binary tasks (the weight of
    class 1, class 0 gets 1 - alpha, as Lin et al.) or one weight per class.
    Segmentation losses (``dice``, ``dice_ce``, ``dice_focal``, ``tversky``): Dice with or
    without class 0 (``include_background``), per image or pooled over the ``batch``;
    ``lambda_dice`` / ``lambda_ce`` / ``lambda_focal`` weigh the terms of the sums, and
    ``tversky_alpha`` / ``tversky_beta`` weigh false positives / false negatives.

    Example:
        >>> LossConfig(name="cross_entropy", class_weights="inverse").beta
        0.999
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["cross_entropy", "focal", "mse", "l1", "dice", "dice_ce", "dice_focal", "tversky"] = "cross_entropy"
    class_weights: Literal["none", "inverse", "effective"] = "none"
    beta: float = Field(0.999, ge=0, lt=1)
    gamma: float = Field(2.0, ge=0)
    alpha: float | list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    include_background: bool = True
    batch: bool = False
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    lambda_focal: float = Field(1.0, ge=0)
    tversky_alpha: float = Field(0.5, ge=0)
    tversky_beta: float = Field(0.5, ge=0)


def as_loss_config(loss: str | Mapping | LossConfig) -> LossConfig:
    """A :class:`LossConfig` from a loss name, a mapping or a config.

    Example:
        >>> as_loss_config("focal").gamma
        2.0
    """
    if isinstance(loss, LossConfig):
        return loss
    try:
        return LossConfig(name=loss) if isinstance(loss, str) else LossConfig.model_validate(dict(loss))
    except (ValidationError, TypeError, ValueError) as err:
        raise ConfigError(f"train.loss {loss!r} is not a valid loss",
                          hint="use a name (cross_entropy, focal, mse, l1, dice, dice_ce, dice_focal, "
                          "tversky) or a mapping of "
                          f"LossConfig keys: {', '.join(LossConfig.model_fields)}") from err


def class_weights(counts: Sequence[int], method: str = "inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights (K,) from the training split's class counts.

    ``inverse``: N / (K n_c), so a balanced set gets weight 1 everywhere.
    ``effective`` (Cui et al. 2019): (1 - beta) / (1 - beta^n_c), scaled to sum to K;
    ``beta`` near 1 approaches inverse frequency, ``beta = 0`` gives equal weights.
    ``none``: all ones.

    Example:
        >>> class_weights([90, 10], "inverse")
        tensor([0.5556, 5.0000])
        >>> class_weights([90, 10], "effective", beta=0.9)
        tensor([0.7889, 1.2111])
    """
    counts_t = torch.as_tensor(list(counts), dtype=torch.float64)  # (K,)
    if counts_t.ndim != 1 or len(counts_t) < 1 or (counts_t < 0).any():
        raise DataError(f"class counts must be a list of non-negative integers, got {list(counts)}")
    if method not in WEIGHT_METHODS:
        raise ConfigError(f"train.loss.class_weights is {method!r}", hint=f"use one of: {', '.join(WEIGHT_METHODS)}")
    k = len(counts_t)
    if method == "none":
        return torch.ones(k)
    if (counts_t == 0).any():
        missing = [i for i, c in enumerate(counts_t.tolist()) if c == 0]
        raise DataError(f"classes {missing} have no training samples, so they have no class weight",
                        hint="use class_weights: none, or a split that keeps every class in train")
    if method == "inverse":
        weights = counts_t.sum() / (k * counts_t)
    else:
        if not 0 <= beta < 1:
            raise ConfigError(f"train.loss.beta is {beta}", hint="use a number in [0, 1), e.g. 0.999")
        weights = (1 - beta) / (1 - beta**counts_t)  # inverse effective number of samples
        weights = weights * k / weights.sum()
    return weights.float()


def _flatten(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token outputs (B, T, C) with targets (B, T) become (B*T, C) and (B*T,);
    segmentation logits (B, C, H, W[, D]) with masks (B, H, W[, D]) become (B*H*W[*D], C)."""
    if out.ndim >= 4 and target.ndim == out.ndim - 1:
        return out.movedim(1, -1).flatten(0, -2), target.flatten()  # channels last, then (N, C), (N,)
    if out.ndim > 2:
        soft = torch.is_floating_point(target) and target.shape == out.shape
        return out.flatten(0, -2), (target.flatten(0, -2) if soft else target.flatten())
    return out, target


class CrossEntropy(nn.Module):
    """Cross-entropy with per-class ``weight`` (K,) and ``label_smoothing``.

    Exactly ``torch.nn.functional.cross_entropy``: with weights, the batch mean divides
    by the summed weights of the batch's targets. Accepts (B, C) or per-token (B, T, C)
    outputs, targets equal to ``IGNORE_INDEX`` (-100) are skipped, and soft targets (B, C)
    work as in PyTorch. The weight follows the output's device.

    Example:
        >>> import torch
        >>> loss = CrossEntropy(weight=torch.tensor([1.0, 3.0]))
        >>> round(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item(), 4)
        0.6931
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.label_smoothing = label_smoothing

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out, target = _flatten(out, target)  # (N, C), (N,) or (N, C)
        weight = None if self.weight is None else self.weight.to(out.device, out.dtype)
        return F.cross_entropy(out, target, weight=weight, ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t).

    ``p_t`` is the softmax probability of the true class. ``gamma = 0`` and no ``alpha``
    is plain cross-entropy; larger ``gamma`` down-weights samples the model already gets
    right, so the rare, hard ones dominate the gradient. ``alpha``: a float for two
    classes (class 1 gets alpha, class 0 gets 1 - alpha), or one weight per class.
    ``weight`` (K,) multiplies in like a per-class alpha (e.g. :func:`class_weights`).
    The loss is the plain mean over the batch (not divided by the summed weights).

    Targets are class indices (B,), or per-token (B, T) with (B, T, C) outputs, where
    ``IGNORE_INDEX`` (-100) is skipped. Soft targets q (B, C) (mixup, label smoothing)
    are accepted: the loss becomes -sum_c alpha_c q_c (1 - p_c)^gamma log(p_c), which
    equals the formula above for one-hot q.

    Example:
        >>> import torch, math
        >>> loss = FocalLoss(gamma=2.0, alpha=0.25)
        >>> p_t = 0.5  # two equal logits
        >>> value = loss(torch.zeros(1, 2), torch.tensor([1]))
        >>> math.isclose(value.item(), -0.25 * (1 - p_t) ** 2 * math.log(p_t), rel_tol=1e-6)
        True
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"train.loss.gamma is {gamma}", hint="use gamma >= 0; 0 is cross-entropy, 2 is usual")
        if isinstance(alpha, (int, float)) and not 0 <= alpha <= 1:
            raise ConfigError(f"train.loss.alpha is {alpha}", hint="a float alpha is the weight of class 1, in [0, 1]")
        self.gamma = float(gamma)
        self.label_smoothing = label_smoothing
        self.scalar_alpha = float(alpha) if isinstance(alpha, (int, float)) else None
        alpha_t = None if alpha is None or self.scalar_alpha is not None else torch.tensor(list(alpha), dtype=torch.float32)
        self.register_buffer("alpha", alpha_t)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def class_factors(self, n_classes: int, device: torch.device) -> torch.Tensor | None:
        """alpha times weight per class (K,), or None when both are unset."""
        factors = None
        if self.scalar_alpha is not None:
            if n_classes != 2:
                raise ConfigError(f"a single focal alpha ({self.scalar_alpha}) needs 2 classes, the model has {n_classes}",
                                  hint="give train.loss.alpha as a list with one weight per class")
            factors = torch.tensor([1 - self.scalar_alpha, self.scalar_alpha], device=device)
        elif self.alpha is not None:
            factors = self.alpha.to(device)
        if self.weight is not None:
            factors = self.weight.to(device) if factors is None else factors * self.weight.to(device)
        if factors is not None and len(factors) != n_classes:
            raise ConfigError(f"focal alpha/weight has {len(factors)} entries for {n_classes} classes",
                              hint="give one entry per class")
        return factors

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out, target = _flatten(out.float(), target)  # (N, C), (N,) or (N, C)
        n_classes = out.shape[1]
        factors = self.class_factors(n_classes, out.device)  # (C,) or None
        if not torch.is_floating_point(target):
            keep = target != IGNORE_INDEX  # (N,)
            out, target = out[keep], target[keep]
            if len(target) == 0:
                return out.sum() * 0.0  # every target ignored: a zero that keeps the graph
            if not self.label_smoothing:
                log_pt = out.log_softmax(dim=1).gather(1, target[:, None]).squeeze(1)  # (N,)
                loss = -_modulator(log_pt, self.gamma) * log_pt  # (N,)
                return (loss * factors[target] if factors is not None else loss).mean()
            target = F.one_hot(target, n_classes).float()  # smoothing spreads it: use the soft form
        if self.label_smoothing:  # as torch's cross_entropy smooths soft targets too
            target = target * (1 - self.label_smoothing) + self.label_smoothing / n_classes
        log_p = out.log_softmax(dim=1)  # (N, C)
        terms = -target * _modulator(log_p, self.gamma) * log_p  # (N, C)
        if factors is not None:
            terms = terms * factors
        return terms.sum(dim=1).mean()


def _modulator(log_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^gamma from log p; 1 - p is floored at 1e-12 because for gamma < 1 the
    power has an infinite slope at p = 1, which would turn a confident sample's gradient
    into NaN."""
    return (-torch.expm1(log_p)).clamp_min(1e-12) ** gamma


class DistillationLoss(nn.Module):
    """Knowledge distillation (Hinton, Vinyals and Dean 2015): the student learns from the
    teacher's softened outputs and from the hard labels.

    ``loss = alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``

    ``alpha`` is the weight of the HARD-label cross-entropy, so ``alpha=1`` is plain
    cross-entropy (exactly ``F.cross_entropy``) and ``alpha=0`` learns from the teacher
    only; Hinton et al. found a small weight on the hard labels works best. The KL is the
    batch mean (``nn.KLDivLoss(reduction="batchmean")``) and is scaled by ``T^2`` so its
    gradients keep their size as the temperature changes. A term whose weight is 0 is not
    computed.

    ``target`` packs both labels as one float tensor (B, 1 + K): column 0 is the hard label
    (``IGNORE_INDEX`` for a row with none, e.g. a transfer set without labels: that row
    adds only the soft term), columns 1.. are the teacher's logits (B, K). An integer
    target (B,) (a validation set without teacher outputs) gives the plain cross-entropy.
    :func:`dlforge.compress.distillation.teacher_targets` builds the packed targets.

    Example:
        >>> import torch
        >>> loss = DistillationLoss(temperature=1.0, alpha=1.0)
        >>> packed = torch.tensor([[1.0, 5.0, -5.0]])  # label 1, teacher logits (5, -5)
        >>> round(loss(torch.zeros(1, 2), packed).item(), 4)  # plain CE of two equal logits
        0.6931
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"distillation temperature is {temperature}", hint="use T > 0; 1 is plain softmax, 2-8 is usual")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"distillation alpha is {alpha}",
                              hint="alpha is the weight of the hard-label loss, in [0, 1]; 1 - alpha weighs the teacher")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(target):
            return cross_entropy(out, target)  # hard labels only: no teacher outputs to match
        if out.ndim != 2 or target.shape != (out.shape[0], out.shape[1] + 1):
            raise DataError(f"distillation targets have shape {tuple(target.shape)} for student outputs "
                            f"{tuple(out.shape)}", hint="pack (B, 1 + K) targets [label, teacher logits...] "
                            "with dlforge.compress.distillation.teacher_targets")
        labels, teacher = target[:, 0].long(), target[:, 1:]  # (B,), (B, K)
        terms = []
        if self.alpha > 0 and (labels != IGNORE_INDEX).any():
            terms.append(self.alpha * F.cross_entropy(out, labels, ignore_index=IGNORE_INDEX))
        if self.alpha < 1:
            t = self.temperature
            kl = F.kl_div((out / t).log_softmax(dim=1), (teacher / t).log_softmax(dim=1), reduction="batchmean",
                          log_target=True)  # KL(teacher || student): summed over classes, mean over rows
            terms.append((1 - self.alpha) * t * t * kl)
        return sum(terms[1:], terms[0]) if terms else out.sum() * 0.0  # no term: a zero that keeps the graph


def build_loss(loss: LossConfig | str | Mapping | LossFn | None = None, train_counts: Sequence[int] | None = None,
               *, targets: torch.Tensor | None = None) -> LossFn:
    """The ``loss(out, target)`` callable :func:`dlforge.train.fit` trains with.

    ``loss`` is a name (``cross_entropy``, ``focal``, ``mse``, ``l1``, or a segmentation
    loss of :data:`SEG_LOSSES`), a mapping of
    :class:`LossConfig` keys, a :class:`LossConfig`, a callable (returned unchanged), or
    ``None``: cross-entropy for integer ``targets`` (or none given), MSE for float ones.
    ``train_counts`` are the training split's class counts (see
    :func:`dlforge.data.imbalance.class_counts`); they are needed for class weights and
    give the number of classes a per-class ``alpha`` is checked against.

    Example:
        >>> import torch
        >>> loss = build_loss({"name": "cross_entropy", "class_weights": "inverse"}, [30, 10])
        >>> loss.weight
        tensor([0.6667, 2.0000])
        >>> build_loss(None, targets=torch.tensor([[0.5]]))
        MSELoss()
    """
    if callable(loss) and not isinstance(loss, (str, Mapping, LossConfig)):
        return loss
    if loss is None:
        loss = "mse" if targets is not None and torch.is_floating_point(torch.as_tensor(targets)) else "cross_entropy"
    cfg = as_loss_config(loss)
    if cfg.name not in ("focal", "dice_focal") and {"gamma", "alpha"} & cfg.model_fields_set:
        raise ConfigError(f"train.loss.gamma and alpha belong to the focal loss (focal, dice_focal), not {cfg.name}",
                          hint="set train.loss.name: focal, or remove them")
    for option in sorted(cfg.model_fields_set & set(SEG_OPTIONS)):
        if cfg.name not in SEG_OPTIONS[option]:
            raise ConfigError(f"train.loss.{option} belongs to {', '.join(SEG_OPTIONS[option])}, not {cfg.name}",
                              hint=f"set train.loss.name to one of them, or remove {option}")
    if cfg.name in ("mse", "l1"):
        if cfg.class_weights != "none" or cfg.label_smoothing:
            raise ConfigError(f"train.loss {cfg.name} is a regression loss: class_weights and "
                              "label_smoothing do not apply", hint="remove them, or use cross_entropy / focal")
        return nn.MSELoss() if cfg.name == "mse" else nn.L1Loss()
    weight = None
    if cfg.class_weights != "none":
        if train_counts is None:
            raise ConfigError("train.loss.class_weights needs the training split's class counts",
                              hint="pass train_counts=class_counts(train_y, n_classes)")
        weight = class_weights(train_counts, cfg.class_weights, cfg.beta)
    if isinstance(cfg.alpha, list) and train_counts is not None and len(cfg.alpha) != len(train_counts):
        raise ConfigError(f"train.loss.alpha has {len(cfg.alpha)} entries for {len(train_counts)} classes",
                          hint="give one weight per class")
    if cfg.name in SEG_LOSSES:
        return _seg_loss(cfg, weight)
    if cfg.name == "focal":
        return FocalLoss(cfg.gamma, cfg.alpha, weight=weight, label_smoothing=cfg.label_smoothing)
    if weight is None and not cfg.label_smoothing:
        return cross_entropy  # the default, so a plain config trains exactly as with no loss set
    return CrossEntropy(weight=weight, label_smoothing=cfg.label_smoothing)


def _seg_loss(cfg: LossConfig, weight: torch.Tensor | None) -> nn.Module:
    """The segmentation loss ``cfg`` names, with class weights ``weight`` (C,) or None."""
    if cfg.label_smoothing:
        raise ConfigError(f"train.loss.label_smoothing does not apply to {cfg.name}",
                          hint="remove it, or use cross_entropy / focal")
    common = {"include_background": cfg.include_background, "batch": cfg.batch}
    if cfg.name == "tversky":
        if weight is not None:
            raise ConfigError("train.loss.class_weights does not apply to tversky",
                              hint="remove class_weights, or raise tversky_beta to favour recall")
        return TverskyLoss(cfg.tversky_alpha, cfg.tversky_beta, **common)
    if cfg.name == "dice":
        return DiceLoss(weight=weight, **common)
    if cfg.name == "dice_ce":
        return DiceCELoss(weight=weight, lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_ce, **common)
    return DiceFocalLoss(weight=weight, gamma=cfg.gamma, alpha=cfg.alpha, lambda_dice=cfg.lambda_dice,
                         lambda_focal=cfg.lambda_focal, **common)


def resolve_loss(loss: LossConfig | str | Mapping | LossFn | None, targets: torch.Tensor) -> LossFn:
    """:func:`build_loss` with the training targets, the call shape ``fit`` always had.

    Example:
        >>> import torch
        >>> resolve_loss(None, torch.tensor([0, 1])) is cross_entropy
        True
    """
    return build_loss(loss, targets=targets)


__all__ = ["SEG_LOSSES", "CrossEntropy", "DistillationLoss", "FocalLoss", "LossConfig", "LossFn", "as_loss_config", "build_loss",
           "class_weights", "cross_entropy", "resolve_loss"]
