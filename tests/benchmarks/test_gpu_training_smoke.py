"""benchmarks/gpu_training.py: its ``--smoke`` run on the CPU ends in one JSON line with
every figure (a finite number, or null with its reason), and the full mode refuses
clearly without CUDA."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_training.py"
HEADLINE = ("fit_none_over_plain", "fit_default_over_fit_none", "compile_speedup_bert_base",
            "mfu_bert_base_compiled", "mfu_hf_bert_base")
ARMS = {"small": ("plain", "fit_none", "fit_default", "fit_compile", "hf", "lightning_barebones",
                  "lightning_default"),
        "bert_base": ("plain", "fit_none", "fit_compile", "hf")}


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=180, check=False, env=env)


def leaves(value: Any, path: str = ""):
    """(dotted path, value) of every number or null in the figures, lists as one leaf."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from leaves(inner, f"{path}.{key}" if path else key)
    elif value is None or isinstance(value, (int, float, list)):
        yield path, value


@pytest.fixture(scope="module")
def smoke() -> tuple[list[str], dict[str, Any]]:
    done = run_script("--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_smoke_prints_a_table_then_one_json_line_with_every_key(smoke) -> None:
    lines, figures = smoke
    assert len(lines) > 5, "a readable table comes before the JSON line"
    assert not any(line.startswith("{") for line in lines[:-1])
    for key in HEADLINE + ("tokens_per_s", "mfu", "peak_tflops", "peak_kind", "null_reasons"):
        assert key in figures, key
    for name, arms in ARMS.items():
        assert set(figures["tokens_per_s"][name]) == set(arms), name
        assert set(figures["mfu"][name]) == set(arms), name
    assert figures["mode"] == "smoke" and "fp32 CPU" in figures["peak_kind"]


def test_smoke_figures_are_finite_or_null_with_a_reason(smoke) -> None:
    _, figures = smoke
    reasons = figures["null_reasons"]
    for path, value in leaves({k: v for k, v in figures.items() if k != "null_reasons"}):
        if value is None:
            assert reasons.get(path), f"{path} is null without a reason"
        else:
            for number in value if isinstance(value, list) else [value]:
                assert math.isfinite(number) and number > 0, (path, value)
    assert set(reasons) <= {path for path, value in leaves(figures) if value is None}


def test_smoke_measures_the_arms_that_can_run_on_the_cpu(smoke) -> None:
    _, figures = smoke
    for name in ARMS:
        for arm in ("plain", "fit_none", "fit_compile"):  # always runnable on the CPU
            assert figures["tokens_per_s"][name][arm] > 0, (name, arm)
    for key in ("fit_none_over_plain", "fit_default_over_fit_none", "compile_speedup_bert_base",
                "mfu_bert_base_compiled"):
        assert figures[key] is not None, key
    low, high = figures["fit_none_over_plain_range"]
    assert low <= figures["fit_none_over_plain"] <= high  # the median of the paired ratios
    try:
        import lightning  # noqa: F401
    except ImportError:
        assert "lightning" in figures["null_reasons"]["lightning_barebones_over_plain"]


def test_full_mode_without_cuda_exits_2_with_one_line() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hide any GPU, so this holds everywhere
    done = run_script(env=env)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "needs a CUDA GPU" in message[0] and "--smoke" in message[0]
    assert done.stdout == ""


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_flop_count_matches_transformers_parameters_and_the_formula() -> None:
    pytest.importorskip("transformers")
    bench = load_benchmark()
    shape = bench.Shape(dim=32, num_layers=2, num_heads=4, ffn_dim=64, seq=16, batch=8, real_fraction=1.0, vocab=100)
    # The same architecture: dlforge's BERT and transformers' count the same matmul parameters.
    ours, theirs = bench.matmul_params(bench.dlforge_bert(shape)), bench.matmul_params(bench.hf_bert(shape))
    assert ours == theirs
    # by hand: per layer QKV + output (4 x (dim^2 + dim)), FFN in and out, two LayerNorms; pooler; head
    dim, ffn = 32, 64
    layer = 4 * (dim * dim + dim) + (dim * ffn + ffn) + (ffn * dim + dim) + 2 * 2 * dim
    assert ours == 2 * layer + (dim * dim + dim) + (dim * 2 + 2)
    assert bench.step_flops(shape, ours) == 6 * ours * 8 * 16 + 12 * 2 * 32 * 16**2 * 8
