"""Topic 27, Attention mechanism: any position reaches any other in one step.

Claim: attention scores every query against every key with a scaled dot product
``q . k / sqrt(d)``, turns each row of scores into weights with a softmax, and returns
the weighted sum of the values. Because every position is one step from every other,
a Transformer's accuracy on a long-range dependency does not fall with the distance,
while a plain RNN, which must carry the information through every step in between,
degrades as the distance grows.

Method: (1) on a tiny example, :func:`dlforge.nn.attention.scaled_dot_product_attention`
on its explicit path is compared with its fused kernel (``fused=True``, PyTorch's
``scaled_dot_product_attention``) and with a hand computation using plain loops and
``exp`` (max abs differences). (2) recall-first (:func:`dlforge.data.recall_first`,
label = the symbol at step 0, read at the last step) at several lengths T: a 1-layer
[CLS]-pooled Transformer over token ids and a plain tanh RNN of the same width are
trained with the same data, epochs, batch size and clipping, and scored on held-out
sequences.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from dlforge.data import prepare, recall_first
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import build
from dlforge.nn.attention import scaled_dot_product_attention
from dlforge.train import fit, seed_everything

TOPIC = 27
TITLE = "Attention mechanism"
CLAIM = ("Attention is softmax(Q K^T / sqrt(d)) V; every position reaches every other in one "
         "step, so a Transformer's accuracy stays flat with distance on a long-range task "
         "while a plain RNN's drops.")
# lengths: the shortest T is one the plain RNN remembers on every seed and the longest one it
# cannot reach in this budget, so rnn_drop measures distance, not luck. At T=10 the RNN sat on a
# plateau at 0.5 on seed 102 even after 20 epochs (drop 0.1 where other seeds gave 0.6-0.9); at
# T=5 it reached 1.0 within 10 epochs on all 9 seeds tried (0-2, 100-105). At T=40 it escaped to
# 0.71 in 10 epochs on seed 201 (drop 0.29); at T=50 it stayed near chance (mean 0.24) on seeds
# 0-5 in 12 epochs, where the Transformer reached 1.0 on all six. T=60 is too long for the
# Transformer in 12 epochs (0.75 on one of seeds 0-5). The full budget adds points between the
# same ends, and seeds, on the same task (n, epochs).
BUDGETS = {
    "quick": {"lengths": (5, 20, 50), "n": 600, "epochs": 12},
    "full": {"lengths": (5, 10, 20, 30, 40, 50), "n": 600, "epochs": 12},
}
# 4 seeds, not 3: a single seed whose RNN escapes its plateau (or whose Transformer is slow) then
# still leaves the t interval on one side of each bound.
SEEDS = {"quick": 4, "full": 6}
N_SYMBOLS = 4  # chance 0.25
WIDTH = 32  # Transformer dim and RNN hidden size
TF_OPTIM = {"name": "adam", "lr": 0.003}
RNN_OPTIM = {"name": "adam", "lr": 0.005}  # topic 8's setting for the same RNN
BATCH_SIZE = 64
CLIP = 1.0
SOLVED_ABOVE = 0.9  # the Transformer "solves" a length: accuracy >= 0.9 (chance 0.25)
FLAT_WITHIN = 0.1  # "flat": Transformer max - min accuracy over lengths within 0.1
DROP_AT_LEAST = 0.3  # "drops": RNN accuracy at the shortest minus at the longest T, >= 0.3
EXACT_TOL = 1e-5


def attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention for one head with explicit loops: (T, d), (S, d), (S, d_v) -> (T, d_v).

    For each query i: scores s_j = sum_c q_ic k_jc / sqrt(d); weights w_j = exp(s_j - max s)
    / sum exp(...); output sum_j w_j v_j. No matmul, no softmax call.

    Example:
        >>> q = k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> v = torch.tensor([[1.0], [0.0]])
        >>> out = attention_by_hand(q, k, v)
        >>> round(float(out[0, 0]), 4)  # e^(1/sqrt 2) / (e^(1/sqrt 2) + 1)
        0.6698
    """
    T, d = q.shape
    S = k.shape[0]
    rows = []
    for i in range(T):
        scores = [sum(float(q[i, c]) * float(k[j, c]) for c in range(d)) / math.sqrt(d)
                  for j in range(S)]
        top = max(scores)  # subtract the max: same softmax, no overflow
        e = [math.exp(s - top) for s in scores]
        w = [x / sum(e) for x in e]
        rows.append(sum(w[j] * v[j] for j in range(S)))  # (d_v,)
    return torch.stack(rows)  # (T, d_v)


def kernel_agreement(seed: int = 0) -> dict[str, float]:
    """Max abs differences: explicit vs fused, explicit vs hand, on a tiny float64 example.

    Example:
        >>> d = kernel_agreement()
        >>> d["explicit_vs_fused"] < 1e-10 and d["explicit_vs_hand"] < 1e-10
        True
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    explicit, weights = scaled_dot_product_attention(q, k, v, return_weights=True)  # (1, 2, 4, 3)
    fused = scaled_dot_product_attention(q, k, v, fused=True)
    hand = torch.stack([attention_by_hand(q[0, h], k[0, h], v[0, h]) for h in range(2)])[None]
    return {"explicit_vs_fused": float((explicit - fused).abs().max()),
            "explicit_vs_hand": float((explicit - hand).abs().max()),
            "weight_rows_sum_error": float((weights.sum(-1) - 1).abs().max())}


def _train(kind: str, data, T: int, cfg: dict, seed: int) -> list[float]:
    seed_everything(seed)
    train, val = data.train, data.val
    if kind == "transformer":
        train, val = (TensorDataset(ds.tensors[0].argmax(-1), ds.tensors[1]) for ds in (train, val))
        model = build({"arch": "transformer", "vocab_size": N_SYMBOLS + 1, "dim": WIDTH,
                       "num_heads": 2, "num_layers": 1, "ffn_dim": 2 * WIDTH, "dropout": 0.0,
                       "positional": "sinusoidal", "pool": "cls"},
                      input_shape=(T,), num_outputs=N_SYMBOLS)
        optim = TF_OPTIM
    else:
        model = build({"arch": "rnn", "kind": "rnn", "hidden_size": WIDTH},
                      input_shape=data.input_shape, num_outputs=N_SYMBOLS)
        optim = RNN_OPTIM
    result = fit(model, train, val, epochs=cfg["epochs"], batch_size=BATCH_SIZE, optim=optim,
                 clip_grad_norm=CLIP, device="cpu", seed=seed)
    return [r["val_accuracy"] for r in result.history if r["type"] == "epoch"]


def _figure(lengths, tf_acc, rnn_acc):
    with plot("Recall-first accuracy versus distance", figsize=(6, 4)) as drawn:
        ax = drawn.axes
        ax.plot(lengths, tf_acc, "o-", label="Transformer (1 layer)")
        ax.plot(lengths, rnn_acc, "s-", label="plain RNN")
        ax.axhline(1 / N_SYMBOLS, color="grey", ls="--", label="chance")
        ax.set_xlabel("distance from the symbol to the query (sequence length T)")
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0, 1.05)
        ax.legend()
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    lengths = list(cfg["lengths"])
    tf_acc, rnn_acc, tf_epochs = [], [], []
    for T in lengths:
        data = prepare(recall_first(cfg["n"], T, N_SYMBOLS, seed=seed), val=0.25, test=0.0,
                       standardize=False, seed=seed)
        curve = _train("transformer", data, T, cfg, seed)
        tf_acc.append(round(curve[-1], 4))
        # Epochs until the Transformer first clears SOLVED_ABOVE (the whole run if never).
        tf_epochs.append(next((e + 1 for e, a in enumerate(curve) if a >= SOLVED_ABOVE),
                              len(curve)))
        rnn_acc.append(round(_train("rnn", data, T, cfg, seed)[-1], 4))
    diffs = kernel_agreement(seed)
    numbers = {
        "lengths": lengths,
        "chance_accuracy": 1 / N_SYMBOLS,
        "transformer_accuracy": tf_acc,
        "rnn_accuracy": rnn_acc,
        "transformer_epochs_to_solve": tf_epochs,
        "transformer_min_accuracy": min(tf_acc),
        "transformer_spread": round(max(tf_acc) - min(tf_acc), 4),
        "rnn_drop": round(rnn_acc[0] - rnn_acc[-1], 4),
        **{k: float(f"{v:.3g}") for k, v in diffs.items()},
    }
    numbers["explicit_vs_exact_max"] = max(numbers["explicit_vs_fused"], numbers["explicit_vs_hand"])
    checks = [
        Check("explicit_vs_exact_max", "<", EXACT_TOL),
        Check("transformer_min_accuracy", ">=", SOLVED_ABOVE),
        Check("transformer_spread", "<=", FLAT_WITHIN),
        Check("rnn_drop", ">=", DROP_AT_LEAST),
    ]
    method = (f"Kernel check on float64 (B=1, h=2, T=S=4, d=3): explicit path vs fused kernel vs "
              f"hand loops. Long range: recall-first, {N_SYMBOLS} symbols (chance "
              f"{1 / N_SYMBOLS:.2f}), T in {lengths}, {cfg['n']} sequences per T (75/25 "
              f"train/val). 1-layer pre-LN Transformer (dim {WIDTH}, 2 heads, sinusoidal "
              f"positions, [CLS], dropout 0, Adam lr {TF_OPTIM['lr']}) vs plain tanh RNN "
              f"(hidden {WIDTH}, Adam lr {RNN_OPTIM['lr']}), both clip {CLIP}, batch "
              f"{BATCH_SIZE}, {cfg['epochs']} epochs, same data and seed. Supported if the kernels "
              f"agree within {EXACT_TOL:g}, the Transformer reaches >= {SOLVED_ABOVE} at every T "
              f"with spread <= {FLAT_WITHIN}, and the RNN loses >= {DROP_AT_LEAST} from the "
              "shortest to the longest T.")
    notes = (f"Seed {seed} (the checks read the 95% interval over seeds): explicit vs fused max abs difference {numbers['explicit_vs_fused']:.1g}, explicit "
             f"vs hand loops {numbers['explicit_vs_hand']:.1g} (float64). Transformer accuracy "
             f"over T={lengths}: {tf_acc}; RNN: {rnn_acc}. Caveats: the learning rates differ "
             "(each is the setting that trains its model here; topic 8 uses the RNN's), one "
             "run per length and seed. The Transformer pays for one-step reach with T^2 "
             "attention scores per layer, and it needs its positional encoding to know which "
             "token is first (topic 22); an LSTM (topic 16) also closes much of the gap, so the "
             "contrast shown is with the plain RNN. Flat final accuracy is not flat learning: "
             f"the Transformer first cleared {SOLVED_ABOVE} after {tf_epochs} epochs at these "
             "lengths, so longer sequences still take it longer to find the position to attend to.")
    if any(b > a + 0.05 for a, b in zip(rnn_acc, rnn_acc[1:])):
        notes += (" The RNN's accuracy is not monotone in T here: with enough epochs a plain "
                  "RNN sometimes escapes its plateau at a long T and not at a shorter one, so "
                  "its failure is a matter of training budget and luck, not a hard limit.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(lengths, tf_acc, rnn_acc)], notes=notes)
