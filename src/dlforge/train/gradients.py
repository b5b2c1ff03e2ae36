"""Callbacks that watch gradients: :class:`GradientMonitor` and :class:`NanGuard`.

"Layer" here means one named parameter tensor (``layers.0.0.weight``), in the order the
model registers them, which for dlforge's models is input to output.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dlforge.train.callbacks import Callback, Checkpoint

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


def _stacked_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(L,) float32 L2 norms of ``tensors``, left on the device (no sync)."""
    if not tensors:
        return torch.zeros(0, device=device)
    return torch.stack([n.float() for n in torch._foreach_norm(tensors)])


@dataclass
class _Kept:
    """What :class:`NanGuard` keeps on the device about one step until the next read-back."""

    step: int
    epoch: int
    batch: int
    names: list[str]
    norms: torch.Tensor  # (L,) gradient norms
    loss: torch.Tensor  # () float32
    step_ok: torch.Tensor  # () bool: loss and gradients finite
    inputs_ok: torch.Tensor | None  # () bool, None for non-float inputs
    lr: float
    weights_ok: torch.Tensor | None = None  # (L,) bool after the step (check_weights only)
    counted: bool = False  # its gradient norm already joined the recent window


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
    """Stop training at the first non-finite loss, gradient or weight, and explain it,
    without a host-device sync on the steps in between.

    Every step is checked on the device: a finite flag from the loss and the gradient
    norms (``torch._foreach_norm``, no ``.item()``). From the first bad step on, the
    gradients are zeroed on the device (a fused optimizer, what dlforge picks on CUDA,
    is instead handed the flag as its ``found_inf`` and skips the whole update), so no
    non-finite value ever reaches the weights or the optimizer state.
    The flag is read back (one sync) only on steps the loop logs, on each epoch's last step
    (so no bad epoch is logged or checkpointed), every ``every_n_steps`` steps and on the
    steps a :class:`~dlforge.train.callbacks.Checkpoint` saves; the report is rebuilt from
    what the steps kept on the device. The report (``state.nan_report`` and
    ``FitResult.nan_report``) names the first bad step, the first layer whose gradient went
    non-finite, the recent gradient norms, the likely cause and a fix.

    Between a bad step and its read-back, optimizers with momentum or Adam's moments still
    move the weights by their running averages (zero gradients in); plain SGD and fused
    optimizers do not. ``check_weights=True`` (opt-in: one on-device copy of the parameters
    per step) also catches a finite step that overflows the weights and puts back the exact
    weights from before the first bad step.

    Example:
        >>> guard = NanGuard(every_n_steps=100)  # read the flag back at least every 100 steps
    """

    def __init__(self, check_weights: bool = False, window: int = 20, every_n_steps: int | None = None) -> None:
        self.check_weights = check_weights
        self.every_n_steps = every_n_steps
        self._recent: deque[float] = deque(maxlen=window)
        self._steps: list[_Kept] = []  # the steps since the last read-back
        self._ok: torch.Tensor | None = None  # () bool on the device: every step so far was finite
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._backup: list[torch.Tensor] | None = None
        self._checkpoint_every: list[int] = []

    def on_fit_start(self, state: TrainState) -> None:
        self._ok = torch.ones((), dtype=torch.bool, device=state.device)
        self._checkpoint_every = [cb.every_n_steps for cb in state.callbacks
                                  if isinstance(cb, Checkpoint) and cb.every_n_steps]

    def _read_now(self, state: TrainState) -> bool:
        """Whether this step (``state.step``, 0-based) reads the flag back."""
        step = state.step + 1  # the count after this step
        every = [n for n in (self.every_n_steps, *self._checkpoint_every) if n]
        return (state.step_record is not None or step % max(state.steps_per_epoch, 1) == 0
                or any(step % n == 0 for n in every))

    def on_after_backward(self, state: TrainState) -> None:
        names, params, grads = _named_grads(state.model)
        ok_before = self._ok
        norms = _stacked_norms(grads, state.loss.device)  # (L,) float32
        step_ok = torch.isfinite(norms).all() & torch.isfinite(state.loss.float())
        xb = state.batch[0] if state.batch is not None else None
        inputs_ok = torch.isfinite(xb).all() if xb is not None and torch.is_floating_point(xb) else None
        self._ok = ok_before & step_ok
        if self.check_weights:
            self._keep_weights(names, params, ok_before)
        fused = bool(getattr(state.optimizer, "defaults", {}).get("fused")) and state.scaler is None
        if not fused:  # a fused optimizer skips the update itself (found_inf below): no per-tensor work
            bad = ~self._ok
            with torch.no_grad():
                for g in grads:  # (any shape): zeroed from the first bad step on
                    g.masked_fill_(bad, 0.0)
        kept = _Kept(state.step, state.epoch, state.batch_in_epoch, names, norms, state.loss.float(), step_ok,
                     inputs_ok, state.scheduler.lr)
        self._steps.append(kept)
        if self._read_now(state):
            self._read_back(state, before_step=True)
            if self.check_weights and not state.should_stop:
                self._steps.append(kept)  # its weights are checked after the step
        if fused and not state.should_stop:
            state.optimizer.found_inf = (~self._ok).float()  # () the fused kernel skips the whole update

    def _keep_weights(self, names: list[str], params: list[torch.Tensor], ok_before: torch.Tensor) -> None:
        with torch.no_grad():
            if self._backup is None or names != self._names:  # first step, or layers were (un)frozen
                self._names, self._params = names, params
                self._backup = [p.detach().clone() for p in params]
                return
            for p, saved in zip(params, self._backup):  # keep the weights from before the first bad step
                saved.copy_(torch.where(ok_before, p.detach(), saved))

    def on_step_end(self, state: TrainState) -> None:
        if hasattr(state.optimizer, "found_inf"):
            del state.optimizer.found_inf
        if not self.check_weights or not self._steps or self._backup is None:
            return
        weights_ok = _stacked_norms([p.detach() for p in self._params], self._ok.device).isfinite()  # (L,)
        self._steps[-1].weights_ok = weights_ok
        self._ok = self._ok & weights_ok.all()
        every = [n for n in (self.every_n_steps, *self._checkpoint_every) if n]
        if (state.step % max(state.steps_per_epoch, 1) == 0 or state.step_record is not None
                or any(state.step % n == 0 for n in every)):
            self._read_back(state)

    def _restore(self) -> None:
        with torch.no_grad():  # put back the weights from before the first bad step
            for p, saved in zip(self._params, self._backup or []):
                p.copy_(saved)

    def on_fit_end(self, state: TrainState) -> None:
        if self._steps and state.stop_reason != "non_finite":
            self._read_back(state)

    def _read_back(self, state: TrainState, before_step: bool = False) -> None:
        """One device-to-host read of the kept flags; stop and report when one was bad.
        ``before_step``: read before the current step's update, which a stop refuses."""
        kept, self._steps = self._steps, []
        if not kept:
            return
        true = torch.ones((), device=kept[0].norms.device)
        rows_t = torch.stack([torch.stack([  # (steps, 3): loss and gradients finite, weights finite, total norm
            k.step_ok.float(), k.weights_ok.all().float() if k.weights_ok is not None else true,
            torch.linalg.vector_norm(k.norms)]) for k in kept])
        if state.dist.active:  # a step is finite only if it was on every rank: the ranks stop together
            rows_t[:, :2] = (state.dist.all_sum(rows_t[:, :2]) == state.dist.world).float()
        rows = rows_t.tolist()
        first = next((i for i, row in enumerate(rows) if not (row[0] and row[1])), None)
        for k, row in zip(kept, rows[:first] if first is not None else rows):
            if not k.counted:
                self._recent.append(row[2])
                k.counted = True
        if first is None:
            return
        k = kept[first]
        if not rows[first][0]:
            bad = [n for n, finite in zip(k.names, torch.isfinite(k.norms).tolist()) if not finite]
            loss_value = k.loss.item()
            where = "loss" if not math.isfinite(loss_value) else "gradient"
        else:  # a finite step overflowed the weights (check_weights only)
            bad = [n for n, ok in zip(self._names, k.weights_ok.tolist()) if not ok]
            loss_value, where = k.loss.item(), "weights"
        if self.check_weights:
            self._restore()
        inputs_bad = where != "weights" and k.inputs_ok is not None and not bool(k.inputs_ok)
        exact = self.check_weights or (before_step and k is kept[-1])  # the loop refuses the step being read
        self._stop(state, k, where, bad, loss_value, inputs_bad, exact)

    def _stop(self, state: TrainState, k: _Kept, where: str, bad_layers: list[str], loss_value: float,
              inputs_bad: bool, exact: bool) -> None:
        lr = k.lr
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
        weights = [p.detach() for p in state.model.parameters()]
        finite = bool(torch.isfinite(_stacked_norms(weights, state.device)).all())
        if exact:
            kept = "Training stopped; the last finite weights are kept."
        elif finite:
            kept = (f"Training stopped at step {state.step}; the gradients of the steps since were zeroed, "
                    "so the weights stay finite.")
        else:
            kept = (f"Training stopped at step {state.step}; a step overflowed the weights, which are no longer "
                    "finite: NanGuard(check_weights=True) keeps a copy to put back.")
        report = {
            "step": k.step,
            "epoch": k.epoch,
            "batch": k.batch,
            "where": where,
            "first_bad_layer": bad_layers[0] if bad_layers else None,
            "bad_layers": bad_layers,
            "loss": loss_value,
            "lr": lr,
            "recent_grad_norms": list(self._recent),
            "cause": cause,
            "fix": fix,
            "message": (
                f"non-finite {where} at step {k.step} (epoch {k.epoch + 1}, batch {k.batch})"
                + (f"; first bad layer: {bad_layers[0]}" if bad_layers else "")
                + f". Likely cause: {cause}. Fix: {fix}. " + kept
            ),
        }
        state.nan_report = report
        state.should_stop, state.stop_reason = True, "non_finite"
        if hasattr(state.optimizer, "found_inf"):
            del state.optimizer.found_inf
