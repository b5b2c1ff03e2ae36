"""Regression runs that learn by default, baselines in every run, the worse-than-baseline
diagnosis and the run records (split.json, the epoch metrics.json's val_* come from).

The data is scikit-learn's diabetes set written as a CSV with its target multiplied by
1000 (values 25 000 .. 346 000): unscaled, such a target makes the MSE loss ~1e10 and the
default Adam lr far too small to reach it, so the run ends below the training mean.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from sklearn.datasets import load_diabetes
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.config import validate_config
from dlforge.data import load_source, split_indices
from dlforge.data.preprocess import in_target_units
from dlforge.pipeline import train_run
from dlforge.registry import load_artifact

# data.seed 2: a split whose test part is representative (Ridge R² 0.51 there; seed 0's
# test part is hard for every model: Ridge 0.19). Measured test R² of the default MLP with
# the standardised target: 0.51 / 0.55 / 0.51 for seeds 0 / 1 / 2; -4.5 without it.
DATA_SEED = 2
MIN_R2 = 0.3


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory) -> str:
    frame = load_diabetes(as_frame=True).frame
    frame["target"] = frame["target"] * 1000  # a target in the thousands: nasty unscaled
    path = tmp_path_factory.mktemp("data") / "diabetes_x1000.csv"
    frame.to_csv(path, index=False)
    return str(path)


def config(source: str, **data) -> dict:
    return {"name": "diab", "seed": 0, "data": {"source": source, "target": "target", "seed": DATA_SEED, **data},
            "model": {"arch": "mlp"}}


@pytest.fixture(scope="module")
def good(diabetes_csv, tmp_path_factory):
    """The default config (default optim and train: Adam 1e-3, 10 epochs)."""
    return train_run(validate_config(config(diabetes_csv)), runs_dir=tmp_path_factory.mktemp("runs"))


def raw_targets(source: str, rows: list[int]) -> np.ndarray:
    return load_source(source, target="target").y[rows].astype(np.float64).ravel()


def test_a_target_in_the_thousands_learns_with_default_settings(good):
    assert good.metrics["test_r2"] > MIN_R2
    assert good.diagnoses == []


def test_metrics_are_in_the_targets_units_and_match_sklearn(good, diabetes_csv):
    test_rows = json.loads((good.run_dir / "split.json").read_text())["test"]
    y = raw_targets(diabetes_csv, test_rows)
    art = load_artifact(good.run_dir)
    pred = art.predict(good.prepared.test.tensors[0])["values"].double().numpy().ravel()
    metrics = json.loads((good.run_dir / "metrics.json").read_text())
    evaluation = json.loads((good.run_dir / "evaluation.json").read_text())
    for key, ref in (("r2", r2_score(y, pred)), ("mse", mean_squared_error(y, pred)),
                     ("mae", mean_absolute_error(y, pred))):
        torch.testing.assert_close(metrics[f"test_{key}"], ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(evaluation["metrics"][key], ref, rtol=1e-5, atol=0)
    assert metrics["test_rmse"] > 1000  # pounds, not standard deviations


def test_the_artifact_stores_train_split_target_statistics(good, diabetes_csv):
    train_rows = json.loads((good.run_dir / "split.json").read_text())["train"]
    y = raw_targets(diabetes_csv, train_rows)
    stats = load_artifact(good.run_dir).preprocessing["target_standardize"]
    torch.testing.assert_close(stats["mean"], [y.mean()], rtol=1e-6, atol=0)
    torch.testing.assert_close(stats["std"], [y.std(ddof=0)], rtol=1e-6, atol=0)  # population std


def test_split_json_holds_the_source_rows_of_each_split(good, diabetes_csv):
    split = json.loads((good.run_dir / "split.json").read_text())
    bundle = load_source(diabetes_csv, target="target")
    expected = split_indices(bundle, val=0.15, test=0.15, stratify=True, seed=DATA_SEED)
    assert [split["train"], split["val"], split["test"]] == [idx.tolist() for idx in expected]
    assert good.prepared.split_indices == split


def test_baselines_equal_sklearn_fitted_on_the_same_split(good, diabetes_csv):
    split = json.loads((good.run_dir / "split.json").read_text())
    # The baselines see the run's own tensors: inputs standardised, targets back in units.
    (x_train, y_train), (x_test, y_test) = (in_target_units(part, good.prepared).tensors
                                            for part in (good.prepared.train, good.prepared.test))
    torch.testing.assert_close(y_test.numpy().ravel(), raw_targets(diabetes_csv, split["test"]), rtol=1e-6, atol=0)
    report = json.loads((good.run_dir / "baselines.json").read_text())
    found = {b["name"]: b for b in report["baselines"]}
    assert list(found) == ["training mean", "HistGradientBoosting", "Ridge"]
    references = {"training mean": DummyRegressor(strategy="mean"),
                  "HistGradientBoosting": HistGradientBoostingRegressor(random_state=0), "Ridge": Ridge(random_state=0)}
    y_true = y_test.numpy().ravel()
    for name, estimator in references.items():
        pred = estimator.fit(x_train.numpy(), y_train.numpy().ravel()).predict(x_test.numpy())
        assert found[name]["metrics"]["r2"] == pytest.approx(r2_score(y_true, pred), rel=1e-12, abs=1e-12)
        assert found[name]["metrics"]["rmse"] == pytest.approx(mean_squared_error(y_true, pred) ** 0.5, rel=1e-12)
        assert found[name]["seconds"] < 5
    assert report["model"]["r2"] == good.metrics["test_r2"] and report["split"] == "test"
    page = (good.run_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="baselines"' in page
    assert "Losses are the training loss on the standardised target" in page


def test_a_broken_run_is_diagnosed_as_worse_than_the_mean(diabetes_csv, tmp_path):
    cfg = config(diabetes_csv, standardize_target=False)
    cfg.update(optim={"lr": 1e-6}, train={"epochs": 1})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "worse_than_baseline" in result.output
    assert "baseline: training mean: R²" in result.output
    assert "training mean beats this model on the test split" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    (found,) = [d for d in json.loads((run_dir / "diagnosis.json").read_text()) if d["kind"] == "worse_than_baseline"]
    assert found["evidence"]["r2"] < 0 and found["evidence"]["target_standardized"] is False
    assert "data.standardize_target: true" in found["fix"]


def test_metrics_json_names_the_epoch_of_its_val_figures(diabetes_csv, tmp_path):
    cfg = config(diabetes_csv)
    cfg.update(optim={"lr": 0.01}, train={"epochs": 100, "early_stopping": {"monitor": "val_loss", "patience": 2}})
    outcome = train_run(validate_config(cfg), runs_dir=tmp_path)
    assert outcome.result.stop_reason == "early_stopping"  # so the best epoch is not the last
    best = outcome.result.best_epoch
    (record,) = [r for r in outcome.result.epochs if r["epoch"] == best]
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text())
    assert metrics["val_epoch"] == best + 1
    assert metrics["val_loss"] == record["val_loss"] != outcome.result.final["val_loss"]
