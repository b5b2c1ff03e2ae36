"""The model artifact: a folder that evaluation, compression, the registry and the server
exchange.

::

    model/
      model.json          arch and config, task, class names, preprocessing, input
                          signature, metrics, library versions
      model.safetensors   the weights (loading never unpickles anything)

Example:
    >>> import tempfile, torch
    >>> from dlforge.models import build
    >>> model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3)
    >>> folder = save_artifact(model, tempfile.mkdtemp() + "/model", task="classification",
    ...                        class_names=["a", "b", "c"])
    >>> art = load_artifact(folder)
    >>> art.predict(torch.zeros(2, 4))["labels"].__len__()
    2
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import dlforge
from dlforge.errors import ArtifactError, DataError, DlforgeError
from dlforge.models import build, spec_of
from dlforge.registry.encoding import check_predictable, encode_raw, refuse_non_finite
from dlforge.registry.segment import class_areas, encode_seg_images, predict_label_maps, segment_images
from dlforge.user_files import read_text_file

FORMAT = "dlforge-artifact"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"
# Budgets checked before anything is allocated (model.json and the safetensors header are a
# few KiB whatever they declare). 2**28 weights are 1 GiB in float32, 2.4x BERT-large: a
# model.json declaring more is a typo or an attack, not something a CPU server should build.
MAX_PARAMETERS = 2**28
# Values per input sample: 2**22 holds a 3x1024x1024 image; predicting holds a batch of these.
MAX_INPUT_VALUES = 2**22


def _versions() -> dict[str, str]:
    return {
        "dlforge": dlforge.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _input_dtype(preprocessing: dict[str, Any] | None) -> str:
    kind = (preprocessing or {}).get("encoding", {}).get("kind")
    return "int64" if kind == "text" else "float32"  # text models read token ids


def save_artifact(
    model: nn.Module,
    path: str | Path,
    *,
    task: str,
    class_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
    variant: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    onnx: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    files: dict[str, Path] | None = None,
) -> Path:
    """Write ``model`` and its metadata to the folder ``path``; returns the folder.

    The folder appears complete or not at all: files are written to a temporary sibling
    folder that is renamed into place.

    A compressed variant (:mod:`dlforge.compress`) records what was done in ``variant``
    (method, settings, parent). A quantized one passes the fp32 ``model`` (its spec), the
    ``quantization`` recipe and the ``state`` to store instead of ``model.state_dict()``
    (:func:`dlforge.models.quantized.load_quantized` turns them back into the int8 model).
    ``files`` are copied into the folder under their names (an exported ``model.onnx``, which
    ``onnx`` describes: ``{"file": "model.onnx", "parity": {...}}``).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists", hint="choose another folder or pass overwrite=True")
    spec = spec_of(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": spec["arch"],
        "spec": spec,
        "task": task,
        "class_names": class_names,
        "preprocessing": preprocessing or {},
        "input_signature": {"shape": [None, *spec["input_shape"]], "dtype": _input_dtype(preprocessing)},
        "metrics": metrics or {},
        "training": training or {},
        **({"variant": variant} if variant else {}),
        **({"quantization": quantization} if quantization else {}),
        **({"onnx": onnx} if onnx else {}),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in (state or model.state_dict()).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclass
class Artifact:
    """A loaded model with its metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.meta.get("preprocessing", {})

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_signature"]["shape"][1:])

    def encode(self, inputs: Any) -> torch.Tensor:
        """Turn RAW inputs into model inputs with the stored preprocessing, exactly as
        ``dlforge predict`` and the server do (one encoder: :mod:`dlforge.registry.encoding`
        lists the forms). CSV rows or a CSV path, ``{column: value}`` rows, image files,
        bytes or raw pixels in the source's own units, texts, series windows or files.
        Refuses a masked-LM model, and values that overflow float32 once standardised.

        Arrays already scaled to [0, 1] (a bundle's ``x``) go to ``dlforge.data.encode_array``.

        Example:
            >>> art.encode(["seven.png"]).shape  # doctest: +SKIP
            torch.Size([1, 1, 8, 8])
        """
        check_predictable(self.meta)
        if self.task == "segmentation":  # images of any size: one (C, *S) tensor each, stacked when sizes agree
            images = encode_seg_images(inputs, self.preprocessing)
            if len({tuple(i.shape) for i in images}) > 1:
                raise DataError("these images differ in size, so they cannot form one batch",
                                hint="use Artifact.segment(inputs), which takes images of any sizes")
            return torch.stack(images)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow is refused just below
            x = encode_raw(inputs, self.preprocessing)
        return refuse_non_finite(x, self.preprocessing)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> dict[str, Any]:
        """Predict on model-ready inputs ``x`` of shape (N, *input_shape).

        Classification returns ``labels`` (class names), ``indices`` and
        ``probabilities`` (N, K); regression returns ``values`` (N, outputs) in the
        target's own units: a model trained on a standardised target
        (``preprocessing["target_standardize"]``) answers ``mean + std * output``, a
        forecaster answers in the series' units (``encode`` scales its input the same way).
        """
        if self.task == "segmentation":
            return self._predict_masks(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ArtifactError(
                f"inputs have per-sample shape {list(x.shape[1:])}, the model expects {list(self.input_shape)}",
                hint="encode raw inputs with Artifact.encode first",
            )
        self.model.eval()
        first = next(self.model.parameters(), None)  # a dynamically quantized MLP has none left
        device = first.device if first is not None else torch.device("cpu")
        dtype = torch.float32 if torch.is_floating_point(x) else torch.long  # token ids stay integers
        outs = [self.model(x[i : i + batch_size].to(device, dtype)).float().cpu() for i in range(0, len(x), batch_size)]
        out = torch.cat(outs) if outs else torch.empty(0, self.meta["spec"]["num_outputs"])
        if self.task != "classification":
            from dlforge.data.preprocess import to_target_units

            scale = self.preprocessing.get("target_scale")
            if scale is not None:  # a forecaster answers in the series' own units
                out = out * scale["std"] + scale["mean"]
            return {"values": to_target_units(out, self.preprocessing.get("target_standardize"))}
        probs = out.softmax(dim=1)
        idx = probs.argmax(dim=1)
        names = self.class_names or [str(i) for i in range(out.shape[1])]
        return {"labels": [names[i] for i in idx.tolist()], "indices": idx, "probabilities": probs}


    def segment(self, inputs: Any, **options: Any) -> list[np.ndarray]:
        """A segmentation model's post-processed label maps for raw images of any sizes
        (files, image bytes or pixel arrays; :mod:`dlforge.registry.segment`).

        Example:
            >>> [m.shape for m in art.segment(["a.tif", "big.png"])]  # doctest: +SKIP
            [(512, 512), (4096, 3000)]
        """
        check_predictable(self.meta)
        if self.task != "segmentation":
            raise ArtifactError(f"this is a {self.task} model, not a segmentation model", hint="use predict()")
        return segment_images(self, inputs, **options)

    def _predict_masks(self, x: torch.Tensor) -> dict[str, Any]:
        """Label maps (N, *S) of model-ready images (N, C, *S) of any spatial size."""
        channels, dims = self.input_shape[0], len(self.input_shape) - 1
        if x.ndim != dims + 2 or x.shape[1] != channels:
            raise ArtifactError(f"inputs have shape {list(x.shape)}, the model reads (N, {channels}, "
                                f"{', '.join('DHW'[3 - dims:])}) images of any size",
                                hint="encode raw images with Artifact.encode, or use Artifact.segment")
        maps = predict_label_maps(self.model, list(x.float()), self.preprocessing)
        masks = torch.from_numpy(np.stack(maps)).long() if maps else torch.empty(0, *x.shape[2:], dtype=torch.long)
        return {"masks": masks, "areas": [class_areas(m, self.class_names) for m in maps]}


def _shape(value: Any) -> list[int] | None:
    """``value`` as a list of ints (a declared shape), or None when it is not one."""
    if isinstance(value, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        return list(value)
    return None


def _rebuild(meta: dict[str, Any], path: Path, device: str) -> nn.Module:
    """The model model.json describes, built on ``device`` ("meta": shapes only, no memory)."""
    try:
        with torch.device(device):
            return build(meta["spec"])
    except DlforgeError as err:
        raise ArtifactError(f"cannot rebuild the model in {path}: {err}",
                            hint="it may come from a newer dlforge; upgrade dlforge") from None


def _header_shapes(weights_path: Path) -> dict[str, list[int]]:
    """Every tensor's shape from the safetensors header; no tensor data is read."""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not a dict: it only lists its names
            return {name: list(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{weights_path} is not a readable safetensors file: {err}") from None


def _check_declared_sizes(meta: dict[str, Any], path: Path, max_parameters: int) -> None:
    """Refuse, before anything is allocated, inputs or weights over budget and a weights file
    whose header disagrees with the architecture (the model is built on the meta device)."""
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise ArtifactError(f"{path / META_FILE} has no model spec", hint="save the model with save_artifact")
    declared = _shape(spec.get("input_shape"))
    if declared is not None and math.prod(declared) > MAX_INPUT_VALUES:
        raise ArtifactError(
            f"{path / META_FILE} declares inputs of shape {declared}: {math.prod(declared):,} values per sample, "
            f"more than the {MAX_INPUT_VALUES:,} dlforge serves",
            hint="check spec.input_shape in model.json; downsample or crop the inputs and retrain")
    model = _rebuild(meta, path, "meta")
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    count = sum(math.prod(s) for s in expected.values())
    if count > max_parameters:
        raise ArtifactError(f"the model in {path / META_FILE} has {count:,} weights, more than the budget of "
                            f"{max_parameters:,}", hint="check spec in model.json, or raise max_parameters")
    signature = meta.get("input_signature")
    shape = _shape((signature.get("shape") or [None])[1:]) if isinstance(signature, dict) else None
    if shape != list(model.config.input_shape):
        raise ArtifactError(f"{path / META_FILE} has input_signature {signature}, but its model takes inputs "
                            f"of shape {list(model.config.input_shape)}", hint="save the model with save_artifact")
    found = _header_shapes(path / WEIGHTS_FILE)
    if meta.get("quantization"):  # an int8 variant stores its recipe's state (observers included)
        from dlforge.models.quantized import state_problems

        problems = state_problems(model, meta["quantization"], found)
    else:
        problems = [f"missing {k}" for k in expected if k not in found]
        problems += [f"unexpected {k}" for k in found if k not in expected]
        problems += [f"{k} has shape {found[k]}, the model expects {s}" for k, s in expected.items()
                     if k in found and found[k] != s]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ArtifactError(f"the weights in {path / WEIGHTS_FILE} do not match the architecture in "
                            f"{path / META_FILE}: {'; '.join(problems[:3])}{more}",
                            hint="save the model and its model.json together with save_artifact")


def load_artifact(path: str | Path, device: str | torch.device = "cpu", *,
                  max_parameters: int = MAX_PARAMETERS, runtime: str = "torch") -> Artifact:
    """Rebuild the model in ``path`` from its JSON spec and safetensors weights.

    Before anything is allocated, model.json's declared input size and weight count must be
    within budget (``MAX_INPUT_VALUES``, ``max_parameters``) and the safetensors header must
    list exactly the tensors of that architecture, so a 2 KiB model.json declaring 10^8 inputs
    is refused in milliseconds. :func:`dlforge.registry.validate.check_artifact` checks more.

    Example:
        >>> load_artifact(folder, max_parameters=10).model  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        dlforge.errors.ArtifactError: the model in .../model.json has 67 weights, more than the budget of 10 (...)
    """
    path = Path(path)
    if (path / "model").is_dir() and not (path / META_FILE).exists():
        path = path / "model"  # a run directory: its artifact lives in model/
    meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
    for required in (meta_path, weights_path):
        if not required.is_file():
            raise ArtifactError(f"{required} is missing", hint="point at a folder written by save_artifact or dlforge train")
    try:
        meta = json.loads(read_text_file(meta_path, "artifact file", error=ArtifactError))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{meta_path} is not a dlforge artifact (format={found!r})")
    _check_declared_sizes(meta, path, max_parameters)
    model = _rebuild(meta, path, "cpu")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{weights_path} is not a readable safetensors file: {err}") from None
    if meta.get("quantization"):  # an int8 variant: fp32 spec + the stored recipe and state
        from dlforge.models.quantized import load_quantized

        model = load_quantized(model, meta["quantization"], weights)
    else:
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
            raise ArtifactError(f"the weights in {weights_path} do not match the architecture in {meta_path}: "
                                f"{detail}") from None
    if runtime != "torch":  # the same predictions from another engine (model.onnx in ONNX Runtime)
        from dlforge.registry.runtimes import runtime_model

        model = runtime_model(path, meta, runtime)
    model.to(device).eval()
    return Artifact(model=model, meta=meta, path=path)
