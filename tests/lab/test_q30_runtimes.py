"""Topic 30's runtimes part: PyTorch fp32/int8 against ONNX Runtime fp32/int8. The quick
finding carries the numbers and checks; medians, speedups and their intervals recompute
from the stored round times (scipy's t interval as the reference); the checks recompute
from the numbers; a failing measurement is reported as such."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from dlforge.lab import _q30_runtimes as rt
from dlforge.lab import q30_deployment

from .cache import finding_for

PREFIXES = ("runtime_", "torch_", "ort_")


@pytest.fixture(scope="module")
def finding():
    return finding_for(30)


def _reference_speedup(base: list[float], other: list[float]) -> tuple[float, float, float]:
    logs = np.log(np.asarray(base) / np.asarray(other))
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    return math.exp(logs.mean()), math.exp(low), math.exp(high)


def test_quick_finding_has_the_runtime_numbers_checks_and_figure(finding):
    n = finding.numbers
    for v in rt.VARIANTS:
        assert 0 < n[f"{v}_test_accuracy"] <= 1
        for b in rt.BATCHES:
            assert n[f"{v}_bs{b}_ms"] > 0
            assert len(n["runtime_round_ms"][v][f"bs{b}"]) == n["runtime_rounds"] == q30_deployment.BUDGETS["quick"]["runtime_rounds"]
    assert n["runtime_threads"] == 1 and n["ort_int8_file_bytes"] < n["ort_fp32_file_bytes"]
    checks = {c["check"] for c in finding.check_results()}
    assert {str(c) for c in rt.part(_raw()).checks} <= checks
    assert "PyTorch and ONNX Runtime, fp32 and int8" in [f.title for f in finding.figures]
    assert "ort_int8 " in finding.notes and "Runtimes:" in finding.method
    # the runtimes' names do not shadow any of the deployment numbers
    ours = set(rt.part(_raw()).numbers)
    assert not [k for k in n if k.startswith(PREFIXES) and k not in ours]


def _uneven_raw() -> dict:
    """Hand-made rounds whose ratios vary from round to round (so the intervals have a width)."""
    raw = _raw()
    raw["ms"]["ort_int8"] = {b: [0.5 * b, 0.7 * b, 0.4 * b] for b in rt.BATCHES}
    raw["ms"]["torch_int8"] = {b: [0.9 * b, 1.2 * b, 0.8 * b] for b in rt.BATCHES}
    raw["ms"]["ort_fp32"] = {b: [1.1 * b, 1.0 * b, 1.0 * b] for b in rt.BATCHES}
    return raw


def test_medians_speedups_and_intervals_recompute_from_the_round_times():
    # one seed's computation (the finding's round times are means over seeds, so it is checked here)
    n = rt.part(_uneven_raw()).numbers
    rounds = n["runtime_round_ms"]
    for v in rt.VARIANTS:
        for b in rt.BATCHES:
            assert n[f"{v}_bs{b}_ms"] == pytest.approx(np.median(rounds[v][f"bs{b}"]), rel=1e-3)
            if v == rt.BASELINE:
                continue
            want = _reference_speedup(rounds[rt.BASELINE][f"bs{b}"], rounds[v][f"bs{b}"])
            got = [n[f"{v}_bs{b}_speedup{s}"] for s in ("", "_ci_low", "_ci_high")]
            assert got == pytest.approx(want, rel=1e-3)
    lows = {f"{v} at batch {b}": n[f"{v}_bs{b}_speedup_ci_low"] for v in rt.VARIANTS[1:] for b in rt.BATCHES}
    assert n["runtime_best_speedup_ci_low"] == max(lows.values())
    assert n["runtime_best_log2_speedup_ci_low"] == pytest.approx(math.log2(max(lows.values())), abs=1e-4)
    assert lows[n["runtime_best_speedup"]] == max(lows.values())
    assert n["runtime_faster_than_torch_fp32"] == [k for k, low in lows.items() if low > rt.SPEEDUP_ABOVE]


def test_checks_recompute_from_the_numbers(finding):
    n = finding.numbers
    for v in ("torch_int8", "ort_int8"):
        assert n[f"{v}_accuracy_drop"] == pytest.approx(n["torch_fp32_test_accuracy"] - n[f"{v}_test_accuracy"],
                                                        abs=1e-4)
    # over seeds: the mean of each seed's largest is at least the largest mean
    assert n["runtime_int8_worst_accuracy_drop"] >= max(n["torch_int8_accuracy_drop"], n["ort_int8_accuracy_drop"]) - 1e-4
    lows = {f"{v} at batch {b}": n[f"{v}_bs{b}_speedup_ci_low"] for v in rt.VARIANTS[1:] for b in rt.BATCHES}
    assert n["runtime_best_speedup_ci_low"] >= max(lows.values()) - 1e-3
    for key in ("runtime_best_speedup_ci_low", "ort_int8_bs1_speedup"):
        if key in finding.per_seed:
            assert n[key] == pytest.approx(np.mean(finding.per_seed[key]), rel=1e-3)
    by_hand = {  # each check against its interval over seeds (a number equal on every seed: itself)
        "ort_fp32_argmax_agreement >= 1.0": _low(finding, "ort_fp32_argmax_agreement") >= 1.0,
        f"ort_fp32_max_abs_diff < {rt.PARITY_MAX_DIFF}": _high(finding, "ort_fp32_max_abs_diff") < rt.PARITY_MAX_DIFF,
        f"runtime_int8_worst_accuracy_drop <= {rt.DROP_AT_MOST}":
            _high(finding, "runtime_int8_worst_accuracy_drop") <= 0.01,
        "runtime_best_log2_speedup_ci_low > 0.0": _low(finding, "runtime_best_log2_speedup_ci_low") > 0.0,
    }
    results = {c["check"]: c["holds"] for c in finding.check_results()}
    assert {k: results[k] for k in by_hand} == by_hand
    # ONNX Runtime fp32 answers as PyTorch does: the same predictions, so the same accuracy
    if n["ort_fp32_agreement_with_fp32"] == 1.0:
        assert n["ort_fp32_test_accuracy"] == n["torch_fp32_test_accuracy"]


def _low(finding, key: str) -> float:
    return finding.intervals[key].low if key in finding.intervals else finding.numbers[key]


def _high(finding, key: str) -> float:
    return finding.intervals[key].high if key in finding.intervals else finding.numbers[key]


def test_speedup_interval_matches_scipy():
    base, other = [4.0, 4.4, 3.6, 5.0], [2.0, 2.1, 1.9, 2.0]
    assert rt.speedup_interval(base, other) == pytest.approx(_reference_speedup(base, other), rel=1e-12)
    with pytest.raises(ValueError):  # rounds are paired: unequal lengths are a bug, not a result
        rt.speedup_interval([1.0, 2.0], [1.0])


class _Recorder(nn.Module):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return x


def test_interleaved_ms_rotates_the_order_and_times_every_round():
    log: list[str] = []
    models = {name: _Recorder(name, log) for name in "abc"}
    ms = rt.interleaved_ms(models, {1: torch.zeros(1, 2), 4: torch.zeros(4, 2)}, rounds=3, calls=2)
    per_block = 2 * (rt.WARMUP + 2)  # both batch sizes, warm-up and timed calls
    firsts = [log[i] for i in range(0, len(log), per_block)]
    assert firsts == list("abc" + "bca" + "cab")
    assert all(len(ms[name][b]) == 3 and min(ms[name][b]) >= 0 for name in "abc" for b in (1, 4))


def _raw(int8_correct: int = 100, int8_ms: float = 1.0) -> dict:
    """Hand-made measurements of 100 test samples and 3 rounds."""
    ms = {v: {b: [1.0 * b, 1.1 * b, 0.9 * b] for b in rt.BATCHES} for v in rt.VARIANTS}
    for v in ("torch_int8", "ort_int8"):
        ms[v] = {b: [int8_ms * t for t in ms[v][b]] for b in rt.BATCHES}
    accuracy = {"torch_fp32": 1.0, "ort_fp32": 1.0, "torch_int8": int8_correct / 100, "ort_int8": 1.0}
    return {"ms": ms, "accuracy": accuracy, "agreement": dict(accuracy), "rounds": 3, "calls": 5,
            "parity": {"max_abs_diff": 2e-6, "argmax_agreement": 1.0, "n": 100},
            "file_bytes": {"ort_fp32": 400, "ort_int8": 100}}


def test_a_failing_measurement_is_reported_with_its_numbers():
    part = rt.part(_raw(int8_correct=98, int8_ms=1.0))  # int8 loses 2 points and is no faster
    holds = {str(c): c.holds(part.numbers) for c in part.checks}
    assert holds == {"ort_fp32_argmax_agreement >= 1.0": True, "ort_fp32_max_abs_diff < 0.0001": True,
                     "runtime_int8_worst_accuracy_drop <= 0.01": False, "runtime_best_log2_speedup_ci_low > 0.0": False}
    assert part.numbers["runtime_int8_worst_accuracy_drop"] == pytest.approx(0.02)
    assert part.numbers["runtime_faster_than_torch_fp32"] == []
    assert "No variant is faster than PyTorch fp32" in part.notes and "more than the 0.01 allowed" in part.notes


def test_a_faster_int8_is_named_with_its_interval():
    part = rt.part(_raw(int8_ms=0.5))  # int8 takes half the time in every round: exactly 2x
    n = part.numbers
    assert n["ort_int8_bs32_speedup"] == n["ort_int8_bs32_speedup_ci_low"] == 2.0
    assert n["runtime_faster_than_torch_fp32"] == [f"{v} at batch {b}" for v in ("torch_int8", "ort_int8")
                                                   for b in rt.BATCHES]
    assert all(c.holds(n) for c in part.checks)


def test_doctests():
    result = doctest.testmod(rt, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
