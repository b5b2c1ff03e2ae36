"""Splits: stratified, seeded, a partition of the data, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from dlforge.data import DataBundle, load_builtin, split, split_indices
from dlforge.errors import DataError


def _bundle(y: list[int], task: str = "classification") -> DataBundle:
    n = len(y)
    x = np.arange(n, dtype=np.float32)[:, None]  # (N, 1): x tells which sample it was
    if task == "classification":
        labels, names = np.asarray(y, dtype=np.int64), [f"c{k}" for k in range(max(y) + 1)]
    else:
        labels, names = np.asarray(y, dtype=np.float32)[:, None], None
    return DataBundle("toy", x, labels, task, "tabular", names, ["i"],
                      {"kind": "tabular", "columns": ["i"], "categories": {}})


def test_splits_partition_the_data():
    bundle = load_builtin("wine")
    train, val, test = split_indices(bundle, val=0.2, test=0.1, seed=3)
    assert (len(train), len(val), len(test)) == (124, 36, 18)
    everything = np.concatenate([train, val, test])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(bundle)))
    parts = split(bundle, val=0.2, test=0.1, seed=3)
    np.testing.assert_array_equal(parts.val.x, bundle.x[val])
    np.testing.assert_array_equal(parts.test.y, bundle.y[test])
    assert parts.train.class_names == bundle.class_names


def test_stratified_class_ratios_stay_within_one_sample():
    bundle = _bundle([0] * 70 + [1] * 20 + [2] * 10)  # imbalanced on purpose
    parts = split(bundle, val=0.15, test=0.15, seed=0)
    overall = np.bincount(bundle.y) / len(bundle)
    for part in (parts.train, parts.val, parts.test):
        counts = np.bincount(part.y, minlength=3)
        assert np.all(np.abs(counts - overall * len(part)) <= 1), (counts, len(part))


def test_same_seed_same_split_other_seed_other_split():
    bundle = load_builtin("iris")
    a = split_indices(bundle, seed=11)
    b = split_indices(bundle, seed=11)
    c = split_indices(bundle, seed=12)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_zero_fraction_gives_none():
    parts = split(load_builtin("iris"), val=0.0, test=0.2)
    assert parts.val is None and len(parts.test) == 30 and len(parts.train) == 120
    whole = split(load_builtin("iris"), val=0, test=0)
    assert whole.val is None and whole.test is None
    np.testing.assert_array_equal(whole.train.x, load_builtin("iris").x)


def test_regression_is_never_stratified():
    bundle = _bundle(list(range(40)), task="regression")  # every target distinct
    parts = split(bundle, val=0.25, test=0.25, stratify=True)
    assert (len(parts.train), len(parts.val), len(parts.test)) == (20, 10, 10)


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (0.5, 0.5), (0.7, 0.4), ("0.1", 0.1)])
def test_bad_fractions_name_the_config_key(val, test):
    with pytest.raises(DataError) as err:
        split(load_builtin("iris"), val=val, test=test)
    assert "data.split" in err.value.hint and "val + test < 1" in err.value.message


def test_a_split_that_rounds_to_nothing_is_refused():
    with pytest.raises(DataError, match="the val split would be empty"):
        split(_bundle([0, 1] * 5), val=0.01, test=0.3)


def test_an_empty_train_split_is_refused():
    with pytest.raises(DataError, match="train split of 2 samples would be empty"):
        split(_bundle([0, 1]), val=0.3, test=0.3, stratify=False)  # 1 val + 1 test


def test_a_class_too_small_to_stratify_is_named_with_its_count():
    with pytest.raises(DataError) as err:
        split(_bundle([0] * 20 + [1] * 20 + [2]), val=0.2, test=0.2)
    assert "class 'c2' has only 1 sample" in err.value.message
    assert "data.split.stratify: false" in err.value.hint
    parts = split(_bundle([0] * 20 + [1] * 20 + [2]), val=0.2, test=0.2, stratify=False)
    assert len(parts.train) + len(parts.val) + len(parts.test) == 41


def test_a_split_smaller_than_the_class_count_is_explained():
    with pytest.raises(DataError, match="3 classes cannot all reach both sides"):
        split(_bundle([0, 1, 2] * 10), val=0.0, test=0.05)  # 2 test samples, 3 classes
