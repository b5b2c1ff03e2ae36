"""Cross-validation's config-free half: the folds, and the summary of per-fold scores.

:func:`fold_indices` cuts a data set into k shuffled, seeded (stratified) folds;
:meth:`CVResult.from_folds` turns each fold's held-out metrics into their mean and
spread. Training a model per fold from a run config is the pipeline's
(:func:`dlforge.pipeline.crossval.cross_validate`).

Example:
    >>> result = CVResult.from_folds(k=2, stratified=False, folds=[{"rmse": 1.0}, {"rmse": 3.0}])
    >>> result.mean, result.std
    ({'rmse': 2.0}, {'rmse': 1.0})
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dlforge.data import DataBundle
from dlforge.errors import ConfigError, DataError


@dataclass
class CVResult:
    """Per-fold held-out metrics and their mean and population std (ddof=0) over folds.

    A metric that is NaN in any fold is NaN in ``mean`` and ``std``: the spread of the
    defined folds alone would overstate the evidence. ``class_ratios[i]`` are the class
    fractions of held-out fold ``i`` and ``overall_ratio`` those of the whole data set
    (both empty for regression).
    """

    k: int
    stratified: bool
    folds: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    class_ratios: list[list[float]] = field(default_factory=list)
    overall_ratio: list[float] = field(default_factory=list)
    segmentation: dict | None = None  # a segmentation CV's report view (dlforge.pipeline.seg_cv)

    @classmethod
    def from_folds(cls, k: int, stratified: bool, folds: Sequence[dict[str, float]],
                   class_ratios: Sequence[list[float]] = (), overall_ratio: Sequence[float] = ()) -> CVResult:
        """The result of ``k`` folds' metrics (every fold has the same keys), summarised."""
        keys = list(folds[0])
        table = np.array([[fold[key] for key in keys] for fold in folds])  # (k, metrics)
        mean = dict(zip(keys, table.mean(axis=0).tolist()))
        std = dict(zip(keys, table.std(axis=0, ddof=0).tolist()))  # population std over folds
        return cls(k=k, stratified=stratified, folds=list(folds), mean=mean, std=std,
                   class_ratios=list(class_ratios), overall_ratio=list(overall_ratio))

    def to_dict(self) -> dict:
        """A JSON-able dict."""
        return asdict(self)


def class_ratios(y: np.ndarray, n_classes: int) -> list[float]:
    """The fraction of each class ``0 .. n_classes - 1`` in ``y``.

    Example:
        >>> class_ratios(np.array([0, 1, 1, 1]), 3)
        [0.25, 0.75, 0.0]
    """
    return (np.bincount(y, minlength=n_classes) / len(y)).tolist()


def fold_indices(
    bundle: DataBundle, k: int = 5, *, stratified: bool = True, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, held_out)`` sample indices of each of ``k`` shuffled, seeded folds
    (scikit-learn's ``KFold`` / ``StratifiedKFold``, imported here: it takes a second to load).

    Stratified folds (classification only) keep each class's share in every fold; they
    need at least ``k`` samples of every class.

    Example:
        >>> from dlforge.data import load_builtin
        >>> folds = fold_indices(load_builtin("iris"), k=5, seed=0)
        >>> [len(held_out) for _, held_out in folds]
        [30, 30, 30, 30, 30]
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"cross-validation needs k >= 2 folds, got {k!r}",
                          hint="pass k=5 or k=10, the usual choices")
    n = len(bundle)
    if k > n:
        raise DataError(f"cannot make {k} folds of {n} samples", hint=f"use k <= {n}")
    stratified = stratified and bundle.task == "classification"
    if stratified:
        counts = np.bincount(bundle.y)
        present = np.flatnonzero(counts)
        rarest = present[np.argmin(counts[present])]
        if counts[rarest] < k:
            name = bundle.class_names[rarest] if bundle.class_names else str(rarest)
            raise DataError(
                f"cannot stratify {k} folds: class '{name}' has only {counts[rarest]} samples, "
                "so some held-out folds would have none of it",
                hint=f"use k <= {counts[rarest]}, add samples of the rare class, or pass stratified=False",
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    labels = bundle.y if stratified else None
    return list(splitter.split(np.zeros((n, 1)), labels))
