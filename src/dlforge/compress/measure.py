"""What a compressed variant costs and saves: latency percentiles, throughput, size, sparsity.

Latency is wall time of whole forward calls under ``torch.no_grad`` at a fixed thread
count (``torch.set_num_threads`` for PyTorch; an ONNX Runtime session is built per thread
count by the caller), after warm-up calls. p50 and p99 are over ``calls`` calls;
throughput is samples per second at the median. Unstructured sparsity is reported as a
share of zero weights, never as a speed-up: dense kernels do the same work on zeros.

Example:
    >>> from torch import nn
    >>> model = nn.Linear(8, 2)
    >>> t = time_calls(model, torch.zeros(4, 8), calls=5)
    >>> t.p50_ms <= t.p99_ms and t.throughput > 0
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dlforge.compress.prune import PRUNABLE


@dataclass(frozen=True)
class Timing:
    """Latency of one batch size at one thread count: p50 and p99 (ms), samples per second."""

    batch: int
    threads: int
    p50_ms: float
    p99_ms: float
    throughput: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def time_calls(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, calls: int = 30,
               warmup: int = 3, threads: int | None = None) -> Timing:
    """Time ``calls`` forward passes of ``model`` on ``x`` (after ``warmup`` untimed ones)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return Timing(batch=len(x), threads=threads or before, p50_ms=p50 * 1e3, p99_ms=p99 * 1e3,
                  throughput=len(x) / p50)


def latency_grid(model_for: Callable[[int], Callable[[torch.Tensor], torch.Tensor]], sample: torch.Tensor, *,
                 batches: Sequence[int] = (1, 32), threads: Sequence[int] = (1, 2), calls: int = 30) -> list[Timing]:
    """:func:`time_calls` for every (threads, batch); ``model_for(threads)`` gives the model to
    run at that thread count (the same module for PyTorch, a new session for ONNX Runtime).

    Example:
        >>> grid = latency_grid(lambda t: nn.Linear(8, 2), torch.zeros(40, 8), calls=3)
        >>> [(t.threads, t.batch) for t in grid]
        [(1, 1), (1, 32), (2, 1), (2, 32)]
    """
    grid = []
    for t in threads:
        model = model_for(t)
        for b in batches:
            x = _batch(sample, b)
            grid.append(time_calls(model, x, calls=calls, threads=t))
    return grid


def _batch(sample: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` samples from ``sample``, repeated when it holds fewer."""
    reps = -(-size // len(sample))
    return sample.repeat(reps, *[1] * (sample.ndim - 1))[:size]


def zero_share(model: nn.Module) -> float:
    """Share of exactly-zero weights over the model's Linear and Conv layers (0 for none).

    Example:
        >>> layer = nn.Linear(2, 2); _ = torch.nn.init.zeros_(layer.weight)
        >>> zero_share(layer)
        1.0
    """
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def parameter_count(spec: dict) -> int:
    """Parameters of the architecture ``spec`` describes (built on the meta device: no memory).
    Quantization keeps the count (each weight is stored in fewer bits); structured pruning
    lowers it.

    Example:
        >>> parameter_count({"arch": "mlp", "input_shape": [4], "num_outputs": 2, "hidden": [8]})
        58
    """
    from dlforge.models import build

    with torch.device("meta"):
        return sum(p.numel() for p in build(spec).parameters())


def file_bytes(path: Path, *names: str) -> int:
    """Bytes on disk of the named files of an artifact folder (those that exist)."""
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


__all__ = ["Timing", "file_bytes", "latency_grid", "parameter_count", "time_calls", "zero_share"]
