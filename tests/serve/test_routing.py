"""A/B routing and experiment statistics, against statsmodels, scipy and the textbook formula."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import binom, norm
from statsmodels.stats.proportion import proportions_ztest
from torch.testing import assert_close

from dlforge.errors import DlforgeError
from dlforge.serve.routing import Experiment, TrafficConfig, choose_variant, min_sample_size, two_proportion_ztest


def config(*weights: float, **kwargs) -> TrafficConfig:
    names = ["production", "candidate", "third"]
    return TrafficConfig(variants=[{"alias": n, "weight": w} for n, w in zip(names, weights)], **kwargs)


@pytest.mark.parametrize("x1,n1,x2,n2", [(60, 100, 45, 100), (830, 1000, 790, 1000), (3, 17, 11, 23),
                                         (500, 1000, 500, 1000), (0, 50, 4, 60)])
def test_two_proportion_ztest_equals_statsmodels(x1, n1, x2, n2):
    z, p = two_proportion_ztest(x1, n1, x2, n2)
    z_ref, p_ref = proportions_ztest([x1, x2], [n1, n2])
    assert_close(z, float(z_ref), rtol=1e-12, atol=1e-12)
    assert_close(p, float(p_ref), rtol=1e-9, atol=1e-12)


def test_two_proportion_ztest_without_variance_and_bad_counts():
    assert two_proportion_ztest(10, 10, 20, 20) == (0.0, 1.0)  # both perfect: no evidence either way
    with pytest.raises(DlforgeError, match="need 0 <= x <= n"):
        two_proportion_ztest(5, 0, 1, 10)


@pytest.mark.parametrize("p1,p2,alpha,power", [(0.5, 0.75, 0.05, 0.9), (0.3, 0.2, 0.05, 0.8),
                                               (0.9, 0.91, 0.01, 0.95), (0.05, 0.10, 0.1, 0.5)])
def test_min_sample_size_equals_the_textbook_formula(p1, p2, alpha, power):
    pbar = (p1 + p2) / 2
    n = (norm.ppf(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
         + norm.ppf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p1 - p2) ** 2
    assert min_sample_size(p1, p2, alpha, power) == math.ceil(n)
    assert min_sample_size(p2, p1, alpha, power) == math.ceil(n)  # symmetric


def test_min_sample_size_matches_a_published_value():
    # R's documentation: power.prop.test(p1 = .50, p2 = .75, power = .90) gives n = 76.7 per group.
    assert min_sample_size(0.5, 0.75, alpha=0.05, power=0.9) == 77
    with pytest.raises(DlforgeError, match="two different proportions"):
        min_sample_size(0.8, 0.8)


def test_sticky_ids_always_get_the_same_alias():
    cfg = config(0.5, 0.5)
    rng = random.Random(0)
    picks = {choose_variant(cfg, "iris", "user-7", rng) for _ in range(1000)}
    assert len(picks) == 1
    # The hash covers the model name: one user may land in different arms of different models.
    per_model = {choose_variant(cfg, f"model-{i}", "user-7", rng) for i in range(50)}
    assert per_model == {"production", "candidate"}


def _within_binomial_bound(count: int, n: int, p: float) -> bool:
    low, high = binom.ppf(1e-6, n, p), binom.isf(1e-6, n, p)  # a false failure once in 500,000 runs
    return low <= count <= high


def test_sticky_ids_split_close_to_the_weights():
    cfg = config(0.9, 0.1)
    picks = [choose_variant(cfg, "iris", f"user-{i}", random.Random(0)) for i in range(20000)]
    assert _within_binomial_bound(picks.count("candidate"), 20000, 0.1)


def test_random_split_is_close_to_the_weights():
    cfg = config(3, 1, 0)  # weights are normalised; a zero weight never serves
    rng = random.Random(123)
    picks = [choose_variant(cfg, "iris", None, rng) for _ in range(20000)]
    assert picks.count("third") == 0
    assert _within_binomial_bound(picks.count("candidate"), 20000, 0.25)


@pytest.mark.parametrize("variants,match", [
    ([], "at least 1 item"),
    ([{"alias": "a", "weight": -1}], "greater than or equal to 0"),
    ([{"alias": "a", "weight": 1}, {"alias": "a", "weight": 2}], "repeated: a"),
    ([{"alias": "a", "weight": 0}, {"alias": "b", "weight": 0}], "weights sum to 0"),
    ([{"alias": "../x", "weight": 1}], "alias '../x' is not allowed"),
    ([{"alias": "a", "weight": 1, "extra": 1}], "Extra inputs are not permitted"),
    ([{"alias": f"a{i}", "weight": 1} for i in range(9)], "at most 8 items"),
])
def test_traffic_config_validation(variants, match):
    with pytest.raises(ValidationError, match=match):
        TrafficConfig(variants=variants)


def test_traffic_config_defaults_and_shadow():
    cfg = config(1, shadow="candidate", sticky_header=None)
    assert cfg.shadow == "candidate" and cfg.sticky_header is None
    assert config(1).sticky_header == "X-User-Id"
    with pytest.raises(ValidationError):
        config(1, sticky_header="bad header\n")


def test_experiment_accuracy_from_feedback_by_name_index_and_list():
    exp = Experiment()
    exp.record("r1", "production", 1, ["cat"], 0.010, indices=[0])
    exp.record("r2", "production", 1, ["dog"], 0.020, indices=[1])
    exp.record("r3", "candidate", 2, ["cat", "dog"], 0.030, indices=[0, 1])
    exp.record("r4", "candidate", 2, ["1"], 0.040)  # no class names: labels are the indices as strings
    assert exp.feedback("r1", "cat") and exp.feedback("r2", 0)  # right by name, wrong by index
    assert exp.feedback("r3", ["cat", "cat"]) and exp.feedback("r4", 1)
    assert not exp.feedback("unknown", "cat")
    with pytest.raises(DlforgeError, match="got 1 labels for a request with 2 predictions"):
        exp.feedback("r3", "cat")
    with pytest.raises(DlforgeError, match="class name or a class index"):
        exp.feedback("r1", 1.5)
    stats = exp.stats()["variants"]
    assert (stats["production"]["feedback"], stats["production"]["correct"]) == (2, 1)
    assert (stats["candidate"]["feedback"], stats["candidate"]["correct"]) == (3, 2)
    assert stats["candidate"]["accuracy"] == pytest.approx(2 / 3)
    exp.feedback("r2", "dog")  # feedback again replaces the earlier one
    assert exp.stats()["variants"]["production"]["accuracy"] == 1.0


def test_experiment_latency_percentiles_and_bounded_records():
    exp = Experiment(max_records=100)
    latencies = np.random.default_rng(0).exponential(0.01, size=250)
    for i, latency in enumerate(latencies):
        exp.record(f"r{i}", "production", 1, ["a"], float(latency))
    stats = exp.stats()["variants"]["production"]
    assert stats["requests"] == 100
    expected = np.percentile(latencies[-100:] * 1000, [50, 95, 99])
    assert_close([stats["latency_ms"][k] for k in ("p50", "p95", "p99")], expected.tolist())
    assert not exp.feedback("r0", "a") and exp.feedback("r249", "a")  # the oldest were evicted
    assert exp.stats()["test"] is None and exp.stats()["tests"] == []  # one variant: no test


def test_experiment_test_section_against_statsmodels():
    exp = Experiment()
    rng = np.random.default_rng(1)
    truth = {"production": 0.80, "candidate": 0.90, "third": 0.80}
    n_requests = {"production": 400, "candidate": 300, "third": 100}
    for alias, n in n_requests.items():
        for i in range(n):
            exp.record(f"{alias}-{i}", alias, 1, ["y"], 0.001)
            exp.feedback(f"{alias}-{i}", "y" if rng.random() < truth[alias] else "n")
    stats = exp.stats()
    tests = {t["treatment"]: t for t in stats["tests"]}
    assert set(tests) == {"candidate", "third"} and stats["test"] == stats["tests"][0]
    v = stats["variants"]
    for treatment, t in tests.items():
        assert t["control"] == "production"
        z, p = proportions_ztest([v[treatment]["correct"], v["production"]["correct"]],
                                 [v[treatment]["feedback"], v["production"]["feedback"]])
        assert_close((t["z"], t["p_value"]), (float(z), float(p)))
        assert t["significant"] == (p < 0.05)
        needed = min_sample_size(v[treatment]["accuracy"], v["production"]["accuracy"])
        assert t["min_sample_size"] == needed
        assert t["samples_still_needed"] == max(0, needed - min(v[treatment]["feedback"], 400))


def test_control_is_the_busiest_variant_without_production():
    exp = Experiment()
    for i in range(5):
        exp.record(f"a{i}", "blue", 1, ["y"], 0.001)
        exp.feedback(f"a{i}", "y")
    for i in range(3):
        exp.record(f"b{i}", "green", 2, ["y"], 0.001)
        exp.feedback(f"b{i}", "y")
    test = exp.stats()["test"]
    assert (test["control"], test["treatment"]) == ("blue", "green")
    assert test["min_sample_size"] is None and test["samples_still_needed"] is None  # equal accuracies
    assert (test["z"], test["p_value"], test["significant"]) == (0.0, 1.0, False)
