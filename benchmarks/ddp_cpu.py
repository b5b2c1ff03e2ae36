"""Does data-parallel training pay on this CPU: two processes of one thread against one
process of two threads, and dlforge's DDP against Lightning's?

One command: ``python benchmarks/ddp_cpu.py [--rounds 5] [--epochs 4]``;
``--smoke`` runs tiny sizes in a few seconds (it proves the script works; its numbers mean
nothing). Lightning is optional: ``PYTHONPATH=/path/to/lightning python benchmarks/ddp_cpu.py``.

Workload: the digits CNN (channels 320, 640; no dropout and no batch norm, so the
data-parallel step is exactly the single-process step) on the digits training split, cut
to a whole number of global batches (1,216 of 1,257 images: 19 batches of 64), SGD with
momentum 0.9, lr 0.05, the same initial weights (seed 0) and the same global batch in every arm.
Not Adam: it divides by sqrt(v), so a gradient near zero that float rounding nudges moves
its weight by up to lr; in ONE process, a batch of 64 against the sum of its two halves
already differs by 2e-5 after one Adam step and by 7e-3 after 3 epochs, which would hide
what this checks. Arms:

1. ``single``: ``fit`` in one process, ``torch.set_num_threads(2)``;
2. ``ddp``: ``fit`` in two processes of one thread each, launched by torchrun
   (``python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/ddp_cpu.py
   --worker ddp``); gloo; each rank takes 32 samples per step (``fit`` keeps ``batch_size``
   as the global batch);
3. ``lightning``: ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` (Lightning starts
   the second process itself), one thread each, the same model, optimizer and per-rank
   batches of 32: each epoch's batches are the very samples rank r of ``fit`` sees
   (``rank_order`` of the epoch's permutation, loaded with ``use_distributed_sampler=False``),
   so its final weights are compared too. Null, with the reason, when ``lightning`` does not import.

Timing: every arm runs in fresh processes; on rank 0 a callback stamps each epoch's end,
and a run's seconds per epoch are the median gap between consecutive epoch ends: the first
epoch (thread pools, allocator, DDP's first buckets) is not counted, and whatever a framework
does between epochs is; the median, because other users' bursts on a shared machine land
in single epochs. Rounds run the arms one after another, rotating their order each
round; a figure is the median over rounds, printed with its range; a ratio is the median of
each round's paired ratio, which cancels slow drift of a shared machine. Process start-up
(interpreter, imports, rendezvous) is printed apart as ``wall``, not counted per epoch.

Weights: the largest absolute difference between the final weights of arms 1 and 2 (and
of Lightning against arm 1) after the same epochs; float32 sums in another order, so not 0
(1.5e-7 measured after 4 epochs).

Load: other work on the same cores changes the answer, not just the noise. A process of two
OpenMP threads loses much more than two processes of one thread when a core is taken away
(each parallel region waits for its slowest thread), so each round prints the machine's
load average and the JSON keeps them: read the ratios next to them.

The last line printed is one JSON object; a figure that could not be measured is null and
``null_reasons`` says why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dlforge.data import load_source, prepare
from dlforge.models import build
from dlforge.train import Callback, epoch_permutation, fit, seed_everything
from dlforge.train.distributed import Distributed, rank_order

SEED = 0
OPTIM = {"name": "momentum", "lr": 0.05, "momentum": 0.9}
ARMS = ("single", "ddp", "lightning")
THREADS = {"single": 2, "ddp": 1, "lightning": 1}
FULL = {"channels": [320, 640], "batch": 64, "samples": None, "epochs": 4, "rounds": 5}
SMOKE = {"channels": [8, 16], "batch": 32, "samples": 256, "epochs": 2, "rounds": 1}


def workload(preset: dict) -> tuple[nn.Module, TensorDataset]:
    """The model (same initial weights in every process) and the training split, cut to a
    whole number of global batches so every step has the same batch in every arm."""
    prepared = prepare(load_source("digits"), val=0.15, test=0.15, seed=SEED)
    x, y = prepared.train.tensors
    n = min(len(x), preset["samples"] or len(x))
    n -= n % preset["batch"]
    seed_everything(SEED)
    model = build({"arch": "cnn", "channels": preset["channels"], "dropout": 0.0, "batch_norm": False},
                  input_shape=prepared.input_shape, num_outputs=prepared.num_outputs)
    return model, TensorDataset(x[:n], y[:n])


def save_result(out: Path, arm: str, model: nn.Module, stamps: list[float]) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / f"{arm}.safetensors"))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    (out / f"{arm}.json").write_text(json.dumps({"epoch_s": gaps, "threads": torch.get_num_threads()}))


class EpochEnds(Callback):
    """Stamps the end of every epoch (``fit``'s hook)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_epoch_end(self, state) -> None:
        self.stamps.append(time.perf_counter())


# ----------------------------------------------------------------------------- workers

def fit_worker(arm: str, preset: dict, out: Path) -> None:
    """Arms 1 and 2: ``fit``; under torchrun it joins the process group first."""
    torch.set_num_threads(THREADS[arm])
    dist = Distributed.from_env()  # the rendezvous happens here, before any clock
    model, data = workload(preset)
    timer = EpochEnds()
    fit(model, data, epochs=preset["epochs"], batch_size=preset["batch"], optim=OPTIM,
        seed=SEED, device="cpu", callbacks=[timer], distributed=dist)
    if dist.main:
        save_result(out, arm, model, timer.stamps)
    if dist.active:
        torch.distributed.barrier()
        os._exit(0)  # gloo's threads can abort at interpreter exit when the ranks race (see tests/train)


def lightning_worker(preset: dict, out: Path) -> None:
    """Arm 3: Lightning's DDP. Lightning re-runs this command for rank 1 (LOCAL_RANK set)."""
    import lightning as L

    torch.set_num_threads(1)
    model, data = workload(preset)
    x, y = data.tensors
    stamps: list[float] = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=OPTIM["lr"], momentum=OPTIM["momentum"])

        def train_dataloader(self):
            # the samples rank r of fit sees in this epoch, in fit's order, pre-batched
            world = self.trainer.world_size
            visits = rank_order(epoch_permutation(len(x), SEED, self.current_epoch), self.global_rank, world)
            batches = [(x[idx], y[idx]) for idx in visits.split(preset["batch"] // world)]
            return torch.utils.data.DataLoader(batches, batch_size=None)

    class Stamp(L.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            stamps.append(time.perf_counter())

    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=preset["epochs"],
                        use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Stamp()])
    trainer.fit(Module())
    if trainer.is_global_zero:
        save_result(out, "lightning", model, stamps)
    trainer.strategy.barrier()
    os._exit(0)


# ----------------------------------------------------------------------------- the rounds

def launch(arm: str, preset_flag: list[str], out: Path) -> float:
    """Run ``arm`` in fresh processes; returns the wall seconds, start-up included."""
    worker = [str(Path(__file__).resolve()), "--worker", arm, "--out", str(out), *preset_flag]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launcher, *worker] if arm == "ddp" else [sys.executable, *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS[arm])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not (out / f"{arm}.json").exists():
        raise RuntimeError(f"{arm} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return wall


def max_abs_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys(), (sorted(wa), sorted(wb))
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def measure(rounds: int, preset_flag: list[str]
            ) -> tuple[dict[str, dict], dict[str, list[float]], dict[str, str], list[float]]:
    """Per arm, its seconds per epoch and wall seconds in every round and its threads per
    process; the weight differences to arm 1; the reasons of arms that did not run; the
    machine's 1-minute load average at the start of each round (others share these cores)."""
    reasons: dict[str, str] = {}
    if importlib.util.find_spec("lightning") is None:
        reasons["lightning"] = "lightning is not installed (pip install lightning; this script never installs it)"
    runs: dict[str, dict] = {a: {"s": [], "wall": [], "threads": None} for a in ARMS if a not in reasons}
    diffs: dict[str, list[float]] = {"ddp": [], "lightning": []}
    loads: list[float] = []
    for r in range(rounds):
        arms = list(runs)
        loads.append(os.getloadavg()[0])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            for arm in arms[r % len(arms):] + arms[: r % len(arms)]:  # rotate: no arm always runs first
                try:
                    wall = launch(arm, preset_flag, out)
                except RuntimeError as err:
                    if arm != "lightning":
                        raise
                    reasons["lightning"] = str(err)
                    del runs[arm]
                    continue
                record = json.loads((out / f"{arm}.json").read_text())
                runs[arm]["s"].append(statistics.median(record["epoch_s"]))
                runs[arm]["wall"].append(wall)
                runs[arm]["threads"] = record["threads"]
            for arm in ("ddp", "lightning"):
                if arm in runs and (out / f"{arm}.safetensors").exists():
                    diffs[arm].append(max_abs_diff(out / "single.safetensors", out / f"{arm}.safetensors"))
        print(f"  round {r + 1}/{rounds} (load average {loads[-1]:.2f}): " + ", ".join(f"{a} {v['s'][-1]:.3f} s/epoch" for a, v in runs.items()),
              flush=True)
    return runs, diffs, reasons, loads


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    return [a / b for a, b in zip(times[num], times[den])] if num in times and den in times else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--epochs", type=int, help="epochs per run (at least 2: the first is not timed)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: proves the script runs")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = {**(SMOKE if args.smoke else FULL)}
    preset["epochs"] = max(2, args.epochs or preset["epochs"])
    if args.worker:
        lightning_worker(preset, args.out) if args.worker == "lightning" else fit_worker(args.worker, preset, args.out)
        return
    rounds = args.rounds or preset["rounds"]
    flags = ["--epochs", str(preset["epochs"]), *(["--smoke"] if args.smoke else [])]
    _, data = workload(preset)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"digits CNN channels {preset['channels']}, {len(data)} samples, global batch {preset['batch']}, "
          f"{preset['epochs']} epochs (the first not timed), {rounds} round(s); arm 2 launched by torchrun")
    runs, diffs, reasons, loads = measure(rounds, flags)

    per_epoch = {a: v["s"] for a, v in runs.items()}
    med = {a: statistics.median(v) for a, v in per_epoch.items()}
    ratios = {"ddp_over_single": paired_ratio(per_epoch, "ddp", "single"),
              "lightning_over_single": paired_ratio(per_epoch, "lightning", "single"),
              "lightning_over_dlforge_ddp": paired_ratio(per_epoch, "lightning", "ddp")}
    labels = {"single": "1 process (fit)", "ddp": "2 processes (fit, DDP)", "lightning": "2 processes (Lightning DDP)"}
    for arm, label in labels.items():
        if arm in runs:
            v = runs[arm]["s"]
            print(f"  {label:28s} {runs[arm]['threads']} thread(s) each: {med[arm]:7.3f} s/epoch "
                  f"(range {min(v):.3f} .. {max(v):.3f}); wall per run {statistics.median(runs[arm]['wall']):.1f} s "
                  "incl. start-up")
        else:
            print(f"  {label:28s} not run: {reasons[arm]}")
    for name, values in ratios.items():
        if values:
            print(f"  {name:28s} {statistics.median(values):7.3f} (range {min(values):.3f} .. {max(values):.3f})")
    for arm, values in diffs.items():
        if values and arm in runs:
            print(f"  final weights, {arm} vs single: max |diff| {max(values):.2e}")

    def fig(value: float | None, digits: int = 4) -> float | None:
        return None if value is None else round(value, digits)

    no_lightning = reasons.get("lightning")
    figures = {
        "one_proc_2_threads_s_per_epoch": fig(med["single"]),
        "ddp_2x1_s_per_epoch": fig(med["ddp"]),
        "ddp_over_single": fig(statistics.median(ratios["ddp_over_single"])),
        "lightning_ddp_s_per_epoch": fig(med.get("lightning")),
        "lightning_over_single": fig(statistics.median(ratios["lightning_over_single"]) if not no_lightning else None),
        "lightning_over_dlforge_ddp": fig(statistics.median(ratios["lightning_over_dlforge_ddp"]) if not no_lightning else None),
        "weights_max_abs_diff": max(diffs["ddp"]),
        "lightning_weights_max_abs_diff": max(diffs["lightning"]) if not no_lightning else None,
        "ranges": {k: [fig(min(v)), fig(max(v))] for k, v in {**per_epoch, **ratios}.items() if v},
        "threads": {a: v["threads"] for a, v in runs.items()},
        "load_average_per_round": [round(v, 2) for v in loads],
        "model": f"digits CNN {preset['channels']}, no dropout, no batch norm",
        "samples": len(data), "global_batch": preset["batch"], "epochs": preset["epochs"], "rounds": rounds,
        "launcher": "torchrun --standalone --nproc-per-node 2", "mode": "smoke" if args.smoke else "full",
        "null_reasons": {k: no_lightning for k in ("lightning_ddp_s_per_epoch", "lightning_over_single",
                                                   "lightning_over_dlforge_ddp", "lightning_weights_max_abs_diff")}
        if no_lightning else {},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
