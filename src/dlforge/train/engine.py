"""The training loop: :func:`fit`, one explicit loop that reads top to bottom.

Everything optional (progress, history, checkpoints, early stopping, gradient monitoring,
the NaN guard) lives in callbacks; with no callbacks the loop still trains correctly and
does exactly what a hand-written PyTorch loop does (``tests/train/test_engine.py``
checks the final weights are identical).

Data order: epoch ``e`` visits the training set in ``epoch_permutation(n, seed, e)``
order. The permutation is a pure function of (seed, epoch), so a run resumed mid-epoch
picks up at the same sample without saving sampler state. How visits become batches
lives in :mod:`dlforge.train.batches`; which device trains, in :mod:`dlforge.train.devices`.

Started by ``torchrun`` (``dlforge train --nproc N``), the same loop is data-parallel:
``batch_size`` stays the global batch, rank ``r`` of ``w`` takes every ``w``-th sample of
the epoch's order (:func:`~dlforge.train.distributed.rank_order`), DDP averages the
gradients, the epoch's sums and the validation are reduced over the ranks, and rank 0
alone writes (see :mod:`dlforge.train.distributed`).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> model = torch.nn.Linear(4, 2)
    >>> result = fit(model, TensorDataset(x, y), epochs=2, batch_size=16, optim="sgd")
    >>> len(result.epochs)
    2
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX
from dlforge.train import transfer
from dlforge.train.batches import epoch_batch_size, epoch_permutation, fold_single_batch, iterate_batches
from dlforge.train.callbacks import Callback, find_last_checkpoint
from dlforge.train.compiling import compiled_forward
from dlforge.train.devices import select_device
from dlforge.train.distributed import Distributed, grad_sync, per_rank_batch, rank_order
from dlforge.train.losses import LossConfig, LossFn, build_loss
from dlforge.train.seg_losses import supervised_loss
from dlforge.train.optim import OptimConfig, Scheduler, as_optim_config, build_optimizer
from dlforge.train.state import FitResult, TrainState
from dlforge.train.state_io import load_state
from dlforge.train.tbptt import as_window, check_tbptt, per_step_targets, tbptt_windows, updates_per_sequence

PRECISIONS = ("fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- setup

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_correct(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(correct predictions, counted targets) for (B, C), per-token (B, T, C) outputs,
    or per-pixel segmentation outputs (B, C, H, W[, D]) with (B, H, W[, D]) targets.

    Per-token and per-pixel targets equal to ``IGNORE_INDEX`` are not counted; soft
    targets (mixup, label smoothing) count their most likely class.
    """
    if out.ndim >= 4:  # segmentation: classes on dim 1, so accuracy is per pixel
        out = out.movedim(1, -1)  # (B, H, W[, D], C)
        if torch.is_floating_point(target) and target.ndim == out.ndim:
            target = target.movedim(1, -1)
    if torch.is_floating_point(target) and target.shape == out.shape:
        target = target.argmax(dim=-1)
    if out.ndim == 2:
        return (out.argmax(dim=1) == target).sum(), len(target)  # count stays a Python int: no sync
    valid = target != IGNORE_INDEX  # (B, T) or (B, H, W[, D])
    return ((out.argmax(dim=-1) == target) & valid).sum(), valid.sum()


def _on_device(data: Dataset | None, device: torch.device) -> Dataset | None:
    if isinstance(data, TensorDataset) and data.tensors[0].device != device:
        return TensorDataset(*(t.to(device) for t in data.tensors))
    return data


def _check_finite_data(data: Dataset | None, name: str) -> None:
    if isinstance(data, TensorDataset) and torch.is_floating_point(data.tensors[0]):
        if not torch.isfinite(data.tensors[0]).all():
            raise DataError(f"the {name} inputs contain NaN or Inf values", hint="clean or impute them before training")


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_loss(
    model: nn.Module, data: Dataset, loss_fn: LossFn, *, batch_size: int = 256,
    device: torch.device | None = None, precision: str = "fp32", distributed: Distributed | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy for integer targets) of ``model`` on ``data``, in eval mode.

    With ``distributed`` active, each rank scores every ``world``-th sample (all of them,
    no tail dropped) and the sums are added over the ranks: every rank gets the same numbers.
    """
    device = device or next(model.parameters()).device
    dist = distributed or Distributed()
    data = _on_device(data, device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, correct, counted, samples
    for xb, yb in iterate_batches(data, torch.arange(len(data))[dist.rank :: dist.world], batch_size, device):
        with _autocast(device, precision):
            out = model(xb)
        out = out.float()
        sums[0] += loss_fn(out, yb) * len(yb)
        if not torch.is_floating_point(yb):
            hits, n = count_correct(out, yb)
            sums[1] += hits
            sums[2] += n
        sums[3] += len(yb)
    model.train(was_training)
    loss_sum, correct, counted, count = dist.all_sum(sums).tolist()
    metrics = {"loss": loss_sum / max(count, 1)}
    if len(data) and not torch.is_floating_point(data[0][1]):
        metrics["accuracy"] = correct / max(counted, 1)
    return metrics


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _l1_penalty(model: nn.Module) -> torch.Tensor:
    # Weight matrices and kernels only: penalising biases and norm scales is not L1 sparsity.
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


# ----------------------------------------------------------------------------- the loop

def _group_size(batch: int, accumulate: int, batches_per_epoch: int) -> int:
    """How many batches are summed into the optimizer step that (1-based) ``batch`` feeds:
    ``accumulate``, or fewer for the epoch's last step."""
    group_start = (batch - 1) // accumulate * accumulate
    return min(accumulate, batches_per_epoch - group_start)


def _optimizer_step(state: TrainState, params: list[nn.Parameter], clip_grad_norm: float | None,
                    clip_grad_value: float | None) -> bool:
    """Clip, step, schedule and log one update; False when a callback refused the step."""
    optimizer = state.optimizer
    if state.scaler:
        state.scaler.unscale_(optimizer)
    for cb in state.callbacks:
        cb.on_after_backward(state)
    if state.should_stop:
        return False
    if clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(params, clip_grad_norm)
    if clip_grad_value is not None:
        nn.utils.clip_grad_value_(params, clip_grad_value)
    if state.scaler:
        state.scaler.step(optimizer)
        state.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.scheduler.step_batch()
    state.step += 1
    for cb in state.callbacks:
        cb.on_step_end(state)
    if state.step_record is not None:
        state.step_record.update(loss=state.dist.all_mean(state.loss).item(), lr=state.scheduler.lr)
        state.log(state.step_record)
        state.step_record = None
    return True


def fit(
    model: nn.Module,
    train: Dataset,
    val: Dataset | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    optim: str | dict | OptimConfig = "adam",
    loss: str | dict | LossConfig | LossFn | None = None,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    accumulate: int = 1,
    precision: str = "fp32",
    device: str | torch.device = "auto",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    log_every_n_steps: int = 50,
    resume: str | Path | None = None,
    param_groups: Sequence[dict[str, Any]] | None = None,
    tbptt: int | tuple[int, int] | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    order: Callable[[int, int, int], torch.Tensor] | None = None,
    compile: bool | str = False,
    distributed: Distributed | None = None,
    reshard: bool = False,
) -> FitResult:
    """Train ``model`` on ``train`` (validating on ``val`` after every epoch).

    ``optim`` names the optimizer, schedule and L1/L2 penalties (see
    :class:`~dlforge.train.optim.OptimConfig`); ``gd`` uses the whole training set as one
    batch. ``accumulate`` averages gradients over that many batches per optimizer step
    (over the batches left, for an epoch's last step). With batch norm, a last batch of
    one sample joins the batch before it (see :func:`fold_single_batch`).
    ``loss`` is anything :func:`~dlforge.train.losses.build_loss` takes: a name, a mapping
    or ``LossConfig`` (focal, class weights, label smoothing), a callable, or ``None``
    (cross-entropy for integer targets, MSE for float targets).
    ``precision`` is ``fp32``, ``bf16`` (autocast) or ``fp16`` (CUDA, with a grad scaler).
    ``resume`` continues from the last checkpoint in a run or checkpoint directory.
    ``param_groups`` (torch-style ``{"params": [...], "lr": ...}`` dicts covering the
    model's parameters, e.g. from :func:`dlforge.train.transfer.param_groups`) gives
    parts of the model their own learning rates; schedules scale each group's rate.
    ``tbptt`` (``k`` or ``(k1, k2)``) trains a stateful sequence model with truncated
    backpropagation through time (see :mod:`dlforge.train.tbptt`).
    ``augment(x, y) -> (x, y)`` transforms each training batch on the model's device
    (it may return soft labels (B, C), e.g. mixup). ``order(n, seed, epoch)`` gives the
    indices an epoch visits (default :func:`epoch_permutation`); it must be a pure
    function of its arguments so a resumed run sees the same data, and may repeat
    indices (a class-balanced sampler). ``compile`` (True: inductor, or a backend name) runs
    the training forward through ``torch.compile``; ``model`` stays the plain module for
    checkpoints and evaluation (see :mod:`dlforge.train.compiling`).
    ``distributed`` is this process's place in a data-parallel run (default: read from
    torchrun's environment; a world of one without it). ``reshard`` lets ``resume`` continue
    a checkpoint written by a different number of processes, re-sharding the epoch's order
    from the global batch it reached (noted in the history); without it that resume is refused.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(32, 3), torch.randint(0, 2, (32,)))
        >>> fit(torch.nn.Linear(3, 2), data, epochs=1, batch_size=8).steps
        4
    """
    cfg = as_optim_config(optim)
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision is {precision!r}", hint=f"use one of: {', '.join(PRECISIONS)}")
    if epochs < 1 or batch_size < 1 or accumulate < 1:
        raise ConfigError("train.epochs, train.batch_size and train.accumulate must be at least 1")
    if len(train) == 0:
        raise DataError("the training set is empty", hint="check data.split and the data source")
    device = select_device(device)
    dist = distributed or Distributed.from_env(device)
    if dist.active and device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if dist.active and tbptt is not None:
        raise ConfigError("train.tbptt is not supported with more than one process", hint="train with --nproc 1")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device", hint="use bf16 on the CPU")
    _check_finite_data(train, "training")
    _check_finite_data(val, "validation")

    seed_everything(seed)
    model.to(device)
    ddp = dist.wrap(model)  # DistributedDataParallel when several processes train, else model itself
    forward = compiled_forward(ddp, compile)  # ddp itself when compile is off
    train, val = _on_device(train, device), _on_device(val, device)
    global_batch = epoch_batch_size(cfg, len(train), batch_size)
    if global_batch == len(train) and cfg.name == "gd":  # full batch: every sample the ranks share
        global_batch -= len(train) % dist.world
    batch_size = per_rank_batch(global_batch, dist.world)  # global_batch itself in a world of one
    order = order or epoch_permutation

    def epoch_visits(epoch: int, from_batch: int) -> torch.Tensor:
        """This rank's visits in ``epoch`` from global batch ``from_batch`` on."""
        return rank_order(order(len(train), seed, epoch)[from_batch * global_batch :], dist.rank, dist.world)

    n_visits = len(epoch_visits(0, 0))  # this rank's samples per epoch (a sampler may draw more or fewer)
    fold = fold_single_batch(model, n_visits, batch_size)  # batch norm cannot train on a last batch of one
    batches_per_epoch = math.ceil(n_visits / batch_size) - int(fold)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    window = None if tbptt is None else as_window(tbptt)
    if window is not None:
        x0, y0 = train[0][0][None], torch.as_tensor(train[0][1])[None]  # one sample, batched
        check_tbptt(model, x0, accumulate)
        steps_per_epoch = batches_per_epoch * updates_per_sequence(x0.shape[1], window[0], per_step_targets(x0, y0))
    targets = train[0][1] if not isinstance(train, TensorDataset) else train.tensors[1]
    loss_fn = build_loss(loss, targets=torch.as_tensor(targets))
    classify = not torch.is_floating_point(torch.as_tensor(targets))
    if param_groups is None and cfg.param_groups:
        param_groups = transfer.param_groups(model, cfg.lr, cfg.param_groups)
    optimizer = build_optimizer(model.parameters() if param_groups is None else param_groups, cfg)
    if not dist.main:  # writers and printers run on rank 0 alone; a stand-in keeps the positions
        callbacks = [Callback() if cb.main_only else cb for cb in callbacks]
    state = TrainState(
        model=model, optimizer=optimizer, scheduler=Scheduler(optimizer, cfg, steps_per_epoch, epochs),
        device=device, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=list(callbacks),
        scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None, dist=dist,
    )
    if resume is not None:
        state.restore(load_state(find_last_checkpoint(resume)), reshard=reshard)
    params = list(model.parameters())  # all of them: clipping skips those without a gradient (frozen)

    try:
        for cb in state.callbacks:
            cb.on_fit_start(state)
        while state.epoch < epochs and not state.should_stop:
            model.train()
            if state.batch_in_epoch == 0:
                zero = torch.zeros((), device=device)
                state.totals = {"loss_sum": zero, "correct": zero.clone(), "counted": zero.clone(), "count": 0,
                                "start": time.time()}
                for cb in state.callbacks:
                    cb.on_epoch_start(state)
            visits = epoch_visits(state.epoch, state.batch_in_epoch)
            for xb, yb in iterate_batches(train, visits, batch_size, device, fold_single=fold):
                state.batch_in_epoch += 1
                steps_now = state.batch_in_epoch % accumulate == 0 or state.batch_in_epoch >= batches_per_epoch
                if augment is not None:
                    xb, yb = augment(xb, yb)
                if window is None:  # DDP averages the gradients only on the batch that steps
                    with _autocast(device, precision), grad_sync(ddp, steps_now):
                        pieces: Iterable[tuple[torch.Tensor, torch.Tensor]] = [(forward(xb), yb)]
                else:  # truncated BPTT: one optimizer step per window of the sequence
                    pieces = tbptt_windows(model, xb, yb, *window, lambda: _autocast(device, precision))
                for out, target in pieces:
                    if (state.batch_in_epoch - 1) % accumulate == 0:
                        log_step = state.step % log_every_n_steps == 0
                        state.step_record = {"type": "step", "step": state.step, "epoch": state.epoch} if log_step else None
                    with _autocast(device, precision):
                        loss_value = supervised_loss(loss_fn, out, target)
                    if isinstance(out, tuple):  # deep supervision: metrics read the main output
                        out = out[0]
                    total = loss_value + cfg.l1 * _l1_penalty(model) if cfg.l1 else loss_value
                    if accumulate > 1:  # the mean over the batches this step sums (fewer at the epoch's end)
                        total = total / _group_size(state.batch_in_epoch, accumulate, batches_per_epoch)
                    (state.scaler.scale(total) if state.scaler else total).backward()
                    state.loss, state.batch = loss_value.detach(), (xb, yb)
                    state.totals["loss_sum"].add_(state.loss.float(), alpha=len(target))
                    state.totals["count"] += len(target)
                    if classify:
                        hits, counted = count_correct(out.detach(), target)
                        state.totals["correct"] += hits
                        state.totals["counted"] += counted
                    if not steps_now:
                        continue  # keep accumulating gradients
                    if not _optimizer_step(state, params, clip_grad_norm, clip_grad_value):
                        break  # a guard refused this step; the weights stay as they were
                if state.should_stop:
                    break
            if state.stop_reason == "non_finite":
                break
            if state.batch_in_epoch < batches_per_epoch:
                break  # a callback stopped mid-epoch

            # end of epoch: validate, let callbacks react, log, then checkpoint
            loss_sum, correct, counted, count = dist.all_sum(state.epoch_sums()).tolist()  # over the ranks
            metrics: dict[str, Any] = {"train_loss": loss_sum / max(count, 1)}
            if classify:
                metrics["train_accuracy"] = correct / max(counted, 1)
            if val is not None and len(val):
                for k, v in evaluate_loss(model, val, loss_fn, batch_size=max(batch_size, 256), device=device,
                                          precision=precision, distributed=dist).items():
                    metrics[f"val_{k}"] = v
            metrics["lr"] = state.scheduler.lr
            for cb in state.callbacks:
                cb.on_validation_end(state, metrics)
            if dist.any(state.should_stop):  # the ranks stop together
                state.should_stop, state.stop_reason = True, state.stop_reason or "stopped_by_another_rank"
            state.scheduler.step_epoch(metrics)
            record = {"type": "epoch", "epoch": state.epoch, **metrics, "time": time.time() - state.totals["start"]}
            state.epoch += 1
            state.batch_in_epoch = 0
            state.log(record)
            for cb in state.callbacks:
                cb.on_epoch_end(state)

        for cb in state.callbacks:
            cb.on_fit_end(state)
    except BaseException as err:
        for cb in state.callbacks:
            cb.on_exception(state, err)
        raise
    best_epoch = next((cb.best_epoch for cb in state.callbacks if getattr(cb, "best_epoch", None) is not None), None)
    return FitResult(
        history=state.history, epochs_run=state.epoch, steps=state.step, stop_reason=state.stop_reason,
        nan_report=state.nan_report, best_epoch=best_epoch,
    )
