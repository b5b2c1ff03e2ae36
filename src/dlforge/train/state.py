"""The loop's state, what :func:`~dlforge.train.fit` returns, and checkpoint snapshots.

``TrainState.snapshot()`` captures everything a resumed run needs to continue
bit-for-bit: weights, optimizer and scheduler state, the grad scaler, every RNG, the loop
counters with the epoch's running sums, the history and each callback's state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from dlforge.train.optim import Scheduler

if TYPE_CHECKING:
    from dlforge.train.callbacks import Callback


@dataclass
class TrainState:
    """What the loop knows; callbacks read it and may set ``should_stop``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    device: torch.device
    epochs: int
    steps_per_epoch: int
    epoch: int = 0                  # epochs completed
    step: int = 0                   # optimizer steps taken
    batch_in_epoch: int = 0         # batches consumed in the current epoch
    loss: torch.Tensor | None = None                      # last batch's loss (detached)
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # last batch
    step_record: dict[str, Any] | None = None   # set on logging steps; callbacks may add keys
    history: list[dict[str, Any]] = field(default_factory=list)
    should_stop: bool = False
    stop_reason: str | None = None
    nan_report: dict[str, Any] | None = None
    totals: dict[str, Any] = field(default_factory=dict)   # running sums of the epoch
    scaler: torch.amp.GradScaler | None = None
    callbacks: Sequence[Callback] = ()

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the history and hand it to every callback."""
        self.history.append(record)
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _callback_keys(self) -> list[str]:
        return [f"{i}:{type(cb).__name__}" for i, cb in enumerate(self.callbacks)]

    def snapshot(self) -> dict[str, Any]:
        """Everything a resumed run needs, as nested dicts of tensors and plain values."""
        np_state = np.random.get_state()
        py_state = random.getstate()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                "python": [py_state[0], list(py_state[1]), py_state[2]],
            },
            "loop": {
                "epoch": self.epoch,
                "step": self.step,
                "batch_in_epoch": self.batch_in_epoch,
                "totals": self.totals,
                "should_stop": self.should_stop,
                "stop_reason": self.stop_reason,
            },
            "history": self.history,
            "callbacks": {key: cb.state_dict() for key, cb in zip(self._callback_keys(), self.callbacks)},
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Inverse of :meth:`snapshot` (callbacks are matched by position and type)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        loop = ckpt["loop"]
        self.epoch, self.step, self.batch_in_epoch = loop["epoch"], loop["step"], loop["batch_in_epoch"]
        self.totals = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in loop["totals"].items()}
        self.should_stop, self.stop_reason = loop["should_stop"], loop["stop_reason"]
        self.history = ckpt["history"]
        saved = ckpt["callbacks"]
        for key, cb in zip(self._callback_keys(), self.callbacks):
            if key in saved:
                cb.load_state_dict(saved[key])


@dataclass
class FitResult:
    """What :func:`~dlforge.train.fit` returns. The model itself was trained in place."""

    history: list[dict[str, Any]]
    epochs_run: int
    steps: int
    stop_reason: str | None          # None, "early_stopping" or "non_finite"
    nan_report: dict[str, Any] | None
    best_epoch: int | None = None

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch records of the history."""
        return [r for r in self.history if r.get("type") == "epoch"]

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record."""
        return self.epochs[-1] if self.epochs else {}
