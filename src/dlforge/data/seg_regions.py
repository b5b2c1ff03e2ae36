"""Where segmentation training may look, and what it is scored on: spatial splits and folds.

A segmentation set is often one or two large images, so a split by sample leaves nothing
to test on. Held-out data are then *regions*: boxes of an image that training never sees,
pixels or labels, with a ``gap`` of pixels around them that training patches may not
touch either (neighbouring pixels are correlated; a gap keeps the score honest).

* With enough images (at least one per held-out part), whole images are held out.
* Otherwise, :func:`spatial_split` holds out bands along the longest spatial axis (the
  last ``test`` share for test, the ``val`` share before it for validation), and
  :func:`spatial_folds` holds out quadrants (``k=4``) or ``k`` bands.

Training then draws patches whose whole window lies inside ``train`` (a boolean map per
image, :func:`valid_starts`).

Example:
    >>> split = spatial_split((1, 100, 60), val=0.2, test=0.2, gap=4)
    >>> [b.shape for b in split.test], [b.shape for b in split.val]
    ([(20, 60)], [(20, 60)])
    >>> int(split.train[0].sum()) // 60  # rows 0..55: 60 rows minus the 4-row gap
    56
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlforge.errors import ConfigError


@dataclass(frozen=True)
class Box:
    """A held-out region: image ``index`` and one slice per spatial axis."""

    index: int
    slices: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices)

    def to_dict(self) -> dict:
        return {"image": self.index, "box": [[s.start, s.stop] for s in self.slices]}


@dataclass
class RegionSplit:
    """Boolean train maps (N, *S) and the held-out boxes of one split or fold."""

    train: np.ndarray
    val: list[Box]
    test: list[Box]
    by: str  # "images" or "regions"

    def describe(self) -> str:
        held = f"{len(self.test)} test" + (f", {len(self.val)} validation" if self.val else "")
        if self.by == "images":
            return f"split by image: {held} image(s), the rest for training"
        shares = ", ".join(f"{'x'.join(map(str, b.shape))} at {_corner(b)}" for b in [*self.test, *self.val])
        return f"split by region ({held} box(es): {shares}); training patches keep out of them"


def _corner(box: Box) -> str:
    return "(" + ", ".join(str(s.start) for s in box.slices) + ")"


def _whole(index: int, spatial: tuple[int, ...]) -> Box:
    return Box(index, tuple(slice(0, s) for s in spatial))


def _take(n: int, share: float) -> int:
    return max(1, round(share * n)) if share > 0 else 0


def _blocked(train: np.ndarray, box: Box, gap: int) -> None:
    """Mark ``box`` grown by ``gap`` on every side as off limits for training."""
    grown = tuple(slice(max(s.start - gap, 0), s.stop + gap) for s in box.slices)
    train[(box.index, *grown)] = False


def spatial_split(shape: tuple[int, ...], *, val: float, test: float, gap: int = 16,
                  seed: int = 0) -> RegionSplit:
    """Hold out ``val`` and ``test`` shares of ``shape`` = (N, *S): whole images when there
    are enough, else bands along the longest spatial axis of every image.

    Example:
        >>> s = spatial_split((10, 32, 32), val=0.1, test=0.2, seed=0)
        >>> s.by, len(s.test), len(s.val), int(s.train.any(axis=(1, 2)).sum())
        ('images', 2, 1, 7)
    """
    n, spatial = shape[0], tuple(shape[1:])
    _check(val, test, gap)
    n_test, n_val = _take(n, test), _take(n, val)
    train = np.ones((n, *spatial), dtype=bool)
    if n > n_test + n_val:
        order = np.random.default_rng(seed).permutation(n)
        test_boxes = [_whole(int(i), spatial) for i in sorted(order[:n_test])]
        val_boxes = [_whole(int(i), spatial) for i in sorted(order[n_test : n_test + n_val])]
        for b in [*test_boxes, *val_boxes]:
            train[b.index] = False
        return RegionSplit(train, val_boxes, test_boxes, "images")
    axis = int(np.argmax(spatial))
    side = spatial[axis]
    t, v = round(test * side), round(val * side)
    if side - t - v - gap < side * 0.25:
        raise ConfigError(f"holding out {test:.0%} + {val:.0%} of a {side}-pixel side with a {gap}-pixel gap "
                          f"leaves too little to train on",
                          hint="lower data.split.val/test or data.gap, or add images")

    def band(lo: int, hi: int, i: int) -> Box:
        return Box(i, tuple(slice(lo, hi) if a == axis else slice(0, s) for a, s in enumerate(spatial)))

    test_boxes = [band(side - t, side, i) for i in range(n)] if t else []
    val_boxes = [band(side - t - v, side - t, i) for i in range(n)] if v else []
    for b in [*test_boxes, *val_boxes]:
        _blocked(train, b, gap)
    return RegionSplit(train, val_boxes, test_boxes, "regions")


def spatial_folds(shape: tuple[int, ...], k: int, *, gap: int = 16, seed: int = 0) -> list[RegionSplit]:
    """``k`` folds over ``shape`` = (N, *S): whole images when N >= k, else regions: the
    quadrants of the last two axes when ``k == 4``, or ``k`` bands along the longest axis.
    Every pixel is tested exactly once.

    Example:
        >>> folds = spatial_folds((1, 64, 64), 4, gap=8)
        >>> [f.test[0].shape for f in folds]
        [(32, 32), (32, 32), (32, 32), (32, 32)]
        >>> int(folds[0].train[0].sum())  # 64*64 minus the 40x40 grown top-left quadrant
        2496
    """
    n, spatial = shape[0], tuple(shape[1:])
    if k < 2:
        raise ConfigError(f"{k} folds cannot hold anything out", hint="use k >= 2, e.g. 4 or 5")
    _check(0.0, 0.0, gap)
    if n >= k:
        order = np.random.default_rng(seed).permutation(n)
        folds = []
        for part in np.array_split(order, k):
            train = np.ones((n, *spatial), dtype=bool)
            train[part] = False
            folds.append(RegionSplit(train, [], [_whole(int(i), spatial) for i in sorted(part)], "images"))
        return folds
    if k == 4 and len(spatial) >= 2:
        axes = (len(spatial) - 2, len(spatial) - 1)
        cuts = [[(0, spatial[a] // 2), (spatial[a] // 2, spatial[a])] for a in axes]
        parts = [(r, c) for r in cuts[0] for c in cuts[1]]
    else:
        axes = (int(np.argmax(spatial)),)
        edges = np.linspace(0, spatial[axes[0]], k + 1).round().astype(int)
        parts = [((int(edges[j]), int(edges[j + 1])),) for j in range(k)]
    folds = []
    for part in parts:
        ranges = dict(zip(axes, part))
        slices = tuple(slice(*ranges[a]) if a in ranges else slice(0, s) for a, s in enumerate(spatial))
        if any(s.stop - s.start < 1 for s in slices):
            raise ConfigError(f"the images ({'x'.join(map(str, spatial))}) are too small for {k} folds",
                              hint="use fewer folds")
        boxes = [Box(i, slices) for i in range(n)]
        train = np.ones((n, *spatial), dtype=bool)
        for b in boxes:
            _blocked(train, b, gap)
        folds.append(RegionSplit(train, [], boxes, "regions"))
    return folds


def valid_starts(train: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Where a ``patch`` window may start so that it lies wholly inside ``train`` (*S):
    a boolean map of shape ``S - patch + 1`` (empty along an axis shorter than the patch).

    Example:
        >>> m = np.ones((5, 5), bool); m[2, 2] = False
        >>> valid_starts(m, (2, 2)).astype(int).tolist()
        [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    """
    blocked = (~train).astype(np.int64)
    table = blocked
    for axis in range(blocked.ndim):  # summed-area table with a zero border
        table = np.cumsum(np.pad(table, [(1, 0) if a == axis else (0, 0) for a in range(blocked.ndim)]), axis=axis)
    out_shape = tuple(s - p + 1 for s, p in zip(train.shape, patch))
    if any(s <= 0 for s in out_shape):
        return np.zeros(tuple(max(s, 0) for s in out_shape), dtype=bool)
    total = np.zeros(out_shape, dtype=np.int64)
    dims = train.ndim
    for corner in range(2**dims):  # inclusion-exclusion over the window's corners
        bits = [(corner >> a) & 1 for a in range(dims)]
        idx = tuple(slice(p, p + o) if b else slice(0, o) for b, p, o in zip(bits, patch, out_shape))
        sign = (-1) ** (dims - sum(bits))
        total += sign * table[idx]
    return total == 0


def _check(val: float, test: float, gap: int) -> None:
    if gap < 0:
        raise ConfigError(f"data.gap is {gap}", hint="use a gap of 0 or more pixels")
    if val + test >= 1:
        raise ConfigError(f"data.split.val + test = {val + test:.2f} leaves nothing to train on",
                          hint="keep val + test below 1")
