"""dlforge's split is scikit-learn's train_test_split, index for index, without importing it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from dlforge.data.catalog import digits_arrays
from dlforge.data.splits import shuffle_split


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("n, n_test, counts", [
    (10, 3, None), (1797, 270, None), (150, 30, [50, 50, 50]), (178, 27, [59, 71, 48]),
    (100, 15, [90, 10]), (203, 31, [100, 60, 30, 11, 2]), (45, 15, [3] * 15),
])
def test_shuffle_split_equals_train_test_split(n, n_test, counts, seed):
    labels = None
    if counts is not None:
        labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    expected_train, expected_test = train_test_split(np.arange(n), test_size=n_test, stratify=labels,
                                                     random_state=seed)
    train, test = shuffle_split(n, n_test, labels, seed)
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(test, expected_test)


def test_a_class_of_one_cannot_be_stratified_as_in_scikit_learn():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError):
        train_test_split(np.arange(7), test_size=3, stratify=labels, random_state=0)
    with pytest.raises(ValueError):
        shuffle_split(7, 3, labels, 0)


def test_digits_read_from_the_file_equal_load_digits():
    from sklearn.datasets import load_digits

    images, target = digits_arrays()
    raw = load_digits()
    np.testing.assert_array_equal(images, raw.images)
    np.testing.assert_array_equal(target, raw.target)
