"""Callbacks that watch gradients: :class:`GradientMonitor` and :class:`NanGuard`.

"Layer" here means one named parameter tensor (``layers.0.0.weight``), in the order the
model registers them, which for dlforge's models is input to output.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import torch

from dlforge.train.callbacks import Callback

if TYPE_CHECKING:
    from dlforge.train.state import TrainState


def _named_grads(model: torch.nn.Module) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    names, params, grads = [], [], []
    for name, p in model.named_parameters():
        if p.grad is not None:
            names.append(name)
            params.append(p)
            grads.append(p.grad)
    return names, params, grads


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """L2 norm of each tensor, with a single device sync."""
    if not tensors:
        return []
    return torch.stack([n.float() for n in torch._foreach_norm(tensors)]).tolist()


class GradientMonitor(Callback):
    """Record per-layer gradient norms and update/weight ratios on logged steps.

    On every step the loop logs (``log_every_n_steps``), the step record gains
    ``grad_norm/<layer>`` (before clipping), ``grad_norm/total`` and
    ``update_ratio/<layer>`` = ||w_after - w_before|| / ||w_before||. A healthy update
    ratio is around 1e-3; far below means the layer barely learns, far above means the
    step is too big.
    """

    def __init__(self) -> None:
        self._before: list[torch.Tensor] | None = None
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []

    def on_after_backward(self, state: TrainState) -> None:
        if state.step_record is None:
            return
        names, params, grads = _named_grads(state.model)
        norms = _norms(grads)
        for name, norm in zip(names, norms):
            state.step_record[f"grad_norm/{name}"] = norm
        state.step_record["grad_norm/total"] = float(sum(n * n for n in norms) ** 0.5)
        self._names, self._params = names, params
        self._before = [p.detach().clone() for p in params]

    def on_step_end(self, state: TrainState) -> None:
        if self._before is None or state.step_record is None:
            return
        deltas = torch._foreach_sub([p.detach() for p in self._params], self._before)
        for name, d, w in zip(self._names, _norms(deltas), _norms(self._before)):
            state.step_record[f"update_ratio/{name}"] = d / w if w > 0 else float("inf")
        self._before = None


class NanGuard(Callback):
    """Stop training at the first non-finite loss, gradient or weight, and explain it.

    The check runs before the optimizer step, so a bad step is never taken; if a step
    with finite gradients still overflows the weights, the pre-step weights are put back
    (``check_weights=True`` keeps that copy, one extra copy of the parameters). The report
    (``state.nan_report`` and ``FitResult.nan_report``) names the step, the first layer
    whose gradient went non-finite, the recent gradient norms, the likely cause and a fix.

    Costs one device sync per optimizer step.
    """

    def __init__(self, check_weights: bool = True, window: int = 20) -> None:
        self.check_weights = check_weights
        self._recent: deque[float] = deque(maxlen=window)
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._backup: list[torch.Tensor] | None = None

    def on_after_backward(self, state: TrainState) -> None:
        names, params, grads = _named_grads(state.model)
        norms = _norms(grads + [state.loss.float()])
        loss_value, norms = norms[-1], norms[:-1]
        bad = [n for n, v in zip(names, norms) if not math.isfinite(v)]
        loss_ok = math.isfinite(loss_value)
        if loss_ok and not bad:
            self._recent.append(math.sqrt(sum(v * v for v in norms)))
            if self.check_weights:
                self._names, self._params = names, params
                self._backup = [p.detach().clone() for p in params]
            return
        where = "loss" if not loss_ok else "gradient"
        self._stop(state, where, bad, loss_value)

    def on_step_end(self, state: TrainState) -> None:
        if not self.check_weights or self._backup is None:
            return
        finite = [math.isfinite(v) for v in _norms([p.detach() for p in self._params])]
        if all(finite):
            return
        bad = [n for n, ok in zip(self._names, finite) if not ok]
        with torch.no_grad():  # put back the weights from before the step
            for p, saved in zip(self._params, self._backup):
                p.copy_(saved)
        self._stop(state, "weights", bad, state.loss.item())

    def _stop(self, state: TrainState, where: str, bad_layers: list[str], loss_value: float) -> None:
        lr = state.scheduler.lr
        xb = state.batch[0] if state.batch is not None else None
        inputs_bad = xb is not None and torch.is_floating_point(xb) and not bool(torch.isfinite(xb).all())
        growth = self._recent[-1] / self._recent[0] if len(self._recent) >= 2 and self._recent[0] > 0 else None
        if inputs_bad:
            cause = "the input batch holds NaN or Inf values"
            fix = "clean or impute the data; dlforge's own loaders reject such values"
        elif where == "weights":
            cause = f"an optimizer step with lr={lr:.3g} overflowed the weights"
            fix = "lower optim.lr (try 10x smaller) or set train.clip_grad_norm: 1.0"
        elif growth is not None and growth > 10:
            cause = f"exploding gradients: the total gradient norm grew {growth:.3g}x over the last {len(self._recent)} steps"
            fix = f"lower optim.lr (now {lr:.3g}), set train.clip_grad_norm: 1.0, or use batch norm / He or Xavier init"
        elif where == "gradient":
            cause = f"the gradient of {bad_layers[0]} overflowed while the loss was finite"
            fix = "set train.clip_grad_norm: 1.0 or lower optim.lr"
        else:
            cause = f"the loss became {loss_value} (too large a learning rate, or a loss undefined for these outputs)"
            fix = f"lower optim.lr (now {lr:.3g}) or set train.clip_grad_norm: 1.0; check the loss inputs"
        report = {
            "step": state.step,
            "epoch": state.epoch,
            "batch": state.batch_in_epoch,
            "where": where,
            "first_bad_layer": bad_layers[0] if bad_layers else None,
            "bad_layers": bad_layers,
            "loss": loss_value,
            "lr": lr,
            "recent_grad_norms": list(self._recent),
            "cause": cause,
            "fix": fix,
            "message": (
                f"non-finite {where} at step {state.step} (epoch {state.epoch + 1}, batch {state.batch_in_epoch})"
                + (f"; first bad layer: {bad_layers[0]}" if bad_layers else "")
                + f". Likely cause: {cause}. Fix: {fix}. Training stopped; the last finite weights are kept."
            ),
        }
        state.nan_report = report
        state.should_stop, state.stop_reason = True, "non_finite"
