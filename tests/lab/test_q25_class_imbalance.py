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
def finding():
    return finding_for(25)


@pytest.fixture(scope="module")
def numbers(finding) -> dict:
    return finding.numbers


def test_minority_f1_recomputed_with_sklearn_from_the_first_seeds_predictions(finding, numbers):
    y = np.array([int(c) for c in numbers["test_labels"]])  # the first seed's, as a 0/1 string
    assert len(y) == numbers["test_size"] and y.sum() == numbers["test_minority"]
    first = {k: (v[0] if k in finding.per_seed else numbers[k]) for k, v in
             ((k, finding.per_seed.get(k)) for k in numbers)}  # each number on the first seed
    plain = np.array([int(c) for c in numbers["plain_predictions"]])
    best = np.array([int(c) for c in numbers["best_predictions"]])
    assert f1_score(y, plain, pos_label=1) == pytest.approx(first["plain_minority_f1"], abs=1e-4)
    assert f1_score(y, best, pos_label=1) == pytest.approx(first[f"{numbers['best_remedy']}_minority_f1"], abs=1e-4)
    assert recall_score(y, plain) == pytest.approx(first["plain_minority_recall"], abs=1e-4)
    assert precision_score(y, plain, zero_division=0) == pytest.approx(first["plain_minority_precision"], abs=1e-4)
    assert (plain == y).mean() == pytest.approx(first["plain_accuracy"], abs=1e-4)


def test_means_and_intervals_come_from_the_seeds(finding, numbers):
    assert len(finding.seeds) == q25.SEEDS["quick"] >= 5
    for key in ("plain_minority_f1", "best_remedy_minority_f1_gain", "plain_accuracy_minus_always_majority"):
        values = finding.per_seed[key]
        assert len(values) == len(finding.seeds)
        assert numbers[key] == pytest.approx(np.mean(values), abs=1e-4)
        assert finding.intervals[key].low <= numbers[key] <= finding.intervals[key].high
    # on every seed: plain accuracy is high, and some remedy finds the 8s at least as well as plain training
    assert min(finding.per_seed["plain_accuracy"]) >= 0.9
    assert min(finding.per_seed["best_remedy_minority_f1_gain"]) >= 0.0


def test_every_remedy_is_reported_with_consistent_scores(finding, numbers):
    for name in ("plain", *q25.REMEDIES):
        p, r, f1 = (finding.per_seed.get(f"{name}_minority_{k}", [numbers[f"{name}_minority_{k}"]] * 2)
                    for k in ("precision", "recall", "f1"))
        for seed_p, seed_r, seed_f1 in zip(p, r, f1):  # on each seed: F1 is the harmonic mean
            assert seed_f1 == pytest.approx(2 * seed_p * seed_r / (seed_p + seed_r) if seed_p + seed_r else 0.0,
                                            abs=1e-3)
        assert 0.0 <= numbers[f"{name}_pr_auc"] <= 1.0
    # same budget: every run (each bagging member) took about the same number of steps
    for name in ("plain", *q25.REMEDIES):
        assert abs(numbers[f"{name}_steps"] - numbers["steps"]) <= 0.1 * numbers["steps"], name
    assert "plain_long_minority_f1" not in numbers  # the full budget's reference run only
    # per seed: the best remedy's gain is the largest remedy F1 minus plain's
    remedies = [finding.per_seed.get(f"{n}_minority_f1") or [numbers[f"{n}_minority_f1"]] * len(finding.seeds)
                for n in q25.REMEDIES]
    plain = finding.per_seed["plain_minority_f1"]
    gains = [max(r[i] for r in remedies) - plain[i] for i in range(len(finding.seeds))]
    assert finding.per_seed["best_remedy_minority_f1_gain"] == pytest.approx(gains, abs=1e-4)


def test_the_data_is_one_eight_per_twenty_others_and_the_trap_baseline_is_its_majority_share(numbers):
    majority, minority = numbers["train_counts"]
    assert majority / minority == pytest.approx(20, rel=0.1)
    share = numbers["test_minority"] / numbers["test_size"]
    assert numbers["always_majority_accuracy"] == pytest.approx(1 - share, abs=1e-4)
    assert numbers["plain_accuracy_minus_always_majority"] == pytest.approx(
        numbers["plain_accuracy"] - numbers["always_majority_accuracy"], abs=1e-4)


def _sklearn_shares(seed: int) -> tuple[np.ndarray, list[float], list[float], list[int]]:
    """The imbalanced labels of ``seed`` and its first splitting's minority shares, by scikit-learn."""
    y = make_imbalanced(load_builtin(q25.SOURCE), q25.MINORITY, ratio=q25.RATIO, seed=seed).y
    state = seed * q25.FOLD_DRAWS  # the first of the seed's splittings
    strat_folds = [held for _, held in StratifiedKFold(q25.FOLDS, shuffle=True, random_state=state).split(y, y)]
    plain_folds = [held for _, held in KFold(q25.FOLDS, shuffle=True, random_state=state).split(y)]
    strat = [float((y[held] == 1).mean()) for held in strat_folds]
    plain = [float((y[held] == 1).mean()) for held in plain_folds]
    return y, strat, plain, [int((y[held] == 1).sum()) for held in strat_folds]


def test_fold_ratios_recomputed_with_sklearn(finding, numbers):
    # The per-fold shares are the first splitting of each seed, averaged over seeds (combine's rule for lists).
    per_seed = [_sklearn_shares(s) for s in finding.seeds]
    np.testing.assert_allclose(numbers["stratified_minority_share_per_fold"],
                               np.mean([p[1] for p in per_seed], axis=0), atol=1e-4)
    np.testing.assert_allclose(numbers["plain_kfold_minority_share_per_fold"],
                               np.mean([p[2] for p in per_seed], axis=0), atol=1e-4)
    for _, _, _, counts in per_seed:  # stratification's promise: minority counts differ by at most one
        assert max(counts) - min(counts) <= 1
    assert numbers["overall_minority_share"] == pytest.approx(np.mean([(p[0] == 1).mean() for p in per_seed]),
                                                              abs=1e-4)
    assert numbers["stratified_minus_plain_kfold_spread"] == pytest.approx(
        numbers["stratified_minority_share_spread"] - numbers["plain_kfold_minority_share_spread"], abs=1e-4)
    # stratified spreads are at most what one sample in a fold moves the share
    assert numbers["stratified_minority_share_spread"] <= 1.5 / (len(per_seed[0][0]) / q25.FOLDS)


def test_docstring_examples():
    result = doctest.testmod(q25, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
