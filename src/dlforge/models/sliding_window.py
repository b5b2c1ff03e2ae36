"""Patch-based (sliding-window) inference for segmentation models, 2D and 3D, in bounded memory.

A model trained on patches predicts an image of any size window by window: windows overlap
by ``overlap`` of their side, run through the model ``batch_size`` at a time, and their
outputs are blended with an importance map (a Gaussian centred on the window, as in MONAI
and nnU-Net, or constant weights) and divided by the summed weights. Window positions and
the Gaussian follow MONAI's ``sliding_window_inference`` exactly (the last window of each
axis is moved back to end at the image border), so both give the same numbers.

Peak memory: the blended output, (B, C_out, *spatial) float32, plus one weight map,
(*spatial) float32, both on CPU (or ``device``); the input is never padded or copied as a
whole, and the model sees ``batch_size`` windows at a time. For a 4096x4096 image and two
output classes that is 128 MiB + 64 MiB. To bound it further, pass ``out=`` a float32
``numpy.memmap`` of the output shape: the output is then accumulated in the file and only
the weight map stays in memory.

Example:
    >>> import torch
    >>> model = torch.nn.Conv2d(1, 2, 3, padding=1)
    >>> sliding_window_predict(model, torch.rand(1, 100, 70), window=(32, 32)).shape
    torch.Size([2, 100, 70])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import ConfigError, DataError

BLENDS = ("gaussian", "constant")


def sliding_window_predict(
    model: nn.Module,
    image: torch.Tensor,
    window: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    out_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    out: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict ``image`` window by window and blend the windows' outputs.

    ``image`` is (C, *spatial) or (B, C, *spatial) with ``len(window)`` spatial dims (2 or
    3); the result is (C_out, *spatial) or (B, C_out, *spatial). The model must map
    (n, C, *window) to (n, C_out, *window); it runs under ``torch.no_grad`` on the device
    of its parameters. Images smaller than the window are zero-padded around (and the
    output cropped back). ``device`` holds the output and the weight map (default CPU).
    ``out``, when given, is a float32 array or tensor of the output shape (e.g. a
    ``numpy.memmap``) that receives the result, which then shares its memory.

    Example:
        >>> model = torch.nn.Conv3d(1, 3, 3, padding=1)
        >>> sliding_window_predict(model, torch.rand(2, 1, 20, 40, 40), (16, 32, 32),
        ...                        blend="constant").shape
        torch.Size([2, 3, 20, 40, 40])
    """
    dims = _check_args(image, window, overlap, batch_size, blend, sigma_scale)
    batched = image.dim() == dims + 2
    images = image if batched else image[None]  # (B, C, *spatial)
    size = tuple(images.shape[2:])
    device = torch.device("cpu") if device is None else torch.device(device)
    model_device = next(model.parameters(), images).device
    # Pad (lo, hi) per axis where the image is smaller than the window, as MONAI does.
    pad = [((w - s) // 2, (w - s) - (w - s) // 2) if w > s else (0, 0) for s, w in zip(size, window)]
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, pad))
    starts = [_starts(s, w, overlap) for s, w in zip(padded, window)]
    windows = list(itertools.product(*starts))  # window start corners in padded coordinates
    importance = _importance_map(window, blend, sigma_scale).to(device)  # (*window)

    weight = torch.zeros(size, dtype=torch.float32, device=device)  # (*spatial)
    for corner in windows:
        src, dst = _overlap_slices(corner, window, pad, size)
        weight[dst] += importance[src]

    acc = None if out is None else _as_accumulator(out, images, dims)  # (B, C_out, *spatial)
    jobs = [(b, corner) for b in range(images.shape[0]) for corner in windows]
    with torch.no_grad():
        for first in range(0, len(jobs), batch_size):
            batch = jobs[first : first + batch_size]
            crops = torch.stack([_crop(images[b], c, window, pad) for b, c in batch])  # (n, C, *window)
            pred = model(crops.to(model_device))  # (n, C_out, *window)
            if tuple(pred.shape[2:]) != tuple(window):
                raise ConfigError(
                    f"the model maps windows of size {tuple(window)} to outputs of size "
                    f"{tuple(pred.shape[2:])}; sliding windows need them equal",
                    hint="use a fully convolutional segmentation model with 'same' padding",
                )
            pred = pred.to(device=device, dtype=torch.float32) * importance  # (n, C_out, *window)
            if acc is None:
                acc = torch.zeros((images.shape[0], pred.shape[1], *size), dtype=torch.float32, device=device)
            elif acc.shape[1] != pred.shape[1]:
                raise ConfigError(
                    f"out has {acc.shape[1]} channels but the model predicts {pred.shape[1]}",
                    hint="allocate out with shape (B, C_out, *spatial) or (C_out, *spatial)",
                )
            for p, (b, corner) in zip(pred, batch):
                src, dst = _overlap_slices(corner, window, pad, size)
                acc[b][(slice(None), *dst)] += p[(slice(None), *src)]
    assert acc is not None  # there is always at least one window
    acc /= weight  # every pixel is covered by at least one window, each weight >= 1e-3
    result = acc if out is not None or out_dtype == torch.float32 else acc.to(out_dtype)
    return result if batched else result[0]


def gaussian_importance_map(window: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """The (*window) Gaussian weight map: sigma = sigma_scale * side, min clamp 1e-3.

    It is 1 at the centre pixel of odd sides (not normalised further, as in MONAI).

    Example:
        >>> gaussian_importance_map((5, 5))[2, 2].item()
        1.0
    """
    return _importance_map(window, "gaussian", sigma_scale)


def _importance_map(window: Sequence[int], blend: str, sigma_scale: float) -> torch.Tensor:
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


def _starts(size: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis: a step of window*(1-overlap), last one ends at the border."""
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / step)) if d * step + window >= size) + 1
    return [min(d * step, size - window) for d in range(count)]


def _overlap_slices(
    corner: Sequence[int], window: Sequence[int], pad: Sequence[tuple[int, int]], size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (in the window, in the unpadded image) of the part of a window inside the image."""
    src, dst = [], []
    for start, w, (lo, _), s in zip(corner, window, pad, size):
        begin, end = max(start - lo, 0), min(start - lo + w, s)  # image coordinates
        src.append(slice(begin - (start - lo), end - (start - lo)))
        dst.append(slice(begin, end))
    return tuple(src), tuple(dst)


def _crop(
    image: torch.Tensor, corner: Sequence[int], window: Sequence[int], pad: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """One window of a (C, *spatial) image, zero-padded where it reaches past the image."""
    src, dst = _overlap_slices(corner, window, pad, image.shape[1:])
    crop = image[(slice(None), *dst)]  # (C, *part)
    widths = [(s.start, w - s.stop) for s, w in zip(src, window)]
    if any(a or b for a, b in widths):
        crop = F.pad(crop, [n for pair in reversed(widths) for n in pair])  # (C, *window)
    return crop


def _as_accumulator(out: np.ndarray | torch.Tensor, images: torch.Tensor, dims: int) -> torch.Tensor:
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


def _check_args(
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
