"""Baselines against scikit-learn fitted on the same split, their time box, and the lines
the CLI and the report print."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from dlforge.evaluate import baselines as baselines_module
from dlforge.evaluate.baselines import Baseline, BaselineReport, fit_baselines, summary_lines


@pytest.fixture(scope="module")
def three_classes():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=300, p=[0.5, 0.3, 0.2])
    x = (rng.normal(size=(300, 4)) + y[:, None] * 0.8).astype(np.float32)
    return (x[:200], y[:200]), (x[200:], y[200:])


def test_classification_baselines_equal_sklearn(three_classes):
    (x_fit, y_fit), (x_out, y_out) = three_classes
    report = fit_baselines((x_fit, y_fit), (x_out, y_out), task="classification", kind="tabular", n_classes=3,
                           model_metrics={"accuracy": 0.7, "balanced_accuracy": 0.6, "roc_auc": 0.9})
    found = {b.name: b for b in report.baselines}
    assert list(found) == ["majority class", "HistGradientBoosting", "LogisticRegression"]
    references = {"majority class": DummyClassifier(strategy="most_frequent"),
                  "HistGradientBoosting": HistGradientBoostingClassifier(random_state=0),
                  "LogisticRegression": LogisticRegression(random_state=0)}
    for name, estimator in references.items():
        pred = estimator.fit(x_fit, y_fit).predict(x_out)
        # scored by dlforge's metrics, as the model is: float32 accuracy
        assert found[name].metrics["accuracy"] == pytest.approx(accuracy_score(y_out, pred), abs=1e-7)
        assert found[name].metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_out, pred), abs=1e-7)
        assert found[name].skipped is None and found[name].seconds >= 0
    assert found["majority class"].metrics["accuracy"] == pytest.approx(np.mean(y_out == 0), abs=1e-7)
    assert report.metric == "accuracy" and report.model == {"accuracy": 0.7, "balanced_accuracy": 0.6}


def test_a_class_missing_from_the_train_split_still_gets_a_column():
    x, y_fit = np.zeros((4, 2)), np.array([0, 0, 0, 1])
    report = fit_baselines((x, y_fit), (x, np.array([2, 0, 0, 1])), task="classification", kind="tabular", n_classes=3)
    assert report.baselines[0].metrics["accuracy"] == 0.5


def test_images_text_and_series_get_only_the_trivial_baseline():
    x, y = np.zeros((10, 1, 4, 4)), np.arange(10, dtype=np.float32)[:, None]
    report = fit_baselines((x, y), (x, y), task="regression", kind="image")
    assert [b.name for b in report.baselines] == ["training mean"]
    assert report.baselines[0].metrics["r2"] == 0.0  # the train mean is the held-out mean here


def test_fitted_baselines_are_time_boxed(three_classes):
    (x_fit, y_fit), held_out = three_classes
    too_large = fit_baselines((x_fit, y_fit), held_out, task="classification", kind="tabular", max_cells=799)
    assert [b.skipped for b in too_large.baselines] == [None, "skipped: too large (200 rows x 4 features)",
                                                          "skipped: too large (200 rows x 4 features)"]
    spent = fit_baselines((x_fit, y_fit), held_out, task="classification", kind="tabular", budget_s=0.0)
    assert spent.baselines[0].metrics is not None
    assert all(b.metrics is None and "budget" in b.skipped for b in spent.baselines[1:])


def test_several_outputs_skip_gradient_boosting():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    report = fit_baselines((x, y), (x, y), task="regression", kind="tabular")
    assert [b.skipped for b in report.baselines] == [None, "skipped: predicts one output, the target has 2", None]


def test_summary_says_when_a_baseline_beats_the_model():
    report = BaselineReport("classification", "val", "accuracy", {"accuracy": 0.6, "balanced_accuracy": 0.5},
                            [Baseline("majority class", {"accuracy": 0.65, "balanced_accuracy": 0.5}, 0.001),
                             Baseline("HistGradientBoosting", None, 0.0, "skipped: too large (9 rows x 9 features)")])
    lines = summary_lines(report)
    assert lines[1] == "HistGradientBoosting: skipped: too large (9 rows x 9 features)"
    assert lines[2].startswith("majority class beats this model on the val split (accuracy 0.65 vs 0.6): ")
    assert [b.name for b in report.beaten_by()] == ["majority class"]
    report.model["accuracy"] = 0.65  # a tie is not a win
    assert report.beaten_by() == [] and len(summary_lines(report)) == 2


def test_docstring_examples_run():
    assert doctest.testmod(baselines_module, raise_on_error=False).failed == 0
