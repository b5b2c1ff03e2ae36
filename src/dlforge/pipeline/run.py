"""Train, evaluate and save one run: what ``dlforge train`` does, callable from Python::

    runs/<name>-<time>/
      config.yaml       the resolved config (every default written out)
      history.jsonl     one line per epoch and per logged step
      checkpoints/      resumable training state (safetensors)
      model/            the artifact: model.json + model.safetensors
      split.json        the 0-based source row indices of the train/val/test splits
      metrics.json      validation (with val_epoch, the epoch they come from) and test metrics,
                        in the target's units (``*_loss`` is the training loss: on the
                        standardised target for regression)
      baselines.json    majority class / training mean (and, for tables, gradient boosting and a
                        linear model) on the same split, beside the model's numbers
      forecast.json     time series only: the forecast against actual values and naive baselines
      evaluation.json   every metric, the confusion matrix, ROC/PR curves (held-out split)
      diagnosis.json    what went wrong in training, with evidence and a fix
      report.html       one self-contained page with all of the above
      tensorboard/      with train.log_to: [tensorboard]: the history as TensorBoard events
      trackers.json     with train.log_to: [mlflow]: the MLflow run's URI and id

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
from typing import Any, Sequence, TextIO

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.config import RunConfig, to_yaml
from dlforge.data import Prepared
from dlforge.data.preprocess import in_target_units
from dlforge.data.timeseries import forecast_evaluation
from dlforge.errors import ConfigError, DlforgeError
from dlforge.evaluate import Evaluation, evaluate
from dlforge.evaluate.baselines import BaselineReport, fit_baselines
from dlforge.evaluate.report import write_report
from dlforge.pipeline.data import load_data, load_forecast, source_family
from dlforge.pipeline.run_meta import finish_run_file, start_training_run
from dlforge.models import spec_of
from dlforge.pipeline.seg_data import SegPrepared
from dlforge.pipeline.seg_eval import SCORE_KEYS, evaluate_segmentation
from dlforge.pipeline.fit_options import (
    Remedies, check_fit, class_remedies, configured_model, finish_trackers, fit_config, fit_options,
)
from dlforge.registry import save_artifact
from dlforge.registry.artifact import Artifact
from dlforge.registry.reference import build_reference
from dlforge.train import Callback, FitResult, batch_notes, evaluate_loss, resolve_loss, select_device
from dlforge.train.distributed import Distributed
from dlforge.train.health import Diagnosis, HeldOutScores, dead_relu_fraction, diagnose, weight_layer_names
from dlforge.train.state_io import atomic_write
from dlforge.train.transfer import TransferReport, trainable_summary


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
    baselines: BaselineReport | None = None
    main: bool = True  # False on the other ranks of a data-parallel run: rank 0 evaluated and wrote

    @property
    def artifact_dir(self) -> Path:
        return self.run_dir / "model"


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A new, empty ``runs_dir/<name>-<time>`` folder (``-2``, ``-3``... when taken)."""
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


def train_run(
    cfg: RunConfig, *, runs_dir: str | Path = "runs", resume: str | Path | None = None,
    progress: TextIO | None = None, callbacks: Sequence[Callback] = (), data: Any = None,
    reshard: bool = False,
) -> RunOutcome:
    """Train the run ``cfg`` describes; ``resume`` continues the run directory given.

    ``progress`` is a stream for the progress bar / epoch lines (None: silent).
    ``callbacks`` are added to the configured ones (e.g. a tuner's pruning callback); a
    callback that stops training early still gets a finished, evaluated run. ``data`` is a
    pandas DataFrame to train on instead of the file ``data.source`` names (it then only
    names the table): ``train_run(validate_config({"data": {"source": "houses", "target":
    "price"}, "model": {"arch": "mlp"}}), data=df)``.

    Started by torchrun (``dlforge train --nproc N``), every rank trains its share and rank 0
    alone creates the run directory, evaluates and writes; the others return an outcome with
    ``main`` False and no metrics. ``reshard`` lets a resume continue on a different number of
    processes (see :func:`~dlforge.train.fit`).
    """
    prepared = load_data(cfg, frame=data)
    model, transfer = configured_model(cfg, prepared)
    remedies = class_remedies(cfg, prepared)
    fit_options(cfg, prepared, remedies)  # config errors (augment, loss) surface here, before a run directory exists
    check_fit(cfg, prepared, checkpoints=True, resume=resume is not None, callbacks=callbacks)
    # An unavailable device, or batch norm on one sample, fails now: before a run directory exists.
    dist = Distributed.from_env(select_device(cfg.train.device))
    if dist.active and cfg.train.unfreeze_stages:
        raise ConfigError("train.unfreeze_stages changes which weights train mid-run, which DistributedDataParallel "
                          "cannot follow", hint="train with --nproc 1, or freeze in one stage")
    progress = progress if dist.main else None
    batching = batch_notes(model, len(remedies.train), cfg.train.batch_size, cfg.optim)
    if progress is not None:
        for note in [*prepared.notes, *([remedies.note] if remedies.note else []), *batching]:
            progress.write(f"note: {note}\n")
    resume_dir = Path(resume) if resume is not None else None
    # Rank 0 makes the run directory; the others learn its name (checkpoints load from it on resume).
    run_dir = resume_dir or Path(dist.broadcast_text(str(new_run_dir(Path(runs_dir), cfg.name)) if dist.main else None))
    try:
        if dist.main:
            atomic_write(run_dir / "config.yaml", to_yaml(cfg).encode())
            start_training_run(run_dir, cfg.data.source, prepared, frame=data)  # run.json, for the run index
        model, result = fit_config(cfg, prepared, model=model, remedies=remedies, callbacks=callbacks,
                                   run_dir=run_dir, progress=progress, resume=resume_dir, reshard=reshard)
        if cfg.data.imbalance.bagging and dist.main:
            atomic_write(run_dir / "history.jsonl", b"")  # the members keep no history of their own
    except DlforgeError:
        if resume_dir is None and dist.main:
            shutil.rmtree(run_dir, ignore_errors=True)  # an input error: leave nothing behind
        elif dist.main:
            finish_run_file(run_dir, status="stopped")
        raise
    except BaseException:  # interrupted or crashed: the index lists it as stopped
        if dist.main:
            finish_run_file(run_dir, status="stopped")
        raise
    if not dist.main:
        dist.close()
        return RunOutcome(run_dir=run_dir, result=result, metrics={}, prepared=prepared, model=model, main=False)
    try:
        outcome = _finish_run(cfg, run_dir, model, prepared, result, transfer, remedies)
    except BaseException:
        finish_trackers(run_dir, "FAILED", progress)  # train.log_to's MLflow run, if any
        raise
    finish_trackers(run_dir, "FINISHED", progress)  # report.html, metrics.json and model/ to MLflow
    finish_run_file(run_dir, stop_reason=result.stop_reason, epochs_run=result.epochs_run)
    dist.close()  # the other ranks wait here until rank 0 has written everything
    return outcome


def first_samples(data: Any, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` training inputs and targets, from a TensorDataset or any Dataset."""
    if isinstance(data, TensorDataset):
        return data.tensors[0][:n], data.tensors[1][:n]
    xs, ys = zip(*(data[i] for i in range(min(n, len(data)))))
    return torch.stack(xs), torch.stack(ys)


def _finish_run(cfg: RunConfig, run_dir: Path, model: nn.Module, prepared: Prepared, result: FitResult,
                transfer: TransferReport | None = None, remedies: Remedies | None = None) -> RunOutcome:
    """Evaluate, diagnose, save the artifact and write the report of a trained run."""
    if isinstance(prepared, SegPrepared):
        return _finish_segmentation(cfg, run_dir, model, prepared, result, transfer, remedies)
    t = cfg.train
    x_sample, y_sample = first_samples(prepared.train)
    loss_fn = resolve_loss(remedies.loss if remedies else t.loss, y_sample)
    metrics = _val_metrics(cfg, result, prepared.val is not None)
    evaluation, baselines = None, None
    held_out, prefix = (prepared.test, "test_") if prepared.test is not None else (prepared.val, "val_")
    if prepared.split_indices is not None:
        atomic_write(run_dir / "split.json", json.dumps(prepared.split_indices).encode())  # one line: long lists
    if held_out is not None and len(held_out) and result.stop_reason != "non_finite":
        # *_loss is the training loss, on the standardised target for regression
        metrics.update({f"{prefix}{k}": v for k, v in
                        evaluate_loss(model, held_out, loss_fn, precision=t.precision).items()})
        if prepared.task != "mlm":  # masked-token loss and accuracy are the whole story there
            scored = in_target_units(held_out, prepared)
            evaluation = evaluate(model, scored, task=prepared.task, class_names=prepared.class_names,
                                  target_standardize=prepared.preprocessing.get("target_standardize"))
            metrics.update({f"{prefix}{k}": v for k, v in evaluation.metrics.items() if k != "n"})
            write_json(run_dir / "evaluation.json", {"split": prefix.rstrip("_"), **evaluation.to_dict()})
            baselines = run_baselines(prepared, scored, prefix.rstrip("_"), evaluation.metrics)
            write_json(run_dir / "baselines.json", baselines.to_dict())
        if source_family(cfg.data) == "series":
            _, context, series = load_forecast(cfg)
            forecast = forecast_evaluation(model, prepared, context, series, split=prefix.rstrip("_"))
            metrics.update({f"{prefix}forecast_{k}": forecast[k] for k in
                            ("mae", "rmse", "seasonal_naive_mae", "last_value_mae", "mae_ratio_vs_seasonal_naive")})
            write_json(run_dir / "forecast.json", forecast)
    if result.nan_report:
        write_json(run_dir / "nan_report.json", result.nan_report)
    device = next(model.parameters()).device
    dead = dead_relu_fraction(model, x_sample.to(device))
    diagnoses = diagnose(result.history, nan_report=result.nan_report, dead_units=dead,
                         weight_names=weight_layer_names(model), scores=_held_out_scores(baselines, prepared))
    write_json(run_dir / "diagnosis.json", [d.to_dict() for d in diagnoses])
    training: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"), "epochs_run": result.epochs_run, "steps": result.steps,
        "stop_reason": result.stop_reason, "best_epoch": result.best_epoch, "data": prepared.name,
        "parameters": trainable_summary(model), "run": run_dir.name,  # the registry links a version to its run by this
    }
    if remedies is not None and remedies.counts is not None:
        training["class_counts"] = {"train": remedies.counts, "class_names": prepared.class_names}
        if remedies.report is not None:
            training["resampling"] = remedies.report.to_dict()
        if remedies.note:
            training["imbalance_note"] = remedies.note
    if transfer is not None:
        training["pretrained"] = {"source": str(cfg.model.get("pretrained")), "loaded": len(transfer.loaded),
                                  "skipped": transfer.skipped}
    if prepared.task != "mlm":  # the server's drift monitor compares live requests with this
        training["reference"] = _drift_reference(model, prepared, x_sample)
    save_artifact(model, run_dir / "model", task=prepared.task, class_names=prepared.class_names,
                  preprocessing=prepared.preprocessing, metrics=metrics, training=training, overwrite=True)
    write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir)
    return RunOutcome(run_dir=run_dir, result=result, metrics=metrics, prepared=prepared, model=model,
                      evaluation=evaluation, diagnoses=diagnoses, baselines=baselines)


def _finish_segmentation(cfg: RunConfig, run_dir: Path, model: nn.Module, prepared: SegPrepared, result: FitResult,
                         transfer: TransferReport | None, remedies: Remedies | None) -> RunOutcome:
    """A segmentation run's ending: held-out regions scored whole with sliding windows,
    post-processing kept when validation says it helps, the Otsu baseline beside it."""
    metrics = _val_metrics(cfg, result, prepared.val is not None)
    write_json(run_dir / "split.json", {"by": prepared.regions.by, "patch": list(prepared.patch),
                                        **{k: [b.to_dict() for b in getattr(prepared.regions, k)] for k in ("val", "test")}})
    evaluation: dict[str, Any] = {}
    split = "test" if prepared.regions.test else "val" if prepared.regions.val else None
    if split is not None and result.stop_reason != "non_finite":
        held_out = prepared.test if split == "test" else prepared.val
        if held_out is not None:  # loss and per-pixel accuracy on the (trimmed) crops
            loss_fn = remedies.loss if remedies is not None else None
            metrics.update({f"{split}_{k}": v for k, v in evaluate_loss(model, held_out, loss_fn,
                                                                         precision=cfg.train.precision).items()})
        evaluation = evaluate_segmentation(model, prepared, split=split)
        metrics.update({f"{split}_{k}": evaluation["metrics"][k] for k in SCORE_KEYS})
        metrics[f"{split}_otsu_dice"] = evaluation["baselines"]["otsu"]["dice"]
        write_json(run_dir / "evaluation.json", evaluation)
    if result.nan_report:
        write_json(run_dir / "nan_report.json", result.nan_report)
    diagnoses = diagnose(result.history, nan_report=result.nan_report, weight_names=weight_layer_names(model))
    write_json(run_dir / "diagnosis.json", [d.to_dict() for d in diagnoses])
    training: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"), "epochs_run": result.epochs_run, "steps": result.steps,
        "stop_reason": result.stop_reason, "best_epoch": result.best_epoch, "data": prepared.name,
        "parameters": trainable_summary(model), "regions": prepared.regions.describe(), "run": run_dir.name,
    }
    if remedies is not None and remedies.counts is not None:
        training["class_counts"] = {"train": remedies.counts, "class_names": prepared.class_names,
                                    "unit": "pixels"}
    if transfer is not None:
        source = f"self-supervised ({cfg.train.ssl.method})" if cfg.train.ssl else str(cfg.model.get("pretrained"))
        training["pretrained"] = {"source": source, "loaded": len(transfer.loaded), "skipped": transfer.skipped}
    chosen = evaluation.get("postprocessing", {}).get("spec")
    preprocessing = {**prepared.preprocessing, **({"postprocess": chosen} if chosen else {})}
    save_artifact(model, run_dir / "model", task=prepared.task, class_names=prepared.class_names,
                  preprocessing=preprocessing, metrics=metrics, training=training, overwrite=True)
    write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir)
    return RunOutcome(run_dir=run_dir, result=result, metrics=metrics, prepared=prepared, model=model,
                      diagnoses=diagnoses)


def _val_metrics(cfg: RunConfig, result: FitResult, has_val: bool) -> dict[str, Any]:
    """The ``val_*`` figures of the epoch whose weights the model ends with, and that epoch
    (``val_epoch``, 1-based): the best one when early stopping restored its weights."""
    es = cfg.train.stopping(has_val)
    restored = (es is not None and es.restore_best_weights and result.best_epoch is not None
                and result.stop_reason != "non_finite")
    record = result.final
    if restored:
        record = next((r for r in result.epochs if r.get("epoch") == result.best_epoch), record)
    metrics: dict[str, Any] = {k: v for k, v in record.items() if k.startswith("val_")}
    if metrics and isinstance(record.get("epoch"), int):
        metrics["val_epoch"] = record["epoch"] + 1
    return metrics


def run_baselines(prepared: Prepared, held_out: Any, split: str, model_metrics: dict[str, float]) -> BaselineReport:
    """The baselines of :mod:`dlforge.evaluate.baselines` on the run's train split, scored on
    ``held_out`` (inputs and targets in target units, as the model was scored)."""
    x_fit, y_fit = first_samples(in_target_units(prepared.train, prepared), n=len(prepared.train))
    x_out, y_out = first_samples(held_out, n=len(held_out))
    kind = prepared.preprocessing.get("encoding", {}).get("kind", prepared.kind)
    classes = prepared.num_outputs if prepared.task == "classification" else None
    return fit_baselines((x_fit, y_fit), (x_out, y_out), task=prepared.task, kind=kind, n_classes=classes,
                         split=split, model_metrics=model_metrics)


def _held_out_scores(baselines: BaselineReport | None, prepared: Prepared) -> HeldOutScores | None:
    """The plain numbers the worse-than-baseline diagnosis reads (train imports no evaluate)."""
    if baselines is None:
        return None
    numbers = {b.name: b.metrics[baselines.metric] for b in baselines.baselines if b.metrics is not None}
    model = baselines.model.get(baselines.metric)
    if prepared.task == "classification":
        return HeldOutScores(baselines.split, accuracy=model, majority_accuracy=numbers.get("majority class"),
                             baselines=numbers)
    # a forecaster scales its series with target_scale: data.standardize_target does not apply
    standardized = None if "target_scale" in prepared.preprocessing else "target_standardize" in prepared.preprocessing
    return HeldOutScores(baselines.split, r2=model, baselines=numbers, target_standardized=standardized)


def _drift_reference(model: nn.Module, prepared: Prepared, x_sample: torch.Tensor) -> dict[str, Any]:
    """Training-input and prediction statistics the server's drift monitor compares with.

    The predictions go through ``Artifact.predict`` on the in-memory model, so they are in
    the units the server answers in (a forecaster's series units, class labels)."""
    meta = {"spec": spec_of(model), "task": prepared.task, "class_names": prepared.class_names,
            "preprocessing": prepared.preprocessing,
            "input_signature": {"shape": [None, *prepared.input_shape]}}
    outputs = Artifact(model=model, meta=meta, path=Path(".")).predict(x_sample)
    return build_reference(x_sample, outputs, prepared.task, prepared.preprocessing)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file)."""
    atomic_write(path, json.dumps(obj, indent=2).encode())

