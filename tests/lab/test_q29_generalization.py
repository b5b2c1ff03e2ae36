"""Topic 29 at the quick budget: the noisy data are what the method says, the ensemble
numbers obey Jensen's inequality, and the summary numbers follow from the parts."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from dlforge.data import load_builtin, prepare
from dlforge.lab import q29_generalization as q29

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(29)


@pytest.fixture(scope="module")
def numbers(finding) -> dict:
    return finding.numbers


def _first(finding, key: str) -> float:
    """``key`` on the finding's first seed."""
    return finding.per_seed[key][0] if key in finding.per_seed else finding.numbers[key]


def test_label_noise_replaces_an_exact_share_by_wrong_classes():
    y = torch.arange(200) % 10
    noisy, flipped = q29.with_label_noise(y, 0.2, 10, seed=3)
    assert int(flipped.sum()) == 40 and (noisy != y).sum() == 40  # every replaced label is wrong
    assert torch.equal(noisy[~flipped], y[~flipped])
    again, _ = q29.with_label_noise(y, 0.2, 10, seed=3)
    assert torch.equal(noisy, again)
    # the wrong classes are spread out, not one fixed shift
    assert len(torch.unique((noisy[flipped] - y[flipped]) % 10)) > 3


def test_noisy_train_and_validation_labels_clean_test_labels(finding, numbers):
    # Recomputed from a clean split of the first seed: only train and validation labels were changed.
    seed = finding.seeds[0]
    clean = prepare(load_builtin("digits"), val=q29.VAL, test=1 - q29.TRAIN - q29.VAL, seed=seed)
    noisy, _ = q29._data(seed)
    changed = (noisy.train.tensors[1] != clean.train.tensors[1]).float().mean().item()
    assert changed == pytest.approx(_first(finding, "noisy_label_share"), abs=1e-4)
    assert changed == pytest.approx(q29.LABEL_NOISE, abs=0.5 / len(clean.train))
    assert (noisy.val.tensors[1] != clean.val.tensors[1]).any()
    assert torch.equal(noisy.test.tensors[1], clean.test.tensors[1])
    assert numbers["train_size"] == len(clean.train) and numbers["test_size"] == len(clean.test)


def test_ensemble_log_loss_obeys_jensen(finding, numbers):
    # -log is convex: the log loss of averaged probabilities is at most the members' mean
    # log loss, whatever the members are (an identity, not an empirical finding): on every seed.
    assert min(finding.per_seed["ensemble_log_loss_gain"]) >= -1e-6
    assert numbers["ensemble_log_loss_gain"] == pytest.approx(
        numbers["member_mean_log_loss"] - numbers["ensemble_log_loss"], abs=1e-4)
    members = numbers["member_accuracies"]  # element-wise means over seeds
    assert len(members) == numbers["members"] and len(finding.seeds) >= 3
    assert numbers["member_mean_accuracy"] == pytest.approx(np.mean(members), abs=1e-4)
    assert numbers["baseline_accuracy"] == pytest.approx(members[0], abs=1e-4)  # the baseline is the first member
    for key in ("ensemble_accuracy_gain", "baseline_generalization_gap", "combination_minus_best_single"):
        assert numbers[key] == pytest.approx(np.mean(finding.per_seed[key]), abs=1e-4)
        assert finding.intervals[key].low <= numbers[key] <= finding.intervals[key].high
    assert 0.0 <= numbers["ensemble_ece"] <= 1.0 and 0.0 <= numbers["member_mean_ece"] <= 1.0


def test_summary_numbers_follow_from_the_settings(finding, numbers):
    # per seed: the best single remedy is that seed's most accurate one
    first = {n: _first(finding, f"{n}_accuracy") for n in q29.SINGLES}
    best = max(first, key=first.get)
    assert numbers["best_single_remedy"] == best  # the first seed's name
    assert _first(finding, "best_single_remedy_accuracy") == first[best]
    assert _first(finding, "combination_minus_best_single") == pytest.approx(
        _first(finding, "combination_accuracy") - first[best], abs=1e-4)
    gap = numbers["baseline_train_accuracy"] - numbers["baseline_accuracy"]
    assert numbers["baseline_generalization_gap"] == pytest.approx(gap, abs=1e-4)
    # the big network memorised most of the wrong labels it was shown
    assert numbers["noisy_labels_memorized"] >= 0.5
    assert 1 <= numbers["early_stopping_epochs_kept"] <= numbers["epochs"]
    for name in ("weight_decay", "dropout", "augmentation", "right_sized"):
        assert numbers[f"{name}_epochs_kept"] == numbers["epochs"]  # no early stopping there: on every seed
        assert f"{name}_epochs_kept" not in finding.per_seed


def test_docstring_examples():
    result = doctest.testmod(q29, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
