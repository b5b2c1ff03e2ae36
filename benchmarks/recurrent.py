"""How fast is dlforge's LSTM, explicit and fused, against torch.nn.LSTM on the same weights?

One command: ``python benchmarks/recurrent.py [--quick] [--threads 1]``.

Three runs of one training step (forward + backward of ``out.square().mean()``) over the
same batch of shape (B, T, F), with the same parameters:

- explicit: ``Recurrent("lstm", ..., path="explicit")``, the cell written out gate by
  gate and looped over time in Python;
- fused: the same module with ``path="fused"`` (PyTorch's LSTM kernel through dlforge);
- torch: a plain ``torch.nn.LSTM(batch_first=True)`` loaded with the same state dict.

Before timing, the three outputs are checked equal (``torch.testing.assert_close``), so
the comparison is between the same computation. Runs alternate: in each round every
variant runs once, in an order that rotates from round to round; round 0 warms up and is
not counted. Ratios are the median over rounds of each round's ratio of seconds, which
cancels the machine's slow drift in speed (a paired estimate); median seconds per step
are printed too.

Targets: fused within 1.2x of torch.nn.LSTM (``fused_over_torch_lstm_time <= 1.2``);
``explicit_over_fused_time`` is what reading every gate costs.

Threads default to 1 (``--threads N`` to change): the machine has two cores shared by
several people, and one thread gives steadier timings that do not depend on what else
runs; the ratios, not absolute speed, are the point.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlforge.models.rnn import Recurrent

SEED = 0
FULL = {"batch": 32, "steps": 100, "features": 32, "hidden": 128}
QUICK = {"batch": 8, "steps": 20, "features": 8, "hidden": 32}
FULL_ROUNDS, QUICK_ROUNDS = 15, 5


def make_variants(batch: int, steps: int, features: int, hidden: int
                  ) -> tuple[dict[str, nn.Module], Tensor]:
    torch.manual_seed(SEED)
    explicit = Recurrent("lstm", features, hidden, path="explicit")
    fused = Recurrent("lstm", features, hidden, path="fused")
    fused.load_state_dict(explicit.state_dict())
    reference = nn.LSTM(features, hidden, batch_first=True)
    reference.load_state_dict(explicit.rnn.state_dict())
    x = torch.randn(batch, steps, features)  # (B, T, F)
    return {"explicit": explicit, "fused": fused, "torch": reference}, x


def train_step(module: nn.Module, x: Tensor) -> Tensor:
    """One forward + backward; returns the output (B, T, H) for the equality check."""
    out, _ = module(x)  # (B, T, H)
    out.square().mean().backward()
    return out


def timed(fn: Callable[[], Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(modules: dict[str, nn.Module], x: Tensor, rounds: int) -> dict[str, list[float]]:
    names = list(modules)
    outputs = {name: train_step(m, x).detach() for name, m in modules.items()}
    torch.testing.assert_close(outputs["explicit"], outputs["torch"])
    torch.testing.assert_close(outputs["fused"], outputs["torch"])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up caches and allocators; not counted
        order = names[r % len(names):] + names[: r % len(names)]  # rotate the order
        for name in order:
            module = modules[name]
            module.zero_grad(set_to_none=True)
            seconds = timed(lambda: train_step(module, x))
            if r > 0:
                times[name].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LSTM "
          f"(B, T, F, H) = ({sizes['batch']}, {sizes['steps']}, {sizes['features']}, "
          f"{sizes['hidden']}), forward + backward, {rounds} rounds")
    modules, x = make_variants(**sizes)
    times = measure(modules, x, rounds)

    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        q = statistics.quantiles(v, n=4)
        print(f"  {name:9s} median {med[name] * 1000:8.2f} ms/step, "
              f"quartiles {q[0] * 1000:.2f} .. {q[2] * 1000:.2f}")
    # Per-round ratios: the rounds' runs sit milliseconds apart, so drift cancels.
    fused_over_torch = statistics.median(a / b for a, b in zip(times["fused"], times["torch"]))
    explicit_over_fused = statistics.median(
        a / b for a, b in zip(times["explicit"], times["fused"]))
    print(f"fused / torch.nn.LSTM   {fused_over_torch:.3f}  (target <= 1.2)")
    print(f"explicit / fused        {explicit_over_fused:.3f}")
    figures = {
        "fused_over_torch_lstm_time": fused_over_torch,
        "explicit_over_fused_time": explicit_over_fused,
        "explicit_ms_per_step": med["explicit"] * 1000,
        "fused_ms_per_step": med["fused"] * 1000,
        "torch_lstm_ms_per_step": med["torch"] * 1000,
    }
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
