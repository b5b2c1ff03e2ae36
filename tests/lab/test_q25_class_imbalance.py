"""Topic 25 at the quick budget: the remedies' numbers agree with scikit-learn and with
each other, and the fold ratios are what stratification promises."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score
from sklearn.model_selection import KFold, StratifiedKFold

from dlforge.data import load_builtin
from dlforge.data.imbalance import make_imbalanced
from dlforge.lab import q25_class_imbalance as q25

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(25).numbers


def test_minority_f1_recomputed_with_sklearn_from_the_stored_predictions(numbers):
    y = np.array(numbers["first_seed_test_labels"])
    assert len(y) == numbers["test_size"] and y.sum() == numbers["test_minority"]
    for who in ("plain", "best"):
        pred = np.array(numbers[f"first_seed_{who}_predictions"])
        assert f1_score(y, pred, pos_label=1) == pytest.approx(numbers[f"first_seed_{who}_minority_f1"], abs=1e-4)
    # One seed at the quick budget: the means are that seed's numbers.
    plain = np.array(numbers["first_seed_plain_predictions"])
    assert recall_score(y, plain) == pytest.approx(numbers["plain_minority_recall"], abs=1e-4)
    assert precision_score(y, plain, zero_division=0) == pytest.approx(numbers["plain_minority_precision"], abs=1e-4)
    assert (plain == y).mean() == pytest.approx(numbers["plain_accuracy"], abs=1e-4)


def test_every_remedy_is_reported_with_consistent_scores(numbers):
    assert numbers["seeds"] == 1
    for name in ("plain", *q25.REMEDIES):
        p, r, f1 = (numbers[f"{name}_minority_{k}"] for k in ("precision", "recall", "f1"))
        assert f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-3)
        assert 0.0 <= numbers[f"{name}_pr_auc"] <= 1.0
    # same budget: every run (each bagging member) took about the same number of steps
    for name in ("plain", *q25.REMEDIES):
        assert abs(numbers[f"{name}_steps"] - numbers["steps"]) <= 0.1 * numbers["steps"], name
    assert "plain_long_minority_f1" not in numbers  # the full budget's reference run only
    best = max(q25.REMEDIES, key=lambda n: numbers[f"{n}_minority_f1"])
    assert numbers["best_remedy"] == best
    gain = numbers[f"{best}_minority_f1"] - numbers["plain_minority_f1"]
    assert numbers["best_remedy_minority_f1_gain"] == pytest.approx(gain, abs=1e-4)


def test_the_data_is_one_eight_per_twenty_others_and_the_trap_baseline_is_its_majority_share(numbers):
    majority, minority = numbers["train_counts"]
    assert majority / minority == pytest.approx(20, rel=0.1)
    share = numbers["test_minority"] / numbers["test_size"]
    assert numbers["always_majority_accuracy"] == pytest.approx(1 - share, abs=1e-4)


def test_fold_ratios_recomputed_with_sklearn(numbers):
    bundle = make_imbalanced(load_builtin(q25.SOURCE), q25.MINORITY, ratio=q25.RATIO, seed=0)
    y = bundle.y
    strat = [(y[held] == 1).mean() for _, held in
             StratifiedKFold(q25.FOLDS, shuffle=True, random_state=0).split(np.zeros(len(y)), y)]
    plain = [(y[held] == 1).mean() for _, held in KFold(q25.FOLDS, shuffle=True, random_state=0).split(y)]
    np.testing.assert_allclose(numbers["stratified_minority_share_per_fold"], strat, atol=1e-5)
    np.testing.assert_allclose(numbers["plain_kfold_minority_share_per_fold"], plain, atol=1e-5)
    assert numbers["stratified_minority_share_spread"] == pytest.approx(max(strat) - min(strat), abs=1e-5)
    # Stratification's promise: the folds' minority counts differ by at most one sample.
    counts = [round(s * n) for s, n in zip(strat, [len(h) for _, h in
              StratifiedKFold(q25.FOLDS, shuffle=True, random_state=0).split(np.zeros(len(y)), y)])]
    assert max(counts) - min(counts) <= 1
    assert numbers["overall_minority_share"] == pytest.approx((y == 1).mean(), abs=1e-5)


def test_docstring_examples():
    result = doctest.testmod(q25, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
