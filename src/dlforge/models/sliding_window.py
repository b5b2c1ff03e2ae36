"""Patch-based (sliding-window) inference for segmentation models, 2D and 3D, in bounded memory.

A model trained on patches predicts an image of any size window by window: windows overlap
by ``overlap`` of their side, run through the model ``batch_size`` at a time, and their
outputs are blended with an importance map (a Gaussian centred on the window, as in MONAI
and nnU-Net, or constant weights) and divided by the summed weights. Window positions and
the Gaussian follow MONAI's ``sliding_window_inference`` exactly (the last window of each
axis is moved back to end at the image border), so both give the same numbers.

Two entry points:

* :func:`sliding_window_predict`, the reference: the blended output, (B, C_out, *spatial)
  float32, plus one weight map, (*spatial) float32, both on CPU (or ``device``); for a
  4096x4096 image and two classes 128 MiB + 64 MiB. ``out=`` a float32 ``numpy.memmap``
  accumulates the output in a file instead.
* :func:`sliding_window_segment`, for label maps of large images: windows sweep along the
  first spatial axis and only a band of at most ``window[0]`` rows of the blended output
  and of the weights is kept; finished rows become labels (uint8). Its labels equal the
  reference's argmax exactly (``benchmarks/segmentation.py`` measures its peak memory against
  MONAI's on a 4096x4096 image).

In both the input is never padded or copied as a whole, and the model sees ``batch_size``
windows at a time.

Example:
    >>> import torch
    >>> model = torch.nn.Conv2d(1, 2, 3, padding=1)
    >>> sliding_window_predict(model, torch.rand(1, 100, 70), window=(32, 32)).shape
    torch.Size([2, 100, 70])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dlforge.errors import ConfigError, DataError
from dlforge.models._windows import (
    BLENDS,
    as_accumulator,
    check_args,
    crop,
    importance_map,
    overlap_slices,
    starts,
)

__all__ = ["BLENDS", "gaussian_importance_map", "sliding_window_predict", "sliding_window_segment"]


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
    dims = check_args(image, window, overlap, batch_size, blend, sigma_scale)
    batched = image.dim() == dims + 2
    images = image if batched else image[None]  # (B, C, *spatial)
    size = tuple(images.shape[2:])
    device = torch.device("cpu") if device is None else torch.device(device)
    model_device = next(model.parameters(), images).device
    # Pad (lo, hi) per axis where the image is smaller than the window, as MONAI does.
    pad = [((w - s) // 2, (w - s) - (w - s) // 2) if w > s else (0, 0) for s, w in zip(size, window)]
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, pad))
    corners = [starts(s, w, overlap) for s, w in zip(padded, window)]  # per axis
    windows = list(itertools.product(*corners))  # window start corners in padded coordinates
    importance = importance_map(window, blend, sigma_scale).to(device)  # (*window)

    weight = torch.zeros(size, dtype=torch.float32, device=device)  # (*spatial)
    for corner in windows:
        src, dst = overlap_slices(corner, window, pad, size)
        weight[dst] += importance[src]

    acc = None if out is None else as_accumulator(out, images, dims)  # (B, C_out, *spatial)
    jobs = [(b, corner) for b in range(images.shape[0]) for corner in windows]
    with torch.no_grad():
        for first in range(0, len(jobs), batch_size):
            batch = jobs[first : first + batch_size]
            crops = torch.stack([crop(images[b], c, window, pad) for b, c in batch])  # (n, C, *window)
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
                src, dst = overlap_slices(corner, window, pad, size)
                acc[b][(slice(None), *dst)] += p[(slice(None), *src)]
    assert acc is not None  # there is always at least one window
    acc /= weight  # every pixel is covered by at least one window, each weight >= 1e-3
    result = acc if out is not None or out_dtype == torch.float32 else acc.to(out_dtype)
    return result if batched else result[0]


def sliding_window_segment(
    model: nn.Module,
    image: torch.Tensor,
    window: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    probabilities: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The label map of ``image`` (C, *spatial), predicted window by window in a band of memory.

    The windows, their batches and the blending are those of :func:`sliding_window_predict`
    and the labels equal ``sliding_window_predict(...).argmax(0)`` exactly, but the blended
    output is never held whole: windows sweep along the first spatial axis, and only the
    band of rows that windows still to come can touch (at most ``window[0]`` rows of the
    (C_out, rows, *rest) float32 sum and of its weight map) stays in memory; rows behind
    the sweep are divided by their weights, turned into labels and dropped. Peak memory is
    the input, the label map (uint8 up to 256 classes, else int64), the two bands (each
    with a spare) and the model's activations for ``batch_size`` windows; for a 8192x8192
    image, two classes and 512-pixel windows: 256 MiB + 64 MiB + 96 MiB + the model's share.

    A one-channel model is read as a logit (label 1 where it is > 0). With
    ``probabilities=True`` the result is ``(labels, foreground)``: the foreground
    probability (sigmoid of one channel, softmax of the second of two) as float16 of the
    spatial shape; other channel counts refuse it.

    Example:
        >>> model = torch.nn.Conv2d(1, 3, 3, padding=1)
        >>> labels = sliding_window_segment(model, torch.rand(1, 100, 70), (32, 32))
        >>> labels.shape, labels.dtype
        (torch.Size([100, 70]), torch.uint8)
    """
    dims = check_args(image, window, overlap, batch_size, blend, sigma_scale)
    if image.dim() != dims + 1:
        raise DataError(
            f"sliding_window_segment takes one image (C, *spatial), got shape {tuple(image.shape)}",
            hint="call it once per image of a batch, e.g. [sliding_window_segment(model, x, ...) for x in batch]",
        )
    size = tuple(image.shape[1:])
    model_device = next(model.parameters(), image).device
    pad = [((w - s) // 2, (w - s) - (w - s) // 2) if w > s else (0, 0) for s, w in zip(size, window)]
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, pad))
    # itertools.product varies the first axis slowest: windows come in order of their first row.
    windows = list(itertools.product(*[starts(s, w, overlap) for s, w in zip(padded, window)]))
    importance = importance_map(window, blend, sigma_scale)  # (*window)
    band = _Band(size, min(window[0], size[0]), probabilities)
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            corners = windows[first : first + batch_size]
            crops = torch.stack([crop(image, c, window, pad) for c in corners])  # (n, C, *window)
            pred = model(crops.to(model_device))  # (n, C_out, *window)
            if tuple(pred.shape[2:]) != tuple(window):
                raise ConfigError(
                    f"the model maps windows of size {tuple(window)} to outputs of size "
                    f"{tuple(pred.shape[2:])}; sliding windows need them equal",
                    hint="use a fully convolutional segmentation model with 'same' padding",
                )
            pred = pred.to(device="cpu", dtype=torch.float32) * importance  # (n, C_out, *window)
            for p, corner in zip(pred, corners):
                src, dst = overlap_slices(corner, window, pad, size)
                band.add(p[(slice(None), *src)], importance[src], dst)
    band.finish(size[0])
    return (band.labels, band.foreground) if probabilities else band.labels


class _Band:
    """The rows of the blended sum (and of its weights) that windows still to come can touch.

    Windows arrive in order of their first row, so when one starts at row ``top`` every row
    above it is final: it is divided by its weight, its labels are written, and the band
    moves down. Sums and weights add up in window order, as in sliding_window_predict, so
    the labels match its argmax bit for bit. Each band has a spare of its size that the
    kept rows move into, so the sweep allocates no new band memory.
    """

    def __init__(self, size: tuple[int, ...], rows: int, probabilities: bool) -> None:
        self.size, self.rows, self.probabilities = size, rows, probabilities
        self.top = 0  # the image row at band row 0; rows above it are final
        self.acc = torch.empty(0)  # (C_out, rows, *rest), allocated with the first window
        self.weight = torch.zeros((1, rows, *size[1:]), dtype=torch.float32)  # (1, rows, *rest)
        self.spares = (torch.empty(0), torch.zeros_like(self.weight))
        self.labels = torch.empty(0)
        self.foreground = torch.empty(0)

    def add(self, pred: torch.Tensor, importance: torch.Tensor, dst: tuple[slice, ...]) -> None:
        """Add one window's weighted output ``pred`` (C_out, *part) at image slices ``dst``."""
        if not self.acc.numel():
            self._allocate(pred.shape[0])
        if dst[0].start > self.top:
            self._finalize(dst[0].start)
        local = (slice(None), slice(dst[0].start - self.top, dst[0].stop - self.top), *dst[1:])
        self.acc[local] += pred
        self.weight[local] += importance

    def finish(self, end: int) -> None:
        self._finalize(end)

    def _allocate(self, classes: int) -> None:
        if self.probabilities and classes not in (1, 2):
            raise ConfigError(
                f"probabilities=True needs a model with 1 or 2 output channels, this one has {classes}",
                hint="use probabilities=False, or sliding_window_predict for all class probabilities",
            )
        self.acc = torch.zeros((classes, self.rows, *self.size[1:]), dtype=torch.float32)  # (C_out, rows, *rest)
        self.spares = (torch.zeros_like(self.acc), self.spares[1])
        self.labels = torch.empty(self.size, dtype=torch.uint8 if classes <= 256 else torch.int64)  # (*spatial)
        if self.probabilities:
            self.foreground = torch.empty(self.size, dtype=torch.float16)  # (*spatial)

    def _finalize(self, end: int) -> None:
        """Write the labels of image rows [top, end) and move the band down to start at ``end``."""
        n = end - self.top
        blended = self.acc[:, :n] / self.weight[:, :n]  # (C_out, n, *rest); every pixel has weight >= 1e-3
        rows = slice(self.top, end)
        self.labels[rows] = _argmax(blended)
        if self.probabilities:
            prob = torch.sigmoid(blended[0]) if len(blended) == 1 else torch.softmax(blended, 0)[1]
            self.foreground[rows] = prob
        del blended
        if end < self.size[0]:  # move the kept rows to the top of the spare, which becomes the band
            moved = []
            for band, spare in zip((self.acc, self.weight), self.spares):
                spare[:, : self.rows - n] = band[:, n:]
                spare[:, self.rows - n :] = 0
                moved.append(spare)
            self.spares = (self.acc, self.weight)
            self.acc, self.weight = moved
        self.top = end


def _argmax(scores: torch.Tensor) -> torch.Tensor:
    """The first best channel of (C, *rest) scores, as torch.argmax(0); one channel: 1 where > 0.

    A loop over channels, because torch's argmax over a short leading axis is a strided
    reduction that took 70% of the time of a two-class sweep.
    """
    if len(scores) == 1:  # a single logit: foreground where it is positive
        return (scores[0] > 0).to(torch.uint8)
    best, labels = scores[0], torch.zeros(scores.shape[1:], dtype=torch.int64)  # (*rest)
    for c in range(1, len(scores)):
        better = scores[c] > best  # strictly: ties keep the first channel, as argmax does
        labels.masked_fill_(better, c)
        best = torch.where(better, scores[c], best)
    return labels


def fit_window(model: nn.Module, window: Sequence[int], size: Sequence[int]) -> tuple[int, ...]:
    """``window`` with every side longer than the image's cut to the largest multiple of the
    model's ``size_multiple`` (a U-Net's 2 ** (levels - 1)) that fits, so windows hold image,
    not padding: zero padding shifts a normalising layer's statistics (instance norm sees a
    quarter of zeros in a 77-row band under 104-row windows) and with them the answer.
    Sides already inside the image, or images thinner than one multiple, are left as they are.

    Example:
        >>> from dlforge.models.unet import build_unet
        >>> fit_window(build_unet((1, 104, 104), 2), (104, 104), (77, 512))
        (72, 104)
    """
    multiple = int(getattr(model, "size_multiple", 1))
    return tuple(s - s % multiple if w > s >= multiple else w for w, s in zip(window, size))


def gaussian_importance_map(window: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """The (*window) Gaussian weight map: sigma = sigma_scale * side, min clamp 1e-3.

    It is 1 at the centre pixel of odd sides (not normalised further, as in MONAI).

    Example:
        >>> gaussian_importance_map((5, 5))[2, 2].item()
        1.0
    """
    return importance_map(window, "gaussian", sigma_scale)
