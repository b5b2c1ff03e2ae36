"""Prometheus metrics and drift statistics, against scipy and hand computations."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import ks_2samp
from torch.testing import assert_close

from dlforge.registry.reference import build_reference
from dlforge.serve.monitor import DriftMonitor, Metrics, ks_statistic, psi, psi_from_proportions


def test_psi_of_identical_distributions_is_near_zero():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, ref) == 0.0
    assert psi(ref, rng.normal(size=5000)) < 0.02


def test_psi_of_a_shifted_normal_is_large():
    rng = np.random.default_rng(1)
    assert psi(rng.normal(size=5000), rng.normal(1.0, 1.0, size=5000)) > 0.2


def test_psi_equals_a_hand_computation():
    reference = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])
    live = np.array([1.0, 1, 1, 5, 9, 9])
    # bins=4: inner edges at the 25/50/75% quantiles 2.75, 4.5, 6.25 -> (-inf, 2.75], (2.75, 4.5], ...
    expected = np.array([2, 2, 2, 2]) / 8
    actual = np.array([3, 0, 1, 2]) / 6
    actual[1] = 1e-4  # an empty bin is floored at eps
    hand = sum((a - e) * np.log(a / e) for a, e in zip(actual, expected))
    assert_close(psi(reference, live, bins=4), float(hand))
    assert_close(psi_from_proportions(expected, actual), float(hand))


def test_psi_of_a_discrete_feature_uses_its_values_as_bins():
    ref = np.array([0.0] * 90 + [1.0] * 10)  # a one-hot column
    assert psi(ref, ref) == 0.0
    e, a = np.array([0.9, 0.1]), np.array([0.5, 0.5])
    assert_close(psi(ref, np.array([0.0] * 50 + [1.0] * 50)), float(np.sum((a - e) * np.log(a / e))))
    assert psi(np.zeros(100), np.ones(100)) > 5  # a constant feature that moves up still shows


@pytest.mark.parametrize("seed", range(5))
def test_ks_statistic_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=rng.integers(5, 600))
    live = rng.normal(rng.uniform(-1, 1), size=rng.integers(5, 1000))
    if seed % 2:  # ties
        ref, live = ref.round(1), live.round(1)
    assert ks_statistic(ref, live) == ks_2samp(ref, live).statistic


def reference_for(x: torch.Tensor) -> dict:
    outputs = {"values": x[:, :1] * 2}
    return build_reference(x, outputs, "regression", {"encoding": {"kind": "tabular"}}, max_samples=500)


def test_drift_monitor_sees_no_drift_on_the_training_distribution(caplog):
    gen = torch.Generator().manual_seed(0)
    monitor = DriftMonitor(reference_for(torch.randn(2000, 3, generator=gen)), name="iris", report_every=0)
    for _ in range(10):
        x = torch.randn(100, 3, generator=gen)
        monitor.observe(x, {"encoding": {"kind": "tabular"}}, {"values": x[:, :1] * 2})
    with caplog.at_level(logging.WARNING, logger="dlforge.serve"):
        report = monitor.report()
    assert report["available"] and report["n_live"] == 1000 and report["drifted"] == []
    assert set(report["features"]) == {"x0", "x1", "x2"}
    assert all(f["psi"] < 0.1 and f["ks"] < 0.1 for f in report["features"].values())
    assert not report["prediction"]["drifted"]
    assert not caplog.records


def test_drift_monitor_flags_a_shift_and_warns_once(caplog):
    gen = torch.Generator().manual_seed(1)
    reports = []
    monitor = DriftMonitor(reference_for(torch.randn(2000, 2, generator=gen)), window=500, name="iris",
                           on_report=reports.append, report_every=250)
    preprocessing = {"encoding": {"kind": "tabular"}}
    with caplog.at_level(logging.WARNING, logger="dlforge.serve"):
        for _ in range(10):  # x0 moves to N(2, 1); x1 stays
            x = torch.randn(50, 2, generator=gen)
            x[:, 0] += 2
            monitor.observe(x, preprocessing, {"values": x[:, :1] * 2})
        report = monitor.report()
    assert report["drifted"] == ["x0", "prediction"]
    assert report["features"]["x0"]["psi"] > 1 and report["features"]["x0"]["ks"] > 0.5
    assert not report["features"]["x1"]["drifted"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once for x0 and once for the prediction, despite three reports
    assert "drift in model iris: x0" in warnings[0].getMessage()
    assert len(reports) == 3  # two automatic (every 250 samples) and one asked for

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dlforge.serve"):
        for _ in range(10):  # recovers...
            x = torch.randn(50, 2, generator=gen)
            monitor.observe(x, preprocessing, {"values": x[:, :1] * 2})
        assert monitor.report()["drifted"] == []
        for _ in range(10):  # ...and drifts again: a new warning
            x = torch.randn(50, 2, generator=gen) + 2
            monitor.observe(x, preprocessing, {"values": x[:, :1] * 2})
        assert "x0" in monitor.report()["drifted"]
    assert any("x0" in r.getMessage() for r in caplog.records)


def test_drift_of_class_predictions_uses_class_proportions():
    x = torch.randn(1000, 2)
    ref = build_reference(x, {"indices": torch.arange(1000) % 2}, "classification", {})
    monitor = DriftMonitor(ref, min_samples=50, report_every=0)
    monitor.observe(x[:200], {}, {"indices": torch.zeros(200, dtype=torch.long)})  # all class 0
    prediction = monitor.report()["prediction"]
    e, a = np.array([0.5, 0.5]), np.array([1.0, 1e-4])
    assert_close(prediction["psi"], float(np.sum((a - e) * np.log(a / e))))
    assert prediction["drifted"] and prediction["ks"] is None


def test_drift_report_is_unavailable_without_reference_or_enough_samples():
    x = torch.randn(10, 2)
    no_ref = DriftMonitor(None)
    no_ref.observe(x, {}, {"values": x})
    report = no_ref.report()
    assert not report["available"] and "no training reference" in report["reason"]
    monitor = DriftMonitor(reference_for(torch.randn(100, 2)), min_samples=50)
    monitor.observe(x, {}, {"values": x[:, :1]})
    report = monitor.report()
    assert not report["available"] and "10 live samples" in report["reason"] and report["n_live"] == 10
    other = DriftMonitor(reference_for(torch.randn(100, 2)), min_samples=5)
    other.observe(torch.randn(10, 3), {}, {"values": x[:, :1]})
    assert "do not match" in other.report()["reason"]
    broken = DriftMonitor({"features": ["x0"], "samples": []}, min_samples=5)  # serving goes on without drift
    broken.observe(x, {}, {"values": x[:, :1]})
    assert "malformed" in broken.report()["reason"]


def test_drift_window_is_bounded():
    monitor = DriftMonitor(reference_for(torch.randn(100, 1)), window=64, report_every=0)
    for _ in range(5):
        monitor.observe(torch.randn(50, 1), {}, {"values": torch.randn(50, 1)})
    assert monitor.report()["n_live"] == 64


def samples_of(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_render_names_and_labels():
    metrics = Metrics()
    metrics.requests.labels("iris", "1", "production", "200").inc(3)
    metrics.errors.labels("iris", "1", "production", "429").inc()
    metrics.latency.labels("iris", "1", "production").observe(0.004)
    metrics.in_flight.labels("iris").set(2)
    metrics.loaded.labels("iris", "1", "production").set(1)
    observer = metrics.observer("iris", 1)
    observer.batch(3, [0.001, 0.002, 0.0005])
    metrics.set_drift("iris", 1, {"available": True, "features": {"x0": {"psi": 0.5, "ks": 0.3}},
                                  "prediction": {"psi": 0.1, "ks": None}})
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    s = samples_of(body.decode())
    assert s[("dlforge_requests_total", (("model", "iris"), ("status", "200"), ("variant", "production"),
                                         ("version", "1")))] == 3
    assert s[("dlforge_errors_total", (("model", "iris"), ("status", "429"), ("variant", "production"),
                                       ("version", "1")))] == 1
    assert s[("dlforge_request_latency_seconds_bucket", (("le", "0.005"), ("model", "iris"),
                                                         ("variant", "production"), ("version", "1")))] == 1
    assert s[("dlforge_requests_in_flight", (("model", "iris"),))] == 2
    assert s[("dlforge_loaded_model_info", (("alias", "production"), ("model", "iris"), ("version", "1")))] == 1
    assert s[("dlforge_batch_size_sum", (("model", "iris"), ("version", "1")))] == 3
    assert s[("dlforge_queue_time_seconds_count", (("model", "iris"), ("version", "1")))] == 3
    assert s[("dlforge_drift", (("feature", "x0"), ("model", "iris"), ("statistic", "psi"), ("version", "1")))] == 0.5
    assert ("dlforge_drift", (("feature", "prediction"), ("model", "iris"), ("statistic", "ks"),
                              ("version", "1"))) not in s
    metrics.forget("iris", 1)
    assert not any(name == "dlforge_drift" or name.startswith("dlforge_batch_size") for name, _ in
                   samples_of(metrics.render()[0].decode()))


def test_each_metrics_has_its_own_registry():
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.in_flight.labels("m").inc()
    assert b"dlforge_requests_in_flight{" not in b.render()[0]
