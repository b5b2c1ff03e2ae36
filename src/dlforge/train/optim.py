"""Optimizers and learning-rate schedules, configured by name.

Optimizers: ``gd`` (full-batch gradient descent: plain SGD on one batch holding the whole
training set), ``sgd``, ``momentum`` (heavy ball, or Nesterov with ``nesterov=True``),
``adam``, ``adamw`` (decoupled weight decay) and ``rmsprop``. ``weight_decay`` is the L2
penalty (coupled into the gradient for every optimizer but AdamW, as in PyTorch); ``l1``
adds ``l1 * sum(|w|)`` over weight matrices and kernels to the loss (see the engine).

``fused`` picks the update kernel: ``auto`` (default) uses the fused kernel for
sgd/momentum/adam/adamw when every parameter is on CUDA, and otherwise what torch picks
(foreach on accelerators, the per-parameter loop on the CPU, so CPU results are bit for
bit those of ``fused: false``); ``true`` forces fused (an error where torch has none);
``false`` forces the plain per-parameter loop.

Schedules are stepped after every optimizer step, except ``plateau`` which reacts to a
validation metric once per epoch. Each may start with a linear warmup.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 2)
    >>> cfg = OptimConfig(name="adamw", lr=1e-3, schedule={"name": "cosine", "warmup_epochs": 1})
    >>> opt = build_optimizer(model.parameters(), cfg)
    >>> sched = Scheduler(opt, cfg, steps_per_epoch=10, epochs=5)
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from dlforge.errors import ConfigError

OPTIMIZERS = ("gd", "sgd", "momentum", "adam", "adamw", "rmsprop")
FUSED = ("gd", "sgd", "momentum", "adam", "adamw")  # torch has fused kernels for these
SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")


class ScheduleConfig(BaseModel):
    """Learning-rate schedule; ``warmup_epochs`` may be fractional."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["constant", "step", "cosine", "onecycle", "plateau"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step: decay factor")
    min_lr: float = Field(0.0, ge=0, description="cosine: final learning rate")
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: rising fraction")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau: decay factor")
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement")
    monitor: str = Field("val_loss", description="plateau: metric to watch")
    mode: Literal["min", "max"] = "min"


class OptimConfig(BaseModel):
    """Optimizer, its hyperparameters, regularisation and schedule."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["gd", "sgd", "momentum", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum and rmsprop")
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    alpha: float = Field(0.99, gt=0, lt=1, description="rmsprop smoothing constant")
    weight_decay: float = Field(0.0, ge=0, description="L2 (decoupled for adamw)")
    l1: float = Field(0.0, ge=0, description="L1 penalty added to the loss")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    fused: Literal["auto"] | bool = Field("auto", description="auto: fused on CUDA; true: always; false: never")
    # Discriminative learning rates: [{pattern: "bert.embeddings.*", lr_mult: 0.1}, ...];
    # the first matching pattern wins (see dlforge.train.transfer.param_groups).
    param_groups: list[dict[str, Any]] = Field(default_factory=list)


def as_optim_config(optim: str | dict | OptimConfig) -> OptimConfig:
    """Accept ``"adam"``, ``{"name": "sgd", "lr": 0.1}`` or an :class:`OptimConfig`."""
    if isinstance(optim, OptimConfig):
        return optim
    if isinstance(optim, str):
        return OptimConfig(name=optim)
    return OptimConfig.model_validate(optim)


def kernel_options(cfg: OptimConfig, params: Sequence[torch.Tensor]) -> dict[str, bool]:
    """The ``fused`` / ``foreach`` arguments ``cfg.fused`` asks for, given where ``params`` live.

    Example:
        >>> kernel_options(OptimConfig(name="adam"), [torch.zeros(2)])  # auto on the CPU: torch's default
        {}
        >>> kernel_options(OptimConfig(name="adam", fused=False), [torch.zeros(2)])
        {'foreach': False, 'fused': False}
    """
    if cfg.fused is False:
        return {"foreach": False, "fused": False} if cfg.name in FUSED else {"foreach": False}
    devices = {p.device.type for p in params}
    if cfg.fused == "auto":
        return {"fused": True} if cfg.name in FUSED and devices == {"cuda"} else {}
    if cfg.name not in FUSED:
        raise ConfigError(f"optim.fused is true, but torch has no fused {cfg.name} kernel",
                          hint=f"use fused: auto (or false), or one of: {', '.join(FUSED)}")
    unsupported = devices - set(_get_fused_kernels_supported_devices())
    if unsupported or any(not torch.is_floating_point(p) for p in params):
        raise ConfigError(f"optim.fused is true, but torch has no fused kernel for parameters on "
                          f"{', '.join(sorted(unsupported)) or 'these devices'}",
                          hint="use fused: auto, which falls back to what torch supports")
    return {"fused": True}


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
                    cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the PyTorch optimizer named by ``cfg.name`` (with the kernel ``cfg.fused`` picks)."""
    params = list(params)  # parameters, or torch-style param group dicts
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    wd, kernel = cfg.weight_decay, kernel_options(cfg, tensors)
    if cfg.name in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=wd, **kernel)
    if cfg.name == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd,
                               **kernel)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd, **kernel)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd, **kernel)
    if cfg.name == "rmsprop":
        # RMSprop's own momentum defaults to 0; only use it when momentum was asked for.
        momentum = cfg.momentum if "momentum" in cfg.model_fields_set else 0.0
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=momentum,
                                   weight_decay=wd, **kernel)
    raise AssertionError(cfg.name)  # pydantic already restricted the name


def lr_factor(step: int, sched: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base learning rate for the ``step``-th optimizer step (0-based).

    Warmup rises linearly, reaching 1 at the end of warmup: ``(step + 1) / (warmup + 1)``,
    so the very first step already moves the weights.
    """
    warmup = round(sched.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if sched.name == "step":
        return sched.gamma ** ((step // steps_per_epoch) // sched.step_size)
    if sched.name == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0  # constant, and plateau after warmup (ReduceLROnPlateau takes over)


class Scheduler:
    """Drives the learning rate of ``optimizer``: call :meth:`step_batch` after every
    optimizer step and :meth:`step_epoch` after each validation."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> None:
        self.cfg = cfg.schedule
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.onecycle: torch.optim.lr_scheduler.OneCycleLR | None = None
        name = self.cfg.name
        if name == "onecycle":
            # OneCycle has its own warmup phase; a warmup_epochs setting chooses its length.
            pct = self.cfg.pct_start
            if self.cfg.warmup_epochs > 0:
                pct = min(0.99, self.cfg.warmup_epochs * steps_per_epoch / max(1, self.total_steps))
            self.onecycle = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.base_lrs, total_steps=max(2, self.total_steps), pct_start=pct
            )
        else:
            if name == "plateau":
                self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode=self.cfg.mode, factor=self.cfg.factor, patience=self.cfg.patience
                )
            self._apply(0)

    @property
    def warmup_steps(self) -> int:
        return round(self.cfg.warmup_epochs * self.steps_per_epoch)

    def _apply(self, step: int) -> None:
        if self.plateau is not None and step > self.warmup_steps:
            return  # once warmup has handed over, the plateau scheduler owns the learning rate
        f = lr_factor(step, self.cfg, self.steps_per_epoch, self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step_batch(self) -> None:
        self.step_count += 1
        if self.onecycle is not None:
            if self.onecycle.last_epoch + 1 < self.onecycle.total_steps:
                self.onecycle.step()
        else:
            self._apply(self.step_count)

    def step_epoch(self, metrics: dict[str, float]) -> None:
        if self.plateau is None or self.step_count < self.warmup_steps:
            return
        if self.cfg.monitor not in metrics:
            raise ConfigError(
                f"optim.schedule.monitor is {self.cfg.monitor!r}, which is not a logged metric",
                hint=f"pick one of: {', '.join(sorted(metrics))}",
            )
        self.plateau.step(metrics[self.cfg.monitor])

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "lrs": [g["lr"] for g in self.optimizer.param_groups],
            "plateau": self.plateau.state_dict() if self.plateau else None,
            "onecycle": self.onecycle.state_dict() if self.onecycle else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        for group, lr in zip(self.optimizer.param_groups, state["lrs"]):
            group["lr"] = lr
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        if self.onecycle is not None:
            self.onecycle.load_state_dict(state["onecycle"])
