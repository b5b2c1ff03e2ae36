"""How fast does dlforge train BERT on a GPU: fit against a plain loop, Lightning and
Hugging Face, and what fraction of the bf16 matmul peak does a training step reach?

One command: ``python benchmarks/gpu_training.py [--rounds 5] [--steps 40]`` on a CUDA
machine (bf16 autocast, the data already on the GPU); ``python benchmarks/gpu_training.py --smoke`` on the CPU (tiny
sizes, fp32, a few steps: it proves the script runs and every figure is produced, its
numbers mean nothing). Without ``--smoke`` and without CUDA the script exits 2.

Two workloads, both dlforge's ``build_bert`` with random ids (padding id 0) and two classes:
``small`` (dim 256, 4 layers, 128 tokens, batch 64, about 60% real tokens: lengths drawn
uniformly in [0.2 T, T]) and ``bert_base`` (12 layers, dim 768, 128 tokens, batch 128, no
padding, so every arm computes the same positions). Arms, each on the same initial
weights, data and optimizer (AdamW, lr 1e-4, weight decay 0.01; fused on CUDA in the
hand-written loops):

* ``plain``: a hand-written PyTorch loop that tracks loss and accuracy on the device and
  reads them once, at the end of the epoch;
* ``fit_none``: ``fit`` with no callbacks;
* ``fit_default``: ``fit`` with the callbacks ``dlforge train`` turns on by default
  (``config_callbacks`` of a default config: progress, NaN guard, gradient monitor, a
  checkpoint each epoch, history; small workload only);
* ``fit_compile``: ``fit(..., compile=True)`` (inductor; ``--smoke`` uses ``aot_eager``:
  inductor needs about 70 s to compile even the tiny model on two CPU cores);
* ``hf``: ``transformers.BertForSequenceClassification`` (same shapes, random init, SDPA
  attention) in the plain loop;
* ``lightning_barebones`` / ``lightning_default``: ``Trainer(barebones=True)`` and
  Lightning's defaults, small workload, when ``lightning`` imports (else null).

Timing: each run is one epoch of ``warmup + steps`` steps; the clock starts after the
warm-up steps (compilation happens there) and stops after the epoch's end (so a default
checkpoint counts), with one device synchronisation at each end and none between.
Rounds interleave the arms, rotating their order each round; ratios are the median over
rounds of each round's paired ratio (which cancels slow drift of the machine), printed
with their range over rounds.

FLOPs of a training step: 6 x P x B x T + 12 x L x dim x T^2 x B (PaLM, appendix B: the
parameter term forward and backward, plus attention scores and values), with P the
parameters outside the embedding tables (lookups, not matmuls), B the batch, T the
sequence length, L the layers; every position counts, padding included. MFU divides the
achieved rate by the bf16 matmul peak measured in the same run on CUDA; in ``--smoke``,
by a measured fp32 CPU matmul peak.

The last line printed is one JSON object; a figure that could not be measured is null
and ``null_reasons`` says why.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import io
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

SEED = 0
LR, WEIGHT_DECAY = 1e-4, 0.01
NEEDS_CUDA = ("gpu_training.py: the full benchmark needs a CUDA GPU (bf16, data on the device) and none is "
              "visible here; run it with --smoke for the CPU check")


@dataclass(frozen=True)
class Shape:
    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    seq: int
    batch: int
    real_fraction: float  # mean share of real (non-padding) tokens
    vocab: int = 30522


FULL = {"shapes": {"small": Shape(256, 4, 4, 1024, 128, 64, 0.6), "bert_base": Shape(768, 12, 12, 3072, 128, 128, 1.0)},
        "warmup": 10, "steps": 40, "rounds": 5, "compile": True}
SMOKE = {"shapes": {"small": Shape(32, 2, 4, 64, 16, 8, 0.6, vocab=1000),
                    "bert_base": Shape(32, 2, 4, 64, 16, 8, 1.0, vocab=1000)},
         "warmup": 1, "steps": 3, "rounds": 2, "compile": "aot_eager"}
ARMS = {"small": ("plain", "fit_none", "fit_default", "fit_compile", "hf", "lightning_barebones", "lightning_default"),
        "bert_base": ("plain", "fit_none", "fit_compile", "hf")}


class Skip(Exception):
    """An arm that cannot run here; the message is the reason reported with its null."""


# ----------------------------------------------------------------------------- data and models

def token_data(shape: Shape, n: int, device: torch.device) -> TensorDataset:
    """``n`` random sequences (n, T) padded with 0 after a length drawn uniformly so that
    the mean real share is ``shape.real_fraction``, and labels in {0, 1}."""
    g = torch.Generator().manual_seed(SEED)
    T = shape.seq
    ids = torch.randint(1, shape.vocab, (n, T), generator=g)  # (n, T)
    low = max(1, round((2 * shape.real_fraction - 1) * T))
    lengths = torch.randint(low, T + 1, (n, 1), generator=g)  # (n, 1)
    ids = ids.masked_fill(torch.arange(T)[None, :] >= lengths, 0)
    return TensorDataset(ids.to(device), torch.randint(0, 2, (n,), generator=g).to(device))


def dlforge_bert(shape: Shape) -> nn.Module:
    from dlforge.models.bert import build_bert

    torch.manual_seed(SEED)
    return build_bert((shape.seq,), 2, vocab_size=shape.vocab, dim=shape.dim, num_layers=shape.num_layers,
                      num_heads=shape.num_heads, ffn_dim=shape.ffn_dim)


def hf_bert(shape: Shape) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=shape.vocab, hidden_size=shape.dim, num_hidden_layers=shape.num_layers,
                        num_attention_heads=shape.num_heads, intermediate_size=shape.ffn_dim, num_labels=2,
                        attn_implementation="sdpa")
    return BertForSequenceClassification(config)


def matmul_params(model: nn.Module) -> int:
    """Parameters outside the embedding tables (both models name them ``*.embeddings.*``)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in f".{name}")


def step_flops(shape: Shape, params: int) -> float:
    B, T = shape.batch, shape.seq
    return 6 * params * B * T + 12 * shape.num_layers * shape.dim * T**2 * B


def matmul_peak_flops(device: torch.device) -> float:
    """Best measured matmul rate, the fastest single call of each size: bf16 on CUDA, fp32 on the CPU (FLOP/s)."""
    cuda = device.type == "cuda"
    sizes, dtype, repeats = ((4096, 8192, 16384), torch.bfloat16, 10) if cuda else ((256, 512), torch.float32, 5)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- timing

class Clock:
    """Seconds per step over the steps after ``warmup``: one sync at each end."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.start: float | None = None
        self.steps = 0

    def tick(self, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        self.steps = step
        if step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def stop(self) -> float:
        sync(self.device)
        if self.start is None or self.steps <= self.warmup:
            raise RuntimeError(f"only {self.steps} steps ran, not more than the {self.warmup} warm-up steps")
        return (time.perf_counter() - self.start) / (self.steps - self.warmup)


@dataclass
class Run:
    shape: Shape
    data: TensorDataset
    device: torch.device
    warmup: int
    compile: bool | str

    @property
    def precision(self) -> str:
        return "bf16" if self.device.type == "cuda" else "fp32"

    def autocast(self):
        cuda = self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()


def plain_loop(model: nn.Module, run: Run, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> float:
    """The loop a PyTorch user writes: loss and accuracy summed on the device, read at the end."""
    from dlforge.train import epoch_permutation

    torch.manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                            fused=run.device.type == "cuda")
    x, y = run.data.tensors
    order = epoch_permutation(len(x), SEED, 0).to(run.device)
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    clock, B = Clock(run.device, run.warmup), run.shape.batch
    model.train()
    for step, i in enumerate(range(0, len(x), B), start=1):
        idx = order[i : i + B]
        xb, yb = x[idx], y[idx]  # (B, T), (B,)
        with run.autocast():
            out = forward(model, xb)  # (B, 2)
            loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * len(yb)
        correct += (out.argmax(dim=1) == yb).sum()
        clock.tick(step)
    epoch_loss, epoch_accuracy = (loss_sum / len(x)).item(), (correct / len(x)).item()  # like fit's totals
    assert math.isfinite(epoch_loss) and 0 <= epoch_accuracy <= 1, (epoch_loss, epoch_accuracy)
    return clock.stop()


def fit_arm(model: nn.Module, run: Run, callbacks: str | None = None, compile: bool | str = False) -> float:
    """``fit`` for one epoch; ``callbacks="default"`` adds ``dlforge train``'s defaults."""
    from dlforge.config import validate_config
    from dlforge.pipeline.fit_options import config_callbacks
    from dlforge.train import Callback, fit

    clock = Clock(run.device, run.warmup)

    class Timer(Callback):  # last in the list: the epoch's checkpoint and history come first
        def on_step_end(self, state) -> None:
            clock.tick(state.step)

    extra: dict[str, Any] = {}
    if compile:
        if "compile" not in inspect.signature(fit).parameters:
            raise Skip("this dlforge's fit has no compile argument")
        extra["compile"] = compile
    with tempfile.TemporaryDirectory() as tmp:
        cbs: list = []
        if callbacks == "default":
            cfg = validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp"}})
            cbs = config_callbacks(cfg, has_val=False, run_dir=Path(tmp), progress=io.StringIO())
            extra["log_every_n_steps"] = cfg.train.log_every_n_steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(model, run.data, epochs=1, batch_size=run.shape.batch, seed=SEED, device=run.device,
                optim={"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY}, precision=run.precision,
                callbacks=[*cbs, Timer()], **extra)
        seconds = clock.stop()
    fallback = [w for w in caught if w.category.__name__ == "CompileFallbackWarning"]
    if fallback:
        raise Skip(f"compile fell back to eager: {str(fallback[0].message)[:200]}")
    return seconds


def lightning_arm(model: nn.Module, run: Run, barebones: bool) -> float:
    try:
        import lightning as L
    except ImportError as err:
        raise Skip(f"lightning is not installed ({err})") from None
    from dlforge.train import epoch_permutation

    x, y = run.data.tensors
    order = epoch_permutation(len(x), SEED, 0).to(run.device)
    B = run.shape.batch
    batches = [(x[order[i : i + B]], y[order[i : i + B]]) for i in range(0, len(x), B)]
    clock = Clock(run.device, run.warmup)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = F.cross_entropy(self.model(xb), yb)
            if not barebones:  # barebones refuses self.log
                self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                                     fused=run.device.type == "cuda")

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            clock.tick(batch_idx + 1)

    cuda = run.device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        options: dict[str, Any] = {"barebones": True} if barebones else {"default_root_dir": tmp}
        trainer = L.Trainer(max_epochs=1, accelerator="gpu" if cuda else "cpu", devices=1,
                            precision="bf16-mixed" if cuda else "32-true", callbacks=[Timer()], **options)
        trainer.fit(Module(), torch.utils.data.DataLoader(batches, batch_size=None))
        return clock.stop()


# ----------------------------------------------------------------------------- the rounds

def hf_forward(model: nn.Module, xb: torch.Tensor, padded: bool) -> torch.Tensor:
    # no mask without padding: transformers then skips building one (its fastest path)
    return model(input_ids=xb, attention_mask=(xb != 0) if padded else None).logits


def measure(name: str, shape: Shape, preset: dict, device: torch.device
            ) -> tuple[dict[str, list[float]], dict[str, str], dict[str, int]]:
    """Seconds per step of every arm in every round, the reasons of the arms that could
    not run, and each model's matmul parameter count."""
    run = Run(shape, token_data(shape, shape.batch * (preset["warmup"] + preset["steps"]), device),
              device, preset["warmup"], preset["compile"])
    ours = dlforge_bert(shape).to(device)
    models: dict[str, nn.Module] = {"dlforge": ours}
    skipped: dict[str, str] = {}
    try:
        models["hf"] = hf_bert(shape).to(device)
    except ImportError as err:
        skipped["hf"] = f"transformers is not installed ({err})"
    initial = {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}
    padded = shape.real_fraction < 1
    arms: dict[str, Callable[[], float]] = {
        "plain": lambda: plain_loop(ours, run, lambda m, xb: m(xb)),
        "fit_none": lambda: fit_arm(ours, run),
        "fit_default": lambda: fit_arm(ours, run, callbacks="default"),
        "fit_compile": lambda: fit_arm(ours, run, compile=run.compile),
        "hf": lambda: plain_loop(models["hf"], run, lambda m, xb: hf_forward(m, xb, padded)),
        "lightning_barebones": lambda: lightning_arm(ours, run, barebones=True),
        "lightning_default": lambda: lightning_arm(ours, run, barebones=False),
    }
    names = [a for a in ARMS[name] if a not in skipped]
    times: dict[str, list[float]] = {a: [] for a in names}
    for r in range(preset["rounds"]):
        for arm in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            if arm in skipped:
                continue
            for key, model in models.items():
                model.load_state_dict(initial[key])
            try:
                times[arm].append(arms[arm]())
            except Skip as why:
                skipped[arm] = str(why)
    params = {key: matmul_params(model) for key, model in models.items()}
    return {a: t for a, t in times.items() if a not in skipped}, skipped, params


def paired(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float] | None:
    """Median over rounds of time[num] / time[den], and its range; None if either is missing."""
    if num not in times or den not in times:
        return None
    ratios = [a / b for a, b in zip(times[num], times[den])]
    return statistics.median(ratios), min(ratios), max(ratios)


TARGETS = {  # key: (workload, numerator arm, denominator arm, target); time ratios, paired per round
    "fit_none_over_plain": ("small", "fit_none", "plain", "<= 1.03"),
    "fit_default_over_fit_none": ("small", "fit_default", "fit_none", "<= 1.05"),
    "lightning_barebones_over_plain": ("small", "lightning_barebones", "plain", "1.06 measured"),
    "lightning_default_over_plain": ("small", "lightning_default", "plain", "1.14 measured"),
    "compile_speedup_bert_base": ("bert_base", "fit_none", "fit_compile", ">= 1.3"),
}
MFU_TARGETS = {"mfu_bert_base_compiled": ("fit_compile", ">= 0.40"), "mfu_hf_bert_base": ("hf", "0.29 measured")}


def workload_table(name: str, shape: Shape, times: dict[str, list[float]], skipped: dict[str, str],
                   params: dict[str, int], peak: float, reasons: dict[str, str]) -> tuple[dict, dict]:
    """Print one workload's arms; return tokens/s and MFU per arm (None, with its reason, when skipped)."""
    print(f"{name}: dim {shape.dim}, {shape.num_layers} layers, batch {shape.batch} x {shape.seq} tokens "
          f"(~{shape.real_fraction:.0%} real), {params['dlforge'] / 1e6:.2f} M matmul parameters")
    print(f"  {'arm':20s} {'median ms':>10s} {'range ms':>17s} {'tokens/s':>12s} {'MFU':>7s}")
    tokens: dict[str, float | None] = {}
    mfu: dict[str, float | None] = {}
    for arm in ARMS[name]:
        if arm not in times:
            tokens[arm] = mfu[arm] = None
            reasons[f"tokens_per_s.{name}.{arm}"] = reasons[f"mfu.{name}.{arm}"] = skipped[arm]
            print(f"  {arm:20s} skipped: {skipped[arm]}")
            continue
        sec = statistics.median(times[arm])
        tokens[arm] = round(shape.batch * shape.seq / sec, 1)
        mfu[arm] = round(step_flops(shape, params["hf" if arm == "hf" else "dlforge"]) / sec / peak, 4)
        lo, hi = min(times[arm]) * 1e3, max(times[arm]) * 1e3
        print(f"  {arm:20s} {sec * 1e3:10.2f} {lo:8.2f} .. {hi:6.2f} {tokens[arm]:12.1f} {mfu[arm]:7.3f}")
    return tokens, mfu


def headline(results: dict[str, dict[str, list[float]]], mfu: dict[str, dict], reasons: dict[str, str]) -> dict:
    """The paired ratios (with their range over rounds) and the BERT-base MFUs, printed against their targets."""
    figures: dict[str, Any] = {}
    for key, (name, num, den, target) in TARGETS.items():
        ratio = paired(results[name], num, den)
        figures[key] = None if ratio is None else round(ratio[0], 4)
        figures[f"{key}_range"] = None if ratio is None else [round(ratio[1], 4), round(ratio[2], 4)]
        if ratio is None:
            missing = num if num not in results[name] else den
            why = reasons[f"tokens_per_s.{name}.{missing}"]
            reasons[key] = reasons[f"{key}_range"] = f"arm {missing} did not run: {why}"
            print(f"{key:32s} null ({reasons[key]})")
        else:
            print(f"{key:32s} {ratio[0]:.3f}  range {ratio[1]:.3f} .. {ratio[2]:.3f}  (target {target})")
    for key, (arm, target) in MFU_TARGETS.items():
        figures[key] = mfu["bert_base"][arm]
        if figures[key] is None:
            reasons[key] = reasons[f"mfu.bert_base.{arm}"]
        print(f"{key:32s} {figures[key]}  (target {target})")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: a check that it runs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run, after the warm-up")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print(NEEDS_CUDA, file=sys.stderr)
        sys.exit(2)
    preset = {**(SMOKE if args.smoke else FULL)}
    preset["rounds"] = args.rounds or preset["rounds"]
    preset["steps"] = args.steps or preset["steps"]
    device = torch.device("cpu" if args.smoke else "cuda")
    peak = matmul_peak_flops(device)
    cuda = device.type == "cuda"
    peak_kind = "bf16 CUDA matmul" if cuda else "fp32 CPU matmul (smoke: no bf16 peak on a CPU)"
    machine = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {machine}, {'full' if cuda else 'smoke'} mode, "
          f"{preset['rounds']} rounds x {preset['steps']} timed steps after {preset['warmup']} warm-up, "
          f"peak {peak / 1e12:.2f} TFLOP/s ({peak_kind})")

    results, tokens, mfu, reasons = {}, {}, {}, {}
    for name, shape in preset["shapes"].items():
        results[name], skipped, params = measure(name, shape, preset, device)
        tokens[name], mfu[name] = workload_table(name, shape, results[name], skipped, params, peak, reasons)
    figures = headline(results, mfu, reasons)
    print(json.dumps({
        **figures, "tokens_per_s": tokens, "mfu": mfu,
        "peak_tflops": round(peak / 1e12, 4), "peak_kind": peak_kind, "mode": "full" if cuda else "smoke",
        "device": machine, "precision": "bf16" if cuda else "fp32",
        "compile_backend": "inductor" if preset["compile"] is True else preset["compile"],
        "rounds": preset["rounds"], "warmup_steps": preset["warmup"], "timed_steps": preset["steps"],
        "flops_per_step": "6*P*B*T + 12*L*dim*T^2*B, P = parameters outside the embedding tables",
        "null_reasons": reasons,
    }))


if __name__ == "__main__":
    main()
