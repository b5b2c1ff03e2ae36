"""Spatial splits and folds: held-out regions, gaps, and where patches may start."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from dlforge.data import seg_regions
from dlforge.data.seg_regions import spatial_folds, spatial_split, valid_starts
from dlforge.errors import ConfigError


def test_doctests():
    assert doctest.testmod(seg_regions).failed == 0


def test_one_image_is_split_into_bands_with_a_gap_before_the_held_out_part():
    split = spatial_split((1, 512, 512), val=0.15, test=0.15, gap=16)
    assert split.by == "regions"
    (test,), (val,) = split.test, split.val
    assert test.slices[0] == slice(435, 512) and val.slices[0] == slice(358, 435)
    rows = np.flatnonzero(split.train[0].any(axis=1))
    assert rows.max() == 358 - 16 - 1  # the last training row keeps the gap to validation
    assert not split.train[0, 342:].any()


def test_enough_images_are_held_out_whole_and_never_trained_on():
    split = spatial_split((10, 16, 16), val=0.2, test=0.2, seed=3)
    held = {b.index for b in split.test + split.val}
    assert split.by == "images" and len(held) == 4
    for i in range(10):
        assert split.train[i].all() == (i not in held) and split.train[i].any() == (i not in held)


def test_quadrant_folds_test_every_pixel_once_and_keep_the_gap():
    folds = spatial_folds((1, 64, 48), 4, gap=8)
    covered = np.zeros((64, 48), int)
    for f in folds:
        (box,) = f.test
        covered[box.slices] += 1
        grown = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in box.slices)
        assert not f.train[(0, *grown)].any()  # no training pixel within the gap
        assert f.train[0].sum() == 64 * 48 - f.train[0][grown].size
    assert (covered == 1).all()


def test_band_folds_when_k_is_not_four_and_whole_images_when_enough():
    folds = spatial_folds((1, 100, 30), 5, gap=0)
    assert [f.test[0].slices[0] for f in folds] == [slice(0, 20), slice(20, 40), slice(40, 60), slice(60, 80),
                                                    slice(80, 100)]
    by_image = spatial_folds((6, 8, 8), 3, seed=1)
    assert sorted(b.index for f in by_image for b in f.test) == list(range(6))


def test_valid_starts_equals_a_brute_force_search_in_2d_and_3d():
    rng = np.random.default_rng(0)
    for shape, patch in (((12, 9), (3, 4)), ((6, 7, 5), (2, 3, 2))):
        train = rng.random(shape) > 0.1
        got = valid_starts(train, patch)
        want = np.zeros(tuple(s - p + 1 for s, p in zip(shape, patch)), bool)
        for idx in np.ndindex(*want.shape):
            want[idx] = train[tuple(slice(i, i + p) for i, p in zip(idx, patch))].all()
        assert np.array_equal(got, want)


def test_bad_splits_are_config_errors():
    with pytest.raises(ConfigError, match="leaves too little"):
        spatial_split((1, 64, 64), val=0.4, test=0.4, gap=16)
    with pytest.raises(ConfigError, match="nothing to train"):
        spatial_split((1, 64, 64), val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="cannot hold anything out"):
        spatial_folds((1, 64, 64), 1)
