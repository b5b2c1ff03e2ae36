"""Topic 21 at the quick budget: the guard's report, clipping, and init variances."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from dlforge.lab import q21_exploding_gradients as q21

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(21).numbers


def _per_layer_factor(variances: list[float]) -> float:
    return float(np.exp(np.mean(np.diff(np.log(variances[1:])))))  # geometric mean over 256-wide layers


def test_variance_per_layer_follows_the_init_theory():
    # ReLU halves a zero-mean input's second moment, so each layer multiplies the variance
    # by about fan_in * Var(w) / 2: 128 for N(0, 1), 0.5 for Xavier (256 -> 256), 1 for He.
    x = torch.randn(512, 1, 8, 8)
    naive = _per_layer_factor(q21.layer_variances("naive", "relu", x, seed=0))
    xavier = _per_layer_factor(q21.layer_variances("xavier", "relu", x, seed=0))
    he = _per_layer_factor(q21.layer_variances("he", "relu", x, seed=0))
    assert 64 <= naive <= 256
    assert 0.35 <= xavier <= 0.7
    assert 0.7 <= he <= 1.4


def test_guard_report_describes_the_explosion(numbers):
    assert numbers["unclipped_stopped_non_finite"] == 1
    assert numbers["guard_where"] in ("loss", "gradient", "weights")
    assert numbers["guard_first_bad_layer"] != "none" or numbers["guard_where"] == "loss"
    # the report keeps the total gradient norm of every finite step before the bad one; the
    # norms (lists of unequal length) are the first seed's, so they go with its guard step
    f = finding_for(21)
    norms = numbers["grad_norms_before_guard"]
    first_step = f.per_seed.get("guard_step", [numbers["guard_step"]])[0]
    assert len(norms) == first_step and all(np.isfinite(norms))
    assert norms[-1] > norms[0]
    for key in ("grad_norm_growth", "naive_variance", "he_variance"):  # logs read per seed, then averaged
        ratio = "grad_norm_growth_before_guard" if key == "grad_norm_growth" else f"{key}_ratio"
        log_key = "grad_norm_growth_log10" if key == "grad_norm_growth" else f"{key}_log10_ratio"
        for r, lg in zip(f.per_seed.get(ratio, [numbers[ratio]]), f.per_seed.get(log_key, [numbers[log_key]])):
            assert lg == pytest.approx(np.log10(r), abs=1e-3)
    assert numbers["grad_norm_growth_log10"] >= 2 and numbers["naive_variance_log10_ratio"] >= 3
    assert "non_finite" in numbers["health_diagnoses"]  # dlforge.train.health reads the same report


def test_clipped_and_normalised_runs_finish_and_learn(numbers):
    assert numbers["clipped_finite"] == 1 and numbers["batchnorm_finite"] == 1
    assert numbers["clipped_val_accuracy"] > 0.5 and numbers["batchnorm_val_accuracy"] > 0.5  # chance is 0.1
    for init in ("naive", "xavier", "he", "xavier_tanh"):
        assert len(numbers[f"{init}_layer_variances"]) == len(q21.VARIANCE_NET["hidden"])
    assert numbers["naive_variance_ratio"] > 1e3 > 4 >= numbers["he_variance_ratio"]


def test_docstring_examples():
    result = doctest.testmod(q21, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
