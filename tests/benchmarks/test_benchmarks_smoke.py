"""Smoke runs of the benchmarks: each script's ``--quick`` run ends in a JSON line of figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_quick(script: str) -> dict[str, float]:
    """Run ``benchmarks/<script> --quick`` in a fresh interpreter; return its last line's JSON."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 1, "a readable table should come before the JSON line"
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict)
    return figures


@pytest.fixture(scope="module")
def attention_figures() -> dict[str, float]:
    return run_quick("attention.py")


def test_attention_quick_reports_finite_exponents(attention_figures: dict[str, float]) -> None:
    for name in ("explicit", "fused", "local"):
        for key in (f"exponent_{name}", f"memory_exponent_{name}"):
            assert key in attention_figures
            assert math.isfinite(attention_figures[key]), key


def test_attention_local_memory_grows_slower_than_explicit(
    attention_figures: dict[str, float],
) -> None:
    # The explicit path builds (T, T) scores; local attention's band scores are linear in T.
    figures = attention_figures
    assert figures["memory_exponent_local"] < figures["memory_exponent_explicit"]
    assert figures["memory_exponent_explicit"] > 1.5


def test_recurrent_quick_reports_finite_ratios() -> None:
    figures = run_quick("recurrent.py")
    for key in ("fused_over_torch_lstm_time", "explicit_over_fused_time"):
        assert key in figures
        assert math.isfinite(figures[key]) and figures[key] > 0, key


def test_segmentation_quick_reports_the_issue_keys() -> None:
    figures = run_quick("segmentation.py")
    for key in ("cv_dice", "cv_dice_minus_monai", "cv_dice_minus_otsu", "ap50_minus_otsu", "swi_time_ratio_vs_monai"):
        assert key in figures
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # null when MONAI's peak grew by under 1 MiB (the quick image is small)
    assert "swi_peak_memory_ratio_vs_monai_4096" in figures
    assert 0.0 <= figures["cv_dice"] <= 1.0
    assert figures["swi_time_ratio_vs_monai"] > 0
    for arm in ("dlforge", "monai"):
        assert figures["arms"][arm]["sec_per_epoch"] > 0, arm
        assert 0.0 <= figures["arms"][arm]["dice"] <= 1.0, arm
