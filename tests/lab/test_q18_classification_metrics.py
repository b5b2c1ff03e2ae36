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
    assert sum(map(sum, numbers["binary_confusion"])) == pytest.approx(114, abs=1e-3)  # 20% of 569, every seed
    # the always-benign predictor is right exactly on the benign share of the test split
    minority, n = numbers["imbalanced_minority_in_test"], numbers["imbalanced_test_size"]
    assert numbers["trap_accuracy"] == pytest.approx(1 - minority / n, abs=1e-4)
    assert numbers["trap_minority_recall"] == 0.0 and numbers["trap_minority_f1"] == 0.0
    assert minority >= 3  # stratified: the 5% class reaches the test split


def test_cross_validation_summary_matches_its_folds(numbers):
    folds = numbers["cv_accuracy_per_fold"]
    assert len(folds) == numbers["cv_folds"] == 5
    assert numbers["cv_accuracy_mean"] == pytest.approx(np.mean(folds), abs=1e-4)
    # folds are averaged over seeds element by element; std is a seminorm, so the std of the
    # averaged folds is at most the mean of the seeds' (population) stds
    assert 0 < np.std(folds) <= numbers["cv_accuracy_std"] + 1e-4
    assert min(folds) <= numbers["cv_accuracy_mean"] <= max(folds)


def test_the_single_split_is_measured_in_fold_stds_per_seed(numbers):
    f = finding_for(18)
    assert len(f.seeds) == q18.SEEDS["quick"]
    per_seed = lambda key: f.per_seed.get(key, [numbers[key]] * len(f.seeds))  # noqa: E731
    for z, gap, two_std in zip(*(per_seed(k) for k in ("single_split_gap_in_cv_stds", "single_split_gap_to_cv_mean",
                                                         "cv_accuracy_two_std"))):
        assert z == pytest.approx(2 * gap / two_std, rel=1e-3)
    assert numbers["single_split_gap_in_cv_stds"] <= 2  # the claim, on the mean over seeds


def test_docstring_examples():
    result = doctest.testmod(q18, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
