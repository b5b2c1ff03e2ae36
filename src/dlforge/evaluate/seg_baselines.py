"""Classical segmentation baselines: Otsu's threshold (Otsu 1979).

A trained model should beat a global threshold on its own images; the report puts the
Otsu row beside the model's. Otsu is a baseline only, never ground truth.

Example:
    >>> img = np.zeros((4, 4)); img[:2] = 1.0
    >>> int(otsu_segment(img).sum())
    8
"""

from __future__ import annotations

import numpy as np

from dlforge.errors import DataError


def _histogram(image: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin centres, as ``skimage.exposure.histogram(source_range="image")``."""
    if np.issubdtype(image.dtype, np.integer):  # one bin per integer value in [min, max]
        lo = int(image.min())
        counts = np.bincount((image.astype(np.int64) - lo).ravel())
        return counts, np.arange(lo, lo + counts.size)
    counts, edges = np.histogram(image, bins=nbins)  # numpy picks [min, max], as scikit-image
    return counts, (edges[:-1] + edges[1:]) / 2.0


def otsu_threshold(image, nbins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the histogram.

    Matches scikit-image's ``threshold_otsu`` (``_skimage2/filters/thresholding.py``):
    float images use ``nbins`` equal bins over [min, max] and the threshold is a bin
    centre; integer images get one bin per value. Foreground is ``image > threshold``.
    A constant image returns its value. As in scikit-image, the threshold is the centre
    of the last background bin, so a float pixel in the upper half of that bin counts
    as foreground.

    Example:
        >>> otsu_threshold(np.array([0, 1, 8, 9]))  # uint: cuts after each value
        1.0
    """
    image = np.asarray(image)
    image = image.astype(np.uint8) if image.dtype == bool else image
    if image.size == 0 or not np.isfinite(image).all():
        raise DataError(f"Otsu needs a non-empty image of finite values, got shape {image.shape}",
                        hint="replace NaN/inf pixels first")
    if np.all(image == image.flat[0]):
        return float(image.flat[0])
    counts, centers = _histogram(image, nbins)
    counts = counts.astype(np.float64)
    weight1 = np.cumsum(counts)  # pixels at or below each cut
    weight2 = np.cumsum(counts[::-1])[::-1]  # pixels at or above each bin
    # The first and last bins hold the min and max, so no weight below is zero.
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    # Cut after bin i: class 1 = bins 0..i, class 2 = bins i+1..; proportional to σ_B².
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[np.argmax(variance12)])


def otsu_segment(image, *, spatial_dims: int | None = None) -> np.ndarray:
    """Foreground (1) where the channel mean is above Otsu's threshold: bright objects.

    ``image`` is channel-first ``(C, H, W)`` or ``(C, D, H, W)`` (dlforge's layout), or a
    plain ``(H, W)``; a volume without a channel axis, ``(D, H, W)``, needs
    ``spatial_dims=3``. Returns an int64 mask of {0, 1} of the spatial shape. Made for
    fluorescence, where nuclei are bright; invert a bright-field image first.

    Example:
        >>> otsu_segment(np.array([[[0, 0, 9, 9]]]))
        array([[0, 0, 1, 1]])
    """
    image = np.asarray(image)
    if spatial_dims is None:
        spatial_dims = 2 if image.ndim in (2, 3) else 3
    if spatial_dims not in (2, 3) or image.ndim not in (spatial_dims, spatial_dims + 1):
        raise DataError(f"image of shape {image.shape} is neither (*S) nor (C, *S) with "
                        f"{spatial_dims} spatial dims",
                        hint="put channels first: (C, H, W) or (C, D, H, W); pass spatial_dims=3 "
                             "for a volume without a channel axis")
    if image.ndim == spatial_dims + 1:
        # One channel keeps its dtype (integer images histogram per value, as scikit-image).
        image = image[0] if image.shape[0] == 1 else image.mean(axis=0)
    return (image > otsu_threshold(image)).astype(np.int64)
