"""``dlforge compress`` and ``dlforge export``: a trained run in, a variant artifact out.

Every variant is an ordinary artifact folder (:mod:`dlforge.registry.artifact`) that
``evaluate``, ``predict``, the registry and the server load unchanged. Its ``model.json``
records what was done under ``variant`` (method, settings, parent artifact, the parent's
and the variant's test metrics); a quantized variant also carries its ``quantization``
recipe, an exported one its ``model.onnx`` and the parity measured at export.

Methods (``METHODS``):

- ``distill``: a student spec (``student={"arch": "mlp", "hidden": [32]}``) learns from the
  run's model (any arch, an ensemble included) with soft targets at ``temperature`` mixed
  with the hard labels (``alpha``), on the run's training split; ``intermediate`` (two
  BERTs) also matches hidden states and attention (DistilBERT / MiniLM style).
- ``prune``: magnitude pruning (``amount``, ``scope`` global or layer). With ``epochs``,
  prune-retrain in ``steps`` rounds on a geometric schedule with the masks kept
  (:func:`dlforge.compress.prune_schedule.iterative_prune`); ``rewind`` sends the
  surviving weights back to the parent's values before each retraining (lottery-ticket
  rewinding to the trained weights). Reported as sparsity: the tensors keep their shape,
  so it is not faster.
- ``prune-structured``: removes the weakest ``amount`` of neurons or channels (MLP, CNN),
  or of attention heads and feed-forward neurons (BERT), and rebuilds a smaller model,
  optionally retrained (``epochs``, the run's own optimiser): fewer parameters, faster.
- ``quantize-dynamic``: int8 Linear (and LSTM/GRU) weights, activations quantized on the fly.
- ``quantize-static``: int8 weights and activations, calibrated on the training split (MLP, CNN).
- ``qat``: quantization-aware training through ``fit`` (``epochs``), then int8.

Example:
    >>> out = compress_run("runs/digits-cnn-20261126-101500", "quantize-static")  # doctest: +SKIP
    >>> load_artifact(out).meta["variant"]["method"]  # doctest: +SKIP
    'quantize-static'
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from dlforge.config import load_config
from dlforge.errors import ArtifactError, ConfigError
from dlforge.evaluate import evaluate
from dlforge.models import build, spec_of
from dlforge.pipeline.evaluation import locate_run, run_prepared
from dlforge.pipeline.run import first_samples
from dlforge.registry import load_artifact, save_artifact
from dlforge.registry.artifact import META_FILE, Artifact
from dlforge.train.optim import ScheduleConfig

METHODS = ("distill", "prune", "prune-structured", "quantize-dynamic", "quantize-static", "qat")
EXPORT_FORMATS = ("onnx",)
ONNX_QUANTIZE = ("none", "dynamic", "static")
CALIBRATION_SAMPLES = 512  # static int8: enough batches for stable activation ranges, seconds to run
_OPTIONS = {  # the settings each method reads, with their defaults
    "distill": {"student": None, "temperature": 4.0, "alpha": 0.5, "epochs": None, "intermediate": False},
    "prune": {"amount": 0.5, "scope": "global", "epochs": 0, "steps": 1, "rewind": False},
    "prune-structured": {"amount": 0.5, "epochs": 0},
    "quantize-dynamic": {},
    "quantize-static": {"samples": CALIBRATION_SAMPLES},
    "qat": {"epochs": 2},
}


def open_run(path: str | Path) -> tuple[Path | None, Artifact]:
    """(run directory or None, its loaded artifact); a clear error when neither exists."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist", hint="pass a run directory (runs/<name>-<time>) or an artifact folder")
    run_dir, art_dir = locate_run(path)
    return run_dir, load_artifact(art_dir)


def compress_run(path: str | Path, method: str, *, out: str | Path | None = None, **options: Any) -> Path:
    """Make the ``method`` variant of the run (or artifact) at ``path``; returns its folder.

    ``out`` defaults to ``RUN/variants/<method>-<time>``. The folder appears complete or not
    at all. Unknown methods and settings are refused before anything is read.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown compression method {method!r}", hint=f"use one of: {', '.join(METHODS)}")
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        allowed = ", ".join(_OPTIONS[method]) or "none"
        raise ConfigError(f"{method} has no setting {', '.join(unknown)}", hint=f"its settings: {allowed}")
    settings = {**_OPTIONS[method], **{k: v for k, v in options.items() if v is not None}}
    run_dir, art = open_run(path)
    if art.task not in ("classification", "regression"):
        raise ConfigError(f"compressing a {art.task} model is not supported",
                          hint="compress classification and regression runs; export any run with dlforge export")
    if run_dir is None:
        raise ArtifactError(f"{path} is an artifact folder without its run, and {method} needs the run's data",
                            hint="pass the run directory that holds this model/ folder")
    target = _target(run_dir, out, method)
    prepared = run_prepared(run_dir, art)
    cfg = load_config(run_dir / "config.yaml")
    model, extra = _apply(method, art, prepared, cfg, settings)
    held_out = prepared.test if prepared.test is not None else prepared.val
    record = {"method": method, "settings": _jsonable(settings), "parent": str(art.path),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra.pop("record", {})}
    return _save_variant(target, model, art, record, held_out, prepared, **extra)


def export_run(path: str | Path, *, fmt: str = "onnx", quantize: str = "none", out: str | Path | None = None) -> Path:
    """Export the run's model to ONNX beside its weights, as a new artifact folder
    (default ``RUN/variants/onnx[-int8]-<time>``), with the parity measured on held-out data
    recorded in ``model.json`` (``onnx.parity``) and loadable with ``--runtime onnxruntime``.

    ``quantize``: ``dynamic`` (ONNX Runtime dynamic int8) or ``static`` (QDQ int8 calibrated
    on the training split; needs the run directory).
    """
    from dlforge.compress.onnx_export import export_onnx, parity
    from dlforge.compress.ort_quantize import quantize_onnx_dynamic, quantize_onnx_static

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", hint=f"use one of: {', '.join(EXPORT_FORMATS)}")
    if quantize not in ONNX_QUANTIZE:
        raise ConfigError(f"unknown --quantize {quantize!r} for ONNX", hint=f"use one of: {', '.join(ONNX_QUANTIZE)}")
    run_dir, art = open_run(path)
    if art.meta.get("quantization"):
        raise ConfigError("this artifact is a PyTorch int8 variant, which ONNX cannot take",
                          hint="export its parent run, with --quantize dynamic or static for ONNX Runtime's int8")
    held_out, calibration = _export_data(run_dir, art, needs_train=quantize == "static")
    name = "onnx" if quantize == "none" else f"onnx-{quantize}-int8"
    target = _target(run_dir, out, name, parent=art.path)
    work = Path(tempfile.mkdtemp(prefix="dlforge-export-"))
    try:
        onnx_path = export_onnx(art.model, held_out[:2], work / "fp32.onnx")
        if quantize == "dynamic":
            onnx_path = quantize_onnx_dynamic(onnx_path, work / "int8.onnx")
        elif quantize == "static":
            onnx_path = quantize_onnx_static(onnx_path, work / "int8.onnx", calibration)
        check = parity(art.model, onnx_path, held_out)
        meta = {**art.meta.get("variant", {}), "method": f"export-{name}", "parent": str(art.path),
                "settings": {"format": fmt, "quantize": quantize},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        onnx = {"file": "model.onnx", "quantize": quantize, "parity": check.to_dict()}
        return save_artifact(art.model, target, task=art.task, class_names=art.class_names,
                             preprocessing=art.preprocessing, metrics=art.meta.get("metrics"),
                             training=art.meta.get("training"), variant=meta, onnx=onnx,
                             files={"model.onnx": onnx_path})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- methods

def _apply(method: str, art: Artifact, prepared: Any, cfg: Any, s: dict[str, Any]) -> tuple[nn.Module, dict]:
    """The variant's model and what ``_save_variant`` needs besides (quantization, record)."""
    fit_args = {"batch_size": cfg.train.batch_size, "device": "cpu", "seed": cfg.seed}
    # Retraining (pruning, QAT) starts from a trained model: a tenth of its rate, held constant.
    retrain_optim = cfg.optim.model_copy(update={"lr": cfg.optim.lr * 0.1, "schedule": ScheduleConfig()})
    parent = art.model
    if method == "distill":
        from dlforge.compress.distillation import distill

        student = build(_student_spec(s["student"], art), input_shape=art.input_shape,
                        num_outputs=art.meta["spec"]["num_outputs"])
        soft = {"temperature": float(s["temperature"]), "alpha": float(s["alpha"]),
                "epochs": int(s["epochs"] or cfg.train.epochs), "optim": cfg.optim, **fit_args}
        if s["intermediate"]:  # DistilBERT / MiniLM style: hidden states and attention too
            from dlforge.compress.distill_bert import distill_bert

            distill_bert(parent, student, prepared.train, prepared.val, **soft)
        else:
            distill(parent, student, prepared.train, prepared.val, **soft)
        return student, {"record": {"teacher_spec": art.meta["spec"]}}
    if method == "prune":
        from dlforge.compress.prune import magnitude_prune

        model = _copy(parent)
        if int(s["epochs"]) == 0:  # one shot, no retraining
            report = magnitude_prune(model, float(s["amount"]), scope=s["scope"])
            return model, {"record": {"sparsity": round(report.total_sparsity, 4)}}
        from dlforge.compress.prune_schedule import iterative_prune

        history = iterative_prune(model, prepared.train, prepared.val, target=float(s["amount"]), steps=int(s["steps"]),
                                  epochs_per_step=int(s["epochs"]), rewind=bool(s["rewind"]), scope=s["scope"],
                                  pretrained=True, optim=retrain_optim, **fit_args)
        return model, {"record": {"sparsity": round(history.final_sparsity, 4), "rounds": history.rows}}
    if method == "prune-structured":
        model, report = _prune_units(parent, float(s["amount"]), prepared.train)
        # A rebuilt network re-learns more than a masked one: the run's own optimiser and schedule.
        _retrain(model, prepared, int(s["epochs"]), cfg.optim, fit_args)
        return model, {"record": {"parameters_before": report.parameters_before,
                                 "parameters_after": report.parameters_after}}
    from dlforge.compress import quantize as q

    if method == "quantize-dynamic":
        result = q.dynamic_int8(parent)
    elif method == "quantize-static":
        result = q.quantize_static_int8(parent, first_samples(prepared.train, int(s["samples"]))[0])
    else:
        from dlforge.compress.qat import quantize_aware_train

        result = quantize_aware_train(_copy(parent), prepared.train, prepared.val, epochs=int(s["epochs"]),
                                      optim=retrain_optim, **fit_args)
    return parent, {"quantization": result.recipe, "state": result.state}


def _prune_units(model: nn.Module, amount: float, data: Dataset) -> tuple[nn.Module, Any]:
    """Structured pruning: neurons (MLP), channels (CNN), or attention heads and then
    feed-forward neurons (BERT, ranked by gradients on the training split)."""
    from dlforge.compress.prune import StructuredReport, prune_structured
    from dlforge.models import BertClassifier

    if not isinstance(model, BertClassifier):
        return prune_structured(_copy(model), amount)
    from dlforge.compress.prune_bert import prune_ffn, prune_heads

    fewer_heads, heads = prune_heads(model, amount, data=data)
    smaller, ffn = prune_ffn(fewer_heads, amount, data=data)
    return smaller, StructuredReport(widths_before=heads.widths_before + ffn.widths_before,
                                     widths_after=heads.widths_after + ffn.widths_after, kept=heads.kept + ffn.kept,
                                     parameters_before=heads.parameters_before, parameters_after=ffn.parameters_after)


def _student_spec(student: Any, art: Artifact) -> dict[str, Any]:
    if not isinstance(student, dict) or "arch" not in student:
        raise ConfigError("distill needs a student model spec", hint='pass --student \'{arch: mlp, hidden: [32]}\'')
    spec = dict(student)
    teacher = art.meta["spec"]
    if spec["arch"] in ("bert", "transformer") and "vocab_size" not in spec and "vocab_size" in teacher:
        spec["vocab_size"] = teacher["vocab_size"]  # the student reads the same token ids
    return spec


def _retrain(model: nn.Module, prepared: Any, epochs: int, optim: Any, fit_args: dict[str, Any]) -> None:
    if epochs > 0:
        from dlforge.train import fit

        fit(model, prepared.train, prepared.val, epochs=epochs, optim=optim, **fit_args)


# ----------------------------------------------------------------------------- helpers

def _save_variant(target: Path, model: nn.Module, art: Artifact, record: dict[str, Any], held_out: Dataset | None,
                  prepared: Any, **extra: Any) -> Path:
    """Save the variant beside ``target``, score it as loaded (a quantized one is rebuilt from
    its recipe) on the run's held-out split beside its parent, record the scores in its
    model.json and move it into place: complete or not at all."""
    from dlforge.data.preprocess import in_target_units

    tmp = target.parent / f".{target.name}.scoring"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_artifact(model, tmp, task=art.task, class_names=art.class_names, preprocessing=art.preprocessing,
                      training=art.meta.get("training"), variant=record, **extra)
        if held_out is not None:
            data = in_target_units(held_out, prepared)
            meta = json.loads((tmp / META_FILE).read_text(encoding="utf-8"))
            meta["metrics"] = evaluate(load_artifact(tmp), data).metrics
            meta["variant"].update(metrics=meta["metrics"], parent_metrics=evaluate(art, data).metrics)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _target(run_dir: Path | None, out: str | Path | None, method: str, parent: Path | None = None) -> Path:
    if out is not None:
        target = Path(out)
    else:
        base = run_dir if run_dir is not None else Path(parent).parent  # type: ignore[arg-type]
        target = base / "variants" / f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if target.exists():
        raise ArtifactError(f"{target} already exists", hint="choose another --out folder")
    return target


def _export_data(run_dir: Path | None, art: Artifact, *, needs_train: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(held-out inputs for the parity check, training inputs for calibration or None)."""
    if run_dir is None:
        if needs_train:
            raise ArtifactError("static int8 calibrates on the run's training split, and this folder has no run",
                                hint="pass the run directory, or use --quantize dynamic")
        return _synthetic_inputs(art), None
    prepared = run_prepared(run_dir, art)
    held_out = prepared.test if prepared.test is not None else (prepared.val or prepared.train)
    calibration = first_samples(prepared.train, CALIBRATION_SAMPLES)[0] if needs_train else None
    return first_samples(held_out, len(held_out))[0], calibration


def _synthetic_inputs(art: Artifact, n: int = 64) -> torch.Tensor:
    """Inputs of the artifact's signature when no data is at hand (an artifact folder alone)."""
    generator = torch.Generator().manual_seed(0)
    if art.meta["input_signature"]["dtype"] == "int64":
        vocab = int(art.meta["spec"].get("vocab_size", 2))
        return torch.randint(1, vocab, (n, *art.input_shape), generator=generator)
    return torch.randn(n, *art.input_shape, generator=generator)


def _copy(model: nn.Module) -> nn.Module:
    copy = build(spec_of(model))
    copy.load_state_dict(model.state_dict())
    return copy


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v) for k, v in settings.items()}


__all__ = ["EXPORT_FORMATS", "METHODS", "compress_run", "export_run", "open_run"]
