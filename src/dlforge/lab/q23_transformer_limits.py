"""Topic 23, Transformer limits: quadratic attention cost, poor length extrapolation, and
distillation and pruning as remedies for the size of Transformer-era models.

Claim: full self-attention scores every query against every key, so its time and memory
grow with the square of the sequence length T; restricting each query to a local window
makes both linear. Transformers also extrapolate poorly: trained at one length, they
fail on longer sequences, at least with absolute positional encodings. Distillation and
pruning make a Transformer-era model smaller and faster at a small accuracy cost
(measured in :mod:`dlforge.lab._q23_compression` and merged into this finding).

Method: (1) cost. One attention forward over random q, k, v of shape (1, 2, T, 32) for
T doubling over the budget's lengths, three ways: explicit (``softmax(q k^T / sqrt d) v``
written out, :func:`dlforge.nn.attention.scaled_dot_product_attention`), fused (the same
call with ``fused=True``, PyTorch's kernel) and local (:func:`dlforge.nn.attention.
local_attention`, window 32). Time: the fastest of several forwards under ``no_grad``, the
variants' order rotating each round. Memory: the bytes autograd saves for backward,
beyond q, k, v themselves (``torch.autograd.graph.saved_tensors_hooks``, one count per
storage): exact and the same on every run, unlike peak RSS. Exponents are least-squares
slopes of log(cost) against log(T). (2) extrapolation. A token-tagging task, copy the
previous token (label of step t is token t-1; step 0 has none), is learned by a 1-layer
Transformer with a per-token head at length T_train with sinusoidal, learned, rotary
(RoPE) and ALiBi positions, same data, seed and optimiser, then scored on fresh
sequences of several lengths up to 3 T_train. Absolute encodings get a table of
3 T_train rows so that they can run at all: learned rows past T_train never receive a
gradient (measured), sinusoidal rows are the formula's, never seen in training.
(3) compression, on the digits set over several seeds: a distilled student against the
same student alone and the teacher, pruning sweeps with and without retraining, and
structured pruning's speed-up against unstructured pruning's none (see
:mod:`dlforge.lab._q23_compression`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from dlforge.lab import _q23_compression as compression
from dlforge.lab.finding import Check, Finding, plot
from dlforge.lab.threads import limited_threads
from dlforge.models import build
from dlforge.nn.attention import local_attention, scaled_dot_product_attention
from dlforge.train import fit, seed_everything
from dlforge.train import IGNORE_INDEX

TOPIC = 23
TITLE = "Transformer limits"
CLAIM = ("Attention's time and memory grow quadratically with sequence length and local "
         "(sliding-window) attention makes them linear; Transformers extrapolate poorly to "
         "sequences longer than those they were trained on, at least with absolute positions; "
         "distillation and pruning make a Transformer-era model smaller and faster at a small "
         "accuracy cost.")
BUDGETS = {
    "quick": {"lengths": (128, 256, 512, 1024, 2048), "repeats": 5,
              "train_length": 16, "n": 512, "epochs": 7,
              "compression": compression.BUDGETS["quick"]},
    "full": {"lengths": (128, 256, 512, 1024, 2048, 4096), "repeats": 9,
             "train_length": 32, "n": 1024, "epochs": 10,
             "compression": compression.BUDGETS["full"]},
}
# 5 seeds at the quick budget, not 3: with 3 a t interval is +-4.3 standard errors, and the
# compression gains and costs (a point or two) straddle their bounds from one seed set to the next
SEEDS = {"quick": 5, "full": 8}
WALL_CLOCK = True  # attention times and the pruned models' speedups are timed (never at low priority)
HEADS, HEAD_DIM, WINDOW = 2, 32, 32  # cost part: q, k, v are (1, HEADS, T, HEAD_DIM)
VARIANTS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "explicit": lambda q, k, v: scaled_dot_product_attention(q, k, v),
    "fused": lambda q, k, v: scaled_dot_product_attention(q, k, v, fused=True),
    "local": lambda q, k, v: local_attention(q, k, v, window=WINDOW),
}
ENCODINGS = ("sinusoidal", "learned", "rotary", "alibi")
ABSOLUTE = ("sinusoidal", "learned")
VOCAB = 8  # chance accuracy 1/8
EVAL_FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0)  # evaluation lengths, in units of T_train
N_EVAL = 500
OPTIM = {"name": "adam", "lr": 0.02}  # learned positions start at std 0.02 and need it
BATCH_SIZE = 32
QUADRATIC_AT_LEAST = 1.8  # explicit memory exponent
LINEAR_BELOW = 1.2  # local memory exponent
DROP_AT_LEAST = 0.2  # accuracy lost going from T_train to 2 T_train
KEPT_WITHIN = 0.05  # "extrapolates": accuracy at 2 T_train within this of in-length
MIRROR_TOL = 1e-3  # float32 rounding on logits of size ~10; a model that sees direction: ~10


def previous_token_task(n: int, length: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random tokens (n, length) and per-token labels: token t-1, IGNORE_INDEX at step 0.

    Example:
        >>> x, y = previous_token_task(2, 5)
        >>> torch.equal(y[:, 1:], x[:, :-1]), y[:, 0].tolist()
        (True, [-100, -100])
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, length), generator=g)  # (N, T)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, 1:] = x[:, :-1]  # (N, T)
    return x, y


def saved_bytes(fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor,
                v: Tensor) -> int:
    """Bytes autograd saves for backward in ``fn(q, k, v)``, not counting q, k, v.

    Example:
        >>> q = k = v = torch.randn(1, 1, 8, 4)
        >>> saved_bytes(VARIANTS["explicit"], q, k, v)  # the (8, 8) softmax weights
        256
    """
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()  # views share a storage: count each once
        if s.data_ptr() not in inputs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(q, k, v)
    del out
    return sum(storages.values())


def fit_exponent(lengths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(values) against log(lengths).

    Example:
        >>> round(fit_exponent([1, 2, 4], [3.0, 12.0, 48.0]), 6)
        2.0
    """
    xs, ys = [math.log(t) for t in lengths], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure_cost(lengths: list[int], repeats: int, seed: int) -> dict[str, dict[str, list]]:
    """Per variant: fastest forward seconds (of ``repeats``, in turns) and saved bytes at each length.

    Timed on one thread whatever the run's threads: with two, every parallel region waits at
    its barrier for a thread a loaded machine may have preempted (one seed's local attention
    came out slower than explicit at T=2048 on two threads beside two busy processes).
    """
    g = torch.Generator().manual_seed(seed)
    cost: dict[str, dict[str, list]] = {name: {"seconds": [], "bytes": []} for name in VARIANTS}
    names = list(VARIANTS)
    for T in lengths:
        shape = (1, HEADS, T, HEAD_DIM)  # (B, h, T, d)
        q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
        times: dict[str, list[float]] = {name: [] for name in names}
        with torch.no_grad(), limited_threads(1):
            for name in names:
                VARIANTS[name](q, k, v)  # warm-up, not timed
            for r in range(repeats):
                for name in names[r % 3:] + names[:r % 3]:  # no variant always goes first
                    start = time.perf_counter()
                    VARIANTS[name](q, k, v)
                    times[name].append(time.perf_counter() - start)
        for name in names:
            cost[name]["seconds"].append(min(times[name]))  # timeit's min: load only ever adds time
            cost[name]["bytes"].append(saved_bytes(VARIANTS[name], q, k, v))
    return cost


def _model(positional: str, T: int) -> torch.nn.Module:
    return build({"arch": "transformer", "vocab_size": VOCAB, "dim": 32, "num_heads": 4,
                  "num_layers": 1, "ffn_dim": 64, "dropout": 0.0, "positional": positional,
                  "max_len": int(max(EVAL_FACTORS) * T), "pool": "mean", "task_head": "token"},
                 input_shape=(T,), num_outputs=VOCAB)


def _accuracy(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-step accuracy (T,) over the sequences; NaN where no step is labelled."""
    with torch.no_grad():
        right = (model(x).argmax(-1) == y).float()  # (N, T)
    valid = (y != IGNORE_INDEX).float()
    return (right * valid).sum(0) / valid.sum(0)  # (T,)


def train_and_score(positional: str, cfg: dict, seed: int) -> dict:
    """Train at T_train, then accuracy at each evaluation length and per step at 2 T_train."""
    T = cfg["train_length"]
    x, y = previous_token_task(cfg["n"], T, seed)
    seed_everything(seed)
    model = _model(positional, T)
    table = model.encoder.positional.embedding.weight.detach().clone() \
        if positional == "learned" else None
    fit(model, TensorDataset(x, y), epochs=cfg["epochs"], batch_size=BATCH_SIZE, optim=OPTIM,
        clip_grad_norm=1.0, device="cpu", seed=seed)
    model.eval()
    result: dict = {"curve": []}
    for factor in EVAL_FACTORS:
        L = int(factor * T)
        x_eval, y_eval = previous_token_task(N_EVAL, L, seed + 1000 + L)
        per_step = _accuracy(model, x_eval, y_eval)  # (L,)
        valid = ~per_step.isnan()
        result["curve"].append(round(float(per_step[valid].mean()), 4))
        if L == 2 * T:
            result["per_step_2x"] = [round(float(a), 4) for a in per_step[1:]]
            result["beyond"] = round(float(per_step[T:].mean()), 4)
    result["reflection_change"] = reflection_change(model, x_eval)
    if table is not None:  # rows past T_train are never looked up, so never trained
        change = model.encoder.positional.embedding.weight.detach() - table
        result["untrained_row_change"] = float(change[T:].abs().max())
    return result


def reflection_change(model: torch.nn.Module, x: Tensor) -> float:
    """Max abs difference between the outputs for reversed inputs and the reversed outputs.

    Zero means the model cannot tell left from right: whatever it predicts for step t
    from its left neighbour, it predicts for the mirrored step from its right one.

    Example:
        >>> m = _model("none", 6).eval()
        >>> reflection_change(m, torch.randint(0, VOCAB, (3, 6))) < 1e-5
        True
    """
    with torch.no_grad():
        return float((model(x.flip(1)) - model(x).flip(1)).abs().max())


def _figures(lengths: list[int], cost: dict, exps: dict, T: int, lengths_eval: list[int],
             scores: dict):
    with plot("Attention cost versus length (log-log)", 1, 2, figsize=(11, 4)) as cost_plot:
        ax1, ax2 = cost_plot.axes
        for name, c in cost.items():
            ax1.loglog(lengths, c["seconds"], "o-", label=f"{name} (slope {exps[name][0]:.2f})")
            ax2.loglog(lengths, c["bytes"], "s-", label=f"{name} (slope {exps[name][1]:.2f})")
        for ax, what in ((ax1, "fastest forward seconds"), (ax2, "bytes saved for backward")):
            ax.set_xticks(lengths, [str(t) for t in lengths], minor=False)
            ax.minorticks_off()
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(what)
            ax.legend(fontsize=8)

    with plot("Previous-token accuracy beyond the trained length", 1, 2, figsize=(11, 4)) as acc_plot:
        ax1, ax2 = acc_plot.axes
        for name, s in scores.items():
            ax1.plot(lengths_eval, s["curve"], "o-", label=name)
            ax2.plot(range(1, 2 * T), s["per_step_2x"], ".-", ms=3, label=name)
        for ax in (ax1, ax2):
            ax.axvline(T, color="grey", ls=":", label="trained length")
            ax.axhline(1 / VOCAB, color="grey", ls="--", label="chance")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.05)
        ax1.set_xlabel("evaluation length")
        ax2.set_xlabel(f"step, sequences of length {2 * T}")
        ax1.legend(fontsize=8)
    return [cost_plot.figure, acc_plot.figure]


def run(cfg: dict, seed: int) -> Finding:
    lengths, T = list(cfg["lengths"]), cfg["train_length"]
    cost = measure_cost(lengths, cfg["repeats"], seed)
    exps = {name: (fit_exponent(lengths, c["seconds"]), fit_exponent(lengths, c["bytes"]))
            for name, c in cost.items()}
    scores = {p: train_and_score(p, cfg, seed) for p in ENCODINGS}
    lengths_eval = [int(f * T) for f in EVAL_FACTORS]
    i_in, i_2x = EVAL_FACTORS.index(1.0), EVAL_FACTORS.index(2.0)

    numbers: dict = {"lengths": lengths, "window": WINDOW}
    for name, c in cost.items():
        numbers[f"{name}_seconds"] = [float(f"{s:.4g}") for s in c["seconds"]]
        numbers[f"{name}_bytes"] = c["bytes"]
        numbers[f"time_exponent_{name}"] = round(exps[name][0], 3)
        numbers[f"memory_exponent_{name}"] = round(exps[name][1], 3)
    numbers["local_speedup_at_longest"] = round(
        cost["explicit"]["seconds"][-1] / cost["local"]["seconds"][-1], 2)
    # a speedup is a ratio: over seeds its spread is skewed (one slow run of the shorter forward
    # multiplies it), its logarithm's is not; > 0 is faster, as the ratio > 1
    numbers["local_log2_speedup_at_longest"] = round(math.log2(numbers["local_speedup_at_longest"]), 3)
    numbers["local_memory_saving_at_longest"] = round(
        cost["explicit"]["bytes"][-1] / cost["local"]["bytes"][-1], 2)
    numbers.update({"train_length": T, "eval_lengths": lengths_eval,
                    "chance_accuracy": round(1 / VOCAB, 4)})
    for p, s in scores.items():
        numbers[f"{p}_accuracy_curve"] = s["curve"]
        numbers[f"{p}_accuracy_in"] = s["curve"][i_in]
        numbers[f"{p}_accuracy_2x"] = s["curve"][i_2x]
        numbers[f"{p}_accuracy_beyond"] = s["beyond"]  # steps T_train .. 2 T_train - 1 only
        numbers[f"{p}_drop"] = round(s["curve"][i_in] - s["curve"][i_2x], 4)
        numbers[f"{p}_reflection_change"] = float(f"{s['reflection_change']:.3g}")
    numbers["learned_untrained_row_change"] = scores["learned"]["untrained_row_change"]
    checks = [
        Check("memory_exponent_explicit", ">=", QUADRATIC_AT_LEAST),
        Check("memory_exponent_local", "<", LINEAR_BELOW),
        Check("time_exponent_explicit", ">", "time_exponent_local"),
        Check("local_log2_speedup_at_longest", ">", 0.0),  # log2 of the speedup: local is faster
        Check("sinusoidal_drop", ">=", DROP_AT_LEAST),
        Check("learned_drop", ">=", DROP_AT_LEAST),
    ]
    method = (f"Cost: one forward of explicit, fused and local (window {WINDOW}) attention over "
              f"random q, k, v (1, {HEADS}, T, {HEAD_DIM}), T in {lengths}; fastest of "
              f"{cfg['repeats']} timed forwards on one thread under no_grad (order rotating), and bytes saved "
              "for backward beyond q, k, v (saved_tensors_hooks, one count per storage); "
              "exponents are log-log least-squares slopes. Extrapolation: copy the previous "
              f"token ({VOCAB} symbols, chance {1 / VOCAB:.3f}), {cfg['n']} training sequences "
              f"of T_train={T}; 1-layer pre-LN Transformer (dim 32, 4 heads, FFN 64, dropout 0, "
              f"per-token head), Adam lr {OPTIM['lr']}, clip 1.0, batch {BATCH_SIZE}, "
              f"{cfg['epochs']} epochs, same data and seed for each of {', '.join(ENCODINGS)}; "
              f"scored on {N_EVAL} fresh sequences at lengths {lengths_eval} (absolute tables "
              f"built for {lengths_eval[-1]} steps). Supported if the explicit memory exponent "
              f"is >= {QUADRATIC_AT_LEAST}, the local one < {LINEAR_BELOW}, the explicit time "
              "exponent exceeds the local one, local is faster at the longest T (log2 of the "
              "speedup > 0), and both "
              f"absolute encodings lose >= {DROP_AT_LEAST} accuracy from T_train to 2 T_train.")
    part = compression.measure(cfg["compression"], seed)
    notes = f"Seed {seed}; the checks read the 95% interval over seeds. " + _notes(numbers) + " " + part.notes
    if numbers.keys() & part.numbers.keys():
        raise ValueError(f"compression numbers clash: {sorted(numbers.keys() & part.numbers.keys())}")
    numbers.update(part.numbers)
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method + " " + part.method,
                   numbers=numbers, checks=checks + part.checks,
                   figures=_figures(lengths, cost, exps, T, lengths_eval, scores) + part.figures,
                   notes=notes)


def _notes(n: dict) -> str:
    T = n["train_length"]
    e = {k: n[f"time_exponent_{k}"] for k in VARIANTS}
    m = {k: n[f"memory_exponent_{k}"] for k in VARIANTS}
    text = (f"Cost over T={n['lengths'][0]}..{n['lengths'][-1]}: time exponents explicit "
            f"{e['explicit']:.2f}, fused {e['fused']:.2f}, local {e['local']:.2f}; memory "
            f"exponents {m['explicit']:.2f}, {m['fused']:.2f}, {m['local']:.2f}. At the longest T "
            f"local attention is {n['local_speedup_at_longest']:.1f}x faster than explicit and "
            f"stores {n['local_memory_saving_at_longest']:.1f}x fewer bytes for backward. ")
    if m["fused"] < LINEAR_BELOW:
        text += ("The fused kernel never stores the T x T weights, so its memory is linear too, "
                 f"but it still computes every query-key pair: its time exponent is "
                 f"{e['fused']:.2f}, " + ("still about quadratic; " if e["fused"] > 1.5
                                          else "below quadratic here; ")
                 + "only local attention drops the distant pairs. ")
    text += ("Times are the fastest of a few forwards on a shared CPU and their exponents are noisy (call overhead "
             "dominates the smallest T); the memory counts are exact. ")
    lines, kept = [], []
    for p in ENCODINGS:
        acc_in, acc_2x, beyond = (n[f"{p}_accuracy_{s}"] for s in ("in", "2x", "beyond"))
        line = (f"{p} {acc_in:.2f} at T={T}, {acc_2x:.2f} at {2 * T} ({beyond:.2f} on steps "
                f">= {T}), {n[f'{p}_accuracy_curve'][-1]:.2f} at {n['eval_lengths'][-1]}")
        if acc_in < 0.9:
            line += ", not learned even in-length"
        elif acc_in - acc_2x <= KEPT_WITHIN:
            kept.append(p)
        lines.append(line)
    text += "Extrapolation: " + "; ".join(lines) + ". "
    if kept:
        text += f"Within {KEPT_WITHIN} of their in-length accuracy at {2 * T}: {', '.join(kept)}"
        text += ("; the claim holds for absolute positions, not for every Transformer. "
                 if not set(kept) & set(ABSOLUTE) else ". ")
    if n["learned_untrained_row_change"] == 0:
        text += (f"Learned rows past step {T} did not change in training: a learned table knows "
                 "nothing of positions it never saw, and one of only T_train rows cannot read "
                 "longer inputs at all. ")
    mirror = [p for p in ENCODINGS if n[f"{p}_reflection_change"] < MIRROR_TOL]
    if mirror:
        # Mirrored inputs are as likely as the originals, so a mirror-equivariant tagger is
        # as accurate at "previous" as at "next"; both are right only when they agree.
        cap = (1 + 1 / VOCAB) / 2
        text += (f"{', '.join(mirror)}: reversing the input reverses the output (max change "
                 f"{max(n[f'{p}_reflection_change'] for p in mirror):.1g}), so the model cannot "
                 "tell the previous token from the next, and its accuracy on this task is at "
                 f"most (1 + 1/{VOCAB}) / 2 = {cap:.2f}. ")
        if "alibi" in mirror:
            text += ("ALiBi's bias -m|i - j| is the same to the left and to the right; it was "
                     "designed for causal decoders, so this bidirectional task does not test "
                     "its extrapolation. ")
    text += "Cost and extrapolation: one task, one layer."
    return text
