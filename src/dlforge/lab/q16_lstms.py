"""Topic 16, LSTMs: gates keep long-range information that a plain RNN loses.

Claim: an LSTM adds a cell state updated additively, ``c_t = f_t * c_{t-1} + i_t * g_t``,
with a forget gate ``f_t``, an input gate ``i_t`` and an output gate ``o_t``. When the
forget gate stays near 1 the cell keeps a value across many steps and the gradient
along ``c`` is multiplied by ``f_t`` rather than by ``tanh' W_hh``, so an LSTM learns a
dependency at a length where a plain RNN fails.

Method: the adding problem (:func:`dlforge.data.adding_problem`, Hochreiter & Schmidhuber
1997: add the two values marked among T, one marked in each half) as a sweep over the length
T. At every T a plain tanh RNN and an LSTM of the same hidden size are trained with the same
optimiser, clipping, data, epochs and seed and scored on held-out sequences by their
normalised MSE (nMSE: validation MSE over the variance of the validation targets; 1 is
predicting the mean, 0 is exact). A run that reaches :data:`STOP_AT` stops early (solved).
The markers tell a gate when to write, which recall-first (the task used before) did not:
there an LSTM broke through its plateau at T=60 on about 5 seeds in 8, no more often than the
RNN. The checks read the ends of the sweep: the RNN carries the far value at the shortest T,
the LSTM solves the longest T where the RNN learns nothing, and the longest T each model
learns puts the LSTM's beyond the RNN's. The LSTM trained at the longest T has its
forget-gate activations recomputed from its weights with the gate math of
:func:`dlforge.models.rnn.lstm_cell`, and checked against the fused kernel's states.
"""

from __future__ import annotations

import torch

from dlforge.data import adding_problem, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import build
from dlforge.train import Callback, fit, seed_everything

TOPIC = 16
TITLE = "LSTMs"
CLAIM = ("An LSTM's forget, input and output gates keep information over long ranges: "
         "at a sequence length where a plain RNN fails, an LSTM solves the same task.")
# lengths: the lengths T swept. The same shortest and longest T at both budgets, so the checks
# read the same ends of the sweep; the full budget adds points between them. In trials (lr 0.01,
# n 2000) the LSTM solved T=50 (nMSE <= 0.05) on 20 of 20 seeds (0-7, 100-107, 200-203) within
# 12 to 20 epochs, and the RNN stayed at nMSE 0.86 to 1.15 on all 11 seeds tried at T=50 (20 or
# 25 epochs: it learns not even the near value), while at T=10 it reached 0.11 to 0.24 on 8 of 8.
BUDGETS = {
    "quick": {"lengths": [10, 50], "n": 2000, "epochs": 25},
    "full": {"lengths": [10, 20, 30, 40, 50], "n": 2000, "epochs": 25},
}
# Each model's nMSE is a graded number, not a 0/1 run outcome, and the two ends are far apart
# (about 1.0 against under 0.05 at T=50), so three seeds give intervals clear of every bound.
SEEDS = {"quick": 3, "full": 5}
HIDDEN = 32
# lr 0.01: with 0.005 the LSTM needed more epochs; with 0.02 it solved T=50 faster (9 to 14
# epochs) but the RNN at T=10 got worse (0.80 on seed 2), so 0.02 would tilt the comparison.
OPTIM = {"name": "adam", "lr": 0.01}
CLIP = 1.0
BATCH_SIZE = 64
FORGET_BIAS = 1.0  # Gers et al. 2000, Jozefowicz et al. 2015: start by remembering
STOP_AT = 0.05  # validation nMSE at which a run counts as done and stops (saves time)
SOLVED_AT = 0.1  # a run "solves" a length when its final nMSE is at most this (>= 90% explained)
# A model that uses only the near (second) marked value leaves at best Var(u2) / Var(u1 + u2)
# = 0.5 of the variance; below this nMSE it carries the far (first) value across the sequence.
CARRIES_AT = 0.5


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
    """Stop once validation nMSE reaches :data:`STOP_AT`: a solved run stays solved, and the
    unsolved runs (which decide the verdict) still train for every epoch. ``val_variance`` is
    the variance of the validation targets, which turns ``val_loss`` (an MSE) into nMSE."""

    def __init__(self, val_variance: float) -> None:
        self.val_variance = val_variance

    def on_validation_end(self, state, metrics) -> None:
        if metrics.get("val_loss", float("inf")) <= STOP_AT * self.val_variance:
            state.should_stop, state.stop_reason = True, "early_stopping"


def nmse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of ``model(x)`` over the variance of ``y`` (N, 1): 1.0 is what
    predicting the mean scores, 0.0 is exact.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.zero_(), model[1].bias.fill_(2.0)
        >>> nmse(model, torch.zeros(4, 1, 2), torch.tensor([[1.0], [3.0], [1.0], [3.0]]))
        1.0
    """
    model.eval()
    with torch.no_grad():
        mse = (model(x) - y).pow(2).mean()
    return float(mse / y.var(unbiased=False))


def _train(kind: str, data, epochs: int, seed: int):
    seed_everything(seed)
    model = build({"arch": "rnn", "kind": kind, "hidden_size": HIDDEN},
                  input_shape=data.input_shape, num_outputs=data.num_outputs)
    if kind == "lstm":
        rnn = model.recurrent.rnn
        with torch.no_grad():  # the f block is rows H:2H of each bias
            rnn.bias_ih_l0[HIDDEN:2 * HIDDEN].fill_(FORGET_BIAS)
            rnn.bias_hh_l0[HIDDEN:2 * HIDDEN].zero_()
    x, y = data.val.tensors
    result = fit(model, data.train, data.val, epochs=epochs, batch_size=BATCH_SIZE,
                 optim=OPTIM, clip_grad_norm=CLIP, device="cpu", seed=seed,
                 callbacks=[_StopWhenSolved(float(y.var(unbiased=False)))])
    n_epochs = sum(1 for r in result.history if r["type"] == "epoch")
    return model, nmse(model, x, y), n_epochs


def _figure(lengths: list[int], err: dict[str, list[float]], f_mean: torch.Tensor, seed: int):
    with plot(f"RNN versus LSTM on the adding problem as T grows (seed {seed}); LSTM forget gates",
              1, 2, figsize=(11, 4)) as drawn:
        ax1, ax2 = drawn.axes
        for name, style in (("rnn", "s--"), ("lstm", "o-")):
            ax1.plot(lengths, err[name], style, label=name.upper())
        _reference_lines(ax1)
        ax1.set_xlabel("sequence length T")
        ax1.set_ylabel("validation nMSE")
        ax1.legend()
        im = ax2.imshow(f_mean.T.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax2.set_xlabel("time step t")
        ax2.set_ylabel("hidden unit")
        ax2.set_title(f"mean forget gate f_t at T={lengths[-1]} (validation set)")
        drawn.fig.colorbar(im, ax=ax2)
    return drawn.figure


def _reference_lines(ax) -> None:
    ax.axhline(1.0, color="grey", ls=":", label="predict the mean")
    ax.axhline(CARRIES_AT, color="grey", ls="-.", lw=0.8, label="near value only")
    ax.axhline(SOLVED_AT, color="grey", ls="--", lw=0.8, label="solved")
    ax.set_ylim(0, 1.2)


def figure_over_seeds(finding: Finding):
    """nMSE against T for both models over every seed of a combined finding (one dot per
    seed, a line through the means): the spread the single-seed figure cannot show.

    Example:
        >>> from dlforge.lab import run_seeds
        >>> fig = figure_over_seeds(run_seeds(16, "quick"))  # doctest: +SKIP
    """
    lengths = finding.numbers["lengths"]
    with plot("RNN versus LSTM on the adding problem, every seed", figsize=(6, 4)) as drawn:
        ax = drawn.axes
        for name, style, dx in (("rnn", "s--", -0.6), ("lstm", "o-", 0.6)):
            keys = [f"{name}_nmse_T{T}" for T in lengths]
            means = [float(finding.numbers[k]) for k in keys]
            ax.plot(lengths, means, style, label=f"{name.upper()} (mean)")
            for T, k in zip(lengths, keys):
                values = finding.per_seed.get(k, [finding.numbers[k]] * max(1, len(finding.seeds)))
                ax.scatter([T + dx] * len(values), values, s=12, alpha=0.5)
        _reference_lines(ax)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("validation nMSE")
        ax.legend(fontsize=7)
    return drawn.figure


def _reach(lengths: list[int], err: list[float]) -> int:
    """The longest T at which this run carries the far value (nMSE below CARRIES_AT; 0 if none)."""
    return max((T for T, e in zip(lengths, err) if e < CARRIES_AT), default=0)


def run(cfg: dict, seed: int) -> Finding:
    lengths = cfg["lengths"]
    err: dict[str, list[float]] = {"rnn": [], "lstm": []}
    epochs: dict[str, list[int]] = {"rnn": [], "lstm": []}
    for T in lengths:
        data = prepare(adding_problem(cfg["n"], T, seed=seed), val=0.2, test=0.0,
                       standardize=False, seed=seed)
        for kind in ("rnn", "lstm"):
            model, e, n_epochs = _train(kind, data, cfg["epochs"], seed)
            err[kind].append(round(e, 4))
            epochs[kind].append(n_epochs)
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
    reach = {k: _reach(lengths, v) for k, v in err.items()}
    numbers: dict[str, object] = {
        "lengths": lengths,
        "rnn_nmse": err["rnn"],
        "lstm_nmse": err["lstm"],
        "rnn_epochs": epochs["rnn"],
        "lstm_epochs": epochs["lstm"],
    }
    for i, T in enumerate(lengths):  # one scalar per length, so each gets its interval over seeds
        numbers[f"rnn_nmse_T{T}"] = err["rnn"][i]
        numbers[f"lstm_nmse_T{T}"] = err["lstm"][i]
    numbers.update({
        "rnn_nmse_at_shortest": err["rnn"][0],
        "rnn_nmse_at_longest": err["rnn"][-1],
        "lstm_nmse_at_longest": err["lstm"][-1],
        "rnn_solves_longest": int(err["rnn"][-1] <= SOLVED_AT),  # mean: fraction of seeds
        "lstm_solves_longest": int(err["lstm"][-1] <= SOLVED_AT),
        "rnn_reach": reach["rnn"],
        "lstm_reach": reach["lstm"],
        "lstm_reach_minus_rnn_reach": reach["lstm"] - reach["rnn"],
        "forget_gate_mean": round(float(f.mean()), 4),
        "forget_gate_best_unit_kept": float(f"{float(kept[keeper]):.3g}"),
        "gate_math_max_abs_error": float(f"{(h_mine - h_n[0]).abs().max():.3g}"),
    })
    checks = [
        # where the claim starts: over a short distance a plain RNN does carry the far value
        # (with the near value alone it could not get below CARRIES_AT = 0.5)
        Check("rnn_nmse_at_shortest", "<", CARRIES_AT),
        # at the longest T the LSTM solves the task: it explains at least 90% of the variance
        Check("lstm_nmse_at_longest", "<", SOLVED_AT),
        # ...where the RNN does not even carry the far value (it stays near 1.0, the mean)
        Check("rnn_nmse_at_longest", ">", CARRIES_AT),
        # the longest T at which each model carries the far value: the LSTM's lies beyond
        Check("lstm_reach_minus_rnn_reach", ">", 0),
    ]
    method = (f"The adding problem at lengths T = {lengths}, {cfg['n']} sequences per T (80/20 "
              f"train/val, target standardised), scored by validation nMSE (MSE over the "
              f"variance of the targets: 1 = predicting the mean). Plain tanh RNN and LSTM, "
              f"hidden {HIDDEN}, Adam lr {OPTIM['lr']}, gradient-norm clipping {CLIP}, batch "
              f"{BATCH_SIZE}, up to {cfg['epochs']} epochs (a run stops once its nMSE reaches "
              f"{STOP_AT}), same seed and data per pair. LSTM forget bias initialised to "
              f"{FORGET_BIAS}. A run solves T when its final nMSE is <= {SOLVED_AT}; it carries "
              f"the far value below {CARRIES_AT}; a model's reach is the longest T at which it "
              f"carries it. Forget gates recomputed from the trained weights of the LSTM at "
              f"T={lengths[-1]}.")
    notes = (f"For this seed: RNN nMSE {err['rnn']} and LSTM nMSE {err['lstm']} at T = {lengths} "
             f"(epochs used: RNN {epochs['rnn']}, LSTM {epochs['lstm']}). At T={lengths[-1]} the "
             "RNN learns nothing, not even the near marked value (nMSE near 1.0), while the LSTM "
             "breaks through its plateau within the epochs: 20 of 20 seeds in trials. The "
             "intervals of rnn_nmse_T* and lstm_nmse_T* show where each model stops carrying "
             "the far value: at the full budget (seeds 0-4) the RNN's nMSE was 0.12 to 0.23 at "
             "T=10 and 0.53 to 1.04 from T=20 on, the LSTM's 0.02 to 0.05 at every T. This task replaced recall-first (recall the symbol at step 0), "
             "where at T=60 the RNN solved 1 of seeds 0-7 but 5 of 100-107 and the LSTM also 5 "
             "of 8: with no marker at step 0 the LSTM's input gate has no cue for when to write, "
             "and both models' odds were close. Honest caveats: the LSTM starts with its "
             f"forget-gate bias at {FORGET_BIAS} (common practice since Gers et al. 2000); the "
             "claim is about one training budget, not a wall (the RNN is not shown to fail at "
             "T=50 with any budget). For this seed, the LSTM at "
             f"T={lengths[-1]} has mean forget gate {float(f.mean()):.2f}; the unit that remembers "
             f"best (unit {keeper}) keeps a fraction prod f_t = {float(kept[keeper]):.2g} of its "
             "step-0 cell content to the end. The recomputed gate math reproduces the fused "
             f"kernel's final hidden state (max abs error {numbers['gate_math_max_abs_error']:.1g}).")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(lengths, err, f_mean, seed)], notes=notes)
