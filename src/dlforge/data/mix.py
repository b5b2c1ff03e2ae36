"""Batch-level mixup and cutmix: blend pairs of samples and their labels by a weight lambda.

Both pair every sample with another of the same batch (a random permutation) and draw
``lam ~ Beta(alpha, alpha)``. Labels are one-hot (or already soft) ``(B, C)`` rows, so the
mixed label is ``lam * y_a + (1 - lam) * y_b`` and the loss is plain cross-entropy with
soft targets (:func:`dlforge.train.cross_entropy`), which equals
``lam * CE(out, a) + (1 - lam) * CE(out, b)`` because cross-entropy is linear in the
target. Regression targets are mixed the same way (mixup only).

Randomness comes from torch's global generator (the training loop seeds it), so a run is
reproducible; ``lam`` and ``perm`` can also be given, which the tests use.

Example:
    >>> import torch
    >>> x, y = torch.ones(4, 1, 8, 8), torch.eye(2)[[0, 0, 1, 1]]
    >>> x_mix, y_mix, lam = mixup(x, y, alpha=0.4, lam=0.75, perm=torch.tensor([2, 3, 0, 1]))
    >>> y_mix[0].tolist()
    [0.75, 0.25]
"""

from __future__ import annotations

import math

import torch

from dlforge.errors import ConfigError, DataError


def sample_lambda(alpha: float) -> float:
    """One draw of ``Beta(alpha, alpha)`` from torch's global generator.

    Example:
        >>> 0.0 <= sample_lambda(0.2) <= 1.0
        True
    """
    if not alpha > 0:
        raise ConfigError(f"the Beta alpha of mixup/cutmix must be above 0, got {alpha!r}",
                          hint="use e.g. 0.2 for mixup or 1.0 for cutmix; 0 switches it off")
    a = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(a, a).sample())  # drawn on the CPU: one number per batch


def _pairing(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    if len(x) != len(y):
        raise DataError(f"{len(x)} inputs but {len(y)} targets in one batch",
                        hint="pass the inputs and targets of the same batch")
    if perm is None:
        return torch.randperm(len(x), device=x.device)
    return perm.to(x.device)


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, *, lam: float | None = None,
    perm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blend each sample with ``x[perm]``: ``lam * x + (1 - lam) * x[perm]``, labels alike.

    ``y`` is float: one-hot/soft class rows ``(B, C)`` or regression targets. Returns
    the mixed inputs, the mixed targets and the ``lam`` used.

    Example:
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> mixup(x, y, 1.0, lam=0.25, perm=torch.tensor([1, 0]))[0].flatten().tolist()
        [0.75, 0.25]
    """
    perm = _pairing(x, y, perm)
    lam = sample_lambda(alpha) if lam is None else float(lam)
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    y_mixed = lam * y + (1.0 - lam) * y[perm]
    return x_mixed.to(x.dtype), y_mixed.to(y.dtype), lam


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A random ``(top, bottom, left, right)`` box covering about ``1 - lam`` of the image.

    The box keeps the image's aspect ratio and is clipped at the borders, so the area
    actually pasted can be smaller; :func:`cutmix` reports the exact kept fraction.

    Example:
        >>> top, bottom, left, right = cutmix_box(8, 8, lam=0.75)
        >>> (bottom - top) * (right - left) <= 16
        True
    """
    side = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(height * side), round(width * side)
    cy = int(torch.randint(height, ()))  # the centre may sit anywhere; the box is then clipped
    cx = int(torch.randint(width, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return top, bottom, left, right


def cutmix(
    x: torch.Tensor, y: torch.Tensor, alpha: float, *, lam: float | None = None,
    perm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a box of ``x[perm]`` into each image; labels mix by the area each one keeps.

    ``x`` is ``(B, C, H, W)``; ``y`` is ``(B, C)`` one-hot or soft class rows. The
    returned ``lam`` is the exact fraction of pixels still from the original image
    (after clipping the box at the borders), not the Beta draw.

    Example:
        >>> x, y = torch.zeros(2, 1, 4, 4), torch.eye(2)
        >>> x_mix, y_mix, lam = cutmix(x, y, 1.0, lam=0.75, perm=torch.tensor([1, 0]))
        >>> abs(float(y_mix[0, 0]) - lam) < 1e-6  # sample 0 keeps lam of its own label
        True
    """
    if x.ndim != 4:
        raise DataError(f"cutmix needs images (B, C, H, W), got inputs of shape {tuple(x.shape)}",
                        hint="use mixup for tables and sequences")
    perm = _pairing(x, y, perm)
    lam = sample_lambda(alpha) if lam is None else float(lam)
    height, width = x.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam)
    x_mixed = x.clone()
    x_mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]  # (B, C, h, w)
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    y_mixed = kept * y + (1.0 - kept) * y[perm]
    return x_mixed, y_mixed.to(y.dtype), kept
