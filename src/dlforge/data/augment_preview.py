"""The augmentation preview: a PNG grid of training images and their augmented versions
(what ``dlforge augment-preview`` writes), to see what an augmentation does before training.

Example:
    >>> from dlforge.data.augment import build_augment
    >>> augment = build_augment({"preset": "digits"}, (1, 8, 8), 10)
    >>> preview_grid(torch.rand(8, 1, 8, 8), augment, "/tmp/preview.png").name  # doctest: +SKIP
    'preview.png'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dlforge.errors import DataError

PREVIEW_TILE = 64  # preview tiles are upscaled (nearest) to at least this many pixels
PREVIEW_GAP = 2  # white pixels between preview tiles


def _to_pixels(x: torch.Tensor, stats: Mapping[str, Any] | None, low: float, high: float) -> np.ndarray:
    """(N, C, H, W) model inputs -> (N, H, W, C) uint8 for display."""
    x = x.detach().float().cpu()
    if stats is not None:
        mean = torch.tensor(stats["mean"]).view(1, -1, 1, 1)
        x = x * torch.tensor(stats["std"]).view(1, -1, 1, 1) + mean
    else:  # unknown scale: stretch the originals' range onto [0, 1]
        x = (x - low) / max(high - low, 1e-12)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def preview_grid(
    x: torch.Tensor, augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    path: str | Path, n: int = 8, *, rows: int = 3, y: torch.Tensor | None = None,
    stats: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PNG: a row of ``n`` originals, then ``rows`` rows of augmented versions.

    ``x`` are standardised images ``(N, C, H, W)`` with 1 or 3 channels; ``stats``
    (default: the augmentation's own) un-standardise them for display. Tiles are
    upscaled (nearest) to at least 64 pixels and separated by 2 white pixels.
    ``y`` are labels for mixup/cutmix (default: class 0).

    Example:
        >>> from dlforge.data.augment import build_augment
        >>> augment = build_augment({"preset": "digits"}, (1, 8, 8), 10)
        >>> preview_grid(torch.rand(8, 1, 8, 8), augment, "/tmp/preview.png").name  # doctest: +SKIP
        'preview.png'
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"a preview needs images (N, C, H, W) with 1 or 3 channels, got {tuple(x.shape)}",
                        hint="augment-preview works on image data sets")
    x = x[:n]  # (n, C, H, W)
    stats = stats if stats is not None else getattr(augment, "stats", None)
    if y is None:
        regression = getattr(augment, "num_classes", 0) is None
        y = torch.zeros(len(x), 1, device=x.device) if regression else torch.zeros(len(x), dtype=torch.long,
                                                                                     device=x.device)
    was_training = getattr(augment, "training", None)
    if was_training is not None:
        augment.train()
    versions = [x] + [augment(x, y)[0] for _ in range(rows)]
    if was_training is False:
        augment.eval()
    low, high = float(x.min()), float(x.max())
    tiles = [_to_pixels(v, stats, low, high) for v in versions]  # each (n, H, W, C)
    size = max(1, math.ceil(PREVIEW_TILE / max(x.shape[-2:])))
    height, width, channels = x.shape[2] * size, x.shape[3] * size, x.shape[1]
    grid = np.full((len(tiles) * (height + PREVIEW_GAP) + PREVIEW_GAP,
                    len(x) * (width + PREVIEW_GAP) + PREVIEW_GAP, channels), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            top, left = PREVIEW_GAP + r * (height + PREVIEW_GAP), PREVIEW_GAP + c * (width + PREVIEW_GAP)
            grid[top:top + height, left:left + width] = tile.repeat(size, axis=0).repeat(size, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if channels == 1 else grid).save(path)  # 2-D: mode L, else RGB
    return path
