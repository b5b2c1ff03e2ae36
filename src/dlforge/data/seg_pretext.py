"""Self-supervised pretext tasks on unlabelled images: inpainting and denoising patches.

A U-Net pretrained to restore corrupted patches of unlabelled images has learnt
image features before it sees a single mask (Pathak et al. 2016, context encoders;
Vincent et al. 2008, denoising autoencoders). :func:`pretext_dataset` gives the
(corrupted, clean) pairs such a reconstruction model trains on:

* ``inpaint`` cuts the patch into a grid of blocks (a side of ``patch // 8``, at least 1
  pixel) and blanks ``round(mask_ratio * blocks)`` of them: they are refilled with
  Gaussian noise of std ``noise`` (zeros when ``noise=0``); every other pixel is untouched;
* ``denoise`` adds Gaussian noise of std ``noise`` to every pixel.

Like :class:`dlforge.data.mlm.MaskedLMDataset`, every access draws afresh (a new random
patch, a new corruption), from the dataset's own generator seeded with ``seed``; in
DataLoader workers each worker reseeds from ``seed`` and the worker seed PyTorch gives it.

Example:
    >>> ds = pretext_dataset(torch.rand(3, 1, 64, 64), (32, 32), length=10, seed=0)
    >>> corrupted, clean = ds[0]
    >>> len(ds), corrupted.shape, clean.shape
    (10, torch.Size([1, 32, 32]), torch.Size([1, 32, 32]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from dlforge.data.seg_regions import valid_starts
from dlforge.errors import ConfigError, DataError

METHODS = ("inpaint", "denoise")


def block_size(patch: Sequence[int]) -> tuple[int, ...]:
    """The side of an inpainting block on each axis: ``patch // 8``, at least 1.

    Example:
        >>> block_size((64, 64)), block_size((4, 32))
        ((8, 8), (1, 4))
    """
    return tuple(max(1, int(p) // 8) for p in patch)


def inpaint_mask(patch: Sequence[int], mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean (*patch) mask of ``round(mask_ratio * blocks)`` blocks of a block grid.

    Blocks are :func:`block_size`; a grid cell cut by the patch border is a smaller block.

    Example:
        >>> m = inpaint_mask((16, 16), 0.25, torch.Generator().manual_seed(0))
        >>> m.shape, int(m.sum())  # 16 of the 64 blocks of 2x2
        (torch.Size([16, 16]), 64)
    """
    block = block_size(patch)
    cells = [-(-int(p) // b) for p, b in zip(patch, block)]  # blocks per axis, rounded up
    n_cells = int(np.prod(cells))
    chosen = torch.zeros(n_cells, dtype=torch.bool)
    chosen[torch.randperm(n_cells, generator=generator)[: round(mask_ratio * n_cells)]] = True
    grid = chosen.view(*cells)  # (*cells)
    for axis, b in enumerate(block):
        grid = grid.repeat_interleave(b, dim=axis)  # each cell becomes a block
    return grid[tuple(slice(0, int(p)) for p in patch)]  # (*patch)


class PretextDataset(Dataset):
    """``length`` random (corrupted, clean) patches of ``images``; see the module docstring."""

    def __init__(self, images: torch.Tensor | np.ndarray | Sequence[torch.Tensor], patch: Sequence[int], *,
                 method: str = "inpaint", length: int = 256, mask_ratio: float = 0.5, noise: float = 0.5,
                 seed: int = 0, train: Sequence[np.ndarray] | None = None) -> None:
        patch = tuple(int(p) for p in patch)
        items = [torch.as_tensor(i) for i in images] if isinstance(images, (list, tuple)) else list(torch.as_tensor(images))
        if method not in METHODS:
            raise ConfigError(f"pretext method {method!r} is unknown", hint=f"use one of: {', '.join(METHODS)}")
        if not items or any(not torch.is_floating_point(i) or i.ndim != len(patch) + 1 for i in items):
            shown = [f"{i.dtype} {tuple(i.shape)}" for i in items[:2]]
            raise DataError(f"pretext images must be float (C, *S) arrays with {len(patch)} spatial dims, "
                            f"at least one, got {shown or 'none'}",
                            hint="normalise the images to float and add a channel axis, e.g. x[:, None].float()")
        small = [tuple(i.shape[1:]) for i in items if any(p < 1 or p > s for p, s in zip(patch, i.shape[1:]))]
        if small:
            raise ConfigError(f"patch {patch} does not fit images of spatial size {small[0]}",
                              hint="use a patch no larger than the images on every axis")
        if not 0 < mask_ratio <= 1 or noise < 0 or length < 1:
            raise ConfigError(f"mask_ratio={mask_ratio}, noise={noise}, length={length}",
                              hint="use 0 < mask_ratio <= 1 (e.g. 0.5), noise >= 0 (e.g. 0.5), length >= 1")
        if method == "denoise" and noise == 0:
            raise ConfigError("denoising with noise=0 corrupts nothing", hint="use noise > 0, e.g. 0.5")
        # Where a window may start: anywhere, or wholly inside each image's ``train`` map.
        self.starts = None if train is None else [valid_starts(np.asarray(t, bool), patch) for t in train]
        self.usable = [k for k in range(len(items)) if self.starts is None or self.starts[k].any()]
        if not self.usable:
            raise DataError(f"no {'x'.join(map(str, patch))} patch fits inside the images' training regions",
                            hint="use a smaller patch, or give unlabelled images")
        self.images, self.patch, self.method = items, patch, method
        self.length, self.mask_ratio, self.noise, self.seed = int(length), float(mask_ratio), float(noise), seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None

    def _start(self, k: int, g: torch.Generator) -> list[int]:
        sizes = self.images[k].shape[1:]
        for _ in range(32):  # rejection: cheap when most of the image may be used
            start = [int(torch.randint(s - p + 1, (), generator=g)) for p, s in zip(self.patch, sizes)]
            if self.starts is None or self.starts[k][tuple(start)]:
                return start
        valid = np.argwhere(self.starts[k])
        return valid[int(torch.randint(len(valid), (), generator=g))].tolist()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        worker = get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self.generator.manual_seed((self.seed * 1_000_003 + worker.seed) % 2**63)
        g = self.generator
        k = self.usable[int(torch.randint(len(self.usable), (), generator=g))]
        start = self._start(k, g)
        box = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
        clean = self.images[k][(slice(None), *box)]  # (C, *patch)
        fill = torch.randn(clean.shape, generator=g) * self.noise  # (C, *patch)
        if self.method == "denoise":
            return clean + fill, clean
        mask = inpaint_mask(self.patch, self.mask_ratio, g)  # (*patch), shared by all channels
        return torch.where(mask, fill, clean), clean


def pretext_dataset(images: torch.Tensor | np.ndarray | Sequence[torch.Tensor], patch: Sequence[int], *,
                    method: str = "inpaint", length: int = 256, mask_ratio: float = 0.5, noise: float = 0.5,
                    seed: int = 0, train: Sequence[np.ndarray] | None = None) -> PretextDataset:
    """A map-style dataset of ``length`` fresh (corrupted (C, *patch), clean (C, *patch)) pairs.

    ``images`` (N, C, *S) float, 2D or 3D; ``method`` is ``"inpaint"`` (blank
    ``mask_ratio`` of the blocks, refill with noise of std ``noise``) or ``"denoise"``
    (add noise of std ``noise``). Each access draws a new patch and corruption. ``images``
    may also be a list of (C, *S) images of different sizes; ``train`` (one boolean (*S) map
    per image) keeps every window wholly inside it (a run's training region).

    Example:
        >>> ds = pretext_dataset(torch.rand(2, 1, 32, 32), (16, 16), method="denoise", noise=0.1)
        >>> x, y = ds[0]; bool((x - y).abs().max() > 0)
        True
    """
    return PretextDataset(images, patch, method=method, length=length, mask_ratio=mask_ratio, noise=noise, seed=seed,
                          train=train)


__all__ = ["METHODS", "PretextDataset", "block_size", "inpaint_mask", "pretext_dataset"]
