"""Early stopping is on by default when a run has a validation split, and off otherwise."""

from __future__ import annotations

import pytest

from dlforge.config import validate_config
from dlforge.pipeline import train_run


def _run(tmp_path, split: dict, train: dict):
    cfg = validate_config({"data": {"source": "xor", "n_samples": 200, "split": split},
                           "model": {"arch": "mlp", "hidden": [8]}, "train": train})
    return train_run(cfg, runs_dir=tmp_path)


def test_a_run_with_a_validation_split_stops_when_val_loss_stops_improving(tmp_path):
    # lr 1e-12 (plain SGD, below float32 resolution): val_loss never improves after epoch 1, so patience 5 ends it at 6.
    outcome = train_run(validate_config({"data": {"source": "xor", "n_samples": 200},
                                         "model": {"arch": "mlp", "hidden": [8]},
                                         "optim": {"name": "sgd", "lr": 1e-12, "momentum": 0.0},
                                         "train": {"epochs": 50}}), runs_dir=tmp_path)
    assert outcome.result.stop_reason == "early_stopping"
    assert outcome.result.epochs_run == 6 and outcome.metrics["val_epoch"] == 1


@pytest.mark.parametrize("split, train", [({"val": 0.0, "test": 0.2}, {"epochs": 3}),
                                          ({"val": 0.2, "test": 0.2}, {"epochs": 3, "early_stopping": False})])
def test_no_validation_split_or_false_trains_every_epoch(tmp_path, split, train):
    outcome = _run(tmp_path, split, train)
    assert outcome.result.stop_reason is None and outcome.result.epochs_run == 3


def test_true_means_the_default_settings_and_a_mapping_its_own():
    cfg = validate_config({"data": {"source": "xor"}, "model": {"arch": "mlp"},
                           "train": {"early_stopping": True}})
    assert cfg.train.stopping(has_val=False).patience == 5
    cfg = validate_config({"data": {"source": "xor"}, "model": {"arch": "mlp"},
                           "train": {"early_stopping": {"patience": 2}}})
    assert cfg.train.stopping(has_val=True).patience == 2
