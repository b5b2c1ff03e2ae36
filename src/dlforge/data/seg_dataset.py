"""Segmentation training data: random patches drawn fresh every epoch, image normalisation,
and the ``data.augment`` keys read for image + mask pairs.

:class:`PatchDataset` is map-style: item ``i`` is a new random patch on every access (like
:class:`dlforge.data.mlm.MaskedLMDataset`'s fresh masks), drawn with torch's global
generator, which :func:`dlforge.train.fit` seeds; a share ``foreground`` of the draws is
centred on a foreground pixel (nnU-Net's oversampling). A window is only drawn where it
lies wholly inside the image's training region (:mod:`dlforge.data.seg_regions`).

Example:
    >>> import numpy as np, torch
    >>> x = np.random.rand(1, 1, 64, 64).astype(np.float32); y = (x[:, 0] > 0.9).astype(np.int64)
    >>> ds = PatchDataset(x, y, np.ones((1, 64, 64), bool), (32, 32), length=8)
    >>> xb, yb = ds[0]
    >>> tuple(xb.shape), tuple(yb.shape), len(ds)
    ((1, 32, 32), (32, 32), 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dlforge.data.seg_patches import SegAugmentConfig, augment_pair
from dlforge.data.seg_regions import valid_starts
from dlforge.errors import ConfigError, DataError

# Per-image intensity normalisation (CSBDeep/StarDist's default for microscopy): the 1st and
# 99.8th percentiles of each channel map to 0 and 1, so 8-bit, 16-bit and dim images agree.
NORMALIZE = {"method": "percentile", "low": 1.0, "high": 99.8}
# Label-preserving and exact for microscopy: what a segmentation run uses when data.augment is unset.
DEFAULT_SEG_AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5}
# data.augment keys that carry over to image + mask pairs (the rest mix or erase labels).
_SEG_KEYS = ("hflip", "vflip", "rotation", "translate", "scale", "shear", "noise")


def normalize_images(x: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Map each image's channels (N, C, *S) so the ``low``/``high`` percentiles become 0/1.

    Example:
        >>> x = np.arange(100, dtype=np.float32).reshape(1, 1, 10, 10)
        >>> y = normalize_images(x, {"method": "percentile", "low": 0, "high": 100})
        >>> float(y.min()), float(y.max())
        (0.0, 1.0)
    """
    spec = spec or NORMALIZE
    if spec.get("method") in (None, "none"):
        return x.astype(np.float32, copy=False)
    flat = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float32)  # (N, C, P)
    lo = np.percentile(flat, spec["low"], axis=2, keepdims=True)
    hi = np.percentile(flat, spec["high"], axis=2, keepdims=True)
    scaled = (flat - lo) / np.maximum(hi - lo, 1e-8)
    return scaled.reshape(x.shape).astype(np.float32)


def seg_augment(augment: Any) -> SegAugmentConfig:
    """``data.augment`` (an :class:`dlforge.data.augment.AugmentConfig`) for image + mask
    pairs: flips, affine (rotation, translate, scale, shear), colour jitter's brightness
    and contrast and noise carry over; ``preset: none`` turns everything off; unset, a
    segmentation run flips and turns by 90 degrees (:data:`DEFAULT_SEG_AUGMENT`).
    Transforms that mix or erase pixels (mixup, cutmix, erasing, blur, resized crops)
    would break the mask and are refused.

    Example:
        >>> from dlforge.data.augment import AugmentConfig
        >>> seg_augment(AugmentConfig()).rot90, seg_augment(AugmentConfig(hflip=1.0)).rot90
        (0.5, 0.0)
    """
    given = {k: v for k, v in augment if v is not None}
    refused = [k for k in ("mixup", "cutmix", "erasing", "blur", "resized_crop", "mix_prob") if k in given]
    if refused:
        raise ConfigError(f"data.augment.{refused[0]} does not apply to segmentation: it would change the mask",
                          hint=f"use {', '.join(_SEG_KEYS)} or color_jitter (brightness, contrast)")
    preset = given.pop("preset", None)
    if preset not in (None, "none"):
        raise ConfigError(f"data.augment.preset {preset!r} is for classification images",
                          hint="name the transforms, or preset: none to turn augmentation off")
    if preset == "none":
        return SegAugmentConfig()
    if not given:
        return SegAugmentConfig(**DEFAULT_SEG_AUGMENT)
    values: dict[str, Any] = {k: given[k] for k in _SEG_KEYS if k in given}
    if isinstance(values.get("rotation"), tuple):
        raise ConfigError("data.augment.rotation for segmentation is one angle r (draws from [-r, r])",
                          hint="e.g. rotation: 15")
    jitter = given.get("color_jitter")
    if jitter is not None:
        values.update({k: getattr(jitter, k) for k in ("brightness", "contrast") if getattr(jitter, k, None)})
    return SegAugmentConfig(**values)


class SegBatchAugment:
    """``fit``'s ``augment(x, y)`` hook for segmentation batches: :func:`augment_pair`
    on 2D batches; 3D batches go through flips only when 3D is unsupported there."""

    def __init__(self, config: SegAugmentConfig) -> None:
        self.config = config

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_pair(x, y, self.config)

    def __repr__(self) -> str:
        on = {k: v for k, v in self.config if v not in (0, 0.0, None, "bilinear")}
        return f"SegBatchAugment({on})"


class PatchDataset(Dataset):
    """Random ``patch`` windows of ``x`` (N, C, *S) float and ``y`` (N, *S) int64, inside
    ``train`` (N, *S) bool; ``length`` draws per epoch. Images smaller than the patch are
    zero-padded (mask: background) first."""

    def __init__(self, x: np.ndarray, y: np.ndarray, train: np.ndarray, patch: Sequence[int], *,
                 length: int, foreground: float = 0.33) -> None:
        patch = tuple(int(p) for p in patch)
        if len(patch) != y.ndim - 1:
            raise ConfigError(f"data.patch {list(patch)} has {len(patch)} sides, the images {y.ndim - 1}",
                              hint="give one side per spatial axis")
        if not 0 <= foreground <= 1:
            raise ConfigError(f"data.foreground is {foreground}", hint="a share in [0, 1], e.g. 0.33")
        pad = [(0, 0), (0, 0)] + [((p - s) // 2, p - s - (p - s) // 2) if p > s else (0, 0)
                                  for s, p in zip(y.shape[1:], patch)]
        self.x = torch.from_numpy(np.pad(x, pad)) if any(sum(p) for p in pad) else torch.from_numpy(x)
        self.y = torch.from_numpy(np.pad(y, pad[1:])) if any(sum(p) for p in pad) else torch.from_numpy(y)
        train = np.pad(train, pad[1:], mode="edge") if any(sum(p) for p in pad) else train  # padding joins its edge
        self.patch, self.length, self.foreground = patch, int(length), float(foreground)
        self.starts = [valid_starts(t, patch) for t in train]  # per image: (S - patch + 1) bool
        self.images = [i for i, s in enumerate(self.starts) if s.any()]
        if not self.images:
            raise DataError(f"no {'x'.join(map(str, patch))} patch fits inside the training region",
                            hint="use a smaller data.patch or data.gap, or hold out less")
        # foreground pixels whose centred window can start somewhere valid, per image
        self.fg = [self._fg_points(i) for i in range(len(self.starts))]
        self.fg_images = [i for i in self.images if len(self.fg[i])]

    def _fg_points(self, i: int) -> np.ndarray:
        pts = np.argwhere(self.y[i].numpy() > 0)  # (P, dims)
        if not len(pts):
            return pts
        starts = self._centred(pts, self.starts[i].shape)
        ok = self.starts[i][tuple(starts.T)]
        return starts[ok]

    def _centred(self, pts: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
        half = np.array([p // 2 for p in self.patch])
        return np.clip(pts - half, 0, np.array(grid) - 1)

    def __len__(self) -> int:
        return self.length

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, ()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fg_images and torch.rand(()) < self.foreground:
            i = self.fg_images[self._draw(len(self.fg_images))]
            start = self.fg[i][self._draw(len(self.fg[i]))]
        else:
            i = self.images[self._draw(len(self.images))]
            start = self._uniform(i)
        box = tuple(slice(int(a), int(a) + p) for a, p in zip(start, self.patch))
        return self.x[i][(slice(None), *box)], self.y[i][box]  # (C, *patch), (*patch)

    def _uniform(self, i: int) -> np.ndarray:
        starts = self.starts[i]
        for _ in range(32):  # rejection: cheap when most of the image is training region
            cand = np.array([self._draw(s) for s in starts.shape])
            if starts[tuple(cand)]:
                return cand
        valid = np.argwhere(starts)
        return valid[self._draw(len(valid))]

    def __repr__(self) -> str:
        return (f"PatchDataset({len(self.starts)} image(s), patch={'x'.join(map(str, self.patch))}, "
                f"{self.length} per epoch, foreground={self.foreground})")
