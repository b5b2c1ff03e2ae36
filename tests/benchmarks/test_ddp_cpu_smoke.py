"""benchmarks/ddp_cpu.py: its ``--smoke`` run (one process of two threads, two torchrun
processes of one thread, Lightning when it imports) ends in one JSON line with every figure,
and the two-process weights equal the one-process weights."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ddp_cpu.py"
KEYS = ("one_proc_2_threads_s_per_epoch", "ddp_2x1_s_per_epoch", "ddp_over_single", "lightning_ddp_s_per_epoch",
        "lightning_over_single", "lightning_over_dlforge_ddp", "weights_max_abs_diff", "lightning_weights_max_abs_diff")
LIGHTNING_KEYS = KEYS[3:6] + KEYS[7:]


@pytest.fixture(scope="module")
def smoke() -> tuple[list[str], dict[str, Any]]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_smoke_prints_a_table_then_one_json_line_with_every_key(smoke) -> None:
    lines, figures = smoke
    assert len(lines) > 4 and not any(line.startswith("{") for line in lines[:-1])
    assert set(KEYS) <= set(figures)
    assert figures["mode"] == "smoke" and figures["launcher"].startswith("torchrun")
    assert figures["threads"]["single"] == 2 and figures["threads"]["ddp"] == 1  # what each arm really ran with
    assert len(figures["load_average_per_round"]) == figures["rounds"] == 1


def test_smoke_times_both_dlforge_arms_and_the_weights_agree(smoke) -> None:
    _, figures = smoke
    for key in KEYS[:3]:
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    low, high = figures["ranges"]["ddp_over_single"]
    assert low <= figures["ddp_over_single"] <= high
    # two ranks of half the batch, gradients averaged by DDP: the single-process step, to float rounding
    assert 0 <= figures["weights_max_abs_diff"] < 1e-5


def test_lightning_figures_are_numbers_or_null_with_the_reason(smoke) -> None:
    _, figures = smoke
    if importlib.util.find_spec("lightning") is None:
        for key in LIGHTNING_KEYS:
            assert figures[key] is None and "lightning is not installed" in figures["null_reasons"][key], key
    else:
        assert figures["null_reasons"] == {}
        assert all(figures[key] is not None and figures[key] >= 0 for key in LIGHTNING_KEYS)
        assert figures["lightning_weights_max_abs_diff"] < 1e-5
