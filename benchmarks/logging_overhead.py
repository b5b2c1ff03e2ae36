"""What does logging 3 metrics on every step cost a training epoch: dlforge's history,
its ``train.log_to`` trackers, and TensorBoard's and MLflow's own APIs called directly?

One command: ``python benchmarks/logging_overhead.py [--rounds 7]``; ``--smoke`` runs tiny
sizes in a few seconds (it proves the script works; its numbers mean nothing).

One 300-step epoch of a small MLP (random inputs, batch 64), logging ``loss``, ``lr`` and
``examples`` on every step, two families, each against its own run with no logging:

* a plain PyTorch loop: no logging; ``SummaryWriter.add_scalar``; ``mlflow.log_metric`` on a
  SQLite backend, synchronous and ``synchronous=False`` (flushed before ``end_run``); and
  MLflow's floor: the metrics kept in memory and sent in one ``log_batch`` after the loop,
  the least any MLflow client pays for them;
* dlforge's ``fit`` (``log_every_n_steps=1``): no step records; the history alone
  (``history.jsonl``); and ``log_to`` TensorBoard / MLflow (the same SQLite backend) on top.

Every timing spans opening and closing the run (an MLflow run is created and ended, the
trackers drain). Variants alternate in rounds (rotated, round 0 a warm-up); an overhead is
the median over rounds of each round's ratio to its family's no-logging run, which cancels
the machine's drift. Target: dlforge's history and its log_to paths add under 2%.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.train import Callback, HistoryWriter, fit, seed_everything
from dlforge.train.trackers import MlflowWriter, TensorBoardWriter, TrackerLogger

SEED, BATCH, LR, TARGET = 0, 64, 1e-3, 0.02
FULL = {"steps": 300, "features": 256, "hidden": 512, "rounds": 7, "warmup": 1}
SMOKE = {"steps": 20, "features": 16, "hidden": 32, "rounds": 1, "warmup": 0}


def make_problem(steps: int, features: int, hidden: int) -> tuple[Callable[[], nn.Module], TensorDataset]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(steps * BATCH, features, generator=g)
    y = torch.randint(0, 10, (steps * BATCH,), generator=g)

    def model() -> nn.Module:
        seed_everything(SEED)
        return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 10))

    return model, TensorDataset(x, y)


class Examples(Callback):
    """The third metric of a logged step (free to compute, so only logging is measured)."""

    def on_step_end(self, state) -> None:
        if state.step_record is not None:
            state.step_record["examples"] = float(state.step * BATCH)


def plain(model: nn.Module, data: TensorDataset, log: Callable[[dict[str, float], int], None] | None) -> None:
    """The loop a PyTorch user writes; ``log`` gets the 3 metrics of every step."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data.tensors
    for step, i in enumerate(range(0, len(x), BATCH)):
        loss = loss_fn(model(x[i : i + BATCH]), y[i : i + BATCH])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if log is not None:
            log({"loss": loss.item(), "lr": LR, "examples": float((step + 1) * BATCH)}, step)


def plain_tensorboard(model: nn.Module, data: TensorDataset, log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    plain(model, data, lambda m, s: [writer.add_scalar(k, v, s) for k, v in m.items()])
    writer.close()


def plain_mlflow(model: nn.Module, data: TensorDataset, synchronous: bool) -> None:
    import mlflow

    with mlflow.start_run():
        plain(model, data, lambda m, s: [mlflow.log_metric(k, v, step=s, synchronous=synchronous)
                                         for k, v in m.items()])
        if not synchronous:
            mlflow.flush_async_logging()


def plain_mlflow_floor(model: nn.Module, data: TensorDataset, client, experiment_id: str) -> None:
    """The least any client of MLflow's store can do for these metrics: one run, every step's
    metrics kept in memory and sent in one ``log_batch`` after the loop, the run ended."""
    from mlflow.entities import Metric

    kept: list[tuple[dict[str, float], int]] = []
    plain(model, data, lambda m, s: kept.append((m, s)))
    run_id = client.create_run(experiment_id).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, s) for m, s in kept for k, v in m.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)
    client.set_terminated(run_id, "FINISHED")


def dlforge_fit(model: nn.Module, data: TensorDataset, callbacks: list[Callback], log_every: int = 1) -> None:
    fit(model, data, epochs=1, batch_size=BATCH, optim={"name": "adam", "lr": LR}, device="cpu", seed=SEED,
        log_every_n_steps=log_every, callbacks=callbacks)


def variants(tmp: Path, uri: str, r: int) -> dict[str, Callable[[nn.Module, TensorDataset], None]]:
    """name -> run(model, data); each writes into its own files under ``tmp`` for round ``r``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("bench").experiment_id

    def history() -> list[Callback]:
        return [Examples(), HistoryWriter(tmp / f"history-{r}-{time.perf_counter_ns()}.jsonl")]

    def log_to(writer) -> list[Callback]:
        return [*history(), TrackerLogger([writer], run_name=f"bench-{r}", params={"optim.lr": LR},
                                          stream=io.StringIO())]

    return {
        "plain": lambda m, d: plain(m, d, None),
        "plain_tensorboard": lambda m, d: plain_tensorboard(m, d, tmp / f"tb-plain-{r}"),
        "plain_mlflow_sync": lambda m, d: plain_mlflow(m, d, synchronous=True),
        "plain_mlflow_async": lambda m, d: plain_mlflow(m, d, synchronous=False),
        "plain_mlflow_floor": lambda m, d: plain_mlflow_floor(m, d, client, experiment_id),
        "fit": lambda m, d: dlforge_fit(m, d, [], log_every=10**9),
        "fit_history": lambda m, d: dlforge_fit(m, d, history()),
        "fit_log_to_tensorboard": lambda m, d: dlforge_fit(m, d, log_to(TensorBoardWriter(tmp / f"tb-fit-{r}"))),
        "fit_log_to_mlflow": lambda m, d: dlforge_fit(m, d, log_to(MlflowWriter(uri, experiment="bench"))),
    }


def measure(preset: dict[str, int], family: str = "all") -> dict[str, list[float]]:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    make_model, data = make_problem(preset["steps"], preset["features"], preset["hidden"])
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench")
        warmup = preset["warmup"]  # round 0 warms caches, imports and the database (not timed)
        for r in range(1 - warmup, preset["rounds"] + 1):
            runs = {k: v for k, v in variants(Path(tmp), uri, r).items() if family in ("all", k.split("_")[0])}
            names = list(runs)
            names = names[r % len(names):] + names[: r % len(names)]  # no variant always first
            for name in names:
                model = make_model()
                start = time.perf_counter()
                runs[name](model, data)
                if r > 0:
                    times.setdefault(name, []).append(time.perf_counter() - start)
            if r > 0:  # each round as it ends: a long run under load still shows where it stands
                print(f"round {r}: " + " ".join(f"{k}={times[k][-1]:.3f}s" for k in runs), flush=True)
    return times


def summarise(times: dict[str, list[float]], steps: int) -> dict[str, dict[str, float]]:
    """Per variant: ms per step, and the median per-round overhead against its family's baseline."""
    out = {}
    for name, values in times.items():
        base = "plain" if name.startswith("plain") else "fit"
        ratio = statistics.median(a / b for a, b in zip(values, times[base]))
        extra = statistics.median((a - b) / steps * 1000 for a, b in zip(values, times[base]))
        out[name] = {"ms_per_step": statistics.median(values) / steps * 1000, "overhead": ratio - 1,
                     "extra_ms_per_step": extra}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help=f"timed rounds (default {FULL['rounds']})")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: proves the script runs")
    parser.add_argument("--family", choices=("all", "plain", "fit"), default="all",
                        help="time one family only (plain loop, or dlforge's fit)")
    args = parser.parse_args()
    preset = {**(SMOKE if args.smoke else FULL)}
    if args.rounds:
        preset["rounds"] = args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {preset['steps']} steps of batch {BATCH}, "
          f"MLP {preset['features']}-{preset['hidden']}-{preset['hidden']}-10, {preset['rounds']} rounds")
    table = summarise(measure(preset, args.family), preset["steps"])
    print(f"{'variant':24s} {'ms/step':>8s} {'overhead':>9s} {'extra ms/step':>14s}")
    for name, row in table.items():
        print(f"{name:24s} {row['ms_per_step']:8.3f} {100 * row['overhead']:8.2f}% {row['extra_ms_per_step']:14.4f}")
    dlforge = [k for k in ("fit_history", "fit_log_to_tensorboard", "fit_log_to_mlflow") if k in table]
    worst = max((table[k]["overhead"] for k in dlforge), default=float("nan"))
    print(f"dlforge's logging: worst overhead {100 * worst:.2f}% (target < {100 * TARGET:.0f}%)")
    # What dlforge adds to MLflow's own unavoidable cost: log_to mlflow's overhead less the
    # floor's (each against its own family's run without logging).
    added = (table["fit_log_to_mlflow"]["overhead"] - table["plain_mlflow_floor"]["overhead"]
             if {"fit_log_to_mlflow", "plain_mlflow_floor"} <= table.keys() else float("nan"))
    print(f"log_to mlflow beyond MLflow's own floor: {100 * added:.2f}%")
    figures = {
        "mode": "smoke" if args.smoke else "full", "family": args.family, "steps": preset["steps"],
        "rounds": preset["rounds"],
        "threads": torch.get_num_threads(),
        **{f"{k}_overhead": round(v["overhead"], 4) for k, v in table.items() if k not in ("plain", "fit")},
        **{f"{k}_ms_per_step": round(v["ms_per_step"], 4) for k, v in table.items()},
        "dlforge_worst_overhead": round(worst, 4), "dlforge_within_target": worst < TARGET,
        "log_to_mlflow_beyond_floor": round(added, 4),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
