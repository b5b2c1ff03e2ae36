"""Runs from a config with augmentation, class-imbalance remedies and other losses."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dlforge.config import validate_config
from dlforge.errors import ConfigError
from dlforge.pipeline import evaluate_path, train_run
from dlforge.registry import load_artifact

MLP = {"arch": "mlp", "hidden": [16]}
FAST = {"epochs": 3, "batch_size": 32, "gradient_monitor": False}


def run(tmp_path, raw: dict, progress=None):
    return train_run(validate_config({"seed": 0, "model": MLP, "train": FAST, **raw}),
                     runs_dir=tmp_path / "runs", progress=progress)


def imbalanced_csv(tmp_path) -> str:
    rng = np.random.default_rng(0)
    n_major, n_minor = 400, 20  # 1:20
    x = np.vstack([rng.normal(0, 1, (n_major, 3)), rng.normal(1.5, 1, (n_minor, 3))])
    labels = ["common"] * n_major + ["rare"] * n_minor
    path = tmp_path / "skewed.csv"
    rows = ["a,b,c,label"] + [f"{a:.4f},{b:.4f},{c:.4f},{y}" for (a, b, c), y in zip(x, labels)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_smote_resamples_the_train_split_only_and_the_report_shows_the_counts(tmp_path):
    source = imbalanced_csv(tmp_path)
    outcome = run(tmp_path, {"data": {"source": source, "target": "label",
                                      "imbalance": {"method": "smote", "ratio": 1.0}}})
    meta = load_artifact(outcome.run_dir).meta
    before, after = meta["training"]["resampling"]["counts_before"], meta["training"]["resampling"]["counts_after"]
    assert before == meta["training"]["class_counts"]["train"] and before[0] > 10 * before[1]
    assert after[0] == after[1] == before[0]  # balanced by synthetic minority points
    assert sum(outcome.prepared.test.tensors[1].tolist()) == round(0.15 * 20)  # test split untouched
    html = (outcome.run_dir / "report.html").read_text()
    assert 'id="class-balance"' in html and "after smote" in html


def test_an_untreated_skew_gets_a_note_that_points_to_the_remedies(tmp_path):
    progress = io.StringIO()
    outcome = run(tmp_path, {"data": {"source": imbalanced_csv(tmp_path), "target": "label"}}, progress)
    assert "note:" in progress.getvalue() and "data.imbalance" in progress.getvalue()
    assert "imbalance_note" in load_artifact(outcome.run_dir).meta["training"]
    quiet = io.StringIO()
    run(tmp_path, {"data": {"source": imbalanced_csv(tmp_path), "target": "label"},
                   "train": {**FAST, "loss": {"name": "focal", "gamma": 2.0}}}, quiet)
    assert "note:" not in quiet.getvalue()  # a focal loss is a remedy


def test_balanced_bagging_saves_one_ensemble_artifact_that_evaluates(tmp_path):
    outcome = run(tmp_path, {"data": {"source": imbalanced_csv(tmp_path), "target": "label",
                                      "imbalance": {"bagging": 3}}})
    art = load_artifact(outcome.run_dir)
    assert art.meta["arch"] == "ensemble" and len(art.meta["spec"]["members"]) == 3
    evaluation, _ = evaluate_path(outcome.run_dir)
    assert evaluation.metrics["accuracy"] == pytest.approx(outcome.metrics["test_accuracy"])


def test_class_weighted_loss_and_balanced_sampler_train(tmp_path):
    outcome = run(tmp_path, {"data": {"source": imbalanced_csv(tmp_path), "target": "label",
                                      "imbalance": {"sampler": "balanced"}},
                             "train": {**FAST, "loss": {"name": "cross_entropy", "class_weights": "effective"}}})
    assert np.isfinite(outcome.metrics["test_loss"])
    assert "class_weights: effective" in (outcome.run_dir / "config.yaml").read_text()


def test_augmentation_from_the_config(tmp_path):
    outcome = run(tmp_path, {"data": {"source": "digits", "augment": {"preset": "auto", "mixup": 0.2}},
                             "model": {"arch": "cnn", "channels": [16]}, "optim": {"name": "adam", "lr": 0.01}})
    assert outcome.metrics["test_accuracy"] > 0.25  # augmented digits still learn (chance is 0.1)
    mixed = [r for r in outcome.result.history if r["type"] == "epoch"]
    assert len(mixed) == 3


@pytest.mark.parametrize("raw, match", [
    ({"data": {"source": "iris", "augment": {"rotation": 10}}}, "image"),
    ({"data": {"source": "diabetes", "imbalance": {"method": "oversample"}}}, "classification"),
    ({"data": {"source": "iris"}, "train": {**FAST, "loss": {"name": "focal", "gama": 2}}}, "gama"),
    ({"data": {"source": "iris", "imbalance": {"method": "smote", "k": 3}}}, "data.imbalance.k"),
])
def test_bad_data_centric_configs_fail_before_a_run_directory(tmp_path, raw, match):
    with pytest.raises(ConfigError, match=match):
        run(tmp_path, raw)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
