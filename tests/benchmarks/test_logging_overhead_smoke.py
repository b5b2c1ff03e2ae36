"""benchmarks/logging_overhead.py: its ``--smoke`` run times every variant (plain loop with
TensorBoard and MLflow, fit with the history and with each log_to tracker) and ends in one
JSON line with a figure for each."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "logging_overhead.py"
VARIANTS = ("plain_tensorboard", "plain_mlflow_sync", "plain_mlflow_async", "fit_history", "fit_log_to_tensorboard",
            "fit_log_to_mlflow")


def test_smoke_prints_a_table_then_one_json_line_with_every_variant() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=540,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 8 and not any(line.startswith("{") for line in lines[:-1])
    figures = json.loads(lines[-1])
    assert figures["mode"] == "smoke" and figures["steps"] == 20 and figures["rounds"] == 1
    for name in VARIANTS:
        assert math.isfinite(figures[f"{name}_overhead"]), name
        assert figures[f"{name}_ms_per_step"] > 0, name
    assert figures["plain_ms_per_step"] > 0 and figures["fit_ms_per_step"] > 0
    worst = max(figures[f"{k}_overhead"] for k in VARIANTS[3:])
    assert figures["dlforge_worst_overhead"] == round(worst, 4)
    assert figures["dlforge_within_target"] == (worst < 0.02)
