"""Engines that run an artifact: PyTorch itself, or ONNX Runtime on its exported model.onnx.

:func:`runtime_model` gives ``load_artifact(..., runtime=...)`` a module that ``predict``,
``evaluate`` and the server call like the PyTorch model: :class:`OrtModule` wraps an ONNX
Runtime session (CPU, graph optimisation, thread settings) behind ``forward(x)``.

Example:
    >>> from dlforge.registry.artifact import load_artifact
    >>> art = load_artifact("runs/digits/variants/onnx", runtime="onnxruntime")  # doctest: +SKIP
    >>> art.predict(x)["labels"][:3]  # doctest: +SKIP
    ['7', '2', '1']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dlforge.errors import ArtifactError, ConfigError

RUNTIMES = ("torch", "onnxruntime")
# name -> onnxruntime.GraphOptimizationLevel member
OPTIMIZATIONS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                 "all": "ORT_ENABLE_ALL"}
ONNX_FILE = "model.onnx"


def ort_session(onnx_path: str | Path, *, threads: int | None = None, optimization: str = "all") -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for ``onnx_path``.

    ``threads`` sets the intra-op threads (None: ONNX Runtime's default, one per core);
    inter-op parallelism is off (dlforge graphs are one chain). ``optimization`` is one of
    :data:`OPTIMIZATIONS` (``"all"``: constant folding, fusions such as attention and GELU).

    Example:
        >>> session = ort_session("model.onnx", threads=1)  # doctest: +SKIP
        >>> session.get_inputs()[0].name  # doctest: +SKIP
        'x'
    """
    import onnxruntime as ort

    if optimization not in OPTIMIZATIONS:
        raise ConfigError(f"optimization {optimization!r} is unknown", hint=f"use one of: {', '.join(OPTIMIZATIONS)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads is {threads}", hint="use a positive number of threads, or None for the default")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime picks
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATIONS[optimization])
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(os.fspath(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile
        raise ArtifactError(f"ONNX Runtime cannot load {onnx_path}: {str(err).strip()[:300]}",
                            hint="export the run again with `dlforge export RUN --format onnx`") from None


class OrtModule(nn.Module):
    """An ONNX model behind ``nn.Module.forward``: x (B, ...) -> float outputs (B, ...).

    It holds no parameters; inputs go to ONNX Runtime as int64 when they are integers
    (token ids) and float32 otherwise, outputs come back as float32 CPU tensors.

    Example:
        >>> model = OrtModule("model.onnx", threads=1)  # doctest: +SKIP
        >>> model(torch.randn(2, 4)).shape  # doctest: +SKIP
        torch.Size([2, 3])
    """

    def __init__(self, onnx_path: str | Path, *, threads: int | None = None, optimization: str = "all") -> None:
        super().__init__()
        self.path = Path(onnx_path)
        self.session = ort_session(onnx_path, threads=threads, optimization=optimization)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        dtype = np.float32 if torch.is_floating_point(x) else np.int64
        array = x.detach().cpu().numpy().astype(dtype, copy=False)
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def extra_repr(self) -> str:
        return str(self.path)


def runtime_model(path: str | Path, meta: dict[str, Any], runtime: str) -> nn.Module:
    """The module that runs the artifact in ``path`` on ``runtime`` (other than "torch").

    ``meta`` is the artifact's model.json; ``meta["onnx"]["file"]`` names the ONNX file
    (default ``model.onnx``).

    Example:
        >>> runtime_model(folder, meta, "onnxruntime")  # doctest: +SKIP
        OrtModule(runs/x/variants/onnx/model.onnx)
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is unknown", hint=f"use one of: {', '.join(RUNTIMES)}")
    if runtime != "onnxruntime":
        raise ConfigError(f"runtime_model builds engines other than torch, got {runtime!r}",
                          hint="load the PyTorch model with load_artifact(path)")
    record = meta.get("onnx") if isinstance(meta.get("onnx"), dict) else {}
    name = record.get("file", ONNX_FILE)
    onnx_path = Path(path) / str(name)
    if not isinstance(name, str) or Path(name).name != name:
        raise ArtifactError(f"{Path(path) / 'model.json'} names the ONNX file {name!r}, not a file in the artifact",
                            hint="export the run again with `dlforge export RUN --format onnx`")
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} is missing: this artifact has no exported ONNX model",
                            hint="export it with `dlforge export RUN --format onnx`, then load that variant")
    return OrtModule(onnx_path)


__all__ = ["ONNX_FILE", "OPTIMIZATIONS", "RUNTIMES", "OrtModule", "ort_session", "runtime_model"]
