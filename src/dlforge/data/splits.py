"""Seeded train/validation/test splits, stratified by class for classification."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlforge.data.bundle import DataBundle
from dlforge.errors import DataError


@dataclass
class Splits:
    """The parts of a bundle; ``val`` or ``test`` is None when its fraction is 0."""

    train: DataBundle
    val: DataBundle | None
    test: DataBundle | None


def _check_fractions(val: float, test: float) -> None:
    ok = all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in (val, test))
    if not (ok and 0 <= val and 0 <= test and val + test < 1):
        raise DataError(
            f"split fractions must satisfy 0 <= val, 0 <= test and val + test < 1; "
            f"got val={val!r}, test={test!r}",
            hint="set data.split, e.g. {val: 0.15, test: 0.15}",
        )


def _count(fraction: float, n: int, part: str) -> int:
    count = int(round(fraction * n))
    if fraction > 0 and count == 0:
        raise DataError(
            f"the {part} split would be empty: {fraction} of {n} samples rounds to 0",
            hint=f"raise data.split.{part}, set it to 0, or add data",
        )
    return count


def shuffle_split(
    n: int, n_test: int, labels: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of scikit-learn's ``train_test_split(range(n), test_size=n_test,
    stratify=labels, random_state=seed)``, to the index.

    Written out (scikit-learn 1.x ``ShuffleSplit`` / ``StratifiedShuffleSplit``, a test
    checks it against ``train_test_split``) so that every training run does not pay
    scikit-learn's one-second import. Raises ValueError where scikit-learn does: a class
    with one sample, or fewer train or test places than classes.

    Example:
        >>> train, test = shuffle_split(10, 3, seed=0)
        >>> sorted([*train, *test]) == list(range(10)), len(test)
        (True, 3)
    """
    rng = np.random.RandomState(seed)
    n_train = n - n_test
    if labels is None:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    classes, y_index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError("cannot stratify: a class has one sample, or a side has fewer places than classes")
    members = np.split(np.argsort(y_index, kind="stable"), np.cumsum(counts)[:-1])  # per class
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for k in range(len(classes)):
        shuffled = members[k].take(rng.permutation(counts[k]), mode="clip")
        train.extend(shuffled[: n_i[k]])
        test.extend(shuffled[n_i[k] : n_i[k] + t_i[k]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Draws per class in proportion to ``counts``; leftovers go to the largest remainders,
    ties broken at random (scikit-learn's ``_approximate_mode``)."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def _split_off(
    idx: np.ndarray, n_out: int, bundle: DataBundle, stratify: bool, seed: int, part: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n_out`` of ``idx`` away from the rest: (rest, out)."""
    labels = bundle.y[idx] if stratify else None
    try:
        rest, out = shuffle_split(len(idx), n_out, labels, seed)
        return idx[rest], idx[out]
    except ValueError as err:
        if labels is None:
            raise
        # sklearn's message names neither our class names nor the config key.
        counts = np.bincount(labels, minlength=len(bundle.class_names or []))
        present = np.flatnonzero(counts)
        rarest = present[np.argmin(counts[present])]
        name = bundle.class_names[rarest] if bundle.class_names else str(rarest)
        if counts[rarest] < 2:
            reason = (f"class '{name}' has only {counts[rarest]} sample; "
                      "stratifying needs at least 2 per class")
        else:
            reason = (f"the {len(present)} classes cannot all reach both sides of a "
                      f"{len(idx) - n_out}/{n_out} split (the rarest, class '{name}', has "
                      f"{counts[rarest]} samples)")
        raise DataError(
            f"cannot stratify the {part} split of {len(idx)} samples: {reason}",
            hint="add samples of the rare classes, change the fractions in data.split, "
            "or set data.split.stratify: false",
        ) from err


def split_indices(
    bundle: DataBundle, *, val: float = 0.15, test: float = 0.15, stratify: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Sorted sample indices of the train, val and test splits (None for a 0 fraction).

    This is the split :func:`split` and :func:`dlforge.data.prepare` make, so it tells
    which raw samples ended up where.

    Example:
        >>> from dlforge.data import load_builtin
        >>> train, val, test = split_indices(load_builtin("iris"), val=0.2, test=0)
        >>> len(train), len(val), test
        (120, 30, None)
    """
    _check_fractions(val, test)
    n = len(bundle)
    n_val, n_test = _count(val, n, "val"), _count(test, n, "test")
    if n - n_val - n_test < 1:
        raise DataError(f"the train split of {n} samples would be empty",
                        hint="lower the val and test fractions in data.split, or add data")
    stratify = stratify and bundle.task == "classification"  # regression has no classes
    rest, test_idx = np.arange(n), None
    if n_test:
        rest, test_idx = _split_off(rest, n_test, bundle, stratify, seed, "test")
    val_idx = None
    if n_val:
        rest, val_idx = _split_off(rest, n_val, bundle, stratify, seed, "val")
    # Sorting keeps file order inside each split; loaders shuffle batches anyway.
    return tuple(None if i is None else np.sort(i) for i in (rest, val_idx, test_idx))


def split(
    bundle: DataBundle, *, val: float = 0.15, test: float = 0.15, stratify: bool = True,
    seed: int = 0,
) -> Splits:
    """Split a bundle into train, val and test parts; the same seed gives the same split.

    Classification splits keep each class's share (``stratify``); regression never
    stratifies.

    Example:
        >>> from dlforge.data import load_builtin
        >>> parts = split(load_builtin("wine"), val=0.2, test=0.2, seed=0)
        >>> len(parts.train), len(parts.val), len(parts.test)
        (106, 36, 36)
    """
    train, val_idx, test_idx = split_indices(bundle, val=val, test=test, stratify=stratify,
                                             seed=seed)
    return Splits(
        train=bundle.subset(train),
        val=None if val_idx is None else bundle.subset(val_idx),
        test=None if test_idx is None else bundle.subset(test_idx),
    )
