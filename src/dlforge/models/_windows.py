"""Helpers of models/sliding_window.py: window positions, crops, weights and argument checks.

Window positions and the Gaussian follow MONAI's ``sliding_window_inference`` step for step,
so sliding_window_predict gives its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dlforge.errors import ConfigError, DataError

BLENDS = ("gaussian", "constant")


def importance_map(window: Sequence[int], blend: str, sigma_scale: float) -> torch.Tensor:
    # MONAI's compute_importance_map, step for step, so both blend to the same numbers.
    if blend == "constant":
        return torch.ones(tuple(window), dtype=torch.float32)  # (*window)
    weights = None
    for i, side in enumerate(window):
        x = torch.arange(-(side - 1) / 2.0, (side - 1) / 2.0 + 1, dtype=torch.float)  # (side,)
        x = torch.exp(x**2 / (-2 * (side * sigma_scale) ** 2))
        weights = x if weights is None else weights.unsqueeze(-1) * x[(None,) * i]  # (*window[:i+1])
    assert weights is not None
    # Clamp so edge pixels keep a small weight: a pixel seen only by window edges still divides.
    return weights.clamp(min=max(weights.min().item(), 1e-3))  # (*window)


def starts(size: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis: a step of window*(1-overlap), last one ends at the border."""
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / step)) if d * step + window >= size) + 1
    return [min(d * step, size - window) for d in range(count)]


def overlap_slices(
    corner: Sequence[int], window: Sequence[int], pad: Sequence[tuple[int, int]], size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (in the window, in the unpadded image) of the part of a window inside the image."""
    src, dst = [], []
    for start, w, (lo, _), s in zip(corner, window, pad, size):
        begin, end = max(start - lo, 0), min(start - lo + w, s)  # image coordinates
        src.append(slice(begin - (start - lo), end - (start - lo)))
        dst.append(slice(begin, end))
    return tuple(src), tuple(dst)


def crop(
    image: torch.Tensor, corner: Sequence[int], window: Sequence[int], pad: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """One window of a (C, *spatial) image, zero-padded where it reaches past the image."""
    src, dst = overlap_slices(corner, window, pad, image.shape[1:])
    crop = image[(slice(None), *dst)]  # (C, *part)
    widths = [(s.start, w - s.stop) for s, w in zip(src, window)]
    if any(a or b for a, b in widths):
        crop = F.pad(crop, [n for pair in reversed(widths) for n in pair])  # (C, *window)
    return crop


def as_accumulator(out: np.ndarray | torch.Tensor, images: torch.Tensor, dims: int) -> torch.Tensor:
    """``out`` as a (B, C_out, *spatial) float32 tensor sharing its memory."""
    acc = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    if not isinstance(acc, torch.Tensor) or acc.dtype != torch.float32:
        raise ConfigError(
            f"out must be a float32 numpy array or tensor, got {getattr(out, 'dtype', type(out).__name__)}",
            hint="allocate it with np.memmap(path, dtype=np.float32, mode='w+', shape=...)",
        )
    acc = acc if acc.dim() == dims + 2 else acc[None]
    if acc.dim() != dims + 2 or acc.shape[0] != images.shape[0] or acc.shape[2:] != images.shape[2:]:
        raise ConfigError(
            f"out has shape {tuple(out.shape)} but the image needs (C_out, *{tuple(images.shape[2:])})"
            + (f" with a batch of {images.shape[0]}" if images.shape[0] > 1 else ""),
            hint="allocate out with shape (B, C_out, *spatial) for a batch or (C_out, *spatial)",
        )
    acc.zero_()
    return acc


def check_args(
    image: torch.Tensor, window: Sequence[int], overlap: float, batch_size: int, blend: str, sigma_scale: float
) -> int:
    dims = len(window)
    if dims not in (2, 3) or not all(isinstance(w, int) and w > 0 for w in window):
        raise ConfigError(
            f"window must be 2 or 3 positive ints (H, W) or (D, H, W), got {tuple(window)}",
            hint="pass the patch size the model was trained on, e.g. (128, 128)",
        )
    if image.dim() not in (dims + 1, dims + 2):
        raise DataError(
            f"image has shape {tuple(image.shape)} but a {dims}D window needs (C, *spatial) or "
            f"(B, C, *spatial) with {dims} spatial dims",
            hint="add a channel dim for a grayscale image, e.g. image[None]",
        )
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}", hint="0.5 is the usual choice")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch_size must be a positive int, got {batch_size}", hint="e.g. 4")
    if blend not in BLENDS:
        raise ConfigError(f"blend {blend!r} is unknown", hint=f"allowed values: {', '.join(BLENDS)}")
    if not sigma_scale > 0:
        raise ConfigError(f"sigma_scale must be positive, got {sigma_scale}", hint="0.125 is nnU-Net's")
    return dims
