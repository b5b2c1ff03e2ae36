"""Seeded synthetic microscopy: elliptical nuclei with texture, blur and noise, and exact masks.

The masks come from the geometry (the ellipse or ellipsoid equation), never from a
segmentation of the image, so they are exact ground truth. Images are only
microscopy-like: every bundle is marked ``synthetic=True`` and says so in its notes.
For scale and imbalance sweeps (``foreground`` from 20% down to 1%).

Example:
    >>> bundle = synthetic_nuclei(4, size=(64, 64), foreground=0.1, seed=0)
    >>> bundle.x.shape, bundle.y.shape, bundle.synthetic
    ((4, 1, 64, 64), (4, 64, 64), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlforge.data.segmentation import SegmentationBundle
from dlforge.errors import DataError

DEFAULT_BLOBS = 12
BACKGROUND = 0.1  # mean background intensity; nuclei are 0.45..0.9 before noise
BLUR_SIGMA = 1.0  # optical blur in pixels; applied to the image, never to the mask
PLACEMENT_TRIES = 20  # centre draws per blob before an overlap is accepted


def _rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    return q * np.sign(np.diag(r))  # (dims, dims), uniformly random orthogonal


def _ellipse(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray,
             rot: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The boolean ellipse(oid) inside its bounding box, and that box as slices."""
    reach = radii.max()
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)  # (*box, dims)
    local = (grids - centre) @ rot  # (*box, dims) in the ellipse's own axes
    return box, ((local / radii) ** 2).sum(-1) <= 1.0


def _one_image(shape: tuple[int, ...], blobs: int | None, foreground: float | None, radius: tuple[float, float],
               noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image, instance ids) pair, both of ``shape``."""
    from scipy import ndimage  # here, not at import: `dlforge train` on tables never loads scipy

    dims = len(shape)
    ids = np.zeros(shape, np.int32)
    signal = np.full(shape, BACKGROUND, np.float32)
    target = None if foreground is None else foreground * ids.size
    count = 0
    while (count < blobs) if target is None else ((ids > 0).sum() < target):
        radii = rng.uniform(radius[0], radius[1], dims)
        if target is not None:  # shrink the last blob so the fraction lands near the request
            missing, area = target - (ids > 0).sum(), np.pi ** (dims / 2) * radii.prod() * (4 / 3 if dims == 3 else 1)
            radii = radii * min(1.0, (missing / area) ** (1 / dims)) if missing < area else radii
            radii = np.maximum(radii, 0.75)
        for _ in range(PLACEMENT_TRIES):
            centre = rng.uniform(0, 1, dims) * (np.array(shape) - 1)
            box, inside = _ellipse(shape, centre, radii, _rotation(rng, dims))
            if not (ids[box][inside] > 0).any():
                break
        count += 1
        if count > 10 * ids.size:  # a foreground the radii cannot reach
            break
        ids[box][inside] = count
        grain = ndimage.gaussian_filter(rng.standard_normal(inside.shape), 1.0)  # smooth chromatin-like grain
        texture = 1 + 0.15 * grain / (grain.std() + 1e-8)  # about 15% intensity variation
        signal[box][inside] = (rng.uniform(0.45, 0.9) * texture)[inside]
    image = ndimage.gaussian_filter(signal, BLUR_SIGMA) + noise * rng.standard_normal(shape)
    return np.clip(image, 0, 1).astype(np.float32), ids


def _check(n: int, size: Sequence[int], blobs: int | None, foreground: float | None,
           radius: Sequence[float], noise: float) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"n must be a positive integer, got {n!r}", hint="pass e.g. n=16")
    if len(size) not in (2, 3) or any(int(s) < 8 for s in size):
        raise DataError(f"size must be (H, W) or (D, H, W) of at least 8 each, got {tuple(size)}",
                        hint="pass e.g. size=(128, 128) or size=(32, 64, 64)")
    if blobs is not None and foreground is not None:
        raise DataError("pass blobs or foreground, not both", hint="foreground picks the blob count itself")
    if foreground is not None and not 0 < foreground < 0.7:
        raise DataError(f"foreground must be a fraction in (0, 0.7), got {foreground}", hint="pass e.g. 0.2")
    if len(radius) != 2 or not 0 < radius[0] <= radius[1]:
        raise DataError(f"radius must be (min, max) with 0 < min <= max, got {radius}", hint="pass e.g. (4, 10)")
    if noise < 0:
        raise DataError(f"noise must be >= 0, got {noise}", hint="pass e.g. noise=0.05")


def synthetic_nuclei(n: int, size: Sequence[int] = (128, 128), *, blobs: int | None = None,
                     radius: tuple[float, float] = (4.0, 10.0), foreground: float | None = None,
                     noise: float = 0.05, seed: int = 0) -> SegmentationBundle:
    """``n`` synthetic fluorescence-like images of nuclei with exact masks, 2D or 3D.

    Each image holds elliptical (ellipsoidal in 3D) nuclei of semi-axes drawn from
    ``radius``, with a smooth intensity texture, Gaussian blur and Gaussian ``noise``.
    Give ``blobs`` (default 12) or a ``foreground`` fraction: blobs are then added until
    it is reached, the last one shrunk to land close to it. Mask: 0 background, 1 nucleus;
    per-nucleus ids in ``bundle.instances``. Same arguments, same arrays.

    Example:
        >>> b = synthetic_nuclei(2, size=(16, 32, 32), radius=(3, 5), seed=1)
        >>> b.input_shape, b.class_names, int(b.instances.max()) > 0
        ((1, 16, 32, 32), ['background', 'nucleus'], True)
    """
    _check(n, size, blobs, foreground, radius, noise)
    shape = tuple(int(s) for s in size)
    blobs = DEFAULT_BLOBS if blobs is None and foreground is None else blobs
    rng = np.random.default_rng(seed)
    pairs = [_one_image(shape, blobs, foreground, (float(radius[0]), float(radius[1])), float(noise), rng)
             for _ in range(n)]
    ids = np.stack([p[1] for p in pairs])  # (N, H, W) or (N, D, H, W)
    spec = f"blobs={blobs}" if foreground is None else f"foreground={foreground}"
    return SegmentationBundle(
        name="synthetic_nuclei",
        x=np.stack([p[0] for p in pairs])[:, None],  # (N, 1, H, W) or (N, 1, D, H, W)
        y=(ids > 0).astype(np.int64),
        class_names=["background", "nucleus"],
        encoding={"kind": "segmentation", "mode": "L", "scale": 1.0, "size": list(shape)},
        synthetic=True,
        notes=[(f"synthetic: generated by synthetic_nuclei(n={n}, size={shape}, {spec}, seed={seed}); "
                "exact masks, but not real microscopy")],
        instances=ids,
    )
