"""Iterative magnitude pruning with retraining, and lottery-ticket rewinding.

Han et al. 2015 prune a trained net in several rounds, retraining after each, and keep
its accuracy at a small share of its weights; Frankle and Carbin 2019 ("The Lottery
Ticket Hypothesis") rewind the surviving weights to their values at initialisation (or
at an early iteration k) after each round, and find subnetworks that train as well as
the dense net. :func:`iterative_prune` does both through :func:`dlforge.train.fit`.

The masks are ``torch.nn.utils.prune`` masks: while retraining, each pruned layer
computes ``weight = weight_orig * weight_mask`` before every forward pass, so pruned
weights stay zero whatever the optimizer does. At the end the masks are made permanent
(``prune.remove``): the model has plain parameters and saves as plain safetensors.
The result is sparse, not faster (see :mod:`dlforge.compress.prune`).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> history = iterative_prune(model, data, data, target=0.75, steps=2, epochs_per_step=1)
    >>> [round(row["sparsity"], 2) for row in history.rows]
    [0.0, 0.5, 0.75]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import Dataset

from dlforge.compress.prune import _check_amount, _select_layers
from dlforge.errors import ConfigError
from dlforge.train import Callback, TrainState, evaluate_loss, fit
from dlforge.train.losses import build_loss


@dataclass
class PruneHistory:
    """One row per round: ``step`` (0 = the dense model), ``sparsity`` of the pruned layers,
    ``pruned_val_*`` (right after pruning, before retraining) and ``val_*`` (after it)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_sparsity(self) -> float:
        return self.rows[-1]["sparsity"]


def geometric_keep(total: int, target: float, steps: int) -> list[int]:
    """Weights kept after each of ``steps`` rounds: each round removes the same share of
    what remains, ending at ``round(total * (1 - target))``.

    Example:
        >>> geometric_keep(1000, 0.875, 3)   # 1/2 of what remains, three times
        [500, 250, 125]
    """
    return [round(total * (1 - target) ** ((k + 1) / steps)) for k in range(steps)]


def iterative_prune(
    model: nn.Module, train: Dataset, val: Dataset | None, *, target: float, steps: int,
    epochs_per_step: int, rewind: bool = False, rewind_step: int = 0, scope: str = "global",
    layers: Sequence[str] | None = None, pretrained: bool = False, **fit_kwargs: Any,
) -> PruneHistory:
    """Train ``model``, then ``steps`` times prune by magnitude and retrain, in place.

    Each round removes the same share of the remaining weights of the Linear/Conv layers
    (or those named in ``layers``), so the last one ends at ``target`` sparsity; ``scope``
    ranks them together (``"global"``) or per layer (``"layer"``). Every training phase is
    ``fit(model, train, val, epochs=epochs_per_step, **fit_kwargs)`` (``batch_size``,
    ``optim``, ``device``, ``seed`` ...). ``rewind=True`` is lottery-ticket rewinding:
    after each pruning, every parameter goes back to its value after ``rewind_step``
    optimizer steps of the first training (0: the initialisation) before retraining.
    ``pretrained=True`` takes ``model`` as trained already (a run's model): the first round
    prunes at once, without a first training, and rewinding returns to these weights.

    Example:
        >>> history = iterative_prune(model, train, val, target=0.9, steps=3,   # doctest: +SKIP
        ...                           epochs_per_step=2, rewind=True, batch_size=64)
        >>> history.rows[-1]                                                   # doctest: +SKIP
        {'step': 3, 'sparsity': 0.9, 'pruned_val_loss': 0.61, 'val_loss': 0.12, ...}
    """
    _check_amount(target, high_ok=False)
    if not (isinstance(steps, int) and steps >= 1 and isinstance(epochs_per_step, int) and epochs_per_step >= 1):
        raise ConfigError(f"steps is {steps!r} and epochs_per_step is {epochs_per_step!r}",
                          hint="give whole numbers of at least 1, e.g. steps=5, epochs_per_step=2")
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope is {scope!r}", hint="use 'global' or 'layer'")
    if "epochs" in fit_kwargs:
        raise ConfigError("iterative_prune sets the epochs of each training itself",
                          hint="remove epochs=...; use epochs_per_step")
    if not (isinstance(rewind_step, int) and rewind_step >= 0):
        raise ConfigError(f"rewind_step is {rewind_step!r}", hint="give an optimizer step count >= 0")
    targets = _select_layers(model, layers)
    snapshot = _Snapshot(rewind_step)
    if rewind_step == 0 or pretrained:
        snapshot.take(model)
    fit_kwargs = {**fit_kwargs, "epochs": epochs_per_step}
    user_callbacks = list(fit_kwargs.pop("callbacks", ()))
    if pretrained:
        dense = {} if val is None else _evaluate(model, train, val, fit_kwargs.get("loss"))
        history = PruneHistory([{"step": 0, "sparsity": 0.0, **{f"val_{k}": v for k, v in dense.items()}}])
    else:
        result = fit(model, train, val, callbacks=[*user_callbacks, snapshot], **fit_kwargs)
        if snapshot.state is None:
            raise ConfigError(f"rewind_step={rewind_step} is past the first training's {result.steps} steps",
                              hint="rewind to an earlier step, or train longer per step")
        history = PruneHistory([{"step": 0, "sparsity": 0.0, **_val(result)}])
    sizes = {name: m.weight.numel() for name, m in targets.items()}
    keep = geometric_keep(sum(sizes.values()), target, steps)
    layer_keep = {name: geometric_keep(n, target, steps) for name, n in sizes.items()}
    try:
        for k in range(steps):
            if scope == "global":
                remaining = _remaining(targets.values())
                prune.global_unstructured([(m, "weight") for m in targets.values()],
                                          pruning_method=prune.L1Unstructured, amount=remaining - keep[k])
            else:
                for name, m in targets.items():
                    prune.l1_unstructured(m, "weight", amount=_remaining([m]) - layer_keep[name][k])
            row: dict[str, Any] = {"step": k + 1, "sparsity": 1 - _remaining(targets.values()) / sum(sizes.values())}
            if val is not None:
                row.update({f"pruned_val_{key}": v for key, v in _evaluate(model, train, val, fit_kwargs.get("loss")).items()})
            if rewind:
                snapshot.restore(model)
            result = fit(model, train, val, callbacks=user_callbacks, **fit_kwargs)
            history.rows.append({**row, **_val(result)})
    finally:
        for m in targets.values():
            if prune.is_pruned(m):
                prune.remove(m, "weight")
    return history


class _Snapshot(Callback):
    """Keeps every parameter and buffer as they were after ``at`` optimizer steps."""

    def __init__(self, at: int) -> None:
        self.at, self.state = at, None

    def take(self, model: nn.Module) -> None:
        self.state = copy.deepcopy(model.state_dict())

    def on_step_end(self, state: TrainState) -> None:
        if self.state is None and state.step >= self.at:
            self.take(state.model)

    def restore(self, model: nn.Module) -> None:
        """Load the snapshot under the pruned names (``weight`` -> ``weight_orig``), keeping
        the masks: the surviving weights rewind, the pruned ones stay zero."""
        current = model.state_dict()
        with torch.no_grad():
            for name, value in self.state.items():
                key = name if name in current else name + "_orig"
                current[key].copy_(value)


def _remaining(modules) -> int:
    """Weights not yet pruned (mask 1, or no mask yet) in ``modules``."""
    return sum(int(m.weight_mask.sum()) if prune.is_pruned(m) else m.weight.numel() for m in modules)


def _val(result) -> dict[str, float]:
    last = result.epochs[-1] if result.epochs else {}
    return {k: v for k, v in last.items() if k.startswith("val_")}


def _evaluate(model: nn.Module, train: Dataset, val: Dataset, loss: Any) -> dict[str, float]:
    """Validation loss (and accuracy) with the loss ``fit`` would build."""
    return evaluate_loss(model, val, build_loss(loss, targets=torch.as_tensor(train[0][1])[None]))


__all__ = ["PruneHistory", "geometric_keep", "iterative_prune"]
