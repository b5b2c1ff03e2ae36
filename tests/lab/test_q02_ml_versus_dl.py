"""Topic 2: learning curves of scikit-learn models versus dlforge's CNN on digits, over seeds."""

from __future__ import annotations

import statistics

import pytest
import torch
from sklearn.svm import SVC

from dlforge.data import load_source, prepare
from dlforge.lab import q02_ml_versus_dl as q02
from dlforge.lab.threads import single_thread

from .cache import finding_for

MODELS = ("logreg", "svm", "forest", "cnn")


@pytest.fixture(scope="module")
def finding():
    return finding_for(2)


def test_quick_and_full_sweep_the_same_range_with_the_same_cnn():
    quick, full = q02.BUDGETS["quick"], q02.BUDGETS["full"]
    assert quick["cnn_steps"] == full["cnn_steps"] and quick["trees"] == full["trees"]
    assert quick["sizes"][0] == full["sizes"][0] and quick["sizes"][-1] is full["sizes"][-1] is None
    assert set(quick["sizes"]) < set(full["sizes"])
    assert q02.SEEDS["quick"] >= 3 and q02.SEEDS["full"] >= 5


def test_curves_have_one_point_per_size(finding):
    n = finding.numbers
    assert n["sizes"] == [30, 1258]  # the two ends the checks read; 70% of the 1797 digits is all
    assert finding.seeds == list(range(q02.SEEDS["quick"]))
    for m in MODELS:
        assert len(n[f"{m}_accuracy"]) == len(n[f"{m}_train_seconds"]) == 2
        assert all(0.1 < a <= 1.0 for a in n[f"{m}_accuracy"])  # 0.1 is chance on 10 digits
        assert all(s > 0 for s in n[f"{m}_train_seconds"])


def test_svm_at_full_size_equals_scikit_learn_on_the_same_splits(finding):
    scores = []
    for seed in finding.seeds:
        data = prepare(load_source("digits"), val=0, test=0.3, seed=seed)
        (x, y), (xt, yt) = data.train.tensors, data.test.tensors
        svm = SVC(kernel="rbf").fit(x.flatten(1).numpy(), y.numpy())
        scores.append(round(svm.score(xt.flatten(1).numpy(), yt.numpy()), 4))
    assert finding.numbers["svm_accuracy"][-1] == pytest.approx(statistics.fmean(scores), abs=1e-4)


def test_gaps_follow_from_the_curves_seed_by_seed(finding):
    n, per_seed = finding.numbers, finding.per_seed
    best = [max(n[f"{m}_accuracy"][i] for m in q02.CLASSICAL) for i in range(len(n["sizes"]))]
    # Means of per-seed maxima are at least the maxima of the means.
    assert all(b >= a - 1e-4 for b, a in zip(n["best_classical_accuracy"], best))
    for i, size in enumerate(n["sizes"]):
        assert n[f"classical_minus_cnn_at_{size}"] == pytest.approx(
            n["best_classical_accuracy"][i] - n["cnn_accuracy"][i], abs=2e-4)
    small, large = per_seed["classical_minus_cnn_at_smallest"], per_seed["classical_minus_cnn_at_all"]
    assert small == per_seed["classical_minus_cnn_at_30"] and large == per_seed["classical_minus_cnn_at_1258"]
    assert per_seed["gap_closed_by_all"] == pytest.approx([s - g for s, g in zip(small, large)], abs=2e-4)
    for key, values in per_seed.items():  # every varying number is the mean of its seeds
        assert n[key] == pytest.approx(statistics.fmean(values), rel=1e-4, abs=1e-6)
        assert finding.intervals[key].low <= n[key] <= finding.intervals[key].high


def test_classical_is_ahead_on_average_at_30_the_cnn_level_at_all_and_slower(finding):
    n = finding.numbers
    assert n["classical_minus_cnn_at_smallest"] > 0.01  # a few points on 30 digits, on average
    assert abs(n["classical_minus_cnn_at_all"]) < 0.03  # the CNN has (about) caught up
    assert n["gap_closed_by_all"] > 0.01
    assert n["cnn_over_slowest_classical_seconds_at_all"] > 1.0
    assert n["cnn_gain"] > n["best_classical_gain"]


def test_every_model_learns_and_improves_with_data(finding):
    n = finding.numbers
    for m in MODELS:
        acc = n[f"{m}_accuracy"]
        assert acc[0] >= 0.5 and acc[-1] >= 0.93 and acc[-1] > acc[0]


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
