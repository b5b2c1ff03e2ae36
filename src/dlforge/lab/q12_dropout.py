"""Topic 12, dropout: random units dropped in training, all units used at inference.

Claim: zeroing a random fraction ``p`` of the units on every training step keeps a big
network from memorising a small training set, so the gap between training and test
accuracy shrinks. At inference every unit is used, and the activations are scaled so
that their expected value matches what the next layer saw during training.

Method: two noisy spirals with only 150 training points and 850 test points, and an MLP
with two hidden layers of 256 units (about 67k weights, far more than the data can pin
down), trained with Adam with dropout 0 and 0.5, same seeds; train-test accuracy gap and
test accuracy, both measured in evaluation mode. Then the expectation check, on the
trained network's own ``nn.Dropout`` module applied to its first hidden layer's
activations: the mean of ``K`` training-mode outputs (``K`` random masks) is compared
with the evaluation-mode output, the kept units are checked to be scaled by exactly
``1 / (1 - p)``, and the evaluation-mode output is checked to be the input unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlforge.data import Prepared, load_source, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import MLP, build
from dlforge.train import evaluate_loss, fit, resolve_loss, seed_everything

TOPIC = 12
TITLE = "Dropout"
CLAIM = ("Dropping random units during training reduces overfitting (a smaller train-test "
         "gap on a small set with a big network); at inference all units are used, scaled "
         "so each activation's expected value matches training.")
BUDGETS = {
    # 200 epochs at both budgets: at 100 the plain net has not overfitted enough for dropout's
    # test-accuracy gain (about +0.01 a seed) to clear three seeds' noise.
    # masks: the expectation check's error and its tolerance both shrink as 1/sqrt(masks), so 1000
    # test the same thing as 2000 (error about a third of the tolerance) in half the time.
    "quick": {"epochs": 200, "masks": 1000},
    "full": {"epochs": 200, "masks": 20000},
}
# Dropout's test-accuracy gain is real but small beside its spread over seeds (quick, seeds
# 0-9 and 100-107: -0.015 to +0.061, mean +0.024, sd 0.022): three seeds' interval (+-4.3
# standard errors) straddled 0 on both seed sets; ten place it above 0 (seeds 0-9: [0.011, 0.043];
# 100-109: [0.0007, 0.033], only just; 200-209: [0.015, 0.044]).
SEEDS = {"quick": 10, "full": 10}
# One CPU thread whatever the runner asks (run_topic reads MAX_THREADS): batches of 32 through a
# 256-unit MLP are too small to gain from a second thread. On an idle two-core machine set B (two
# threads) cost what set A did (39 s against 38 s); on a loaded one (load 8) its second thread spun:
# its ten seeds had not finished after 12 minutes, against 56 s for set A's on one thread.
MAX_THREADS = 1
P = 0.5
HIDDEN = [256, 256]
DATA = {"n_samples": 1000, "noise": 0.2}
TEST_FRACTION = 0.85        # 150 training points
OPTIM = {"name": "adam", "lr": 3e-3}
PROBE_SAMPLES = 32          # inputs for the expectation check
SIGMAS = 3.0                # allowed error of the mask average, in standard errors


def _train_pair(
    seed: int, epochs: int
) -> tuple[dict[str, MLP], dict[str, dict[str, float]], Prepared]:
    """Train the same MLP without and with dropout; eval-mode train and test accuracy."""
    data = prepare(load_source("spirals", **DATA, seed=seed), val=0, test=TEST_FRACTION, seed=seed)
    loss_fn = resolve_loss(None, data.test.tensors[1])
    models, scores = {}, {}
    for name, p in (("plain", 0.0), ("dropout", P)):
        seed_everything(seed)
        model = build({"arch": "mlp", "hidden": HIDDEN, "dropout": p},
                      input_shape=data.input_shape, num_outputs=data.num_outputs)
        fit(model, data.train, epochs=epochs, batch_size=32, optim=OPTIM, device="cpu", seed=seed)
        models[name] = model
        scores[name] = {split: evaluate_loss(model, ds, loss_fn)["accuracy"]
                        for split, ds in (("train", data.train), ("test", data.test))}
    return models, scores, data


@torch.no_grad()
def expectation_check(dropout: nn.Dropout, h: torch.Tensor, masks: int) -> dict[str, float]:
    """Compare ``masks`` training-mode passes of ``dropout`` over ``h`` with eval mode.

    Example:
        >>> expectation_check(nn.Dropout(0.5), torch.rand(4, 8) + 0.1, masks=1000)  # doctest: +SKIP
        {'rel_error': 0.03, 'tolerance': 0.095, 'kept_scale_error': 0.0, ...}
    """
    p = dropout.p
    dropout.eval()
    eval_out = dropout(h)  # (N, F)
    dropout.train()
    total = torch.zeros_like(h, dtype=torch.float64)
    scale_error = 0.0
    for _ in range(masks):
        out = dropout(h)  # (N, F): zeros and h / (1 - p)
        kept = out != 0
        scale_error = max(scale_error, (out[kept] / h[kept] - 1 / (1 - p)).abs().max().item())
        total += out
    mean = total / masks
    h64 = h.double()
    rel_error = ((mean - h64).norm() / h64.norm()).item()
    # Each element's mask average has relative std sqrt(p / ((1 - p) K)); so has the norm.
    tolerance = SIGMAS * math.sqrt(p / ((1 - p) * masks))
    # The original (non-inverted) dropout keeps units unscaled in training, so their mean
    # is (1 - p) h and inference must multiply by (1 - p) instead.
    non_inverted = (total * (1 - p) / masks).sum() / h64.sum()
    return {"rel_error": rel_error, "tolerance": tolerance, "kept_scale_error": scale_error,
            "eval_identity_error": (eval_out - h).abs().max().item(),
            "non_inverted_mean_ratio": non_inverted.item()}


@torch.no_grad()
def _mc_vs_eval(model: MLP, x: torch.Tensor, masks: int) -> tuple[float, float]:
    """Whole-network mask average of the logits versus eval mode: relative difference and
    agreement of the predicted classes (not exact: non-linearities follow the dropout)."""
    model.eval()
    eval_logits = model(x)  # (N, C)
    model.train()
    mc = torch.stack([model(x) for _ in range(masks)]).mean(0)  # (N, C)
    model.eval()
    rel = ((mc - eval_logits).norm() / eval_logits.norm()).item()
    return rel, (mc.argmax(1) == eval_logits.argmax(1)).float().mean().item()


def _figure(models: dict[str, MLP], data, scores, h: torch.Tensor, dropout: nn.Dropout):
    with plot("Decision regions without/with dropout; its expectation", 1, 3, figsize=(13, 4)) as drawn:
        axes = drawn.axes
        x, y = data.train.tensors
        lo, hi = float(x.min()) - 0.3, float(x.max()) + 0.3
        ticks = torch.linspace(lo, hi, 120)
        grid = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), dim=-1)  # (G, G, 2)
        grid = grid.reshape(-1, 2)  # (G*G, 2)
        for ax, name in zip(axes, ("plain", "dropout")):
            models[name].eval()
            with torch.no_grad():
                prob = models[name](grid).softmax(1)[:, 1].reshape(120, 120)
            ax.contourf(ticks.numpy(), ticks.numpy(), prob.numpy(), levels=20, cmap="coolwarm",
                        alpha=0.6)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=8, edgecolors="k", linewidths=0.3)
            s = scores[name]
            ax.set_title(f"{name}: train {s['train']:.2f}, test {s['test']:.2f}")
        dropout.train()
        with torch.no_grad():
            mean = torch.stack([dropout(h) for _ in range(200)]).mean(0)  # (N, F)
        axes[2].scatter(h.flatten(), mean.flatten(), s=3, alpha=0.4)
        lim = float(h.max())
        axes[2].plot([0, lim], [0, lim], "k--", lw=0.8)
        axes[2].set_xlabel("eval-mode output (= input)")
        axes[2].set_ylabel("mean of 200 train-mode outputs")
        axes[2].set_title(f"inverted dropout, p={dropout.p}")
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    models, scores, data = _train_pair(seed, cfg["epochs"])

    net = models["dropout"]
    block = net.layers[0]  # Linear, ReLU, Dropout
    x_probe = data.test.tensors[0][:PROBE_SAMPLES]
    with torch.no_grad():
        h = block[:-1].eval()(x_probe)  # (N, 256): the activations the dropout acts on
    seed_everything(seed)
    exp = expectation_check(block[-1], h, cfg["masks"])
    mc_rel, mc_agree = _mc_vs_eval(net, data.test.tensors[0][:256], cfg["masks"] // 10)

    numbers = {"dropout_p": P}
    for name in ("plain", "dropout"):
        numbers[f"{name}_train_accuracy"] = round(scores[name]["train"], 4)
        numbers[f"{name}_test_accuracy"] = round(scores[name]["test"], 4)
        numbers[f"{name}_accuracy_gap"] = round(scores[name]["train"] - scores[name]["test"], 4)
    # Paired on the seed (same data, same init): what dropout changed, per seed.
    numbers["gap_reduction"] = round(numbers["plain_accuracy_gap"] - numbers["dropout_accuracy_gap"], 4)
    numbers["test_accuracy_gain"] = round(numbers["dropout_test_accuracy"] - numbers["plain_test_accuracy"], 4)
    numbers.update({
        "masks": cfg["masks"],
        "expectation_rel_error": float(f"{exp['rel_error']:.4g}"),
        "expectation_tolerance": float(f"{exp['tolerance']:.4g}"),
        "kept_scale": 1 / (1 - P),
        "kept_scale_error": float(f"{exp['kept_scale_error']:.3g}"),
        "eval_identity_error": exp["eval_identity_error"],
        "non_inverted_mean_ratio": round(exp["non_inverted_mean_ratio"], 4),
        "network_mc_vs_eval_rel_diff": round(mc_rel, 4),
        "network_mc_vs_eval_agreement": round(mc_agree, 4),
    })
    checks = [
        # Paired on the seed: dropout narrows the train-test gap, and not by losing test accuracy.
        Check("gap_reduction", ">", 0.0),
        Check("test_accuracy_gain", ">=", 0.0),
        Check("expectation_rel_error", "<=", "expectation_tolerance"),
        Check("kept_scale_error", "<=", 1e-6),
        Check("eval_identity_error", "<=", 0.0),
    ]
    method = (f"Spirals ({DATA['n_samples']} points, noise {DATA['noise']}; {len(data.train)} "
              f"train, {len(data.test)} test), MLP {HIDDEN} ReLU, Adam lr {OPTIM['lr']}, batch "
              f"32, {cfg['epochs']} epochs, dropout 0 vs {P}, same data and init per seed; accuracies "
              "in eval mode. Expectation: the trained net's nn.Dropout on its layer-1 "
              f"activations of {PROBE_SAMPLES} test inputs, {cfg['masks']} masks; tolerance = {SIGMAS:g} standard "
              "errors of a mask average. Whole net: mean logits over "
              f"{cfg['masks'] // 10} masks vs eval logits on 256 test inputs.")
    notes = (
        "Dropout narrows the train-test gap on every seed; its test-accuracy gain is real but "
        "small beside its spread (quick, seeds 0-9 and 100-107: -0.015 to +0.061 per seed, mean "
        "+0.024, sd 0.022, 16 of 18 above 0), so it takes ten seeds to place its interval above 0. "
        "The guide says dropout 'scales the weights at inference'. That is the original "
        "formulation (Srivastava et al., 2014): units are kept unscaled in training, so an "
        f"activation's training mean is (1-p) times its value (measured ratio "
        f"{numbers['non_inverted_mean_ratio']} on seed {seed}), and the weights are multiplied by (1-p) at "
        "test time. PyTorch, like every modern framework, uses inverted dropout: kept units "
        f"are multiplied by 1/(1-p) = {1 / (1 - P):g} during training (measured exactly), so "
        "the expectation already matches and nothing is scaled at inference (eval mode "
        "returns its input bit for bit). Both give the same expected activations; inverted "
        "dropout leaves the inference path untouched. The match is exact only for the "
        "layer right after the dropout: through later non-linearities, averaging many "
        f"masked networks differs from the eval-mode network (seed {seed}: by {mc_rel:.3g} in relative "
        f"logit norm, same predicted class for {mc_agree:.1%} of inputs); eval mode is the "
        "cheap 'weight scaling' approximation of that ensemble average.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(models, data, scores, h, block[-1])],
                   notes=notes)
