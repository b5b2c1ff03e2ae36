"""Training diagnosis: what went wrong in a run, the numbers that show it, and the fix.

:func:`diagnose` reads a run's history (``FitResult.history`` or the lines of
``history.jsonl``) and returns one :class:`Diagnosis` per problem it finds: vanishing or
exploding gradients, non-finite values, dead ReLUs, overfitting, a learning rate that is
too high or too low, and (given the held-out ``scores``) a model that does worse than
predicting the training mean or the majority class. A healthy run gives an empty list; a false alarm is a bug. Every
threshold lives in :class:`HealthThresholds` with the reason for its value.

What each check needs: gradient checks need the ``grad_norm/*`` keys that
:class:`~dlforge.train.GradientMonitor` adds to logged step records; the learning-rate
checks use epoch ``train_loss`` and step ``loss`` (and ``update_ratio/*`` when present);
overfitting needs ``val_loss``; dead ReLUs need :func:`dead_relu_fraction` of the model.

Which parameters count as weight layers (for layer-to-layer comparisons): a parameter
whose last name part contains ``bias`` is skipped, and so is a norm layer's scale, found
by name: a module-path part that contains ``norm`` or is ``bn``/``ln``/``gn`` (``bn1``,
``ln_f``), or, in dlforge's own models, any child after position 0 of a block in
``layers.<i>`` / ``blocks.<i>`` (each block holds its one Linear/Conv at position 0,
followed by BatchNorm, activation and dropout). Pass ``weight_names`` (for example
``weight_layer_names(model)``, the parameters with ``ndim > 1``) to make it exact.

Epoch numbers in ``evidence`` are the history's own (0-based); messages count from 1, as
the progress bar does.

Example:
    >>> history = [{"type": "epoch", "epoch": e, "train_loss": 0.5 ** e, "val_loss": 0.6 ** e}
    ...            for e in range(10)]
    >>> diagnose(history)
    []
"""


from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from dlforge.train.health.checks import (
    _check_dead_relu, _check_exploding, _check_lr_too_high, _check_lr_too_low, _check_overfitting,
    _check_vanishing, _check_worse_than_baseline, _first_non_finite, _from_history, _from_nan_report, _grad_layers, _peak_lr,
)
from dlforge.train.health.findings import (
    KINDS, SEVERITIES, Diagnosis, HealthThresholds, HeldOutScores, is_weight_layer_name, weight_layer_names,
)

# ----------------------------------------------------------------------------- public API

def diagnose(
    history: Sequence[dict[str, Any]],
    *,
    nan_report: dict[str, Any] | None = None,
    dead_units: dict[str, float] | None = None,
    thresholds: HealthThresholds | None = None,
    weight_names: Iterable[str] | None = None,
    scores: HeldOutScores | None = None,
) -> list[Diagnosis]:
    """Find what went wrong in a training run; errors first, an empty list when healthy.

    ``history`` is ``FitResult.history`` or the parsed lines of ``history.jsonl``;
    ``nan_report`` is ``FitResult.nan_report``; ``dead_units`` is the output of
    :func:`dead_relu_fraction`; ``weight_names`` overrides the name rule for weight layers
    (see the module docstring); ``scores`` holds the held-out metrics and baseline numbers
    (:class:`HeldOutScores`), to flag a model worse than the training mean or the majority class.

    Example:
        >>> steps = [{"type": "step", "step": s, "loss": 0.7, "grad_norm/layers.0.0.weight": 1e-9,
        ...           "grad_norm/head.weight": 0.1, "grad_norm/total": 0.1} for s in range(8)]
        >>> [d.kind for d in diagnose(steps)]
        ['vanishing_gradients']
    """
    t = thresholds or HealthThresholds()
    epochs = [r for r in history if r.get("type") == "epoch"]
    steps = [r for r in history if r.get("type") == "step"]
    layers = _grad_layers(steps, weight_names)
    lr = _peak_lr(history)
    bad = _first_non_finite(history)
    went_bad = nan_report is not None or bad is not None

    found: list[Diagnosis | None] = []
    if nan_report is not None:
        found.append(_from_nan_report(nan_report))
    elif bad is not None:
        found.append(_from_history(bad))
    overflow = bad if bad is not None and bad["loss_finite"] else None
    exploding = _check_exploding(steps, overflow, went_bad, t)
    # In a run that blew up, layer-to-layer gradient ratios measure the blow-up, not depth.
    vanishing = None if exploding or went_bad else _check_vanishing(steps, layers, t)
    found += [exploding, vanishing, _check_dead_relu(dead_units, t) if dead_units else None]
    too_high = _check_lr_too_high(epochs, steps, lr, went_bad, nan_report, t)
    found += [too_high, None if too_high or went_bad else _check_lr_too_low(epochs, steps, layers, lr, t),
              _check_overfitting(epochs, t)]
    if scores is not None:
        found.append(_check_worse_than_baseline(scores, t))
    diagnoses = [d for d in found if d is not None]
    return sorted(diagnoses, key=lambda d: SEVERITIES.index(d.severity))  # stable: check order within a level


@torch.no_grad()
def dead_relu_fraction(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per ``nn.ReLU`` module: the fraction of its units never active (output > 0) on ``x``.

    A unit is a feature of a (B, F) output and a channel of a (B, C, ...) output (a conv
    channel counts as alive if any sample is positive anywhere in its map). The model runs
    once in eval mode (BatchNorm uses its running statistics, dropout is off) and is put
    back in its previous mode. A ReLU module called several times in one forward pass (one
    instance shared by layers) counts each call's units separately. Functional
    ``F.relu`` calls and other activations (LeakyReLU, GELU) are not seen.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].bias.copy_(torch.tensor([-100.0, -100.0, -100.0, 100.0]))
        >>> dead_relu_fraction(net, torch.randn(16, 2))
        {'1': 0.75}
    """
    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    alive: dict[str, list[torch.Tensor]] = {name: [] for name, _ in relus}

    def record(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            out = output.detach()
            units = out.reshape(1, -1) if out.ndim == 1 else out.transpose(0, 1).reshape(out.shape[1], -1)  # (U, B*...)
            alive[name].append((units > 0).any(dim=1))  # (U,)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in relus]
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()
        model(x.to(param.device) if param is not None else x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    fractions = {}
    for name, calls in alive.items():
        if calls:
            units = torch.cat(calls)  # (U,) over every call
            fractions[name] = (units.numel() - int(units.sum())) / units.numel()
    return fractions


def _show(value: Any, limit: int = 6) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        items = [f"{k}={_show(v)}" for k, v in value.items()]
        if len(items) > limit:
            items = items[: limit // 2] + ["..."] + items[-(limit // 2):]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        items = [_show(v) for v in value]
        if len(items) > limit:
            items = items[: limit // 2] + ["..."] + items[-(limit // 2):]
        return "[" + ", ".join(items) + "]"
    return str(value)


def format_diagnoses(diagnoses: Sequence[Diagnosis]) -> str:
    """Plain text for the terminal: one block per finding (severity, kind, message,
    evidence, fix), or one line saying nothing was found.

    Example:
        >>> print(format_diagnoses([]))
        No training problems found.
        >>> d = Diagnosis("lr_too_low", "warning", "The loss is flat.", {"lr": 1e-7}, "raise optim.lr")
        >>> print(format_diagnoses([d]))
        [warning] lr_too_low: The loss is flat.
          evidence: lr=1e-07
          fix: raise optim.lr
    """
    if not diagnoses:
        return "No training problems found."
    blocks = []
    for d in diagnoses:
        evidence = ", ".join(f"{k}={_show(v)}" for k, v in d.evidence.items())
        blocks.append(f"[{d.severity}] {d.kind}: {d.message}\n  evidence: {evidence}\n  fix: {d.fix}")
    return "\n\n".join(blocks)


__all__ = ["Diagnosis", "HealthThresholds", "HeldOutScores", "KINDS", "dead_relu_fraction", "diagnose", "format_diagnoses",
           "is_weight_layer_name", "weight_layer_names"]
