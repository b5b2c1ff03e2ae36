"""Topic 14 at the quick budget: the turn, and early stopping's restored model."""

from __future__ import annotations

import math

import pytest

from dlforge.lab import q14_overfitting as q14

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(14).numbers


def test_train_loss_keeps_falling_after_the_validation_minimum(numbers):
    assert numbers["train_loss_last"] < numbers["train_loss_at_turn"]
    assert numbers["val_loss_last"] > numbers["val_loss_min"]
    assert 1 <= numbers["val_turn_epoch"] < numbers["epochs"]
    assert numbers["health_diagnosed_overfitting"] == 1  # dlforge's run doctor sees it too
    ratio = numbers["train_loss_last"] / numbers["train_loss_at_turn"]
    assert math.isclose(ratio, numbers["train_loss_ratio_after_turn"], rel_tol=1e-3)


def test_early_stopping_restores_the_epoch_where_validation_loss_turned(numbers):
    # The early-stopped run is the long run cut short (same seed, same data order), so its
    # best epoch is exactly the long run's validation minimum, and it stops `patience` later.
    assert numbers["seeds"] == 1
    assert numbers["early_stopped_best_epoch"] == numbers["val_turn_epoch"]
    patience = q14.BUDGETS["quick"]["patience"]
    assert numbers["early_stopped_epochs_run"] == numbers["early_stopped_best_epoch"] + patience


def test_scores_are_on_a_held_out_split_of_the_stated_size(numbers):
    assert numbers["train_size"] == 50
    for key in ("last_epoch_test_accuracy", "early_stopped_test_accuracy", "dropout_test_accuracy"):
        # 100 test points: accuracies are whole percentages
        percent = numbers[key] * 100
        assert 0.0 <= numbers[key] <= 1.0 and math.isclose(percent, round(percent), abs_tol=1e-3)
    assert numbers["early_stopped_test_loss"] < numbers["last_epoch_test_loss"]
