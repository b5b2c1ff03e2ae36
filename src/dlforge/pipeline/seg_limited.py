"""Segmentation with few labels: self-supervised U-Net pretraining and pseudo-label self-training.

Two ways to use unlabelled images, each measured against training from scratch by
``benchmarks/seg_limited.py``:

* **pretraining** (:func:`pretrain_unet`): a U-Net with one output per image channel learns
  to restore inpainted or noised patches of the unlabelled images
  (:mod:`dlforge.data.seg_pretext`); its weights, all but the 1x1 head, are copied into the
  segmentation U-Net by name and shape (:func:`transfer_pretrained`) before fine-tuning;
* **self-training** (:func:`self_train`): a teacher trained on the labelled images predicts
  the unlabelled ones (sliding window, softmax); pixels it is at least ``threshold`` sure
  of become labels, the rest ``IGNORE_INDEX`` (:func:`dlforge.train.pseudo_label.pseudo_labels`); a fresh student
  (same initial weights) trains on labelled plus pseudo-labelled patches.

Every segmenter here trains with :func:`dlforge.train.fit`'s default loss for masks, the
per-pixel cross-entropy, which skips ``IGNORE_INDEX`` pixels (so do the Dice losses of
:mod:`dlforge.train.seg_losses`); the scratch, pretrained and self-trained arms share it,
so that they differ only in how they use the unlabelled images.

Example:
    >>> from dlforge.data.segmentation_synthetic import synthetic_nuclei
    >>> b = synthetic_nuclei(3, size=(32, 32), seed=0)
    >>> x, y = torch.as_tensor(b.x), torch.as_tensor(b.y)
    >>> schedule = SegSchedule(patch=(32, 32), n_patches=4, epochs=1, batch_size=4)
    >>> spec = {"widths": [4, 8]}
    >>> state = pretrain_unet(spec, x[1:], epochs=1, patch=(32, 32), batch_size=4, length=4)
    >>> model = train_segmenter(spec, x[:1], y[:1], schedule, init=state)
    >>> predict_masks(model, x[2:], (32, 32)).shape
    torch.Size([1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge import models
from dlforge.data.seg_patches import augment_pair, sample_patches
from dlforge.data.seg_pretext import pretext_dataset
from dlforge.errors import ConfigError, DataError
from dlforge.evaluate.segmentation import segmentation_scores
from dlforge.models.sliding_window import sliding_window_predict
from dlforge.pipeline.seg_data import unlabelled_images
from dlforge.targets import IGNORE_INDEX
from dlforge.train import epoch_permutation, fit
from dlforge.train.pseudo_label import pseudo_labels
from dlforge.train.transfer import TransferReport, copy_matching

HEAD_PREFIXES = ("head.", "aux_heads.")  # output layers: sized by the task, never transferred
# A random quarter turn (0, 90, 180 or 270 degrees): exact for masks holding IGNORE_INDEX, and
# pure torch (augment_pair's flips go through kornia, seconds to import and slow per batch).
TURNS = {"rot90": 0.75}


@dataclass
class SegSchedule:
    """How a segmenter trains: ``n_patches`` fixed patches of size ``patch`` (a third
    centred on foreground), ``epochs`` over them, Adam at ``lr``; ``augment`` turns each
    patch by a random multiple of 90 degrees (2D only)."""

    patch: tuple[int, ...] = (64, 64)
    n_patches: int = 64
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    augment: bool = True
    device: str = "auto"


def _unet(spec: Mapping[str, Any], input_shape: Sequence[int], num_outputs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the same seed gives the same initial weights, in every arm
    return models.build({**spec, "arch": "unet"}, input_shape=tuple(input_shape), num_outputs=num_outputs)


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    images = torch.as_tensor(images)
    if not torch.is_floating_point(images) or images.ndim not in (4, 5):
        raise DataError(f"{name} must be float (N, C, H, W) or (N, C, D, H, W), "
                        f"got {images.dtype} {tuple(images.shape)}",
                        hint="normalise the images to float and add a channel axis, e.g. x[:, None].float()")
    return images.float()  # the U-Net's weights are float32


def pretrain_unet(spec: Mapping[str, Any], images: torch.Tensor, *, method: str = "inpaint", epochs: int = 10,
                  patch: Sequence[int] = (64, 64), batch_size: int = 16, lr: float = 2e-3, seed: int = 0,
                  device: str = "auto", length: int = 256, mask_ratio: float = 0.5,
                  noise: float = 0.5, train: Sequence[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Train a reconstruction U-Net on pretext patches of unlabelled ``images`` (N, C, *S)
    with an MSE loss; return its state dict (on the CPU).

    The U-Net is ``spec`` with ``num_outputs = C``; each epoch draws ``length`` fresh
    (corrupted, clean) patches (:func:`dlforge.data.seg_pretext.pretext_dataset`), inside
    ``train`` (one boolean map per image) when given. ``images`` may be a list of (C, *S).

    Example:
        >>> state = pretrain_unet({"widths": [4, 8]}, torch.rand(2, 1, 32, 32), epochs=1, patch=(16, 16), length=4)
        >>> state["head.weight"].shape  # one output per image channel
        torch.Size([1, 4, 1, 1])
    """
    images = [i.float() for i in images] if isinstance(images, (list, tuple)) else _check_images(images, "the unlabelled images")
    data = pretext_dataset(images, patch, method=method, length=length, mask_ratio=mask_ratio, noise=noise, seed=seed,
                           train=train)
    channels = data.images[0].shape[0]
    model = _unet(spec, (channels, *data.patch), channels, seed)
    fit(model, data, epochs=epochs, batch_size=batch_size, optim={"name": "adam", "lr": lr}, loss="mse",
        seed=seed, device=device)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def transfer_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor]) -> TransferReport:
    """Copy ``state`` into the U-Net ``model`` by name and shape, all but the output heads.

    Example:
        >>> src = _unet({"widths": [4, 8]}, (1, 16, 16), 1)
        >>> report = transfer_pretrained(_unet({"widths": [4, 8]}, (1, 16, 16), 2), src.state_dict())
        >>> sorted(report.skipped)
        ['head.bias', 'head.weight']
    """
    body = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    report = copy_matching(model, body, source="the pretrained U-Net")
    if not report.loaded:
        raise ConfigError(f"no pretrained tensor fits the segmentation U-Net ({report.summary()})",
                          hint="pretrain with the same U-Net spec (widths, norm) and image channels")
    return report


def _turns(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return augment_pair(x, y, TURNS)  # draws from the global RNG, which fit seeds


def fit_segmenter(model: nn.Module, x: torch.Tensor, y: torch.Tensor, schedule: SegSchedule, seed: int) -> nn.Module:
    """Train ``model`` on patches ``x`` (n, C, *patch) and masks ``y`` (n, *patch) (which
    may hold ``IGNORE_INDEX``) with the default per-pixel cross-entropy; return it in eval mode.

    Each epoch visits ``schedule.n_patches`` patches (a fresh random subset when there are
    more), so every arm takes the same number of optimizer steps."""
    augment = _turns if schedule.augment and x.ndim == 4 else None
    visits = schedule.n_patches

    def order(n: int, seed: int, epoch: int) -> torch.Tensor:  # pure in its arguments, as fit requires
        return epoch_permutation(n, seed, epoch)[:visits]

    fit(model, TensorDataset(x, y), epochs=schedule.epochs, batch_size=schedule.batch_size,
        optim={"name": "adam", "lr": schedule.lr}, seed=seed, device=schedule.device, augment=augment, order=order)
    return model.eval()


def train_segmenter(spec: Mapping[str, Any], images: torch.Tensor, masks: torch.Tensor, schedule: SegSchedule, *,
                    num_classes: int = 2, seed: int = 0, init: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A U-Net trained on ``schedule.n_patches`` patches of ``images`` (N, C, *S) and
    ``masks`` (N, *S), from scratch or, with ``init``, from pretrained weights (heads excepted).

    Example:
        >>> y = torch.zeros(1, 32, 32, dtype=torch.long); y[0, 8:20, 8:20] = 1
        >>> model = train_segmenter({"widths": [4, 8]}, y[:, None].float(), y, SegSchedule((16, 16), 4, 1))
        >>> model.head.out_channels
        2
    """
    images = _check_images(images, "the labelled images")
    x, y = sample_patches(images, masks, schedule.patch, schedule.n_patches, seed=seed)
    model = _unet(spec, (images.shape[1], *schedule.patch), num_classes, seed)
    if init is not None:
        transfer_pretrained(model, init)
    return fit_segmenter(model, x, y, schedule, seed)


def predict_probs(model: nn.Module, images: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Softmax probabilities (N, K, *S) of ``images`` (N, C, *S), predicted window by window."""
    model.eval()
    logits = sliding_window_predict(model, images, tuple(window), overlap=0.5)  # (N, K, *S)
    return torch.softmax(logits, dim=1)


def predict_masks(model: nn.Module, images: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Class-index masks (N, *S) int64: the argmax of :func:`predict_probs`."""
    return predict_probs(model, images, window).argmax(dim=1)


@dataclass
class SelfTrainResult:
    """The student, the teacher, the pseudo-labels (N_u, *S) and the share of unlabelled
    pixels that got a label."""

    student: nn.Module
    teacher: nn.Module
    pseudo: torch.Tensor
    labelled_share: float


def self_train(spec: Mapping[str, Any], images: torch.Tensor, masks: torch.Tensor, unlabelled: torch.Tensor,
               schedule: SegSchedule, *, num_classes: int = 2, threshold: float = 0.9, seed: int = 0,
               teacher: nn.Module | None = None) -> SelfTrainResult:
    """Self-training: teacher on the labelled set, pseudo-labels on ``unlabelled``
    (N_u, C, *S), a fresh student on ``schedule.n_patches`` labelled patches plus as many
    pseudo-labelled ones (those with no confident pixel are dropped). The student takes as
    many steps as the teacher: each epoch visits a random ``n_patches`` of the pooled patches.

    Pass a ``teacher`` already trained on the labelled set (e.g. the scratch model) to skip
    training one. The student starts from the teacher's initial weights (same ``seed``).

    Example:
        >>> y = torch.zeros(3, 32, 32, dtype=torch.long); y[:, 8:20, 8:20] = 1
        >>> x = y[:, None].float()
        >>> result = self_train({"widths": [4, 8]}, x[:1], y[:1], x[1:], SegSchedule((16, 16), 4, 1))
        >>> result.pseudo.shape, 0 <= result.labelled_share <= 1
        (torch.Size([2, 32, 32]), True)
    """
    unlabelled = _check_images(unlabelled, "the unlabelled images")
    if teacher is None:
        teacher = train_segmenter(spec, images, masks, schedule, num_classes=num_classes, seed=seed)
    pseudo = pseudo_labels(predict_probs(teacher, unlabelled, schedule.patch), threshold)  # (N_u, *S)
    x_l, y_l = sample_patches(images, masks, schedule.patch, schedule.n_patches, seed=seed)
    x_u, y_u = sample_patches(unlabelled, pseudo, schedule.patch, schedule.n_patches, seed=seed + 1)
    keep = (y_u != IGNORE_INDEX).flatten(1).any(dim=1)  # (n,): an all-ignored patch has no loss
    x, y = torch.cat([x_l, x_u[keep]]), torch.cat([y_l, y_u[keep]])
    student = _unet(spec, (images.shape[1], *schedule.patch), num_classes, seed)
    student = fit_segmenter(student, x, y, schedule, seed)
    share = float((pseudo != IGNORE_INDEX).float().mean())
    return SelfTrainResult(student=student, teacher=teacher, pseudo=pseudo, labelled_share=share)


def dice_on(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, window: Sequence[int],
            num_classes: int = 2) -> float:
    """Mean foreground Dice of ``model`` on ``images`` against ``masks`` (see
    :func:`dlforge.evaluate.segmentation.segmentation_scores`)."""
    return float(segmentation_scores(predict_masks(model, images, window), np.asarray(masks), num_classes)["dice"])


__all__ = ["SegSchedule", "SelfTrainResult", "dice_on", "fit_segmenter", "predict_masks", "predict_probs",
           "pretrain_unet", "pseudo_labels", "self_train", "train_segmenter", "transfer_pretrained"]


def ssl_initialise(cfg: Any, model: nn.Module, prepared: Any) -> TransferReport:
    """``train.ssl``: pretrain a reconstruction U-Net of ``model``'s spec on the training
    region of every labelled image and on ``data.unlabelled``, then copy all but its head
    into ``model`` (what :func:`dlforge.pipeline.fit_options.configured_model` does before fit).
    The held-out regions are never seen, so a fold's score stays honest."""
    ssl, bundle, regions = cfg.train.ssl, prepared.bundle, prepared.regions
    extra = unlabelled_images(cfg, bundle)
    images = [torch.from_numpy(x) for x in bundle.x] + [torch.from_numpy(x) for x in extra]
    train = [*regions.train, *(np.ones(x.shape[1:], bool) for x in extra)]
    spec = {k: v for k, v in models.spec_of(model).items() if k not in ("arch", "input_shape", "num_outputs")}
    state = pretrain_unet(spec, images, method=ssl.method, epochs=ssl.epochs, patch=prepared.patch,
                          batch_size=cfg.train.batch_size, seed=cfg.seed, device=cfg.train.device,
                          length=len(prepared.train), mask_ratio=ssl.mask_ratio, train=train)
    return transfer_pretrained(model, state)
