"""Topic 21, exploding gradients: what they look like, and what stops them.

Claim, in our words: when gradients grow from step to step (too large a learning rate,
too large an initialisation, a deep stack of layers), the loss spikes and soon turns
into Inf or NaN. Clipping the gradient norm, normalising activations and initialising
with Xavier or He scaling keep training finite.

Method: (1) a 6-layer ReLU MLP (He init) on digits, trained with plain SGD at a learning
rate far too large for it (2.0), under ``NanGuard``: we report the step where the guard
stops training, the gradient-norm growth it saw and its diagnosis. (2) The same net,
seed and learning rate with ``clip_grad_norm=0.5``, and (3) with batch norm, both
trained for the whole budget. (4) Without training, the variance of each hidden
layer's output of a 10-layer, 256-wide ReLU MLP on digits under naive N(0, 1) weights,
Xavier and He initialisation (and Xavier with tanh, the pairing it was derived for).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlforge.data import load_source, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.lab.finding import significant as _r
from dlforge.models import build
from dlforge.train import GradientMonitor, NanGuard, fit, seed_everything
from dlforge.train.health import diagnose

TOPIC = 21
TITLE = "Exploding gradients"
CLAIM = ("Exploding gradients show as fast-growing gradient norms and then NaN/Inf losses; "
         "gradient clipping and normalisation keep the same too-aggressive training finite, "
         "and Xavier/He initialisation keep activations from blowing up with depth, where "
         "naive N(0, 1) weights make them explode.")
BUDGETS = {
    "quick": {"epochs": 3},
    "full": {"epochs": 15},
}
SEEDS = {"quick": 5, "full": 5}  # He's variance ratio moves by 2x between seeds; a seed costs half a second
NET = {"arch": "mlp", "hidden": [64] * 6, "init": "he"}
# Plain SGD at 2.0, about 20x what this net tolerates: it hit NaN/Inf within 5 steps on all 17 of
# seeds 0-5, 100-105, 200-204, the gradient norm growing 10^4.5 to 10^16 first. At 1.0 it did
# not explode on 3 of those 12 seeds (102, 103, 105), so the lesson depended on the seed.
LR = 2.0
# Clipping bounds a step's length by lr x CLIP: 0.5 keeps the longest step at 1.0, the step the
# clipped run took at lr 1.0 with clip 1.0 (at lr 2.0 with clip 1.0, steps of 2.0, it stopped
# learning: loss ratio 0.67-1.08, val accuracy 0.19-0.49 on seeds 0-2, 100, 101). Every variant of
# one seed shares data and initial weights.
CLIP = 0.5
VARIANCE_NET = {"arch": "mlp", "hidden": [256] * 10}
INITS = [("naive", "relu"), ("xavier", "relu"), ("he", "relu"), ("xavier", "tanh")]
LOG10_4 = 0.60206        # log10(4): "within 4x" on the log scale the variance checks read


def _train(data, seed: int, epochs: int, clip: float | None = None, batch_norm: str | None = None,
           log_every: int = 50):
    seed_everything(seed)  # the same initial weights for every variant
    model = build({**NET, "batch_norm": batch_norm}, input_shape=data.input_shape, num_outputs=data.num_outputs)
    return fit(model, data.train, data.val, epochs=epochs, batch_size=64, optim={"name": "sgd", "lr": LR},
               clip_grad_norm=clip, device="cpu", seed=seed, callbacks=[GradientMonitor(), NanGuard()],
               log_every_n_steps=log_every)


def _summary(result) -> dict:
    first_loss = next(r["loss"] for r in result.history if r["type"] == "step")
    finished = result.stop_reason is None and bool(result.final)
    return {"finite": int(finished), "steps": result.steps,
            "loss_ratio": result.final["train_loss"] / first_loss if finished else float("nan"),
            "val_accuracy": result.final["val_accuracy"] if finished else float("nan")}


def layer_variances(init: str, activation: str, x: torch.Tensor, seed: int) -> list[float]:
    """Variance of each hidden layer's output of VARIANCE_NET under ``init``.

    ``naive`` draws every weight from N(0, 1) and zeroes the biases.

    Example:
        >>> v = layer_variances("naive", "relu", torch.randn(64, 1, 8, 8), seed=0)
        >>> len(v), v[-1] > 1e10 * v[0]
        (10, True)
    """
    seed_everything(seed)
    model = build({**VARIANCE_NET, "activation": activation, "init": "default" if init == "naive" else init},
                  input_shape=tuple(x.shape[1:]), num_outputs=10)
    if init == "naive":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)
    with torch.no_grad():
        return [float(h.var()) for h in model.features(x)]  # one (B, 256) output per layer


def _figure(variances: dict, norms: list[float], guard_step: int):
    with plot("Gradient norms before the guard; activation variance by init", 1, 2, figsize=(10, 3.8)) as drawn:
        a, b = drawn.axes
        a.plot(range(len(norms)), norms, marker="o", color="tab:red")
        a.set_xticks(range(len(norms)))
        a.set(yscale="log", xlabel="optimizer step", ylabel="total gradient norm",
              title=f"SGD lr {LR}: NanGuard stops at step {guard_step}")
        for (init, act), v in variances.items():
            b.plot(range(1, len(v) + 1), v, marker="o", label=f"{init} ({act})")
        b.set(yscale="log", xlabel="hidden layer", ylabel="output variance",
              title="Activation variance with depth at initialisation")
        b.legend(fontsize=8)
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    data = prepare(load_source("digits"), val=0.15, test=0.15, seed=seed)
    exploded = _train(data, seed, cfg["epochs"], log_every=1)  # every step: it is short
    first = exploded.nan_report or {}
    clipped = _summary(_train(data, seed, cfg["epochs"], clip=CLIP))
    normed = _summary(_train(data, seed, cfg["epochs"], batch_norm="before"))
    diagnoses = diagnose(exploded.history, nan_report=exploded.nan_report)
    x_probe = data.test.tensors[0]  # (B, 1, 8, 8), standardised
    norms = [float(n) for n in first.get("recent_grad_norms", [])]
    variances = {key: layer_variances(*key, x_probe, seed) for key in INITS}
    ratio = {key: v[-1] / v[0] for key, v in variances.items()}
    numbers = {
        "unclipped_stopped_non_finite": int(first.get("step") is not None),  # 0/1: over seeds, the fraction
        "guard_step": first.get("step", -1),
        "guard_where": first.get("where", "none"),
        "guard_first_bad_layer": first.get("first_bad_layer") or "none",
        "grad_norms_before_guard": [_r(n) for n in norms],
        "grad_norm_growth_before_guard": _r(norms[-1] / norms[0]) if len(norms) >= 2 else 0.0,
        "health_diagnoses": [d.kind for d in diagnoses],
        "clipped_finite": clipped["finite"],
        "clipped_loss_ratio": _r(clipped["loss_ratio"]),
        "clipped_val_accuracy": _r(clipped["val_accuracy"]),
        "batchnorm_finite": normed["finite"],
        "batchnorm_loss_ratio": _r(normed["loss_ratio"]),
        "batchnorm_val_accuracy": _r(normed["val_accuracy"]),
    }
    for (init, act), r in ratio.items():
        suffix = "" if act == "relu" else f"_{act}"
        numbers[f"{init}{suffix}_variance_ratio"] = _r(r)
        numbers[f"{init}{suffix}_variance_log10_ratio"] = _r(math.log10(r))
        numbers[f"{init}{suffix}_layer_variances"] = [_r(v) for v in variances[(init, act)]]
    # Growths span orders of magnitude from seed to seed (1e7 to 1e11): their intervals are read
    # on a log10 scale, where a mean over seeds is a geometric mean and the bounds keep their meaning.
    growth = numbers["grad_norm_growth_before_guard"]
    numbers["grad_norm_growth_log10"] = _r(math.log10(growth)) if growth > 0 else 0.0
    # Fixed before running: the guard fires, after the gradient norm grew at least 100x (log10 2);
    # clipping and batch norm each finish with the training loss at most half its first value;
    # over nine layers naive init multiplies the activation variance by over 1000 (log10 3),
    # Xavier does not grow it past 4x and He keeps it within 4x either way (log10 4 = 0.602).
    checks = [
        Check("unclipped_stopped_non_finite", ">=", 1),
        Check("grad_norm_growth_log10", ">=", 2),
        Check("clipped_loss_ratio", "<=", 0.5),
        Check("batchnorm_loss_ratio", "<=", 0.5),
        Check("naive_variance_log10_ratio", ">=", 3),
        Check("xavier_variance_log10_ratio", "<=", LOG10_4),
        Check("he_variance_log10_ratio", ">=", -LOG10_4),
        Check("he_variance_log10_ratio", "<=", LOG10_4),
    ]
    per_layer = lambda key: f"{numbers[key] ** (1 / (len(VARIANCE_NET['hidden']) - 1)):.2f}x"  # noqa: E731
    notes = (f"NanGuard's diagnosis (seed {seed}): {first.get('message', 'it never fired')} "
             "Clipping only bounds the step: the clipped run keeps the too-large learning rate and "
             f"trains because no step is longer than lr x {CLIP}. Xavier avoids the explosion with ReLU "
             "only by erring the other way: over nine ReLU layers its activation variance changed by "
             f"{per_layer('xavier_variance_ratio')} per layer (vanishing), He's by "
             f"{per_layer('he_variance_ratio')} and naive N(0, 1)'s by {per_layer('naive_variance_ratio')}. "
             "He's extra gain of sqrt(2) makes up for ReLU zeroing half its inputs; Xavier was derived "
             f"for tanh, where the variance changed by {per_layer('xavier_tanh_variance_ratio')} per layer "
             "(tanh's own squashing, not the init).")
    return Finding(
        topic=TOPIC, title=TITLE, claim=CLAIM,
        method=(f"digits; MLP {NET['hidden']} (He init) with plain SGD lr {LR}, batch 64, under NanGuard; "
                f"the same with clip_grad_norm {CLIP} and with batch norm, {cfg['epochs']} epochs, "
                "same seed and init for the three; activation variance per layer of an MLP {VARIANCE_NET['hidden'][:1]} x "
                f"{len(VARIANCE_NET['hidden'])} under naive N(0, 1), Xavier and He init."),
        numbers=numbers, checks=checks,
        figures=[_figure(variances, norms, numbers["guard_step"])],
        notes=notes,
    )
