"""Truncated backpropagation through time, TBPTT(k1, k2), for the engine.

A long sequence is read ``k1`` new steps at a time; after each ``k1`` steps the weights
are updated with a gradient that flows back through the last ``k2`` steps only (k2 >= k1,
Williams & Peng 1990; Sutskever 2013, section 2.8.6). The hidden state is carried from one
window to the next with ``detach``, so the forward pass still sees the whole past while
autograd keeps at most ``k2`` steps alive: memory per update is flat in the sequence
length. ``k1 == k2`` is the common case (Keras-style stateful chunks, Lightning's old
``truncated_bptt_steps``): each window is run once. With ``k2 > k1`` windows overlap and
the overlap is recomputed.

Targets decide what is trained:

* per-step targets, ``y`` of shape (B, T) class ids or (B, T, O) values: every window's
  ``k1`` new outputs carry loss, one optimizer step per window;
* one target per sequence, ``y`` (B,) or (B, O): only the last output carries loss; the
  sequence is read without a graph up to its last ``k2`` steps, which are backpropagated
  once (one step per batch).

The model implements :class:`Stateful`: ``forward_chunk(x, state) -> (out, state)`` with
per-step outputs (B, k, O); :class:`~dlforge.models.rnn.RNNClassifier` does.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dlforge.models import build
    >>> from dlforge.train import fit
    >>> model = build({"arch": "rnn", "kind": "lstm", "hidden_size": 8, "task_head": "token"},
    ...               input_shape=(100, 1), num_outputs=2)
    >>> data = TensorDataset(torch.randn(16, 100, 1), torch.randint(0, 2, (16, 100)))
    >>> fit(model, data, epochs=1, batch_size=8, tbptt=25).steps  # 2 batches x 4 windows
    8
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dlforge.errors import ConfigError


@runtime_checkable
class Stateful(Protocol):
    """A sequence model that can be run chunk by chunk, carrying its state."""

    def forward_chunk(self, x: torch.Tensor, state: Any | None) -> tuple[torch.Tensor, Any]:
        """x (B, k, F) and the state after the previous chunk (None: start) ->
        (per-step outputs (B, k, O), the state after this chunk)."""
        ...


def as_window(tbptt: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``k`` or ``(k1, k2)`` -> ``(k1, k2)``, checked (1 <= k1 <= k2)."""
    k1, k2 = (tbptt, tbptt) if isinstance(tbptt, int) else tuple(tbptt)
    if not (isinstance(k1, int) and isinstance(k2, int) and 1 <= k1 <= k2):
        raise ConfigError(f"train.tbptt is {tbptt!r}",
                          hint="give k (forward and backpropagate k steps) or [k1, k2] with 1 <= k1 <= k2")
    return k1, k2


def check_tbptt(model: nn.Module, x: torch.Tensor, accumulate: int) -> None:
    """Fail before training when TBPTT cannot apply to this model or data."""
    if not isinstance(model, Stateful):
        raise ConfigError(f"train.tbptt needs a model that runs chunk by chunk; {type(model).__name__} does not",
                          hint="use arch rnn (unidirectional), or remove train.tbptt")
    if x.ndim != 3:
        raise ConfigError(f"train.tbptt needs sequences (N, T, F); the inputs have shape {tuple(x.shape)}",
                          hint="remove train.tbptt for non-sequence data")
    if accumulate != 1:
        raise ConfigError("train.tbptt and train.accumulate > 1 cannot be combined",
                          hint="each TBPTT window is already one optimizer step; set train.accumulate: 1")


def per_step_targets(x: torch.Tensor, y: torch.Tensor) -> bool:
    """True when ``y`` has one target per step of ``x`` (B, T[, O]), not one per sequence."""
    return y.ndim >= 2 and y.shape[1] == x.shape[1] and (y.ndim == 3 or not torch.is_floating_point(y))


def updates_per_sequence(T: int, k1: int, per_step: bool) -> int:
    """Optimizer steps TBPTT takes per batch of length-T sequences."""
    return math.ceil(T / k1) if per_step else 1


def detach_state(state: Any) -> Any:
    """Cut the graph behind a hidden state (a tensor or a tuple of tensors)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


def tbptt_windows(
    model: Stateful, x: torch.Tensor, y: torch.Tensor, k1: int, k2: int,
    autocast: Callable[[], AbstractContextManager],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(outputs, targets)`` per TBPTT update of one batch x (B, T, F).

    The caller computes the loss, backpropagates and steps the optimizer before asking
    for the next window, which starts from the detached state.
    """
    T = x.shape[1]
    if not per_step_targets(x, y):
        # One target per sequence: read the prefix without a graph, backpropagate k2 steps.
        start = max(0, T - k2)
        state = None
        if start:
            with torch.no_grad(), autocast():
                _, state = model.forward_chunk(x[:, :start], None)
        with autocast():
            out, _ = model.forward_chunk(x[:, start:], detach_state(state))  # (B, T - start, O)
        yield out[:, -1], y  # (B, O): the prediction after the whole sequence
        return

    state, end = None, 0  # `state` is the state at the current window's start
    while end < T:
        new_from, end = end, min(end + k1, T)
        start = max(0, end - k2)  # this window: steps [start, end), outputs [new_from, end) are new
        next_start = max(0, min(end + k1, T) - k2)  # where the next window will begin
        with autocast():
            if start < next_start < end:  # overlapping windows: keep the state at next_start
                out_a, mid = model.forward_chunk(x[:, start:next_start], state)
                out_b, _ = model.forward_chunk(x[:, next_start:end], mid)
                out = torch.cat([out_a, out_b], dim=1)  # (B, end - start, O)
            else:
                out, mid = model.forward_chunk(x[:, start:end], state)  # (B, end - start, O)
        yield out[:, new_from - start :], y[:, new_from:end]
        if next_start != start:  # otherwise the next window starts where this one did
            state = detach_state(mid)
