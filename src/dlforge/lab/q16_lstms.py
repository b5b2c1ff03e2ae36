"""Topic 16, LSTMs: gates keep long-range information that a plain RNN loses.

Claim: an LSTM adds a cell state updated additively, ``c_t = f_t * c_{t-1} + i_t * g_t``,
with a forget gate ``f_t``, an input gate ``i_t`` and an output gate ``o_t``. When the
forget gate stays near 1 the cell keeps a value across many steps and the gradient
along ``c`` is multiplied by ``f_t`` rather than by ``tanh' W_hh``, so an LSTM learns a
dependency at a length where a plain RNN fails.

Method: recall-first (:func:`dlforge.data.recall_first`; the label is the symbol at step
0, chance ``1 / n_symbols``) at one long T. A plain tanh RNN and an LSTM of the same
hidden size are trained with the same optimiser, clipping, data and epochs and scored on
held-out sequences, over several seeds (data, initialisation and batch order change with
the seed): whether one run of either model breaks through its plateau is luck, so the
checks read the mean over seeds. One solved LSTM's forget-gate activations over time
are recomputed from its trained weights with the gate math of
:func:`dlforge.models.rnn.lstm_cell`, and checked against the fused kernel's states.
"""

from __future__ import annotations

import torch

from dlforge.data import prepare, recall_first
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import build
from dlforge.train import fit, seed_everything

TOPIC = 16
TITLE = "LSTMs"
CLAIM = ("An LSTM's forget, input and output gates keep information over long ranges: "
         "at a sequence length where a plain RNN fails, an LSTM solves the same task.")
# At T=40 a clipped-Adam tanh RNN solves recall-first in about a third of seeds (2 of 8
# here), so T=60, where it solved none of 8 and the LSTM 7 of 8.
BUDGETS = {
    "quick": {"length": 60, "n": 1000, "epochs": 30, "seeds": 8},
    "full": {"length": 60, "n": 1000, "epochs": 40, "seeds": 16},
}
N_SYMBOLS = 4  # chance accuracy 0.25
HIDDEN = 32
OPTIM = {"name": "adam", "lr": 0.005}
CLIP = 1.0
BATCH_SIZE = 64
FORGET_BIAS = 1.0  # Gers et al. 2000, Jozefowicz et al. 2015: start by remembering
SOLVED_ABOVE = 0.7  # mean accuracy over seeds (a solved run ends near 1.0; chance is 0.25)
MARGIN = 0.3  # LSTM accuracy at least this far above the RNN's


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


def _train(kind: str, data, cfg: dict, seed: int):
    seed_everything(seed)
    model = build({"arch": "rnn", "kind": kind, "hidden_size": HIDDEN},
                  input_shape=data.input_shape, num_outputs=data.num_outputs)
    if kind == "lstm":
        rnn = model.recurrent.rnn
        with torch.no_grad():  # the f block is rows H:2H of each bias
            rnn.bias_ih_l0[HIDDEN:2 * HIDDEN].fill_(FORGET_BIAS)
            rnn.bias_hh_l0[HIDDEN:2 * HIDDEN].zero_()
    result = fit(model, data.train, data.val, epochs=cfg["epochs"], batch_size=BATCH_SIZE,
                 optim=OPTIM, clip_grad_norm=CLIP, device="cpu", seed=seed)
    curve = [r["val_accuracy"] for r in result.history if r["type"] == "epoch"]
    return model, curve


def _figure(f_mean: torch.Tensor, curves: dict[str, list[float]]):
    with plot("RNN versus LSTM on recall-first; LSTM forget gates", 1, 2, figsize=(11, 4)) as drawn:
        ax1, ax2 = drawn.axes
        for name, curve in curves.items():
            ax1.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=name)
        ax1.axhline(1 / N_SYMBOLS, color="grey", ls="--", label="chance")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("validation accuracy")
        ax1.legend()
        im = ax2.imshow(f_mean.T.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax2.set_xlabel("time step t")
        ax2.set_ylabel("hidden unit")
        ax2.set_title("mean forget gate f_t (validation set)")
        drawn.fig.colorbar(im, ax=ax2)
    return drawn.figure


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


def run(cfg: dict, seed: int) -> Finding:
    T = cfg["length"]
    seeds = list(range(seed, seed + cfg["seeds"]))
    finals: dict[str, list[float]] = {"rnn": [], "lstm": []}
    bests: dict[str, list[float]] = {"rnn": [], "lstm": []}
    curves: dict[str, list[float]] = {}
    for s in seeds:
        data = prepare(recall_first(cfg["n"], T, N_SYMBOLS, seed=s), val=0.2, test=0.0,
                       standardize=False, seed=s)
        pair = {}
        for kind in ("rnn", "lstm"):
            model, curve = _train(kind, data, cfg, s)
            finals[kind].append(round(curve[-1], 4))
            bests[kind].append(round(max(curve), 4))
            pair[kind] = curve
        # The figure and the gate analysis show the first seed whose LSTM solved the task
        # (the first seed if none did), with that seed's RNN beside it.
        if not curves or max(curves["lstm"]) < 0.9 <= max(pair["lstm"]):
            curves, shown_lstm, shown_val, shown_seed = pair, model, data.val, s
    x, _ = shown_val.tensors
    lstm = shown_lstm.recurrent.rnn
    with torch.no_grad():
        f, h_mine = forget_gates(lstm, x)  # (B, T, H)
        _, (h_n, _) = lstm(x)
    f_mean = f.mean(dim=0)  # (T, H)
    # What survives of step 0's cell content at the end is prod_{t>=1} f_t, per unit.
    kept = f[:, 1:].prod(dim=1).mean(dim=0)  # (H,)
    keeper = int(kept.argmax())
    solved = {k: sum(a >= 0.9 for a in v) for k, v in finals.items()}
    numbers = {
        "length": T,
        "seeds": len(seeds),
        "chance_accuracy": 1 / N_SYMBOLS,
        "rnn_accuracy": _mean(finals["rnn"]),
        "lstm_accuracy": _mean(finals["lstm"]),
        "rnn_best_accuracy": _mean(bests["rnn"]),
        "rnn_accuracy_per_seed": finals["rnn"],
        "lstm_accuracy_per_seed": finals["lstm"],
        "rnn_seeds_solved": solved["rnn"],
        "lstm_seeds_solved": solved["lstm"],
        "shown_seed": shown_seed,
        "forget_gate_mean": round(float(f.mean()), 4),
        "forget_gate_best_unit_kept": float(f"{float(kept[keeper]):.3g}"),
        "gate_math_max_abs_error": float(f"{(h_mine - h_n[0]).abs().max():.3g}"),
    }
    # The plateau (shown seed): epochs before the LSTM first clears 0.5.
    lstm_curve = curves["lstm"]
    plateau = next((k for k, a in enumerate(lstm_curve) if a >= 0.5), len(lstm_curve))
    numbers["lstm_epochs_before_0.5"] = plateau
    numbers["lstm_minus_rnn"] = round(numbers["lstm_accuracy"] - numbers["rnn_accuracy"], 4)
    checks = [
        Check("lstm_accuracy", ">=", SOLVED_ABOVE),
        Check("lstm_minus_rnn", ">=", MARGIN),
    ]
    method = (f"Recall-first at T={T} with {N_SYMBOLS} symbols (chance {1 / N_SYMBOLS:.2f}), "
              f"{cfg['n']} sequences (80/20 train/val), {len(seeds)} seeds. Plain tanh RNN and LSTM, hidden "
              f"{HIDDEN}, Adam lr {OPTIM['lr']}, gradient-norm clipping {CLIP}, batch "
              f"{BATCH_SIZE}, {cfg['epochs']} epochs, same seed and data per pair. LSTM forget bias "
              f"initialised to {FORGET_BIAS}. Forget gates recomputed from the trained weights "
              f"of the first seed whose LSTM solved the task. Supported if the LSTM's mean final accuracy over seeds is >= "
              f"{SOLVED_ABOVE} and beats the RNN's mean by >= {MARGIN}.")
    notes = (f"At T={T} the RNN ends at a mean {numbers['rnn_accuracy']:.2f} over {len(seeds)} "
             f"seeds ({solved['rnn']} solved, >= 0.9) and the LSTM at "
             f"{numbers['lstm_accuracy']:.2f} ({solved['lstm']} solved). Breaking through the "
             "plateau is luck for either model: in trials on one machine, at T=40 a clipped-Adam "
             "tanh RNN solved 2 of 8 "
             "seeds and the LSTM 7 of 8, and with lr 0.003 and batch 16 the RNN solved 6 of 8 "
             "seeds even at T=50, so the claim is about odds at a length, not a wall. Honest "
             "caveat: the LSTM here starts with its "
             f"forget-gate bias at {FORGET_BIAS} (common practice since Gers et al. 2000); in a "
             "trial with PyTorch's default zero bias and lr 0.01 without clipping, the LSTM was "
             "still near chance after 30 epochs at T=40 (one trial, one seed), so this "
             "result depends on that initialisation and the gentler optimiser. Here the LSTM "
             f"(seed {shown_seed}) needed {plateau} epochs before first reaching 0.5 accuracy, the plateau "
             f"typical of long-dependency tasks. Mean forget gate {float(f.mean()):.2f}; the "
             "unit that "
             f"remembers best (unit {keeper}) keeps a fraction prod f_t = "
             f"{float(kept[keeper]):.2g} of its step-0 cell content to the end (mean over "
             "sequences). A small fraction can still suffice: what matters is that the symbol "
             "written at step 0 stays separable from what later steps add, and the gradient "
             "along c is scaled by these same factors instead of tanh' W_hh. The recomputed "
             "gate math "
             "reproduces the fused kernel's final hidden state (max abs error "
             f"{numbers['gate_math_max_abs_error']:.1g}).")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(f_mean, {"RNN": curves["rnn"], "LSTM": lstm_curve})],
                   notes=notes)
