"""How do the time and memory of attention grow with sequence length: explicit, fused, local?

One command: ``python benchmarks/attention.py [--quick] [--threads 1]``.

Three forward passes over the same random q, k, v of shape (B, h, T, d) = (1, 4, T, 64),
T from 256 to 8192 (``--quick``: 128 to 512), under ``torch.no_grad``:

- explicit: ``scaled_dot_product_attention(q, k, v, fused=False)``, the written-out
  softmax(q k^T / sqrt(d)) v that builds the (B, h, T, T) score matrix;
- fused: the same call with ``fused=True`` (PyTorch's kernel, flash attention on CPU);
- local: ``local_attention(q, k, v, window=64)``, a band of 2 * 64 + 1 keys per query.

Time: median seconds over ``--repeats`` rounds; in each round the three variants run one
after another, in an order that rotates from round to round, so no variant always runs
first or on a warmer cache. A warm-up call per variant and length is not counted.

Memory: the largest intermediate, measured by a ``TorchDispatchMode`` that sees every
ATen op the forward pass dispatches and records the largest storage (in bytes) of any
op's output. That is the peak that grows with T (the (T, T) scores for explicit, the
(T / 64, 64, 192) band scores for local); it needs no allocator hooks, which CPU PyTorch
lacks. A fused kernel's internal scratch is invisible to it, so for fused it is the
largest tensor the kernel hands back: flash attention's scratch is a fixed-size block.

A variant is skipped at a length whose largest intermediate, extrapolated quadratically
from the previous length, would exceed ``--max-mib`` (default 512 MiB: the machine is
shared); the table says so. Full run: explicit is skipped at T = 8192 (1 GiB scores).

Exponents: least-squares slope of log(time) and of log(memory) against log(T) over the
lengths each variant ran. Targets: local's time exponent below 1.2 (linear in T), the
explicit one near 2 (quadratic); memory exponents near 2 for explicit and 1 for local.

Threads default to 1 (``--threads N`` to change): the machine has two cores shared by
several people, and one thread gives steadier timings that do not depend on what else
runs; the exponents, not absolute speed, are the point.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dlforge.nn.attention import local_attention, scaled_dot_product_attention

SEED = 0
BATCH, HEADS, HEAD_DIM = 1, 4, 64
WINDOW = 64
FULL_LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
QUICK_LENGTHS = [128, 256, 512]

VARIANTS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "explicit": lambda q, k, v: scaled_dot_product_attention(q, k, v, fused=False),
    "fused": lambda q, k, v: scaled_dot_product_attention(q, k, v, fused=True),
    "local": lambda q, k, v: local_attention(q, k, v, window=WINDOW),
}


class LargestOutput(TorchDispatchMode):
    """Records the largest storage, in bytes, of any tensor an ATen op returns.

    Example:
        >>> with LargestOutput() as m:
        ...     _ = torch.ones(10, 10) @ torch.ones(10, 10)
        >>> m.max_bytes
        400
    """

    def __init__(self) -> None:
        super().__init__()
        self.max_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                # A view's storage is its base's: already counted when the base was made.
                self.max_bytes = max(self.max_bytes, t.untyped_storage().nbytes())
        return out


def largest_intermediate(fn: Callable[[], Tensor]) -> int:
    with torch.no_grad(), LargestOutput() as mode:
        fn()
    return mode.max_bytes


def timed(fn: Callable[[], Tensor]) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def fit_exponent(lengths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(values) against log(lengths); NaN with under 2 points."""
    if len(lengths) < 2:
        return math.nan
    xs, ys = [math.log(n) for n in lengths], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure(
    lengths: list[int], repeats: int, max_bytes: int
) -> dict[str, dict[int, tuple[float, int]]]:
    """For each variant, {T: (median seconds, largest intermediate bytes)} over the lengths run."""
    results: dict[str, dict[int, tuple[float, int]]] = {name: {} for name in VARIANTS}
    prev: dict[str, tuple[int, int]] = {}  # variant -> (T, bytes) at its last length run
    gen = torch.Generator().manual_seed(SEED)
    for T in lengths:
        shape = (BATCH, HEADS, T, HEAD_DIM)  # (B, h, T, d)
        q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
        names = []
        for name in VARIANTS:
            if name in prev:
                T_prev, bytes_prev = prev[name]
                predicted = bytes_prev * (T / T_prev) ** 2  # worst case: quadratic growth
                if predicted > max_bytes:
                    print(f"  skipped {name:8s} at T={T:5d}: its largest intermediate would reach "
                          f"~{predicted / 2**20:.0f} MiB > --max-mib {max_bytes / 2**20:.0f}")
                    continue
            names.append(name)
        calls = {name: (lambda f=VARIANTS[name]: f(q, k, v)) for name in names}
        peak = {name: largest_intermediate(calls[name]) for name in names}  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate the order
            for name in order:
                times[name].append(timed(calls[name]))
        for name in names:
            results[name][T] = (statistics.median(times[name]), peak[name])
            prev[name] = (T, peak[name])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small lengths, a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-mib", type=float, default=512.0,
                        help="skip a variant whose largest intermediate would exceed this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = QUICK_LENGTHS if args.quick else FULL_LENGTHS
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"(B, h, d) = ({BATCH}, {HEADS}, {HEAD_DIM}), local window {WINDOW}, {repeats} rounds")
    results = measure(lengths, repeats, int(args.max_mib * 2**20))

    print(f"  {'T':>5s}  " + "  ".join(f"{n + ' ms':>12s} {n + ' MiB':>12s}" for n in VARIANTS))
    for T in lengths:
        cells = []
        for name in VARIANTS:
            if T in results[name]:
                sec, nbytes = results[name][T]
                cells.append(f"{sec * 1000:12.2f} {nbytes / 2**20:12.2f}")
            else:
                cells.append(f"{'skipped':>12s} {'skipped':>12s}")
        print(f"  {T:5d}  " + "  ".join(cells))

    figures: dict[str, float] = {}
    for name, rows in results.items():
        ts = sorted(rows)
        figures[f"exponent_{name}"] = fit_exponent(ts, [rows[t][0] for t in ts])
    for name, rows in results.items():
        ts = sorted(rows)
        figures[f"memory_exponent_{name}"] = fit_exponent(ts, [rows[t][1] for t in ts])
    for name in VARIANTS:
        print(f"{name:8s} time exponent {figures[f'exponent_{name}']:.3f}, "
              f"memory exponent {figures[f'memory_exponent_{name}']:.3f}")
    print("targets: local time exponent < 1.2, explicit time exponent near 2")
    for name in VARIANTS:  # absolute figures at the longest length each variant ran
        T = max(results[name])
        figures[f"longest_T_{name}"] = T
        figures[f"ms_at_longest_{name}"] = results[name][T][0] * 1000
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
