"""Topic 10 at the quick budget: a small digits set with and without label-preserving augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score
from torch import nn

from dlforge.data import load_builtin, prepare
from dlforge.data.augment import PRESETS
from dlforge.lab import q10_data_augmentation as q10

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(10)


@pytest.fixture(scope="module")
def data():
    return prepare(load_builtin("digits"), val=0, test=q10.TEST_FRACTION, seed=0)


def test_sizes_are_as_configured(finding):
    n, cfg = finding.numbers, q10.BUDGETS["quick"]
    assert n["per_class"] == cfg["per_class"] and n["train_size"] == 10 * cfg["per_class"]
    assert finding.seeds == list(range(len(finding.seeds))) and len(finding.seeds) >= 3
    assert n["epochs"] == cfg["epochs"]
    assert n["updates"] == cfg["epochs"] * -(-n["train_size"] // q10.BATCH_SIZE)
    assert n["test_size"] + n["reference_train_size"] == 1797  # the whole digits set, split once


def test_accuracies_and_gaps_are_consistent(finding):
    n = finding.numbers
    for v in q10.BUDGETS["quick"]["variants"]:
        train, test = n[f"{v}_train_accuracy"], n[f"{v}_test_accuracy"]
        assert 0.0 <= test <= 1.0 and 0.0 <= train <= 1.0
        assert n[f"{v}_gap"] == pytest.approx(train - test, abs=2e-4)  # three roundings
        per_seed = finding.per_seed[f"{v}_test_accuracy"]  # one draw of the small set per seed
        assert len(per_seed) == len(finding.seeds) and np.mean(per_seed) == pytest.approx(test, abs=1e-4)
        # accuracies are whole numbers of test images
        assert all(abs(a * n["test_size"] - round(a * n["test_size"])) < 0.06 for a in per_seed)
    assert n["preset_test_gain"] == pytest.approx(n["preset_test_accuracy"] - n["plain_test_accuracy"], abs=2e-4)
    gains = [a - b for a, b in zip(finding.per_seed["preset_test_accuracy"], finding.per_seed["plain_test_accuracy"])]
    assert finding.per_seed["preset_test_gain"] == pytest.approx(gains, abs=2e-4)  # paired on each seed
    assert n["plain_train_accuracy"] == 1.0  # the plain model memorises its 100 images


def test_preset_is_the_digits_preset_without_flips(finding):
    n, preset = finding.numbers, PRESETS["digits"]
    assert n["preset_flip_probability"] == 0.0 and "hflip" not in preset and "vflip" not in preset
    assert n["preset_rotation_degrees"] == preset["rotation"]
    assert n["preset_translate"] == preset["translate"]
    assert tuple(n["preset_scale"]) == preset["scale"]


def test_reader_numbers_are_consistent(finding):
    n = finding.numbers
    for name in ("clean", "preset", "hflip", "vflip"):
        per_digit = n[f"reference_{name}_accuracy_per_digit"]
        assert len(per_digit) == 10 and all(0.0 <= a <= 1.0 for a in per_digit)
    for name in ("preset", "hflip", "vflip"):
        loss = n["reference_clean_accuracy"] - n[f"reference_{name}_accuracy"]
        assert n[f"reference_{name}_loss"] == pytest.approx(loss, abs=2e-4)
    # the symmetric 0 and 8 survive a left-right mirror far better than 2, 3 and 7
    flips = n["reference_hflip_accuracy_per_digit"]
    assert min(flips[0], flips[8]) > max(flips[2], flips[3], flips[7]) + 0.5


def test_label_survival_matches_sklearn_per_class_recall():
    # Per-class accuracy is per-class recall; a random linear model gives every kind of error.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.randn(300, 1, 8, 8), torch.arange(300) % 10
    with torch.no_grad():
        pred = model(x.flip(-1)).argmax(1)
    ours = q10.label_survival(model, x, y, lambda v: v.flip(-1))
    ref = recall_score(y.numpy(), pred.numpy(), average=None, labels=list(range(10)), zero_division=0)
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float32))


def test_small_train_set_is_stratified_and_drawn_from_the_train_split(data):
    small = q10.small_train_set(data, 7, seed=3)
    x, y = small.tensors
    assert torch.bincount(y).tolist() == [7] * 10
    train_rows = {tuple(r) for r in data.train.tensors[0].flatten(1).tolist()}
    assert all(tuple(r) in train_rows for r in x.flatten(1).tolist())
    again = q10.small_train_set(data, 7, seed=3)
    assert torch.equal(again.tensors[0], x)  # seeded: the same draw


def test_preset_augmentation_moves_pixels_but_never_touches_labels(data):
    augment = q10._augment("preset", data).train()
    x, y = data.test.tensors[0][:64], data.test.tensors[1][:64]
    torch.manual_seed(0)
    x_aug, y_aug = augment(x, y)
    assert torch.equal(y_aug, y) and y_aug.dtype == torch.long  # hard labels, unchanged
    assert x_aug.shape == x.shape and not torch.allclose(x_aug, x)
    assert q10._augment("plain", data) is None
