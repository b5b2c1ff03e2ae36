"""How much does fit() cost over a plain PyTorch loop, and how close to the machine's
matmul peak does a training step of a wide MLP get?

One command: ``python benchmarks/engine_overhead.py [--repeats 7] [--epochs 2]``.

1. Overhead. The quickstart CNN on the digits training split (1,257 images, batch 64),
   trained by (a) a plain hand-written loop, (b) ``fit`` with no callbacks and (c) ``fit``
   with the default callbacks (progress lines, history.jsonl, a checkpoint every epoch).
   Runs alternate a, b, c, b, c, a, ... in rounds; the overheads are the median over
   rounds of each round's ratio to (a), which cancels the machine's slow drift in speed
   (1.02 means 2% slower than the plain loop). Median seconds per epoch are printed too. Lightning's parity test allows about
   0.06 s per epoch on an MNIST CNN.
2. Throughput. A width-2048 MLP (3 hidden layers, batch 512) trained by ``fit``:
   achieved GFLOP/s of a training step (forward + backward = 3x the forward matmul
   FLOPs) against the fp32 matmul peak of this machine measured in the same run.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.data import load_source, prepare
from dlforge.models import build
from dlforge.train import (
    Callback, Checkpoint, HistoryWriter, ProgressBar, epoch_permutation, fit, seed_everything,
)

SEED = 0
BATCH = 64


def digits_cnn() -> tuple[nn.Module, TensorDataset]:
    prepared = prepare(load_source("digits"), val=0.15, test=0.15, seed=SEED)
    seed_everything(SEED)
    model = build({"arch": "cnn", "channels": [32, 64], "dropout": 0.2, "batch_norm": True},
                  input_shape=prepared.input_shape, num_outputs=prepared.num_outputs)
    return model, prepared.train


def plain_loop(model: nn.Module, data: TensorDataset, epochs: int) -> float:
    """The loop a PyTorch user writes by hand; returns seconds per epoch."""
    seed_everything(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data.tensors
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = epoch_permutation(len(x), SEED, epoch)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / epochs


def fit_run(model: nn.Module, data: TensorDataset, epochs: int, callbacks: list) -> float:
    start = time.perf_counter()
    fit(model, data, epochs=epochs, batch_size=BATCH, optim={"name": "adam", "lr": 1e-3},
        seed=SEED, device="cpu", callbacks=callbacks)
    return (time.perf_counter() - start) / epochs


def default_callbacks(run_dir: Path) -> list:
    return [ProgressBar(stream=io.StringIO()), HistoryWriter(run_dir / "history.jsonl"),
            Checkpoint(run_dir / "checkpoints", every_n_epochs=1, monitor=None)]


def measure_overhead(repeats: int, epochs: int) -> dict[str, float]:
    model, data = digits_cnn()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {"plain": [], "fit": [], "fit_callbacks": []}
    for r in range(repeats + 1):  # round 0 warms up caches and allocators; not counted
        with tempfile.TemporaryDirectory() as tmp:
            runs = {
                "plain": lambda: plain_loop(model, data, epochs),
                "fit": lambda: fit_run(model, data, epochs, []),
                "fit_callbacks": lambda: fit_run(model, data, epochs, default_callbacks(Path(tmp))),
            }
            names = list(runs)
            names = names[r % 3 :] + names[: r % 3]  # rotate, so no variant always runs first
            for name in names:
                run = runs[name]
                model.load_state_dict(initial)
                seconds = run()
                if r > 0:
                    times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    # This machine's speed drifts by more than the effect measured; runs of one round
    # sit seconds apart, so the per-round ratio cancels the drift (a paired estimate).
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"])) for k in ("fit", "fit_callbacks")}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4)
        print(f"  {k:14s} median {med[k] * 1000:7.1f} ms/epoch, quartiles {q[0] * 1000:.1f} .. {q[2] * 1000:.1f}")
    return {
        "plain_s_per_epoch": med["plain"],
        "fit_s_per_epoch": med["fit"],
        "fit_callbacks_s_per_epoch": med["fit_callbacks"],
        "overhead_no_callbacks": ratio["fit"],
        "overhead_default_callbacks": ratio["fit_callbacks"],
        "extra_s_per_epoch_no_callbacks": med["plain"] * (ratio["fit"] - 1),
        "extra_s_per_epoch_default_callbacks": med["plain"] * (ratio["fit_callbacks"] - 1),
    }


def matmul_peak_gflops(repeats: int = 10) -> float:
    """Best fp32 GEMM rate over square sizes and the MLP's own (batch x width) shape."""
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (512, 2048, 2048)]
    best_rate = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        best_rate = max(best_rate, 2 * m * k * n / best / 1e9)
    return best_rate


class StepTimer(Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step_end(self, state) -> None:
        self.stamps.append(time.perf_counter())


def mlp_gflops(width: int = 2048, batch: int = 512, steps: int = 12) -> float:
    seed_everything(SEED)
    model = build({"arch": "mlp", "hidden": [width] * 3}, input_shape=(width,), num_outputs=10)
    x, y = torch.randn(batch * steps, width), torch.randint(0, 10, (batch * steps,))
    timer = StepTimer()
    fit(model, TensorDataset(x, y), epochs=1, batch_size=batch, optim="sgd", device="cpu", callbacks=[timer])
    deltas = sorted(b - a for a, b in zip(timer.stamps, timer.stamps[1:]))
    per_step = statistics.median(deltas)
    dims = [width] * 4 + [10]
    forward_flops = sum(2 * batch * i * o for i, o in zip(dims, dims[1:]))
    return 3 * forward_flops / per_step / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    overhead = measure_overhead(args.repeats, args.epochs)
    print(f"fit, no callbacks      ratio {overhead['overhead_no_callbacks']:.3f}  (target <= 1.02)")
    print(f"fit, default callbacks ratio {overhead['overhead_default_callbacks']:.3f}  (target <= 1.05)")
    peak = matmul_peak_gflops()
    achieved = mlp_gflops()
    print(f"fp32 matmul peak      {peak:8.1f} GFLOP/s")
    print(f"MLP-2048 train step   {achieved:8.1f} GFLOP/s  fraction {achieved / peak:.3f}  (target >= 0.5)")
    figures = {
        "overhead_no_callbacks": round(overhead["overhead_no_callbacks"], 4),
        "overhead_default_callbacks": round(overhead["overhead_default_callbacks"], 4),
        "mlp_fraction_of_peak": round(achieved / peak, 4),
        "plain_s_per_epoch": round(overhead["plain_s_per_epoch"], 4),
        "fit_s_per_epoch": round(overhead["fit_s_per_epoch"], 4),
        "fit_callbacks_s_per_epoch": round(overhead["fit_callbacks_s_per_epoch"], 4),
        "extra_s_per_epoch_no_callbacks": round(overhead["extra_s_per_epoch_no_callbacks"], 4),
        "extra_s_per_epoch_default_callbacks": round(overhead["extra_s_per_epoch_default_callbacks"], 4),
        "matmul_peak_gflops": round(peak, 1),
        "mlp_gflops": round(achieved, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
