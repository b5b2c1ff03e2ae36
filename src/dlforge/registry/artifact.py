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
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import dlforge
from dlforge.errors import ArtifactError, DlforgeError
from dlforge.models import build, spec_of

FORMAT = "dlforge-artifact"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"


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
) -> Path:
    """Write ``model`` and its metadata to the folder ``path``; returns the folder.

    The folder appears complete or not at all: files are written to a temporary sibling
    folder that is renamed into place.
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
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
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
        """Turn RAW inputs into model inputs with the stored preprocessing, as the CLI, the
        pipeline and the server do:

        * tabular: a CSV path, rows ``{column: value}``, a pandas DataFrame, or a numeric
          array of the encoded width (raw, unstandardised feature values);
        * image: image paths, encoded image bytes (PNG/JPEG), or a raw pixel array in the
          source's own units (0..16 for the built-in digits, 0..255 for image folders) of
          layout (N, C, H, W), (N, H, W, C) or (N, H, W) (see ``encode_pixels``);
        * text: strings (or token ids); series: windows in the series' own units.

        Arrays already scaled to [0, 1] (a bundle's ``x``) go to ``dlforge.data.encode_array``.

        Example:
            >>> art.encode(["seven.png"]).shape  # doctest: +SKIP
            torch.Size([1, 1, 8, 8])
        """
        from dlforge.data import encode_array, encode_images, encode_rows
        from dlforge.data.preprocess import encode_pixels
        from dlforge.data.text import encode_text_inputs

        kind = self.preprocessing.get("encoding", {}).get("kind")
        if kind == "image":
            if isinstance(inputs, (str, Path, bytes)):
                return encode_images([inputs], self.preprocessing)
            if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, (str, Path, bytes)) for i in inputs):
                return encode_images(list(inputs), self.preprocessing)
            return encode_pixels(inputs, self.preprocessing)  # arrays or nested lists of raw pixels
        if isinstance(inputs, (np.ndarray, torch.Tensor)) or (kind == "sequence" and isinstance(inputs, list)):
            return encode_array(np.asarray(inputs) if isinstance(inputs, list) else inputs, self.preprocessing)
        if kind == "text":
            return encode_text_inputs(inputs, self.preprocessing)
        return encode_rows(inputs, self.preprocessing)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> dict[str, Any]:
        """Predict on model-ready inputs ``x`` of shape (N, *input_shape).

        Classification returns ``labels`` (class names), ``indices`` and
        ``probabilities`` (N, K); regression returns ``values`` (N, outputs) in the
        target's own units: a model trained on a standardised target
        (``preprocessing["target_standardize"]``) answers ``mean + std * output``, a
        forecaster answers in the series' units (``encode`` scales its input the same way).
        """
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


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Rebuild the model in ``path`` from its JSON spec and safetensors weights."""
    path = Path(path)
    if (path / "model").is_dir() and not (path / META_FILE).exists():
        path = path / "model"  # a run directory: its artifact lives in model/
    meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
    for required in (meta_path, weights_path):
        if not required.is_file():
            raise ArtifactError(f"{required} is missing", hint="point at a folder written by save_artifact or dlforge train")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{meta_path} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not a dlforge artifact (format={meta.get('format')!r})")
    try:
        model = build(meta["spec"])
    except DlforgeError as err:
        raise ArtifactError(f"cannot rebuild the model in {path}: {err}",
                            hint="it may come from a newer dlforge; upgrade dlforge") from None
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{weights_path} is not a readable safetensors file: {err}") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise ArtifactError(f"the weights in {weights_path} do not match the architecture in {meta_path}: {detail}") from None
    model.to(device).eval()
    return Artifact(model=model, meta=meta, path=path)
