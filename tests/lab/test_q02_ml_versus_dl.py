"""Topic 2: learning curves of scikit-learn models versus dlforge's CNN on digits."""

from __future__ import annotations

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


def test_curves_have_one_point_per_size(finding):
    n = finding.numbers
    assert n["sizes"] == [50, 200, 1258]  # 70% of the 1797 digits is all
    for m in MODELS:
        assert len(n[f"{m}_accuracy"]) == len(n[f"{m}_train_seconds"]) == 3
        assert all(0.1 < a <= 1.0 for a in n[f"{m}_accuracy"])  # 0.1 is chance on 10 digits
        assert all(s > 0 for s in n[f"{m}_train_seconds"])


def test_svm_at_full_size_equals_scikit_learn_on_the_same_split(finding):
    data = prepare(load_source("digits"), val=0, test=0.3, seed=0)
    (x, y), (xt, yt) = data.train.tensors, data.test.tensors
    svm = SVC(kernel="rbf").fit(x.flatten(1).numpy(), y.numpy())
    assert finding.numbers["svm_accuracy"][-1] == round(svm.score(xt.flatten(1).numpy(), yt.numpy()), 4)


def test_summary_numbers_follow_from_the_curves(finding):
    n = finding.numbers
    classical = [n[f"{m}_accuracy"] for m in q02.CLASSICAL]
    assert n["best_classical_at_smallest"] == max(c[0] for c in classical)
    best_last = max(c[-1] for c in classical)
    assert n["best_classical_gain"] == pytest.approx(best_last - n["best_classical_at_smallest"], abs=1e-4)
    assert n["cnn_gain"] == pytest.approx(n["cnn_accuracy"][-1] - n["cnn_accuracy"][0], abs=1e-4)
    assert n["cnn_at_all_seconds"] == n["cnn_train_seconds"][-1]


def test_every_model_learns_and_improves_with_data(finding):
    n = finding.numbers
    for m in MODELS:
        acc = n[f"{m}_accuracy"]
        assert acc[0] >= 0.7 and acc[-1] >= 0.93 and acc[-1] > acc[0]


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
