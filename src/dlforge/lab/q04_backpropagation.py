"""Topic 4, backpropagation: gradients are the chain rule applied from output to input.

Claim: the gradient of the loss with respect to every weight follows from the chain
rule, applied layer by layer from the loss back to the input; written out by hand it
gives the same numbers as autograd, and training on it follows the same loss curve.

Method: a dlforge MLP (two tanh hidden layers) on the wine set, in float64. The forward
and backward pass are written out with matrix products only: softmax-cross-entropy,
then per layer the linear map and the activation. The hand gradients are compared with
PyTorch autograd and with central finite differences of the loss for every single
weight. Then the same network is trained twice by full-batch gradient descent: once by
dlforge's ``fit`` (autograd) and once by a loop that steps on the hand gradients; the
two loss curves are compared step by step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dlforge.data import load_source, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import MLP, build
from dlforge.train import fit, seed_everything

TOPIC = 4
TITLE = "Backpropagation"
CLAIM = ("Gradients follow from the chain rule, output to input: a hand-written backward "
         "pass matches autograd and finite differences, and training on it reproduces "
         "autograd's loss curve.")
BUDGETS = {
    "quick": {"hidden": [16, 16], "n_train": 64, "steps": 60},
    "full": {"hidden": [32, 32, 32], "n_train": 124, "steps": 500},
}
LR = 0.5
FD_EPS = 1e-6  # central differences: truncation ~eps^2, rounding ~1e-16/eps
AUTOGRAD_AT_MOST = 1e-10
FD_AT_MOST = 1e-6
CURVE_AT_MOST = 1e-10

# activation -> (function, derivative written with the pre-activation z and output h)
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (torch.tanh, lambda z, h: 1 - h**2),
    "sigmoid": (torch.sigmoid, lambda z, h: h * (1 - h)),
    "relu": (torch.relu, lambda z, h: (z > 0).to(z.dtype)),
}
Params = dict[str, torch.Tensor]


def mlp_params(model: MLP) -> Params:
    """Detached copies of an MLP's weights, named as ``model.named_parameters()``."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def hand_forward_backward(params: Params, x: torch.Tensor, y: torch.Tensor,
                          activation: str) -> tuple[float, Params]:
    """Mean softmax-cross-entropy of an MLP and its gradient, by the chain rule alone.

    ``params`` holds ``layers.{i}.0.weight/bias`` (hidden Linears) and ``head.weight/bias``
    as in :class:`~dlforge.models.MLP` without batch norm or dropout.

    Example:
        >>> loss, grads = hand_forward_backward(mlp_params(model), x, y, "tanh")  # doctest: +SKIP
        >>> grads["head.weight"].shape  # doctest: +SKIP
        torch.Size([3, 16])
    """
    act, act_grad = ACTIVATIONS[activation]
    n_hidden = sum(1 for k in params if k.startswith("layers.") and k.endswith(".weight"))
    # forward, keeping every layer's input h and pre-activation z for the backward pass
    hs, zs = [x.flatten(1)], []  # hs[0]: (B, D)
    for i in range(n_hidden):
        zs.append(hs[-1] @ params[f"layers.{i}.0.weight"].T + params[f"layers.{i}.0.bias"])
        hs.append(act(zs[-1]))  # (B, H_i)
    logits = hs[-1] @ params["head.weight"].T + params["head.bias"]  # (B, K)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, K)
    batch = len(y)
    loss = -log_p[torch.arange(batch), y].mean()

    # backward: d(loss)/d(logits) of mean softmax-cross-entropy is (softmax - onehot) / B
    grads: Params = {}
    d_out = (log_p.exp() - F.one_hot(y, logits.shape[1]).to(logits.dtype)) / batch  # (B, K)
    grads["head.weight"] = d_out.T @ hs[-1]  # (K, H_L)
    grads["head.bias"] = d_out.sum(0)
    d_h = d_out @ params["head.weight"]  # (B, H_L)
    for i in reversed(range(n_hidden)):
        d_z = d_h * act_grad(zs[i], hs[i + 1])  # (B, H_i): through the activation
        grads[f"layers.{i}.0.weight"] = d_z.T @ hs[i]  # (H_i, H_{i-1})
        grads[f"layers.{i}.0.bias"] = d_z.sum(0)
        d_h = d_z @ params[f"layers.{i}.0.weight"]  # (B, H_{i-1}): on to the layer below
    return loss.item(), {name: grads[name] for name in params}


def finite_differences(params: Params, x: torch.Tensor, y: torch.Tensor, activation: str,
                       eps: float = FD_EPS) -> Params:
    """Central-difference estimate of d(loss)/d(w) for every single weight."""
    estimates = {}
    for name, p in params.items():
        g = torch.zeros_like(p)
        for j in range(p.numel()):
            flat, old = p.view(-1), p.view(-1)[j].item()
            flat[j] = old + eps
            up = hand_forward_backward(params, x, y, activation)[0]
            flat[j] = old - eps
            down = hand_forward_backward(params, x, y, activation)[0]
            flat[j] = old
            g.view(-1)[j] = (up - down) / (2 * eps)
        estimates[name] = g
    return estimates


def relative_errors(a: Params, b: Params) -> dict[str, float]:
    """Per tensor: max |a - b| over its entries, relative to the largest |b| entry."""
    return {k: float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in a}


def train_on_hand_gradients(params: Params, x: torch.Tensor, y: torch.Tensor,
                            activation: str, steps: int, lr: float) -> list[float]:
    """Full-batch gradient descent on the hand gradients; the loss before each step."""
    params = {k: v.clone() for k, v in params.items()}
    losses = []
    for _ in range(steps):
        loss, grads = hand_forward_backward(params, x, y, activation)
        losses.append(loss)
        for k in params:
            params[k] -= lr * grads[k]
    return losses


def _figure(fit_curve: list[float], hand_curve: list[float], vs_auto: dict, vs_fd: dict):
    with plot("Hand-written backpropagation versus references", 1, 2, figsize=(11, 4)) as drawn:
        ax1, ax2 = drawn.axes
        ax1.plot(fit_curve, lw=3, alpha=0.5, label="fit (autograd)")
        ax1.plot(hand_curve, "k--", lw=1, label="hand-written backward")
        ax1.set_xlabel("gradient-descent step")
        ax1.set_ylabel("training loss")
        ax1.legend()
        names = list(vs_auto)
        pos = torch.arange(len(names)).numpy()
        ax2.bar(pos - 0.2, [max(vs_auto[n], 1e-17) for n in names], 0.4, label="vs autograd")
        ax2.bar(pos + 0.2, [vs_fd[n] for n in names], 0.4, label="vs finite differences")
        ax2.set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
        ax2.set_yscale("log")
        ax2.set_ylabel("max relative error")
        ax2.legend()
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    seed_everything(seed)
    data = prepare(load_source("wine"), val=0, test=0.3, seed=seed)
    x, y = (t[: cfg["n_train"]] for t in data.train.tensors)
    x = x.double()  # (N, 13)
    activation = "tanh"  # smooth, so finite differences never straddle a kink
    model = build({"arch": "mlp", "hidden": cfg["hidden"], "activation": activation},
                  input_shape=data.input_shape, num_outputs=data.num_outputs).double()
    params = mlp_params(model)

    loss, hand = hand_forward_backward(params, x, y, activation)
    auto_loss = F.cross_entropy(model(x), y)
    auto_loss.backward()
    auto = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    vs_auto = relative_errors(hand, auto)
    vs_fd = relative_errors(hand, finite_differences(params, x, y, activation))

    trained = copy.deepcopy(model)
    result = fit(trained, TensorDataset(x, y), epochs=cfg["steps"], optim={"name": "gd", "lr": LR},
                 loss="cross_entropy", device="cpu", seed=seed, log_every_n_steps=1)
    fit_curve = [r["loss"] for r in result.history if r["type"] == "step"]  # float64 losses
    hand_curve = train_on_hand_gradients(params, x, y, activation, cfg["steps"], LR)
    curve_gap = max(abs(a - b) for a, b in zip(fit_curve, hand_curve)) / fit_curve[0]

    numbers = {
        "n_weights": sum(p.numel() for p in params.values()),
        "loss_difference": float(abs(loss - auto_loss.item())),
        "max_rel_error_vs_autograd": float(f"{max(vs_auto.values()):.4g}"),
        "max_rel_error_vs_finite_differences": float(f"{max(vs_fd.values()):.4g}"),
        "loss_curve_max_rel_gap": float(f"{curve_gap:.4g}"),
        "loss_first": round(fit_curve[0], 6),
        "loss_last_autograd": round(fit_curve[-1], 6),
        "loss_last_hand": round(hand_curve[-1], 6),
    }
    checks = [
        Check("max_rel_error_vs_autograd", "<=", AUTOGRAD_AT_MOST),
        Check("max_rel_error_vs_finite_differences", "<=", FD_AT_MOST),
        Check("loss_curve_max_rel_gap", "<=", CURVE_AT_MOST),
        Check("loss_last_hand", "<", "loss_first"),
    ]
    method = (f"wine, {len(y)} training rows, standardised; MLP {cfg['hidden']} tanh in "
              "float64; hand-written forward/backward (softmax-cross-entropy, Linear, tanh) "
              f"versus autograd and central differences (eps {FD_EPS}) on all "
              f"{numbers['n_weights']} weights; errors are max |a - b| over a tensor "
              f"divided by its largest gradient entry; then {cfg['steps']} full-batch GD "
              f"steps (lr {LR}) with fit versus a loop on the hand gradients.")
    notes = (f"Hand and autograd gradients differ by {numbers['max_rel_error_vs_autograd']:.1e}, "
             "float64 rounding: they are the same sums taken in a different order. Finite "
             f"differences differ by {numbers['max_rel_error_vs_finite_differences']:.1e}, the "
             "floor set by eps^2 truncation plus loss rounding divided by eps; this is why "
             "gradient checks run in float64 and use a smooth activation (tanh), since a "
             "ReLU kink inside [w - eps, w + eps] breaks the estimate. Over the run the two "
             f"loss curves differ by at most {numbers['loss_curve_max_rel_gap']:.1e} of the "
             "first loss.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(fit_curve, hand_curve, vs_auto, vs_fd)],
                   notes=notes)
