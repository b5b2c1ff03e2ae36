"""Topic 18 at the quick budget: agreement with scikit-learn, the trap, the CV spread."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from dlforge.evaluate import classification_metrics, evaluate
from dlforge.lab import q18_classification_metrics as q18

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(18).numbers


def test_sklearn_comparison_is_zero_on_agreement_and_catches_a_wrong_metric():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)  # (40, 3)
    y = rng.integers(0, 3, size=40)
    ev = classification_metrics(torch.from_numpy(y), torch.from_numpy(probs))
    diff, same = q18.sklearn_differences(ev, y, probs)
    assert diff < 1e-6 and same
    ev.metrics["f1_macro"] += 0.01
    assert q18.sklearn_differences(ev, y, probs)[0] == pytest.approx(0.01, abs=1e-6)


def test_majority_class_predictor_always_says_its_label():
    model = q18.MajorityClass(1, 2)
    x, y = torch.randn(20, 5), torch.tensor([0] * 2 + [1] * 18)
    assert (model(x).argmax(1) == 1).all()
    ev = evaluate(model, (x, y))
    assert ev.metrics["accuracy"] == pytest.approx(0.9) and ev.per_class[0]["f1"] == 0.0
    assert ev.metrics["roc_auc"] == pytest.approx(0.5)  # a constant score ranks nothing


def test_dlforge_agrees_with_sklearn_and_the_trap_shows(numbers):
    assert numbers["metrics_max_abs_diff_vs_sklearn"] <= 1e-6
    assert numbers["confusion_matches_sklearn"] == 1
    assert sum(map(sum, numbers["binary_confusion"])) == 114  # 20% of 569 samples
    # the always-benign predictor is right exactly on the benign share of the test split
    minority, n = numbers["imbalanced_minority_in_test"], numbers["imbalanced_test_size"]
    assert numbers["trap_accuracy"] == pytest.approx(1 - minority / n, abs=1e-4)
    assert numbers["trap_minority_recall"] == 0.0 and numbers["trap_minority_f1"] == 0.0
    assert minority >= 3  # stratified: the 5% class reaches the test split


def test_cross_validation_summary_matches_its_folds(numbers):
    folds = numbers["cv_accuracy_per_fold"]
    assert len(folds) == numbers["cv_folds"] == 5
    assert numbers["cv_accuracy_mean"] == pytest.approx(np.mean(folds), abs=1e-4)
    assert numbers["cv_accuracy_std"] == pytest.approx(np.std(folds), abs=1e-4)  # population std
    assert min(folds) <= numbers["cv_accuracy_mean"] <= max(folds)


def test_docstring_examples():
    result = doctest.testmod(q18, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
