"""Topic 8, RNNs: a hidden state carries information through time, but not far.

Claim: an Elman RNN (``h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)``) summarises everything
it has read in its hidden state, so it can answer a question about a sequence's past.
Backpropagation through time multiplies one Jacobian ``diag(tanh') W_hh`` per step, so
the gradient reaching early steps shrinks with their distance from the loss, and a
plain RNN fails once the dependency it must learn is long.

Method: the recall-first task (:func:`dlforge.data.recall_first`): the label is the
symbol at step 0, followed by ``T - 2`` random distractor symbols and a query marker,
so the answer must survive the whole sequence; chance is ``1 / n_symbols``. One plain
tanh RNN per length T is trained with Adam and scored on held-out sequences. On the
untrained network at the longest T (the weights training starts from) and on the
model trained there, the gradient norm of the loss with respect to each
input step, ``||dL/dx_t||`` averaged over validation sequences, shows how much each
step can influence learning; the ratio first-step / last-distractor-step measures the
shrinkage over ``T - 2`` steps. The check reads it at initialisation: that is the signal
training starts with, the mechanism the claim names; after training it depends on whether the
seed learned the task, so it is reported, not checked.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from dlforge.data import prepare, recall_first
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import build
from dlforge.train import fit, seed_everything

TOPIC = 8
TITLE = "RNNs"
CLAIM = ("A recurrent network's hidden state carries information through time, so it "
         "solves a short recall task; a plain (Elman, tanh) RNN fails on long dependencies "
         "because the gradient reaching early steps shrinks with their distance.")
BUDGETS = {
    "quick": {"lengths": (5, 20, 40), "n": 1000, "epochs": 15},
    "full": {"lengths": (10, 30, 50), "n": 1000, "epochs": 40},
}
# Whether a plain RNN learns the longest T is a coin toss per seed (quick, seeds 0-2: 0.23, 1.0,
# 0.5), so the long-T checks straddle their bounds unless every seed lands the same way; five
# seeds make that (a spuriously decisive verdict) rarer than three.
SEEDS = {"quick": 5, "full": 5}
N_SYMBOLS = 4  # chance accuracy 0.25
HIDDEN = 32
OPTIM = {"name": "adam", "lr": 0.01}
BATCH_SIZE = 64
SOLVED_ABOVE = 0.9  # accuracy that means the short dependency is learned
FAILED_BELOW = 0.5  # accuracy that means the long one is not (chance is 0.25)
SHRUNK_BELOW = 0.1  # first-step gradient a tenth of the last step's, or less
# The check reads log10 of that ratio: it spans orders of magnitude from seed to seed, so its
# mean over seeds is a geometric mean (the mean of the logs); the bound is the same.
LOG_SHRUNK_BELOW = math.log10(SHRUNK_BELOW)
RATIO_FLOOR = 1e-30  # a first-step gradient that underflows to exactly 0 (float32) counts as this


def input_grad_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean ``||dL/dx_t||`` over the batch for every step t of ``x`` (B, T, F).

    Example:
        >>> model = build({"arch": "rnn", "kind": "rnn", "hidden_size": 4},
        ...               input_shape=(6, 3), num_outputs=2)
        >>> len(input_grad_norms(model, torch.zeros(5, 6, 3), torch.zeros(5, dtype=torch.long)))
        6
    """
    x = x.clone().requires_grad_(True)
    # Sum, not mean, so each sample's gradient is its own and not scaled by 1/B.
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)  # (B, T, F)
    return grad.norm(dim=2).mean(dim=0).tolist()  # (T,)


def _untrained(data, seed: int) -> torch.nn.Module:
    """The RNN a seed's training starts from (the same seed gives the same weights)."""
    seed_everything(seed)
    return build({"arch": "rnn", "kind": "rnn", "hidden_size": HIDDEN},
                 input_shape=data.input_shape, num_outputs=data.num_outputs)


def _train(T: int, cfg: dict, seed: int):
    data = prepare(recall_first(cfg["n"], T, N_SYMBOLS, seed=seed), val=0.2, test=0.0,
                   standardize=False, seed=seed)
    model = _untrained(data, seed)
    result = fit(model, data.train, data.val, epochs=cfg["epochs"], batch_size=BATCH_SIZE,
                 optim=OPTIM, device="cpu", seed=seed)
    return model, data, result.final["val_accuracy"]


def _figure(accuracy: dict[int, float], norms: list[float], T: int):
    with plot("Plain RNN on recall-first: accuracy per T, input gradients", 1, 2, figsize=(10, 4)) as drawn:
        ax1, ax2 = drawn.axes
        ax1.plot(list(accuracy), list(accuracy.values()), "o-", label="plain RNN")
        ax1.axhline(1 / N_SYMBOLS, color="grey", ls="--", label="chance")
        ax1.set_xlabel("sequence length T")
        ax1.set_ylabel("validation accuracy")
        ax1.set_ylim(0, 1.05)
        ax1.legend()
        ax2.semilogy(range(T - 1), norms[:-1], "o-", ms=3)
        ax2.set_xlabel("input step t (0 holds the answer)")
        ax2.set_ylabel("mean ||dL/dx_t||")
        ax2.set_title(f"trained RNN, T = {T}")
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    accuracy: dict[int, float] = {}
    for T in cfg["lengths"]:
        model, data, accuracy[T] = _train(T, cfg, seed)
    # The last model is the longest T's: measure where its gradient reaches.
    x, y = data.val.tensors
    norms = input_grad_norms(model, x, y)
    T = cfg["lengths"][-1]
    # Step T-1 is the query marker (a constant input); T-2 is the last distractor.
    ratio = norms[0] / norms[T - 2]
    init_norms = input_grad_norms(_untrained(data, seed), x, y)
    init_ratio = init_norms[0] / init_norms[T - 2]
    short, long_ = cfg["lengths"][0], cfg["lengths"][-1]
    numbers: dict = {f"accuracy_T{t}": round(a, 4) for t, a in accuracy.items()}
    numbers.update({
        "chance_accuracy": 1 / N_SYMBOLS,
        "grad_norm_first_step": float(f"{norms[0]:.4g}"),
        "grad_norm_last_step": float(f"{norms[T - 2]:.4g}"),
        "grad_first_last_ratio": float(f"{ratio:.4g}"),
        "grad_log10_first_last_ratio": round(math.log10(max(ratio, RATIO_FLOOR)), 4),
        "grad_norms_per_step": [float(f"{v:.4g}") for v in norms],
        # The same ratio on the untrained network: the gradient training starts from.
        "init_grad_norm_first_step": float(f"{init_norms[0]:.4g}"),
        "init_grad_norm_last_step": float(f"{init_norms[T - 2]:.4g}"),
        "init_grad_log10_first_last_ratio": round(math.log10(max(init_ratio, RATIO_FLOOR)), 4),
    })
    checks = [
        Check(f"accuracy_T{short}", ">=", SOLVED_ABOVE),
        Check(f"accuracy_T{long_}", "<", FAILED_BELOW),
        # At initialisation: after training the ratio tells whether the seed learned the task
        # (above 1 on a seed that did), not what held it back.
        Check("init_grad_log10_first_last_ratio", "<", LOG_SHRUNK_BELOW),
    ]
    method = (f"Recall-first with {N_SYMBOLS} symbols (chance {1 / N_SYMBOLS:.2f}), "
              f"{cfg['n']} sequences per T (80/20 train/val), T in {list(cfg['lengths'])}. "
              f"One tanh Elman RNN (hidden {HIDDEN}) per T, Adam lr {OPTIM['lr']}, batch "
              f"{BATCH_SIZE}, {cfg['epochs']} epochs. Input-gradient norms ||dL/dx_t|| of the "
              f"T={long_} network on the validation set, untrained (checked) and trained. Solved: accuracy >= {SOLVED_ABOVE}; "
              f"failed: < {FAILED_BELOW}; shrunk: first/last-distractor gradient ratio < "
              f"{SHRUNK_BELOW}.")
    notes = (f"The hidden state does carry the answer at short range (T={short}: accuracy at least "
             f"{SOLVED_ABOVE} on every seed). At T={long_} whether the plain RNN fails depends on the "
             "seed: at the quick budget seeds 0-4 reached 0.23, 1.0, 0.5, 0.86 and 0.25 (chance "
             f"{1 / N_SYMBOLS:.2f}; seeds 0 and 3 failed T=20 while seeds 1 and 3 learned T=40), and at "
             "T=80 eight seeds reached 0.25 to 0.89 (mean 0.63), so the 'fails' check straddles 0.5 on "
             "every seed set: 'plain RNNs fail on long dependencies' is a coin toss per seed at a few "
             "dozen steps here, neither shown nor refuted. The mechanism is clear: at initialisation "
             f"the step that holds the answer gets 1e-7 to 1e-10 of the last distractor step's "
             f"gradient at T=40 on every seed tried (15 seeds; this seed 10^{numbers['init_grad_log10_first_last_ratio']:.3g}), "
             "so the signal that would teach the network to keep step 0 is drowned by the recent "
             "steps. After training that ratio is tiny on a seed that failed and above 1 on one that "
             f"learned the task (this seed: 10^{numbers['grad_log10_first_last_ratio']:.3g}). With many more epochs, careful initialisation (e.g. orthogonal "
             "or identity W_hh) or luck, plain RNNs learn dependencies of a few dozen steps. "
             "Gradients were measured after training, on the trained weights.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(accuracy, norms, long_)], notes=notes)
