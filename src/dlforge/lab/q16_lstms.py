"""Topic 16, LSTMs: gates keep long-range information that a plain RNN loses.

Claim: an LSTM adds a cell state updated additively, ``c_t = f_t * c_{t-1} + i_t * g_t``,
with a forget gate ``f_t``, an input gate ``i_t`` and an output gate ``o_t``. When the
forget gate stays near 1 the cell keeps a value across many steps and the gradient
along ``c`` is multiplied by ``f_t`` rather than by ``tanh' W_hh``, so an LSTM learns a
dependency at a length where a plain RNN fails.

Method: recall-first (:func:`dlforge.data.recall_first`; the label is the symbol at step
0, chance ``1 / n_symbols``) as a sweep over the distance T to remember. At every T a plain
tanh RNN and an LSTM of the same hidden size are trained with the same optimiser,
clipping, data, epochs and seed and scored on held-out sequences; a run that reaches
:data:`STOP_AT` stops early (solved). One call measures one seed; the lab's runner repeats
it over seeds, because whether one run breaks through its plateau is luck. The checks
read the ends of the sweep: the RNN solves the shortest T, the LSTM beats it at the
longest, and the longest T the LSTM solves lies beyond the RNN's. The LSTM trained at the
longest T has its forget-gate activations recomputed from its weights with the gate math
of :func:`dlforge.models.rnn.lstm_cell`, and checked against the fused kernel's states.
"""

from __future__ import annotations

import torch

from dlforge.data import prepare, recall_first
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import build
from dlforge.train import Callback, fit, seed_everything

TOPIC = 16
TITLE = "LSTMs"
CLAIM = ("An LSTM's forget, input and output gates keep information over long ranges: "
         "at a sequence length where a plain RNN fails, an LSTM solves the same task.")
# lengths: the distances T swept. The same shortest and longest T at both budgets, so
# the checks read the same ends of the sweep; the full budget adds points between them.
# At T=40 a clipped-Adam tanh RNN solves recall-first within 30 epochs on some seeds (2 of
# 8 in one trial, 2 of 2 in another; a single seed at T=40 was what once gave "RNN 1.0,
# LSTM minus RNN 0.0" on one machine and the opposite on another); at T=60 it
# solved none of 10 runs of 30 epochs, 1 of seeds 0-7 in 40 epochs, but 5 of seeds 100-107 in
# 40 epochs (100, 101, 102, 104, 106), where the LSTM also solved 5 of 8 (101, 104-107).
# Neither a start-of-sequence marker channel (LSTM 3/7, RNN 3/7 on seeds 101, 104, 106, 0-3)
# nor T=100 with forget bias 3 (LSTM 0/4, RNN 0/4 on 100, 101, 104, 106) separated them.
# No model solved T=100 in 30-40 epochs in trials.
BUDGETS = {
    "quick": {"lengths": [10, 30, 60], "n": 1000, "epochs": 40},
    "full": {"lengths": [10, 20, 30, 40, 50, 60], "n": 1000, "epochs": 40},
}
# A run's outcome is nearly 0/1 (plateau or solved), and the LSTM misses T=60 on about one
# seed in six (seed 0 among them, even with 60 epochs), so the t interval needs many seeds.
SEEDS = {"quick": 8, "full": 8}
N_SYMBOLS = 4  # chance accuracy 0.25
HIDDEN = 32
OPTIM = {"name": "adam", "lr": 0.005}
CLIP = 1.0
BATCH_SIZE = 64
FORGET_BIAS = 1.0  # Gers et al. 2000, Jozefowicz et al. 2015: start by remembering
STOP_AT = 0.99  # validation accuracy at which a run counts as done and stops (saves time)
SOLVED_AT = 0.9  # a run "solves" a length when its final accuracy reaches this (chance 0.25)


def forget_gates(lstm: torch.nn.LSTM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forget-gate activations ``f_t`` (B, T, H) and final h (B, H) of a 1-layer LSTM.

    Same gate math as :func:`dlforge.models.rnn.lstm_cell` (PyTorch order i, f, g, o),
    kept open here because the cell does not return its gates.

    Example:
        >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)
        >>> f, h = forget_gates(lstm, torch.zeros(2, 5, 3))
        >>> f.shape, h.shape
        (torch.Size([2, 5, 4]), torch.Size([2, 4]))
    """
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    B, T, _ = x.shape
    h = x.new_zeros(B, lstm.hidden_size)
    c = x.new_zeros(B, lstm.hidden_size)
    gates_f = []
    for t in range(T):
        pre = x[:, t] @ w_ih.T + h @ w_hh.T + b  # (B, 4H)
        i, f, g, o = pre.chunk(4, dim=1)  # 4 x (B, H)
        f = torch.sigmoid(f)
        c = f * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        gates_f.append(f)
    return torch.stack(gates_f, dim=1), h  # (B, T, H), (B, H)


class _StopWhenSolved(Callback):
    """Stop once validation accuracy reaches :data:`STOP_AT`: a solved run stays solved, and
    the unsolved runs (which decide the verdict) still train for every epoch."""

    def on_validation_end(self, state, metrics) -> None:
        if metrics.get("val_accuracy", 0.0) >= STOP_AT:
            state.should_stop, state.stop_reason = True, "early_stopping"


def _train(kind: str, data, epochs: int, seed: int):
    seed_everything(seed)
    model = build({"arch": "rnn", "kind": kind, "hidden_size": HIDDEN},
                  input_shape=data.input_shape, num_outputs=data.num_outputs)
    if kind == "lstm":
        rnn = model.recurrent.rnn
        with torch.no_grad():  # the f block is rows H:2H of each bias
            rnn.bias_ih_l0[HIDDEN:2 * HIDDEN].fill_(FORGET_BIAS)
            rnn.bias_hh_l0[HIDDEN:2 * HIDDEN].zero_()
    result = fit(model, data.train, data.val, epochs=epochs, batch_size=BATCH_SIZE,
                 optim=OPTIM, clip_grad_norm=CLIP, device="cpu", seed=seed,
                 callbacks=[_StopWhenSolved()])
    curve = [r["val_accuracy"] for r in result.history if r["type"] == "epoch"]
    return model, curve


def _figure(lengths: list[int], acc: dict[str, list[float]], f_mean: torch.Tensor, seed: int):
    with plot(f"RNN versus LSTM as the distance grows (seed {seed}); LSTM forget gates",
              1, 2, figsize=(11, 4)) as drawn:
        ax1, ax2 = drawn.axes
        for name, style in (("rnn", "s--"), ("lstm", "o-")):
            ax1.plot(lengths, acc[name], style, label=name.upper())
        ax1.axhline(1 / N_SYMBOLS, color="grey", ls=":", label="chance")
        ax1.axhline(SOLVED_AT, color="grey", ls="--", lw=0.8, label="solved")
        ax1.set_xlabel("distance to remember T")
        ax1.set_ylabel("final validation accuracy")
        ax1.set_ylim(0, 1.05)
        ax1.legend()
        im = ax2.imshow(f_mean.T.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax2.set_xlabel("time step t")
        ax2.set_ylabel("hidden unit")
        ax2.set_title(f"mean forget gate f_t at T={lengths[-1]} (validation set)")
        drawn.fig.colorbar(im, ax=ax2)
    return drawn.figure


def figure_over_seeds(finding: Finding):
    """Accuracy against T for both models over every seed of a combined finding (one dot per
    seed, a line through the means): the spread the single-seed figure cannot show.

    Example:
        >>> from dlforge.lab import run_seeds
        >>> fig = figure_over_seeds(run_seeds(16, "quick"))  # doctest: +SKIP
    """
    lengths = finding.numbers["lengths"]
    with plot("RNN versus LSTM as the distance grows, every seed", figsize=(6, 4)) as drawn:
        ax = drawn.axes
        for name, style, dx in (("rnn", "s--", -0.6), ("lstm", "o-", 0.6)):
            keys = [f"{name}_accuracy_T{T}" for T in lengths]
            means = [float(finding.numbers[k]) for k in keys]
            ax.plot(lengths, means, style, label=f"{name.upper()} (mean)")
            for T, k in zip(lengths, keys):
                values = finding.per_seed.get(k, [finding.numbers[k]] * max(1, len(finding.seeds)))
                ax.scatter([T + dx] * len(values), values, s=12, alpha=0.5)
        ax.axhline(1 / N_SYMBOLS, color="grey", ls=":", label="chance")
        ax.set_xlabel("distance to remember T")
        ax.set_ylabel("final validation accuracy")
        ax.set_ylim(0, 1.05)
        ax.legend()
    return drawn.figure


def _reach(lengths: list[int], acc: list[float]) -> int:
    """The longest T this run solved (0 if none)."""
    return max((T for T, a in zip(lengths, acc) if a >= SOLVED_AT), default=0)


def run(cfg: dict, seed: int) -> Finding:
    lengths = cfg["lengths"]
    acc: dict[str, list[float]] = {"rnn": [], "lstm": []}
    epochs: dict[str, list[int]] = {"rnn": [], "lstm": []}
    for T in lengths:
        data = prepare(recall_first(cfg["n"], T, N_SYMBOLS, seed=seed), val=0.2, test=0.0,
                       standardize=False, seed=seed)
        for kind in ("rnn", "lstm"):
            model, curve = _train(kind, data, cfg["epochs"], seed)
            acc[kind].append(round(curve[-1], 4))
            epochs[kind].append(len(curve))
    # The gates of the LSTM trained at the longest T (the last one trained).
    x, _ = data.val.tensors
    lstm = model.recurrent.rnn
    with torch.no_grad():
        f, h_mine = forget_gates(lstm, x)  # (B, T, H)
        _, (h_n, _) = lstm(x)
    f_mean = f.mean(dim=0)  # (T, H)
    # What survives of step 0's cell content at the end is prod_{t>=1} f_t, per unit.
    kept = f[:, 1:].prod(dim=1).mean(dim=0)  # (H,)
    keeper = int(kept.argmax())
    reach = {k: _reach(lengths, v) for k, v in acc.items()}
    numbers: dict[str, object] = {
        "lengths": lengths,
        "chance_accuracy": 1 / N_SYMBOLS,
        "rnn_accuracy": acc["rnn"],
        "lstm_accuracy": acc["lstm"],
        "rnn_epochs": epochs["rnn"],
        "lstm_epochs": epochs["lstm"],
    }
    for i, T in enumerate(lengths):  # one scalar per length, so each gets its interval over seeds
        numbers[f"rnn_accuracy_T{T}"] = acc["rnn"][i]
        numbers[f"lstm_accuracy_T{T}"] = acc["lstm"][i]
    numbers.update({
        "rnn_accuracy_at_shortest": acc["rnn"][0],
        "lstm_accuracy_at_longest": acc["lstm"][-1],
        "lstm_minus_rnn_at_longest": round(acc["lstm"][-1] - acc["rnn"][-1], 4),
        "rnn_solves_shortest": int(acc["rnn"][0] >= SOLVED_AT),  # mean: fraction of seeds
        "rnn_solves_longest": int(acc["rnn"][-1] >= SOLVED_AT),
        "lstm_solves_longest": int(acc["lstm"][-1] >= SOLVED_AT),
        "rnn_reach": reach["rnn"],
        "lstm_reach": reach["lstm"],
        "lstm_reach_minus_rnn_reach": reach["lstm"] - reach["rnn"],
        "forget_gate_mean": round(float(f.mean()), 4),
        "forget_gate_best_unit_kept": float(f"{float(kept[keeper]):.3g}"),
        "gate_math_max_abs_error": float(f"{(h_mine - h_n[0]).abs().max():.3g}"),
    })
    checks = [
        # where the claim starts: a plain RNN does remember over a short distance, solving
        # it on most seeds (a run is nearly 0/1: one stuck on a plateau, e.g. 0.5 at T=10 on
        # seed 4, is an optimisation accident, not a limit of its memory)
        Check("rnn_solves_shortest", ">", 0.5),
        # at the longest distance the LSTM is more accurate than the RNN, the whole interval
        # over seeds above zero (per run it is about 0.75 when only the LSTM solves, 0 when
        # neither or both do, so its mean is mostly the share of seeds the LSTM wins)
        Check("lstm_minus_rnn_at_longest", ">", 0.0),
        # the distance where the RNN stops solving lies below the LSTM's
        Check("lstm_reach_minus_rnn_reach", ">", 0),
    ]
    method = (f"Recall-first with {N_SYMBOLS} symbols (chance {1 / N_SYMBOLS:.2f}) at distances "
              f"T = {lengths}, {cfg['n']} sequences per T (80/20 train/val). Plain tanh RNN and "
              f"LSTM, hidden {HIDDEN}, Adam lr {OPTIM['lr']}, gradient-norm clipping {CLIP}, "
              f"batch {BATCH_SIZE}, up to {cfg['epochs']} epochs (a run stops once validation "
              f"accuracy reaches {STOP_AT}), same seed and data per pair. LSTM forget bias "
              f"initialised to {FORGET_BIAS}. A run solves T when its final accuracy is >= "
              f"{SOLVED_AT}; a model's reach is the longest T it solved. Forget gates recomputed "
              f"from the trained weights of the LSTM at T={lengths[-1]}.")
    notes = (f"The plain RNN solves short distances and stops solving as T grows; the LSTM "
             f"holds to the longest T of the sweep ({lengths[-1]}) on most seeds: the intervals "
             "of rnn_accuracy_T* and lstm_accuracy_T* show where each model starts and stops "
             "solving. The LSTM is not better at every T: it is slower to leave its plateau, and "
             "at T=30 it missed 3 of 8 seeds in one quick run where the RNN solved all 8; what "
             "separates them is the reach, the longest T solved. "
             "Breaking through the plateau is luck for either model, per run: at "
             "T=40 the RNN solved within 30 epochs in 2 of 8 seeds in one trial and 2 of 2 in "
             "another, which is why one seed at T=40 "
             "once gave 'RNN 1.0, LSTM minus RNN 0.0' on one machine and the opposite on "
             "another (a different floating-point path flips a run at the edge of its "
             "plateau). With lr 0.01 instead of 0.005 the RNN solved T=60 in one of two trial "
             "runs and the LSTM in neither, so the claim is about odds at a length under one "
             "training budget, not a wall. At T=60 with 40 epochs the RNN solved 1 of seeds "
             "0-7 but 5 of seeds 100-107, where the LSTM also solved 5 of 8: the gap at the "
             "longest T is a difference of odds that 8 seeds do not always resolve. Honest "
             "caveats: the LSTM starts with its forget-gate "
             f"bias at {FORGET_BIAS} (common practice since Gers et al. 2000), and in one-seed "
             "trials at T=100 (LSTM forget bias 1, 3 or 5; 30 to 40 epochs) neither model "
             "solved it: the LSTM holds longer under this budget, not forever. For this seed, the LSTM at "
             f"T={lengths[-1]} has mean forget gate {float(f.mean()):.2f}; the unit that remembers "
             f"best (unit {keeper}) keeps a fraction prod f_t = {float(kept[keeper]):.2g} of its "
             "step-0 cell content to the end; a small fraction can still suffice, since what "
             "matters is that the symbol stays separable from what later steps add. The "
             "recomputed gate math reproduces the fused kernel's final hidden state (max abs "
             f"error {numbers['gate_math_max_abs_error']:.1g}).")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(lengths, acc, f_mean, seed)], notes=notes)
