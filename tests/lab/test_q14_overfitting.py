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
    assert numbers["health_diagnosed_overfitting"] >= 0.5  # dlforge's run doctor sees it on most seeds
    f = finding_for(14)
    for ratio, last, turn in zip(*(f.per_seed[k] for k in ("train_loss_ratio_after_turn", "train_loss_last",
                                                              "train_loss_at_turn"))):
        assert math.isclose(last / turn, ratio, rel_tol=1e-3)  # per seed: a mean of ratios is no ratio of means


def test_early_stopping_restores_the_epoch_where_validation_loss_turned(numbers):
    # The early-stopped run is the long run cut short (same seed, same data order), so its
    # best epoch is exactly the long run's validation minimum, and it stops `patience` later.
    f = finding_for(14)
    patience = q14.BUDGETS["quick"]["patience"]
    best = f.per_seed.get("early_stopped_best_epoch", [numbers["early_stopped_best_epoch"]] * len(f.seeds))
    turn = f.per_seed.get("val_turn_epoch", [numbers["val_turn_epoch"]] * len(f.seeds))
    run = f.per_seed.get("early_stopped_epochs_run", [numbers["early_stopped_epochs_run"]] * len(f.seeds))
    assert best == turn and len(best) == len(f.seeds) == q14.SEEDS["quick"]
    assert all(r == min(b + patience, numbers["epochs"]) for r, b in zip(run, best))


def test_scores_are_on_a_held_out_split_of_the_stated_size(numbers):
    assert numbers["train_size"] == 50
    f = finding_for(14)
    for key in ("last_epoch_test_accuracy", "early_stopped_test_accuracy", "dropout_test_accuracy"):
        for acc in f.per_seed.get(key, [numbers[key]]):  # 9,850 test points: whole counts of 1/9850
            # kept to 5 significant digits, so within 9850 x 5e-6 (about 0.05) of a whole count
            assert 0.0 <= acc <= 1.0 and math.isclose(acc * 9850, round(acc * 9850), abs_tol=0.06)


def test_the_remedies_win_on_test_loss_on_the_same_seed(numbers):
    f = finding_for(14)
    for key in ("early_stopping_loss_saving", "dropout_loss_saving"):
        assert f.intervals[key].low > 0 and min(f.per_seed[key]) > 0
    for saving, last, es in zip(*(f.per_seed[k] for k in ("early_stopping_loss_saving", "last_epoch_test_loss",
                                                            "early_stopped_test_loss"))):
        assert math.isclose(saving, last - es, abs_tol=1e-3)
    assert numbers["early_stopping_loss_saving"] == pytest.approx(
        numbers["last_epoch_test_loss"] - numbers["early_stopped_test_loss"], abs=1e-3)
