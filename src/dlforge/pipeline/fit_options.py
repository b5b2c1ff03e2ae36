"""The one translation of a run config into a model, ``fit`` arguments and callbacks.

Every command that trains from a config (``dlforge train``, ``cv``, ``learning-curve``,
``tune``, and balanced bagging inside any of them) goes through here, so a config key
means the same thing everywhere:

* :func:`configured_model`: ``model`` (from scratch or ``model.pretrained``), seeded, with
  ``train.freeze`` applied;
* :func:`class_remedies`: ``data.imbalance`` (resampling, balanced sampler) on the
  training set and ``train.loss`` built for it (class weights from the data fit sees);
* :func:`fit_options`: every ``fit`` keyword the config means (loss, augment, order,
  precision, tbptt, clip, accumulate, epochs, batch size, optim with its param groups,
  device, seed, logging);
* :func:`config_callbacks`: early stopping, NaN guard, gradual unfreezing, and, for a
  run directory, the gradient monitor, checkpoints and the history file;
* :func:`check_fit`: everything that would fail later (unlogged monitors, bagging with
  what it cannot do), checked before training starts;
* :func:`fit_config`: all of the above, then ``fit`` (or balanced bagging).

Example:
    >>> from dlforge.config import validate_config
    >>> from dlforge.pipeline.data import load_data
    >>> cfg = validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
    ...                        "train": {"epochs": 1, "device": "cpu", "loss": {"name": "focal"}}})
    >>> prepared = load_data(cfg)
    >>> options = fit_options(cfg, prepared, class_remedies(cfg, prepared))
    >>> type(options["loss"]).__name__, options["epochs"]
    ('FocalLoss', 1)
    >>> model, result = fit_config(cfg, prepared)
    >>> result.epochs_run
    1
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.config import RunConfig, flat_config
from dlforge.data import Prepared
from dlforge.data.augment import BatchAugment, build_augment, resolve_augment
from dlforge.data.seg_dataset import SegBatchAugment, seg_augment
from dlforge.data.imbalance import ResampleReport, balanced_order, class_counts, imbalance_note, resample_dataset
from dlforge.errors import ConfigError
from dlforge.pipeline.bagging import bagging_fit
from dlforge.pipeline.model import build_model
from dlforge.pipeline.seg_data import DEFAULT_SEG_LOSS, seg_pixel_counts
from dlforge.pipeline.seg_limited import ssl_initialise
from dlforge.train import (
    Callback, Checkpoint, EarlyStopping, FitResult, GradientMonitor, HistoryWriter, NanGuard, ProgressBar, fit,
)
from dlforge.train.losses import LossConfig, build_loss
from dlforge.train.trackers import MlflowWriter, TensorBoardWriter, TrackerLogger, check_trackers, report_note, tracker_params
from dlforge.train.transfer import GradualUnfreezing, TransferReport, freeze


def configured_model(cfg: RunConfig, prepared: Prepared, *, seed: int | None = None
                     ) -> tuple[nn.Module, TransferReport | None]:
    """The ``model`` section built for ``prepared`` (initial weights seeded with ``seed``,
    default ``cfg.seed``), self-supervised first when ``train.ssl`` asks (segmentation), with
    ``train.freeze`` applied, and what pretrained weights loaded."""
    model, transfer = build_model(cfg if seed is None else cfg.model_copy(update={"seed": seed}), prepared)
    if cfg.train.ssl is not None:
        if prepared.task != "segmentation":
            raise ConfigError(f"train.ssl pretrains segmentation U-Nets, not {prepared.task} models",
                              hint="remove train.ssl; for text, pretrain with data.task: mlm")
        transfer = ssl_initialise(cfg, model, prepared)
    if cfg.train.freeze:
        freeze(model, cfg.train.freeze)
    return model, transfer


def batch_augment(cfg: RunConfig, prepared: Prepared) -> BatchAugment | None:
    """The training-batch augmentation ``data.augment`` asks for (None: none)."""
    if prepared.task == "segmentation":  # image and mask move together
        config = seg_augment(cfg.data.augment)
        return SegBatchAugment(config) if any(v for k, v in config if k != "image_resample") else None
    resolved = resolve_augment(cfg.data.augment, prepared.name, kind=prepared.kind)
    classes = prepared.num_outputs if prepared.task == "classification" else None
    return build_augment(resolved, prepared.input_shape, classes, stats=prepared.preprocessing.get("standardize"))


@dataclass
class Remedies:
    """How class imbalance is handled in a run: the (resampled) training set, the epoch
    order, the loss, what resampling did, and a note when nothing handles a skew."""

    train: Any
    order: Callable[[int, int, int], torch.Tensor] | None = None
    loss: Any = None
    report: ResampleReport | None = None
    counts: list[int] | None = None  # class counts of the train split, before resampling
    note: str | None = None


def class_remedies(cfg: RunConfig, prepared: Prepared) -> Remedies:
    """Apply ``data.imbalance`` to ``prepared.train`` only and build ``train.loss`` for it."""
    imbalance, loss = cfg.data.imbalance, cfg.train.loss
    train = prepared.train
    if prepared.task == "segmentation":
        if imbalance.active:
            raise ConfigError("data.imbalance resamples whole samples; segmentation balances pixels",
                              hint="remove data.imbalance; use data.foreground (patch oversampling) or a Dice loss")
        counts = seg_pixel_counts(prepared)
        return Remedies(train, loss=build_loss(loss or DEFAULT_SEG_LOSS, counts), counts=counts)
    if prepared.task != "classification":
        if imbalance.active:
            raise ConfigError(f"data.imbalance applies to classification, not {prepared.task}",
                              hint="remove data.imbalance")
        targets = train.tensors[1] if isinstance(train, TensorDataset) else None
        return Remedies(train, loss=build_loss(loss, targets=targets))
    K = prepared.num_outputs
    counts = class_counts(train.tensors[1], K)
    report = None
    if imbalance.method != "none":
        train, report = resample_dataset(train, imbalance, cfg.data_seed, n_classes=K)
    order = balanced_order(train.tensors[1]) if imbalance.sampler == "balanced" else None
    # Weights come from the data fit() sees, so resampling and weighting do not correct twice.
    loss_fn = build_loss(loss or "cross_entropy", class_counts(train.tensors[1], K))
    reweighted = loss == "focal" or (isinstance(loss, LossConfig) and (loss.name == "focal" or loss.class_weights != "none"))
    note = None if (imbalance.active or reweighted) else imbalance_note(counts, prepared.class_names)
    return Remedies(train, order, loss_fn, report, counts, note)


def fit_options(cfg: RunConfig, prepared: Prepared, remedies: Remedies, *, seed: int | None = None) -> dict[str, Any]:
    """Every keyword of :func:`dlforge.train.fit` that ``cfg`` means, for training on
    ``remedies.train`` (callbacks and ``resume`` aside). ``optim`` carries
    ``optim.param_groups``, which ``fit`` turns into parameter groups.

    Example:
        >>> options = fit_options(cfg, prepared, class_remedies(cfg, prepared), seed=3)  # doctest: +SKIP
        >>> fit(model, remedies.train, prepared.val, callbacks=config_callbacks(cfg, has_val=True), **options)  # doctest: +SKIP
    """
    t = cfg.train
    return dict(
        epochs=t.epochs, batch_size=t.batch_size, optim=cfg.optim, loss=remedies.loss,
        clip_grad_norm=t.clip_grad_norm, clip_grad_value=t.clip_grad_value, accumulate=t.accumulate,
        precision=t.precision, device=t.device, seed=cfg.seed if seed is None else seed,
        log_every_n_steps=t.log_every_n_steps, tbptt=t.tbptt, augment=batch_augment(cfg, prepared),
        order=remedies.order, compile=t.compile,
    )


def config_callbacks(cfg: RunConfig, *, has_val: bool, run_dir: Path | None = None,
                     progress: TextIO | None = None) -> list[Callback]:
    """The callbacks ``train`` asks for. The gradient monitor, checkpoints and the history
    file record into ``run_dir``; without one (cv, learning curves) there is nothing to
    record them in, so they are left out.

    Example:
        >>> from dlforge.config import validate_config
        >>> cfg = validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp"}})
        >>> [type(c).__name__ for c in config_callbacks(cfg, has_val=True)]
        ['NanGuard', 'EarlyStopping']
    """
    t = cfg.train
    callbacks: list[Callback] = [ProgressBar(stream=progress)] if progress is not None else []
    if t.unfreeze_stages:
        callbacks.append(GradualUnfreezing(t.unfreeze_stages, every_n_epochs=t.unfreeze_every))
    if t.nan_guard:
        callbacks.append(NanGuard())
    if t.gradient_monitor and run_dir is not None:
        callbacks.append(GradientMonitor())
    es = t.stopping(has_val)
    if es is not None:
        callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best_weights))
    if run_dir is not None:
        c = t.checkpoint
        # Without a validation split the default val_loss monitor does not exist: keep no "best".
        monitor = c.monitor if (has_val or "monitor" in c.model_fields_set) else None
        callbacks.append(Checkpoint(run_dir / "checkpoints", c.every_n_epochs, c.every_n_steps, c.keep_last, monitor))
        callbacks.append(HistoryWriter(run_dir / "history.jsonl"))
        if t.log_to:
            callbacks.append(tracker_logger(cfg, run_dir, progress))
    return callbacks


def tracker_logger(cfg: RunConfig, run_dir: Path, progress: TextIO | None = None) -> TrackerLogger:
    """``train.log_to``: TensorBoard into ``run_dir/tensorboard``, MLflow as a run named after
    ``run_dir`` whose id goes to ``run_dir/trackers.json``. The MLflow run stays open after
    fit: :func:`finish_trackers` adds the report and the artifact, then closes it."""
    writers = [TensorBoardWriter(run_dir / "tensorboard") if name == "tensorboard" else
               MlflowWriter(cfg.train.mlflow_uri, experiment=cfg.name, record_to=run_dir / "trackers.json")
               for name in cfg.train.log_to]
    return TrackerLogger(writers, run_name=run_dir.name, params=tracker_params(flat_config(cfg.model_dump(mode="json"))),
                         stream=progress, end_run=False)


def finish_trackers(run_dir: Path, status: str = "FINISHED", progress: TextIO | None = None) -> None:
    """Close the MLflow run ``train.log_to`` opened for ``run_dir`` (if any) with ``status``,
    after logging ``report.html``, ``metrics.json`` and ``model/``; a failure is a note."""
    try:
        entry = json.loads((run_dir / "trackers.json").read_text(encoding="utf-8"))["mlflow"]
    except (OSError, ValueError, KeyError):
        return  # no MLflow run was opened (not asked for, or it failed and was reported)
    if entry.get("failed"):
        return  # reported once already
    try:
        writer = MlflowWriter.attach(entry["uri"], entry["run_id"])
        if status == "FINISHED":
            writer.log_artifacts(run_dir)
        writer.close(status)
    except Exception as err:  # noqa: BLE001 - a tracker never fails a finished run
        report_note(f"mlflow logging failed ({type(err).__name__}: {err}); the run itself is complete", progress)


def _check_monitors(cfg: RunConfig, prepared: Prepared, checkpoints: bool) -> None:
    """Fail now, not after the first epoch, when a monitored metric will never exist."""
    available = {"train_loss", "lr"}
    if prepared.task in ("classification", "segmentation"):  # segmentation: per-pixel accuracy
        available.add("train_accuracy")
    if prepared.val is not None:
        available |= {m.replace("train_", "val_") for m in available if m.startswith("train_")}
    watched: dict[str, str | None] = {}
    if checkpoints and ("monitor" in cfg.train.checkpoint.model_fields_set or prepared.val is not None):
        watched["train.checkpoint.monitor"] = cfg.train.checkpoint.monitor
    stopping = cfg.train.stopping(prepared.val is not None)
    if stopping:
        watched["train.early_stopping.monitor"] = stopping.monitor
    if cfg.optim.schedule.name == "plateau":
        watched["optim.schedule.monitor"] = cfg.optim.schedule.monitor
    for key, metric in watched.items():
        if metric is not None and metric not in available:
            hint = "set data.split.val above 0 for val_* metrics; " if metric.startswith("val_") else ""
            raise ConfigError(f"{key} is {metric!r}, which this run will not log",
                              hint=f"{hint}available: {', '.join(sorted(available - {'lr'}))}")


def _check_bagging(cfg: RunConfig, resume: bool, callbacks: Sequence[Callback]) -> None:
    """What ``data.imbalance.bagging`` (k members trained one after another) cannot do."""
    if not cfg.data.imbalance.bagging:
        return
    if resume or cfg.model.get("pretrained") is not None:
        raise ConfigError("data.imbalance.bagging trains fresh members: it cannot resume or start from model.pretrained",
                          hint="remove data.imbalance.bagging, or model.pretrained / the resume")
    if cfg.data.imbalance.sampler == "balanced":
        raise ConfigError("data.imbalance.sampler balanced does nothing with bagging: every member already "
                          "trains on a class-balanced under-sample", hint="remove one of them")
    loss = cfg.train.loss
    if isinstance(loss, LossConfig) and loss.class_weights != "none":
        raise ConfigError("train.loss.class_weights with data.imbalance.bagging would correct the imbalance twice: "
                          "every member trains on balanced classes", hint="set class_weights: none, or drop bagging")
    if callbacks:
        raise ConfigError("data.imbalance.bagging trains its members one after another, so there is no single "
                          "training to follow with extra callbacks (e.g. a tuner's pruner)",
                          hint="remove data.imbalance.bagging, or train without the extra callbacks "
                          "(for dlforge tune: tune.pruner: none)")


def check_fit(cfg: RunConfig, prepared: Prepared, *, checkpoints: bool = False, resume: bool = False,
              callbacks: Sequence[Callback] = ()) -> None:
    """Raise the ConfigError training ``cfg`` on ``prepared`` would hit later, now.
    ``checkpoints``: the run keeps checkpoints (a run directory); ``callbacks``: extra ones."""
    _check_monitors(cfg, prepared, checkpoints)
    check_trackers(cfg.train.log_to)  # a missing extra fails before a run directory exists
    _check_bagging(cfg, resume, callbacks)


def fit_config(
    cfg: RunConfig, prepared: Prepared, *, model: nn.Module | None = None, seed: int | None = None,
    remedies: Remedies | None = None, callbacks: Sequence[Callback] = (), run_dir: Path | None = None,
    progress: TextIO | None = None, resume: Path | None = None, reshard: bool = False,
) -> tuple[nn.Module, FitResult]:
    """Train as ``cfg`` says on ``prepared.train``, validating on ``prepared.val``.

    ``model`` defaults to :func:`configured_model` with ``seed`` (default ``cfg.seed``,
    which also seeds the batch order); ``remedies`` to :func:`class_remedies`.
    ``callbacks`` are added to the configured ones; ``run_dir`` and ``progress`` as in
    :func:`config_callbacks`. Returns the trained model (under ``data.imbalance.bagging``
    the ensemble of its members, whose fit results are summed up in one with no history)
    and the fit result.
    """
    check_fit(cfg, prepared, checkpoints=run_dir is not None, resume=resume is not None, callbacks=callbacks)
    remedies = remedies or class_remedies(cfg, prepared)
    options = fit_options(cfg, prepared, remedies, seed=seed)
    has_val = prepared.val is not None
    if cfg.data.imbalance.bagging:
        return _bagging(cfg, prepared, remedies.train, options)
    if model is None:
        model, _ = configured_model(cfg, prepared, seed=seed)
    callbacks = [*config_callbacks(cfg, has_val=has_val, run_dir=run_dir, progress=progress), *callbacks]
    return model, fit(model, remedies.train, prepared.val, callbacks=callbacks, resume=resume, reshard=reshard,
                      **options)


def _bagging(cfg: RunConfig, prepared: Prepared, train: Dataset, options: dict[str, Any]) -> tuple[nn.Module, FitResult]:
    """``data.imbalance.bagging``: k members on balanced under-samples, as their ensemble.
    Each member gets the config's model, fit options and (fresh) callbacks."""
    def member() -> nn.Module:
        # balanced_bagging seeds the global generator with seed + i before building member i
        return configured_model(cfg, prepared, seed=torch.initial_seed())[0]

    kwargs = {k: v for k, v in options.items() if k not in ("seed", "order")}  # bagging sets them per member
    has_val = prepared.val is not None
    return bagging_fit(member, train, prepared.val, k=cfg.data.imbalance.bagging, fit_kwargs=kwargs,
                       seed=options["seed"], callbacks=lambda i: config_callbacks(cfg, has_val=has_val))
