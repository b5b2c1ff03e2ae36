"""Topic 30, the runtimes part: PyTorch fp32 and static int8 against ONNX Runtime fp32 and int8.

Claim, in the guide's words on deployment: an optimized runtime (ONNX Runtime) or int8
quantization makes a trained model answer faster at a small accuracy cost. Published
anchor: Sentence Transformers' CPU benchmark (all-MiniLM-L6-v2, short texts) measured
ONNX 1.39x and ONNX int8 3.08x over PyTorch fp32 with about 0.4% accuracy lost; users
also report int8 slower than fp32 on some CPUs (onnxruntime#17389).

Method: topic 30's production model (v1) as four variants: PyTorch fp32; PyTorch static
int8 (:func:`~dlforge.compress.quantize.quantize_static_int8`, calibrated on
:data:`CALIBRATION` training samples); the fp32 model exported to ONNX
(:func:`~dlforge.compress.onnx_export.export_onnx`) and run in ONNX Runtime (all graph
optimisations); and that file as static QDQ int8
(:func:`~dlforge.compress.ort_quantize.quantize_onnx_static`, same calibration samples).
Latency: one thread, batch 1 and 32; in each round every variant runs
:func:`~dlforge.compress.measure.time_calls` once per batch size (the variants' order
rotates from round to round, so a change in the machine's load hits all of them), and a
round gives that call's median. A speedup is the geometric mean over rounds of
fp32 / variant, with a 95% Student t interval of the log ratios over rounds. Accuracy:
each variant on the whole test split; parity: ONNX Runtime fp32 against PyTorch fp32 on the
test split (:func:`~dlforge.compress.onnx_export.parity`).

Example:
    >>> round(speedup_interval([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])[0], 6)
    2.0
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlforge.compress.measure import time_calls
from dlforge.compress.onnx_export import export_onnx, parity
from dlforge.compress.ort_quantize import quantize_onnx_static
from dlforge.compress.quantize import quantize_static_int8
from dlforge.lab.finding import Check, plot
from dlforge.lab.finding import significant as _r
from dlforge.lab._q23_compression import Part
from dlforge.pipeline.seg_cv import t_interval
from dlforge.registry.runtimes import OrtModule

VARIANTS = ("torch_fp32", "torch_int8", "ort_fp32", "ort_int8")
BASELINE = "torch_fp32"
BATCHES = (1, 32)
THREADS = 1
CALIBRATION = 256  # training samples that set the int8 activation scales (both runtimes)
WARMUP = 2         # untimed calls before each timed block
# The checks' bounds, fixed before the first run: parity within float32 rounding of a few
# thousand multiply-adds; "int8 costs at most one accuracy point"; faster means the whole
# interval above 1 (for the best of six variant-batch pairs: the claim is "at some batch size").
PARITY_MAX_DIFF, DROP_AT_MOST, SPEEDUP_ABOVE = 1e-4, 0.01, 1.0
PUBLISHED = {"ort_fp32": 1.39, "ort_int8": 3.08}  # Sentence Transformers, MiniLM-L6 on CPU, batch 1


def speedup_interval(base_ms: list[float], variant_ms: list[float]) -> tuple[float, float, float]:
    """(geometric mean, 95% low, 95% high) of ``base / variant`` over paired rounds: a
    Student t interval of the log ratios, exponentiated.

    Example:
        >>> [round(v, 3) for v in speedup_interval([4.0, 4.4, 3.6], [2.0, 2.0, 2.0])]
        [1.993, 1.553, 2.558]
    """
    logs = [math.log(b / v) for b, v in zip(base_ms, variant_ms, strict=True)]
    low, high = t_interval(logs)
    return math.exp(float(np.mean(logs))), math.exp(low), math.exp(high)


def interleaved_ms(models: dict[str, nn.Module], inputs: dict[int, torch.Tensor], rounds: int,
                   calls: int) -> dict[str, dict[int, list[float]]]:
    """Per-round median ms of each model at each batch size: ``out[name][batch][round]``.

    Each round times every model once per batch (``calls`` calls after :data:`WARMUP`), the
    models' order rotating by one each round.

    Example:
        >>> ms = interleaved_ms({"a": nn.Linear(2, 2)}, {1: torch.zeros(1, 2)}, rounds=3, calls=2)
        >>> len(ms["a"][1])
        3
    """
    names = list(models)
    out: dict[str, dict[int, list[float]]] = {name: {b: [] for b in inputs} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for b, x in inputs.items():
                out[name][b].append(time_calls(models[name], x, calls=calls, warmup=WARMUP, threads=THREADS).p50_ms)
    return out


def measure(model: nn.Module, train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, folder: Path,
            rounds: int, calls: int) -> dict:
    """The four variants of ``model`` (fp32, eval mode): latency rounds, test accuracy, ONNX parity.

    ``train_x`` (N, *input_shape) calibrates int8; ``test_x``/``test_y`` are the test split;
    the ONNX files go to ``folder``.

    Example:
        >>> raw = measure(model, x_train, x_test, y_test, Path(tmp), rounds=5, calls=20)  # doctest: +SKIP
        >>> sorted(raw["accuracy"])  # doctest: +SKIP
        ['ort_fp32', 'ort_int8', 'torch_fp32', 'torch_int8']
    """
    calibration = train_x[:CALIBRATION]
    onnx_fp32 = export_onnx(model, test_x[:2], folder / "model.onnx")
    onnx_int8 = quantize_onnx_static(onnx_fp32, folder / "model-int8.onnx", calibration)
    models = {"torch_fp32": model, "torch_int8": quantize_static_int8(model, calibration).model,
              "ort_fp32": OrtModule(onnx_fp32, threads=THREADS), "ort_int8": OrtModule(onnx_int8, threads=THREADS)}
    with torch.no_grad():
        predicted = {name: m(test_x).argmax(dim=-1) for name, m in models.items()}  # (N,)
    return {"ms": interleaved_ms(models, {b: _batch(test_x, b) for b in BATCHES}, rounds, calls),
            "accuracy": {name: float((p == test_y).float().mean()) for name, p in predicted.items()},
            "agreement": {name: float((p == predicted[BASELINE]).float().mean()) for name, p in predicted.items()},
            "parity": parity(model, onnx_fp32, test_x).to_dict(), "rounds": rounds, "calls": calls,
            "file_bytes": {"ort_fp32": onnx_fp32.stat().st_size, "ort_int8": onnx_int8.stat().st_size}}


def _batch(x: torch.Tensor, size: int) -> torch.Tensor:
    return x.repeat(-(-size // len(x)), *[1] * (x.ndim - 1))[:size]  # (size, *input_shape)


def part(raw: dict) -> Part:
    """Numbers, checks, figure, method and notes of the runtimes comparison from :func:`measure`'s output."""
    n: dict = {"runtime_rounds": raw["rounds"], "runtime_calls_per_round": raw["calls"], "runtime_threads": THREADS,
               "runtime_calibration_samples": CALIBRATION,
               "runtime_round_ms": {v: {f"bs{b}": [_r(t, 4) for t in ts] for b, ts in by.items()}
                                    for v, by in raw["ms"].items()},
               "ort_fp32_max_abs_diff": _r(raw["parity"]["max_abs_diff"], 3),
               "ort_fp32_argmax_agreement": _r(raw["parity"]["argmax_agreement"]),
               **{f"{v}_file_bytes": size for v, size in raw["file_bytes"].items()}}
    for v in VARIANTS:
        n[f"{v}_test_accuracy"] = _r(raw["accuracy"][v])
        n[f"{v}_agreement_with_fp32"] = _r(raw["agreement"][v])
        for b in BATCHES:
            n[f"{v}_bs{b}_ms"] = _r(float(np.median(n["runtime_round_ms"][v][f"bs{b}"])), 4)
    faster, best = [], ("", -math.inf)
    for v in VARIANTS[1:]:
        for b in BATCHES:
            ratio, low, high = speedup_interval(n["runtime_round_ms"][BASELINE][f"bs{b}"],
                                                n["runtime_round_ms"][v][f"bs{b}"])
            key = f"{v}_bs{b}_speedup"
            n.update({key: _r(ratio, 4), f"{key}_ci_low": _r(low, 4), f"{key}_ci_high": _r(high, 4)})
            faster += [f"{v} at batch {b}"] if n[f"{key}_ci_low"] > SPEEDUP_ABOVE else []
            best = max(best, (f"{v} at batch {b}", n[f"{key}_ci_low"]), key=lambda p: p[1])
    for v in ("torch_int8", "ort_int8"):
        n[f"{v}_accuracy_drop"] = _r(n[f"{BASELINE}_test_accuracy"] - n[f"{v}_test_accuracy"])
    n["runtime_int8_worst_accuracy_drop"] = max(n["torch_int8_accuracy_drop"], n["ort_int8_accuracy_drop"])
    n["runtime_best_speedup"], n["runtime_best_speedup_ci_low"] = best
    # the same bound on a log scale (> 0 where the lower bound is > 1): over seeds the lows range from
    # about 20x to 300x, and a t interval of such ratios is only meaningful on their logs
    n["runtime_best_log2_speedup_ci_low"] = _r(math.log2(best[1]))  # best[1] = exp(...) > 0
    n["runtime_faster_than_torch_fp32"] = faster
    checks = [Check("ort_fp32_argmax_agreement", ">=", 1.0), Check("ort_fp32_max_abs_diff", "<", PARITY_MAX_DIFF),
              Check("runtime_int8_worst_accuracy_drop", "<=", DROP_AT_MOST),
              Check("runtime_best_log2_speedup_ci_low", ">", math.log2(SPEEDUP_ABOVE))]
    method = (f" Runtimes: v1 as PyTorch fp32, PyTorch static int8 (FX, x86, calibrated on {CALIBRATION} training "
              "samples), ONNX Runtime fp32 (dynamo export, all graph optimisations) and ONNX Runtime static QDQ int8 "
              f"(same calibration); {THREADS} thread, batch {' and '.join(map(str, BATCHES))}, {raw['rounds']} "
              f"rounds of {raw['calls']} calls per variant and batch (order rotating), each round's median; speedup: "
              "geometric mean over rounds of fp32 / variant with a 95% t interval of the log ratios; accuracy of "
              "each on the test split; ONNX parity on the test split.")
    return Part(numbers=n, checks=checks, figures=[_figure(n)], method=method, notes=_notes(n))


def _figure(n: dict):
    from matplotlib.ticker import LogLocator  # matplotlib loads with the first figure, never at import

    with plot("PyTorch and ONNX Runtime, fp32 and int8", 1, 2, figsize=(11, 3.8)) as drawn:
        a, b = drawn.axes
        xs = np.arange(len(VARIANTS))
        for i, batch in enumerate(BATCHES):
            a.bar(xs + (i - 0.5) * 0.4, [n[f"{v}_bs{batch}_ms"] for v in VARIANTS], width=0.4, label=f"batch {batch}")
        a.set_xticks(xs, VARIANTS, fontsize=8)
        a.set(yscale="log", ylabel="median ms per call (log)", title=f"Latency, {THREADS} thread")
        a.legend(fontsize=8)
        others = VARIANTS[1:]
        for i, batch in enumerate(BATCHES):
            keys = [f"{v}_bs{batch}_speedup" for v in others]
            mid = np.array([n[k] for k in keys])
            err = [mid - [n[f"{k}_ci_low"] for k in keys], np.array([n[f"{k}_ci_high"] for k in keys]) - mid]
            b.errorbar(np.arange(len(others)) + (i - 0.5) * 0.2, mid, yerr=err, fmt="o", capsize=4,
                       label=f"batch {batch}")
        b.axhline(SPEEDUP_ABOVE, color="grey", ls="--")
        for v, x in PUBLISHED.items():
            b.plot([others.index(v)], [x], "k_", ms=14, label="published, MiniLM batch 1" if v == "ort_fp32" else None)
        b.set_xticks(np.arange(len(others)), others, fontsize=8)
        b.set(yscale="log", ylabel=f"speedup over {BASELINE} (log)", title="Speedup, 95% interval over rounds")
        b.legend(fontsize=8)
        for axis in (a.yaxis, b.yaxis):  # plain numbers, 1-2-5 steps, on the log axes
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter("{x:g}")
            axis.set_minor_formatter("")
    return drawn.figure


def _notes(n: dict) -> str:
    line = lambda v, b: (f"{n[f'{v}_bs{b}_speedup']}x [{n[f'{v}_bs{b}_speedup_ci_low']}, "  # noqa: E731
                         f"{n[f'{v}_bs{b}_speedup_ci_high']}]")
    text = " Runtimes (one thread; speedup over PyTorch fp32, 95% interval over rounds): " + "; ".join(
        f"{v} {line(v, 1)} at batch 1, {line(v, 32)} at batch 32" for v in VARIANTS[1:]) + ". "
    faster = n["runtime_faster_than_torch_fp32"]
    text += (f"Faster than PyTorch fp32 with the whole interval above 1: {', '.join(faster)}. " if faster else
             f"No variant is faster than PyTorch fp32 with its whole interval above 1 on this CPU (best: "
             f"{n['runtime_best_speedup']}, interval from {n['runtime_best_speedup_ci_low']}). ")
    text += (f"Accuracy on the test split: PyTorch fp32 {n['torch_fp32_test_accuracy']}, int8 "
             f"{n['torch_int8_test_accuracy']}; ONNX Runtime fp32 {n['ort_fp32_test_accuracy']}, int8 "
             f"{n['ort_int8_test_accuracy']} (int8 costs at most {n['runtime_int8_worst_accuracy_drop']}"
             + (f", more than the {DROP_AT_MOST} allowed" if n["runtime_int8_worst_accuracy_drop"] > DROP_AT_MOST
                else "") + "). ")
    text += (f"ONNX Runtime fp32 against PyTorch: largest difference {n['ort_fp32_max_abs_diff']}, argmax agreement "
             f"{n['ort_fp32_argmax_agreement']}"
             + ("." if n["ort_fp32_max_abs_diff"] < PARITY_MAX_DIFF and n["ort_fp32_argmax_agreement"] >= 1.0
                else f", outside the bound ({PARITY_MAX_DIFF}, 1.0): the exported model does not answer as "
                     "PyTorch does.")
             + f" At batch 1 ONNX Runtime fp32 gives {n['ort_fp32_bs1_speedup']}x and int8 "
             f"{n['ort_int8_bs1_speedup']}x, against the published {PUBLISHED['ort_fp32']}x and "
             f"{PUBLISHED['ort_int8']}x for MiniLM on short texts: a Transformer, whose attention and GELU "
             "ONNX Runtime fuses, where this MLP has only matrix products and ReLUs to offer; int8 reads a "
             "quarter of the weight bytes and packs four times as many values per vector instruction.")
    return text
