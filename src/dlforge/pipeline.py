"""A run from a config: data -> model -> fit -> artifact, in a run directory.

This is what ``dlforge train`` does, callable from Python::

    runs/<name>-<time>/
      config.yaml       the resolved config (every default written out)
      history.jsonl     one line per epoch and per logged step
      checkpoints/      resumable training state (safetensors)
      model/            the artifact: model.json + model.safetensors
      metrics.json      validation and test metrics
      evaluation.json   every metric, the confusion matrix, ROC/PR curves (held-out split)
      diagnosis.json    what went wrong in training, with evidence and a fix
      report.html       one self-contained page with all of the above

Every input error (config, data, labels that don't fit the model) is raised before the
run directory exists, so a failed start leaves nothing behind.

Example:
    >>> from dlforge.config import load_config
    >>> outcome = train_run(load_config("examples/digits_cnn.yaml"))  # doctest: +SKIP
    >>> outcome.test_metrics["test_accuracy"]  # doctest: +SKIP
    0.98
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from dlforge.config import RunConfig, load_config, to_yaml
from dlforge.data import Prepared, encode_array, load_source, prepare
from dlforge.data.catalog import builtin_names
from dlforge.errors import ConfigError, DataError, DlforgeError
from dlforge.evaluate import Evaluation, evaluate
from dlforge.evaluate.report import write_report
from dlforge.models import build
from dlforge.registry import load_artifact, save_artifact
from dlforge.train import (
    Checkpoint, EarlyStopping, FitResult, GradientMonitor, HistoryWriter, NanGuard, ProgressBar,
    evaluate_loss, fit, resolve_loss, seed_everything,
)
from dlforge.train.health import Diagnosis, dead_relu_fraction, diagnose, weight_layer_names
from dlforge.train.state_io import atomic_write


@dataclass
class RunOutcome:
    """What a finished run produced."""

    run_dir: Path
    result: FitResult
    metrics: dict[str, float]
    prepared: Prepared
    model: nn.Module
    evaluation: Evaluation | None = None
    diagnoses: list[Diagnosis] = field(default_factory=list)

    @property
    def artifact_dir(self) -> Path:
        return self.run_dir / "model"


def load_data(cfg: RunConfig) -> Prepared:
    """Load and split the configured data; normalisation statistics come from train only."""
    d = cfg.data
    bundle = load_source(
        d.source, target=d.target, task=d.task, categorical=d.categorical, image_size=d.image_size,
        color=d.color, n_samples=d.n_samples, noise=d.noise, seed=cfg.seed,
    )
    return prepare(bundle, val=d.split.val, test=d.split.test, stratify=d.split.stratify,
                   seed=cfg.seed, standardize=d.standardize)


def build_model(cfg: RunConfig, prepared: Prepared) -> nn.Module:
    """The configured model, its input and output sizes taken from the data."""
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    return build(cfg.model, input_shape=prepared.input_shape, num_outputs=prepared.num_outputs)


def _check_monitors(cfg: RunConfig, prepared: Prepared) -> None:
    """Fail now, not after the first epoch, when a monitored metric will never exist."""
    available = {"train_loss", "lr"}
    if prepared.task == "classification":
        available.add("train_accuracy")
    if prepared.val is not None:
        available |= {m.replace("train_", "val_") for m in available if m.startswith("train_")}
    watched: dict[str, str | None] = {}
    if "monitor" in cfg.train.checkpoint.model_fields_set or prepared.val is not None:
        watched["train.checkpoint.monitor"] = cfg.train.checkpoint.monitor
    if cfg.train.early_stopping:
        watched["train.early_stopping.monitor"] = cfg.train.early_stopping.monitor
    if cfg.optim.schedule.name == "plateau":
        watched["optim.schedule.monitor"] = cfg.optim.schedule.monitor
    for key, metric in watched.items():
        if metric is not None and metric not in available:
            hint = "set data.split.val above 0 for val_* metrics; " if metric.startswith("val_") else ""
            raise ConfigError(f"{key} is {metric!r}, which this run will not log",
                              hint=f"{hint}available: {', '.join(sorted(available - {'lr'}))}")


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = runs_dir / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory in {runs_dir}")


def _callbacks(cfg: RunConfig, run_dir: Path, stream: TextIO | None) -> list:
    t = cfg.train
    callbacks: list = [ProgressBar(stream=stream)] if stream is not None else []
    if t.nan_guard:
        callbacks.append(NanGuard())
    if t.gradient_monitor:
        callbacks.append(GradientMonitor())
    if t.early_stopping:
        es = t.early_stopping
        callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best_weights))
    c = t.checkpoint
    # Without a validation split the default val_loss monitor does not exist: keep no "best".
    monitor = c.monitor if (cfg.data.split.val > 0 or "monitor" in c.model_fields_set) else None
    callbacks.append(Checkpoint(run_dir / "checkpoints", c.every_n_epochs, c.every_n_steps, c.keep_last, monitor))
    callbacks.append(HistoryWriter(run_dir / "history.jsonl"))
    return callbacks


def train_run(
    cfg: RunConfig, *, runs_dir: str | Path = "runs", resume: str | Path | None = None,
    progress: TextIO | None = None,
) -> RunOutcome:
    """Train the run ``cfg`` describes; ``resume`` continues the run directory given.

    ``progress`` is a stream for the progress bar / epoch lines (None: silent).
    """
    prepared = load_data(cfg)
    model = build_model(cfg, prepared)
    _check_monitors(cfg, prepared)
    resume_dir = Path(resume) if resume is not None else None
    run_dir = resume_dir or _new_run_dir(Path(runs_dir), cfg.name)
    try:
        atomic_write(run_dir / "config.yaml", to_yaml(cfg).encode())
        t = cfg.train
        result = fit(
            model, prepared.train, prepared.val, epochs=t.epochs, batch_size=t.batch_size, optim=cfg.optim,
            loss=t.loss, clip_grad_norm=t.clip_grad_norm, clip_grad_value=t.clip_grad_value,
            accumulate=t.accumulate, precision=t.precision, device=t.device, seed=cfg.seed,
            callbacks=_callbacks(cfg, run_dir, progress), log_every_n_steps=t.log_every_n_steps,
            resume=resume_dir,
        )
    except DlforgeError:
        if resume_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # an input error: leave nothing behind
        raise
    return _finish_run(cfg, run_dir, model, prepared, result)


def _finish_run(cfg: RunConfig, run_dir: Path, model: nn.Module, prepared: Prepared, result: FitResult) -> RunOutcome:
    """Evaluate, diagnose, save the artifact and write the report of a trained run."""
    t = cfg.train
    loss_fn = resolve_loss(t.loss, prepared.train.tensors[1])
    metrics: dict[str, float] = {k: v for k, v in result.final.items() if k.startswith("val_")}
    evaluation = None
    held_out, prefix = (prepared.test, "test_") if prepared.test is not None else (prepared.val, "val_")
    if held_out is not None and len(held_out) and result.stop_reason != "non_finite":
        metrics.update({f"{prefix}{k}": v for k, v in
                        evaluate_loss(model, held_out, loss_fn, precision=t.precision).items()})
        evaluation = evaluate(model, held_out, task=prepared.task, class_names=prepared.class_names)
        metrics.update({f"{prefix}{k}": v for k, v in evaluation.metrics.items() if k != "n"})
        _write_json(run_dir / "evaluation.json", {"split": prefix.rstrip("_"), **evaluation.to_dict()})
    if result.nan_report:
        _write_json(run_dir / "nan_report.json", result.nan_report)
    device = next(model.parameters()).device
    dead = dead_relu_fraction(model, prepared.train.tensors[0][:512].to(device))
    diagnoses = diagnose(result.history, nan_report=result.nan_report, dead_units=dead,
                         weight_names=weight_layer_names(model))
    _write_json(run_dir / "diagnosis.json", [d.to_dict() for d in diagnoses])
    training: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"), "epochs_run": result.epochs_run, "steps": result.steps,
        "stop_reason": result.stop_reason, "best_epoch": result.best_epoch, "data": prepared.name,
    }
    save_artifact(model, run_dir / "model", task=prepared.task, class_names=prepared.class_names,
                  preprocessing=prepared.preprocessing, metrics=metrics, training=training, overwrite=True)
    _write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir)
    return RunOutcome(run_dir=run_dir, result=result, metrics=metrics, prepared=prepared, model=model,
                      evaluation=evaluation, diagnoses=diagnoses)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def _locate(path: Path) -> tuple[Path | None, Path]:
    """(run directory or None, artifact folder) for a run directory or an artifact folder."""
    if (path / "model" / "model.json").is_file():
        return path, path / "model"
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        return path.parent, path
    return None, path


def _labels_for(art: Any, bundle: Any) -> torch.Tensor:
    """The bundle's targets as the model's class indices, matched by class name."""
    if art.task != "classification":
        return torch.as_tensor(bundle.y)
    index = {name: i for i, name in enumerate(art.class_names or [])}
    unknown = [name for name in bundle.class_names or [] if name not in index]
    if unknown or bundle.task != "classification":
        raise DataError(f"the data's labels {unknown[:5] or bundle.task} are not classes of this model",
                        hint=f"evaluate on data labelled with the model's classes: {', '.join(index)}")
    lookup = np.array([index[name] for name in bundle.class_names])
    return torch.as_tensor(lookup[bundle.y])


def evaluate_path(path: str | Path, *, data: str | None = None, target: str | None = None) -> tuple[Evaluation, Path | None]:
    """Evaluate the model in a run directory or artifact folder.

    Without ``data`` a run directory is evaluated on its own test split (the same split
    training used: it is seeded). With ``data`` (a built-in name, CSV, image folder or IDX
    files) labels are matched to the model's classes by name. For a run directory,
    ``evaluation.json`` and ``report.html`` are rewritten.
    """
    run_dir, art_dir = _locate(Path(path))
    art = load_artifact(art_dir)
    if data is not None:
        encoding = art.preprocessing.get("encoding", {})
        if encoding.get("kind") == "image" and not data.endswith(".csv"):
            size, color = encoding["size"], "grayscale" if encoding["mode"] == "L" else "rgb"
            bundle = load_source(data, image_size=None if data in builtin_names() else size,
                                 color="grayscale" if data in builtin_names() else color)
            x = encode_array(bundle.x, art.preprocessing)
        else:
            bundle = load_source(data, target=target)
            x = art.encode(data) if str(data).endswith(".csv") else encode_array(bundle.x, art.preprocessing)
        held_out = (x, _labels_for(art, bundle))
    elif run_dir is not None:
        prepared = load_data(load_config(run_dir / "config.yaml"))
        held_out = prepared.test if prepared.test is not None else prepared.val
        if held_out is None:
            raise DataError("this run kept no test or validation split", hint="pass --data to evaluate on other data")
    else:
        raise DataError(f"{path} is an artifact folder without its run", hint="pass --data to say what to evaluate on")
    evaluation = evaluate(art, held_out)
    if run_dir is None:
        return evaluation, None
    _write_json(run_dir / "evaluation.json", {"split": "test" if data is None else str(data), **evaluation.to_dict()})
    return evaluation, write_report(run_dir)
