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

from dlforge.errors import ConfigError
from dlforge.train.distributed import Distributed
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
    dist: Distributed = field(default_factory=Distributed)  # this process's rank in the run

    def epoch_sums(self) -> torch.Tensor:
        """(4,) float64 on the device: this rank's loss sum, correct, counted and samples so far
        in the epoch (``totals`` as one tensor, ready to be reduced over the ranks)."""
        t = self.totals
        return torch.stack([torch.as_tensor(t[k], device=self.device).to(torch.float64)
                            for k in ("loss_sum", "correct", "counted", "count")])

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the history and hand it to every callback."""
        self.history.append(record)
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _callback_keys(self) -> list[str]:
        return [f"{i}:{type(cb).__name__}" for i, cb in enumerate(self.callbacks)]

    def snapshot(self) -> dict[str, Any]:
        """Everything a resumed run needs, as nested dicts of tensors and plain values.

        In a data-parallel run every rank must call it at the same point: the epoch's running
        sums, which differ by rank, are gathered (``loop.rank_sums``, (world, 4)). Every rank
        draws the same random stream, so rank 0's RNG states serve them all."""
        rank_sums = self.dist.all_gather_rows(self.epoch_sums()) if self.totals else None
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
                "world": self.dist.world,
                "rank_sums": rank_sums,
                "should_stop": self.should_stop,
                "stop_reason": self.stop_reason,
            },
            "history": self.history,
            "callbacks": {key: cb.state_dict() for key, cb in zip(self._callback_keys(), self.callbacks)},
        }

    def restore(self, ckpt: dict[str, Any], reshard: bool = False) -> None:
        """Inverse of :meth:`snapshot` (callbacks are matched by position and type).

        A checkpoint written by a different number of processes is refused unless
        ``reshard``: the run then continues from the same global batch with the order
        re-sharded over this world, and the history records it."""
        loop = ckpt["loop"]
        saved_world = int(loop.get("world", 1))
        if saved_world != self.dist.world and not reshard:
            raise ConfigError(
                f"the checkpoint was written by {saved_world} process(es) and this run has {self.dist.world}",
                hint=f"resume with --nproc {saved_world} for a bit-identical continuation, or add --reshard "
                     "(fit(reshard=True)) to continue with the data order re-sharded over this world")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            if self.dist.active and self.device.type == "cuda":  # rank 0's GPU stream, on this rank's GPU
                torch.cuda.set_rng_state(rng["cuda"][0], self.device)
            else:
                torch.cuda.set_rng_state_all(rng["cuda"])
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        self.epoch, self.step, self.batch_in_epoch = loop["epoch"], loop["step"], loop["batch_in_epoch"]
        self.totals = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in loop["totals"].items()}
        rank_sums = loop.get("rank_sums")
        if rank_sums is not None and self.totals:  # this rank's own running sums (all of them on rank 0 when resharded)
            row = rank_sums[self.dist.rank] if saved_world == self.dist.world else (
                rank_sums.sum(0) if self.dist.main else torch.zeros_like(rank_sums[0]))
            loss_sum, correct, counted, count = row.tolist()
            dtype = self.totals["loss_sum"].dtype
            self.totals.update(loss_sum=torch.tensor(loss_sum, dtype=dtype, device=self.device),
                               correct=torch.tensor(correct, dtype=dtype, device=self.device),
                               counted=torch.tensor(counted, dtype=dtype, device=self.device), count=int(count))
        self.should_stop, self.stop_reason = loop["should_stop"], loop["stop_reason"]
        self.history = ckpt["history"]
        if saved_world != self.dist.world:
            self.history.append({"type": "note", "event": "resharded", "step": self.step, "epoch": self.epoch,
                                 "batch_in_epoch": self.batch_in_epoch, "from_world": saved_world,
                                 "to_world": self.dist.world})
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
