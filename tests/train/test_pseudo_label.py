"""Pseudo-labelling: 30 labelled digits plus the rest of the train split unlabelled.

Checks that only samples at or above the threshold are added, with the teacher model's
argmax as their label (recomputed by hand from a reproduced teacher), that the labelled set
is never touched, that pseudo-labels raise test accuracy on this seeded problem, and the
input errors."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

import dlforge.train.pseudo_label as pseudo_label_module
from dlforge.data import load_source, prepare
from dlforge.errors import ConfigError, DataError
from dlforge.models import build
from dlforge.train import evaluate_loss, cross_entropy, fit, seed_everything
from dlforge.train.pseudo_label import PseudoLabelResult, pseudo_label_fit, select_pseudo_labels

N_LABELLED = 30  # three digits of each class
THRESHOLD = 0.9
SEED = 0
FIT = {"epochs": 20, "batch_size": 32, "optim": {"name": "adam", "lr": 0.01}, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build_model() -> torch.nn.Module:
    return build({"arch": "mlp", "hidden": [32]}, input_shape=(1, 8, 8), num_outputs=10)


@pytest.fixture(scope="module")
def problem():
    prepared = prepare(load_source("digits"), val=0.0, test=0.2, seed=SEED)
    x, y = prepared.train.tensors
    lab, unl = train_test_split(np.arange(len(y)), train_size=N_LABELLED, stratify=y.numpy(), random_state=SEED)
    labelled = TensorDataset(x[lab].clone(), y[lab].clone())
    return labelled, x[unl], y[unl], prepared.test


@pytest.fixture(scope="module")
def result(problem) -> PseudoLabelResult:
    labelled, unlabelled_x, _, test = problem
    return pseudo_label_fit(build_model, labelled, unlabelled_x, test, threshold=THRESHOLD, rounds=1,
                            fit_kwargs=FIT, seed=SEED)


def test_only_confident_samples_are_added_with_the_teachers_argmax(problem, result):
    labelled, unlabelled_x, _, _ = problem
    seed_everything(SEED)  # reproduce round 0's teacher by hand
    teacher = build_model()
    fit(teacher, labelled, seed=SEED, **FIT)
    teacher.eval()
    with torch.no_grad():
        probs = teacher(unlabelled_x).softmax(dim=1)  # (N, 10)
    confidence, argmax = probs.max(dim=1)
    picked = result.selections[0]
    expected = torch.nonzero(confidence >= THRESHOLD).flatten()
    assert torch.equal(picked.indices, expected)
    assert torch.equal(picked.labels, argmax[expected])
    torch.testing.assert_close(picked.confidence, confidence[expected])
    assert (picked.confidence >= THRESHOLD).all()
    assert 0 < len(picked.indices) < len(unlabelled_x)  # the threshold really filtered
    assert result.rounds[1]["n_added"] == len(picked.indices)
    assert sum(result.rounds[1]["added_per_class"]) == len(picked.indices)


def test_labelled_set_is_untouched_and_comes_first(problem, result):
    labelled, unlabelled_x, _, _ = problem
    x, y = labelled.tensors
    picked = result.selections[0]
    train_x, train_y = result.train_set.tensors
    assert len(result.train_set) == len(labelled) + len(picked.indices)
    assert torch.equal(train_x[: len(x)], x) and torch.equal(train_y[: len(y)], y)
    assert torch.equal(train_x[len(x):], unlabelled_x[picked.indices])
    assert torch.equal(train_y[len(y):], picked.labels)
    assert all(r["n_labelled"] == N_LABELLED for r in result.rounds)


def test_pseudo_labels_raise_test_accuracy(problem, result):
    _, _, unlabelled_y, test = problem
    baseline, final = result.rounds[0], result.rounds[-1]
    assert baseline["n_added"] == 0 and baseline["round"] == 0
    assert final["val_accuracy"] >= baseline["val_accuracy"]  # 5 of 5 seeds gain 1.4 to 5.6 points
    picked = result.selections[0]
    assert (picked.labels == unlabelled_y[picked.indices]).float().mean() > 0.9  # confident labels are mostly right
    assert final["val_accuracy"] == pytest.approx(evaluate_loss(result.model, test, cross_entropy)["accuracy"])


def test_a_higher_threshold_keeps_a_subset():
    torch.manual_seed(0)
    model, x = torch.nn.Linear(4, 3), torch.randn(200, 4) * 3
    loose, strict = select_pseudo_labels(model, x, 0.6), select_pseudo_labels(model, x, 0.9)
    assert set(strict.indices.tolist()) < set(loose.indices.tolist())
    assert len(select_pseudo_labels(model, x, 1.0).indices) <= len(strict.indices)


def test_each_round_reselects_from_the_whole_pool():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    labelled = TensorDataset(x[:20], y[:20])
    result = pseudo_label_fit(lambda: torch.nn.Linear(5, 2), labelled, x[20:], labelled,
                              threshold=0.8, rounds=2, fit_kwargs={"epochs": 10, "batch_size": 16, "device": "cpu"})
    assert [r["round"] for r in result.rounds] == [0, 1, 2] and len(result.selections) == 2
    assert all(len(s.indices) == r["n_added"] for s, r in zip(result.selections, result.rounds[1:]))
    # round 2 chooses afresh: its training set is labelled + round 2's picks, not both rounds'
    assert len(result.train_set) == 20 + len(result.selections[1].indices)
    assert {"val_loss", "val_accuracy", "threshold"} <= set(result.rounds[2])


def test_input_errors_are_clear(problem):
    labelled, unlabelled_x, _, _ = problem
    x, y = labelled.tensors
    with pytest.raises(DataError, match="class indices"):
        pseudo_label_fit(build_model, TensorDataset(x, y.float()), unlabelled_x, fit_kwargs=FIT)
    with pytest.raises(DataError, match="per-sample shape"):
        pseudo_label_fit(build_model, labelled, unlabelled_x.flatten(1), fit_kwargs=FIT)
    with pytest.raises(ConfigError, match="threshold is 1.5"):
        pseudo_label_fit(build_model, labelled, unlabelled_x, threshold=1.5, fit_kwargs=FIT)
    with pytest.raises(ConfigError, match="rounds is 0"):
        pseudo_label_fit(build_model, labelled, unlabelled_x, rounds=0, fit_kwargs=FIT)
    with pytest.raises(ConfigError, match="fit_kwargs sets 'seed'"):
        pseudo_label_fit(build_model, labelled, unlabelled_x, fit_kwargs={**FIT, "seed": 3})


def test_docstring_examples():
    result = doctest.testmod(pseudo_label_module)
    assert result.attempted > 0 and result.failed == 0
