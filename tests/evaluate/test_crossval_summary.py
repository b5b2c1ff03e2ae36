"""The config-free half of cross-validation: a fold summary (mean and population std over
folds, NaN kept) and the module's examples. Folds and the training per fold are tested in
tests/pipeline/test_crossval.py."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import dlforge.evaluate.crossval as module
from dlforge.evaluate import CVResult


def test_from_folds_is_numpy_mean_and_population_std_and_keeps_nan() -> None:
    folds = [{"accuracy": 0.9, "roc_auc": 0.95},
             {"accuracy": 0.7, "roc_auc": float("nan")},
             {"accuracy": 0.8, "roc_auc": 0.9}]
    result = CVResult.from_folds(3, True, folds, [[0.5, 0.5]] * 3, [0.5, 0.5])
    assert result.mean["accuracy"] == pytest.approx(np.mean([0.9, 0.7, 0.8]))
    assert result.std["accuracy"] == pytest.approx(np.std([0.9, 0.7, 0.8], ddof=0))
    assert math.isnan(result.mean["roc_auc"]) and math.isnan(result.std["roc_auc"])  # one undefined fold: undefined
    assert result.to_dict()["folds"] == folds and result.overall_ratio == [0.5, 0.5]


def test_docstring_examples_run() -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
