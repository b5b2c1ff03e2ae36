"""Callbacks: optional work around the training loop.

A callback overrides any of the hooks below; every hook of the base class is a no-op, so
the loop is correct with no callbacks at all. Hooks run in this order::

    on_fit_start
      on_epoch_start                      (not called when resuming mid-epoch)
        on_after_backward                 gradients ready (unscaled), before clipping/step;
                                          setting state.should_stop skips the step
        on_step_end                       after the optimizer and scheduler stepped
      on_validation_end(metrics)          epoch metrics computed; may add keys, request a stop
      on_log(record)                      every history record (epoch and logged steps)
      on_epoch_end                        counters advanced, record logged: a consistent
                                          point to checkpoint
    on_fit_end                            (or on_exception, when training raises)

A callback with state a resumed run needs returns it from ``state_dict`` (tensors and
plain values) and takes it back in ``load_state_dict``.

In a data-parallel run every rank runs every hook on the same values (gradients are
averaged and metrics reduced first), so decisions agree; a callback that only reports or
writes sets ``main_only = True`` and runs on rank 0 alone.

This module holds the bookkeeping callbacks (early stopping, checkpoints, history,
progress); the gradient watchers live in :mod:`dlforge.train.gradients`.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import torch

from dlforge.errors import ConfigError
from dlforge.train.state_io import atomic_write, pack_state, packed_to_bytes

if TYPE_CHECKING:
    from dlforge.train.state import TrainState


class Callback:
    main_only = False  # True: run on rank 0 only (writers and printers)
    """Base class; every hook is a documented no-op."""

    def on_fit_start(self, state: TrainState) -> None:
        """Before the first epoch (also when resuming, after state was restored)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before the first batch of an epoch."""

    def on_after_backward(self, state: TrainState) -> None:
        """Gradients are ready; set ``state.should_stop`` to refuse the optimizer step."""

    def on_step_end(self, state: TrainState) -> None:
        """After an optimizer step; ``state.step`` counts steps taken."""

    def on_validation_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """Epoch metrics (``train_loss``, ``val_loss``, ...) are known; may add keys."""

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        """A record was appended to the history."""

    def on_epoch_end(self, state: TrainState) -> None:
        """The epoch is complete and logged; ``state.epoch`` counts completed epochs."""

    def on_fit_end(self, state: TrainState) -> None:
        """After the last epoch, or after a stop."""

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        """Training is failing with ``error`` (re-raised afterwards): release resources."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_HIGHER_WORDS = frozenset(("accuracy", "acc", "f1", "auc", "precision", "recall", "r2", "dice", "iou", "ap50", "dsb"))


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: accuracy, F1, AUC, precision, recall, R², Dice, IoU,
    AP50, the DSB score (any ``_``-separated word of the name), unless it is a loss.

    Example:
        >>> [higher_is_better(m) for m in ("val_accuracy", "val_r2", "val_dice", "val_loss", "val_mse", "dice_loss")]
        [True, True, True, False, False, False]
    """
    words = metric.lower().replace("-", "_").split("_")
    return any(w in _HIGHER_WORDS for w in words) and "loss" not in words


def _resolve_mode(monitor: str, mode: str) -> str:
    if mode == "auto":
        return "max" if higher_is_better(monitor) else "min"
    if mode not in ("min", "max"):
        raise ConfigError(f"mode is {mode!r}", hint="use min, max or auto")
    return mode


def _metric(metrics: dict[str, Any], monitor: str, owner: str) -> float:
    if monitor not in metrics:
        raise ConfigError(
            f"{owner} monitors {monitor!r}, which is not a logged metric",
            hint=f"pick one of: {', '.join(sorted(k for k in metrics if k != 'lr'))}",
        )
    return float(metrics[monitor])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the model ends with the weights of its best epoch.

    Example:
        >>> EarlyStopping(monitor="val_loss", patience=5)  # doctest: +ELLIPSIS
        <...EarlyStopping...>
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0, restore_best_weights: bool = True) -> None:
        self.monitor, self.mode = monitor, _resolve_mode(monitor, mode)
        self.patience, self.min_delta = patience, abs(min_delta)
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_validation_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        value = _metric(metrics, self.monitor, "train.early_stopping")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.should_stop, state.stop_reason = True, "early_stopping"

    def on_fit_end(self, state: TrainState) -> None:
        if self.restore_best_weights and self.best_weights is not None and state.stop_reason != "non_finite":
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_weights = state["best_weights"]


_CKPT = re.compile(r"^step-(\d+)\.safetensors$")


def find_last_checkpoint(path: str | Path) -> Path:
    """The newest ``step-*.safetensors`` in a run dir, its ``checkpoints/`` or a file."""
    path = Path(path)
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted((int(m.group(1)), p) for p in folder.glob("step-*.safetensors") if (m := _CKPT.match(p.name)))
    if not found:
        raise ConfigError(f"no checkpoint to resume from in {path}", hint="point resume at a run directory that saved checkpoints")
    return found[-1][1]


class Checkpoint(Callback):
    """Save the full training state: every ``every_n_epochs`` epochs and/or every
    ``every_n_steps`` steps, keeping the ``keep_last`` newest, plus ``best.safetensors``
    whenever ``monitor`` improves. Each file is written atomically (temp file, fsync,
    rename), so a crash mid-write leaves the previous checkpoint intact.

    The state is copied on the training thread; encoding and the fsync'd write happen on
    one background thread (``async_write=True``), in order, so training does not wait for
    the disk. ``on_fit_end`` waits for the last write and re-raises any write error.
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 keep_last: int = 1, monitor: str | None = "val_loss", mode: str = "auto",
                 async_write: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.keep_last = max(1, keep_last)
        self.monitor = monitor
        self.mode = _resolve_mode(monitor, mode) if monitor else "min"
        self.async_write = async_write
        self.best: float | None = None
        self._last_metrics: dict[str, Any] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def on_fit_start(self, state: TrainState) -> None:
        if not state.dist.main:
            return  # every rank takes part in each snapshot (its running sums); rank 0 writes
        self.dirpath.mkdir(parents=True, exist_ok=True)
        if self.async_write:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlforge-checkpoint")

    def on_step_end(self, state: TrainState) -> None:
        if self.every_n_steps and state.step % self.every_n_steps == 0:
            self._save(state)

    def on_validation_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self._last_metrics = metrics

    def on_epoch_end(self, state: TrainState) -> None:
        is_best = False
        if self.monitor and self._last_metrics is not None and self.monitor in self._last_metrics:
            value = float(self._last_metrics[self.monitor])
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best, is_best = value, True
        periodic = self.every_n_epochs and state.epoch % self.every_n_epochs == 0
        if periodic or state.should_stop or state.epoch == state.epochs or is_best:
            self._save(state, also_best=is_best)

    def _save(self, state: TrainState, also_best: bool = False) -> None:
        snapshot = state.snapshot()  # a collective in a data-parallel run: every rank calls it
        if not state.dist.main:
            return
        packed = pack_state(snapshot)  # copied now; later steps cannot change it
        path = self.dirpath / f"step-{state.step:08d}.safetensors"
        if self._writer is None:
            self._write(packed, path, also_best)
            return
        self._raise_failed()
        self._pending.append(self._writer.submit(self._write, packed, path, also_best))

    def _write(self, packed: tuple, path: Path, also_best: bool) -> None:
        data = packed_to_bytes(*packed)
        atomic_write(path, data)
        if also_best:
            atomic_write(self.dirpath / "best.safetensors", data)
        old = sorted(p for p in self.dirpath.glob("step-*.safetensors") if _CKPT.match(p.name))
        for p in old[: -self.keep_last]:
            p.unlink(missing_ok=True)

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            f.result()  # re-raises a write error on the training thread

    def on_fit_end(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
            pending, self._pending = self._pending, []
            for f in pending:
                f.result()

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        # Finish the writes already queued: they hold the state to resume from.
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
            self._pending = []

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


def history_line(record: dict[str, Any]) -> str:
    """``record`` as one JSON line of history.jsonl.

    A flat record of strings, whole numbers and finite floats goes through orjson (a fifth of
    the standard module's time, paid on every logged step); anything else (NaN, which json
    writes as ``NaN`` and orjson as ``null``, nested values, numpy scalars) through ``json``.

    Example:
        >>> history_line({"type": "step", "step": 3, "loss": 0.5}), history_line({"loss": float("nan")})
        ('{"type":"step","step":3,"loss":0.5}\\n', '{"loss": NaN}\\n')
    """
    if all(v is None or type(v) in (str, int, bool) or (type(v) is float and math.isfinite(v)) for v in record.values()):
        try:
            return orjson.dumps(record).decode() + "\n"
        except orjson.JSONEncodeError:  # an int beyond 64 bits
            pass
    return json.dumps(record) + "\n"


class HistoryWriter(Callback):
    """Write every history record as one JSON line to ``path`` (``history.jsonl``).

    On resume the file is rewritten from the checkpoint's history, so it never holds
    records from steps that were lost in the crash. Epoch records and notes reach the disk
    at once; step records at most ``flush_s`` seconds later (a flush per step cost a 2 ms
    step about 1%).
    """

    main_only = True

    def __init__(self, path: str | Path, flush_s: float = 1.0) -> None:
        self.path = Path(path)
        self.flush_s = flush_s
        self._file = None
        self._flushed = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        for record in state.history:
            self._file.write(history_line(record))
        self._file.flush()

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(history_line(record))
            now = time.monotonic()
            if record.get("type") != "step" or now - self._flushed >= self.flush_s:
                self._file.flush()
                self._flushed = now

    def on_fit_end(self, state: TrainState) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        self.on_fit_end(state)


def _format_metrics(record: dict[str, Any]) -> str:
    keys = [k for k in record if k not in ("type", "epoch", "time") and isinstance(record[k], float)]
    return "  ".join(f"{k}={record[k]:.4g}" for k in keys)


def _clock(seconds: float) -> str:
    """``75.4`` -> ``"1:15"``; an hour or more -> ``"1:02:03"``."""
    m, sec = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressBar(Callback):
    """Progress inside each epoch, and one summary line per epoch.

    The progress line reads ``epoch 3/30  120/469 steps [26%]  41.5 it/s  eta 0:08  loss 0.4123``
    (steps within the epoch, optimizer steps per second, time left in the epoch, the
    epoch's mean loss so far). On a terminal it also draws a bar and is redrawn in place
    (carriage return) at most every ``refresh_s`` seconds; on any other stream (CI logs,
    pipes, files; or with ``force_plain``) it is printed as its own line every ``every_s``
    seconds, so short epochs print only their summary. The loss shown is the epoch's mean
    loss so far, read from the device only on steps that sync anyway: a step the loop logs
    (``log_every_n_steps``) and, when a line is drawn there, an epoch's last step. Other
    lines repeat the last value read, so steps in between cost no host-device sync.

    Example:
        >>> import io
        >>> ProgressBar(stream=io.StringIO(), every_s=30.0)  # doctest: +ELLIPSIS
        <...ProgressBar...>
    """

    main_only = True

    def __init__(self, stream=None, force_plain: bool = False, refresh_s: float = 0.2, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.force_plain = force_plain
        self.refresh_s, self.every_s = refresh_s, every_s
        self._tty = False
        self._drawn = False  # a progress line is on screen, waiting to be overwritten
        self._first_step = 0  # state.step when the epoch began
        self._t0, self._step0, self._last_draw = 0.0, 0, 0.0  # the rate is measured from here
        self._loss: float | None = None  # the epoch's mean loss, as last read

    def on_fit_start(self, state: TrainState) -> None:
        self._tty = not self.force_plain and self.stream.isatty()
        # A run resumed mid-epoch gets no on_epoch_start: the epoch began a whole number of epochs in.
        self._start_timing(state, first_step=state.epoch * state.steps_per_epoch)

    def on_epoch_start(self, state: TrainState) -> None:
        self._start_timing(state, first_step=state.step)

    def _start_timing(self, state: TrainState, first_step: int) -> None:
        self._first_step, self._loss = first_step, None
        self._t0 = self._last_draw = time.monotonic()
        self._step0 = state.step

    def on_step_end(self, state: TrainState) -> None:
        now = time.monotonic()
        draw = now - self._last_draw >= (self.refresh_s if self._tty else self.every_s)
        last = state.step - self._first_step >= state.steps_per_epoch
        if state.step_record is not None or (draw and last):  # a logged step or the epoch's end: read
            count = state.totals.get("count", 0)
            self._loss = (state.totals["loss_sum"] / count).item() if count else None
        if not draw:
            return
        self._last_draw = now
        line = self._progress_line(state, now)
        if self._tty:
            self.stream.write(f"\r{line}\x1b[K")  # \x1b[K clears what a longer previous line left
            self.stream.flush()
            self._drawn = True
        else:
            print(line, file=self.stream, flush=True)

    def _progress_line(self, state: TrainState, now: float) -> str:
        done, total = state.step - self._first_step, state.steps_per_epoch
        rate = (state.step - self._step0) / max(now - self._t0, 1e-9)  # optimizer steps per second
        speed = f"{rate:.1f} it/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.1f} s/it"
        eta = _clock((total - done) / rate) if rate > 0 else "?"
        fraction = done / max(total, 1)
        bar = f" {'#' * round(20 * fraction):.<20}" if self._tty else ""  # a picture only where it redraws
        line = (f"epoch {state.epoch + 1}/{state.epochs}{bar}  {done}/{total} steps [{100 * fraction:.0f}%]"
                f"  {speed}  eta {eta}")
        return line + (f"  loss {self._loss:.4g}" if self._loss is not None else "")

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        if record.get("type") != "epoch":
            return
        self._clear()
        print(f"epoch {record['epoch'] + 1}/{state.epochs}  {_format_metrics(record)}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def on_fit_end(self, state: TrainState) -> None:
        self._clear()
        self.stream.flush()

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        self.on_fit_end(state)
