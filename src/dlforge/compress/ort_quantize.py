"""int8 ONNX models with ONNX Runtime's quantization tools.

:func:`quantize_onnx_dynamic` stores the weights of MatMul/Gemm (and Conv) as int8 and
quantizes activations on the fly at run time: nothing to calibrate, the usual choice for
Transformers and RNNs. :func:`quantize_onnx_static` also fixes the activations' scales from
a calibration set and writes the QDQ format (QuantizeLinear/DequantizeLinear pairs that
ONNX Runtime fuses into int8 kernels): the usual choice for CNNs and MLPs. Both write the
destination file completely or not at all.

Example:
    >>> quantize_onnx_dynamic("fp32.onnx", "int8.onnx")  # doctest: +SKIP
    PosixPath('int8.onnx')
    >>> quantize_onnx_static("fp32.onnx", "qdq.onnx", x_train[:512])  # doctest: +SKIP
    PosixPath('qdq.onnx')
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from dlforge.errors import ConfigError, DataError, ExportError
from dlforge.registry.runtimes import ort_session

# ONNX Runtime's element types for the inputs dlforge models read.
_NUMPY_OF = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def quantize_onnx_dynamic(src: str | Path, dst: str | Path, *, per_channel: bool = True) -> Path:
    """Write ``src`` with int8 weights (QInt8) and dynamically quantized activations to ``dst``.

    ``per_channel`` gives each output channel of a weight its own scale. On all-MiniLM-L6-v2
    it halves the largest logit error against fp32 (argmax agreement on random 16-token
    inputs 0.69 -> 0.88) for about 10% more latency, still ~4x faster than PyTorch fp32.

    Example:
        >>> quantize_onnx_dynamic("bert.onnx", "bert-int8.onnx")  # doctest: +SKIP
        PosixPath('bert-int8.onnx')
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = _existing(src), Path(dst)
    with _atomic(dst) as tmp, _quiet():
        quantize_dynamic(src, tmp, weight_type=QuantType.QInt8, per_channel=per_channel)
    return dst


def quantize_onnx_static(src: str | Path, dst: str | Path, calibration: Tensor, *, batch_size: int = 32,
                         per_channel: bool = True) -> Path:
    """Write ``src`` as a static int8 QDQ model, calibrated on ``calibration``, to ``dst``.

    ``calibration`` is model-ready inputs (N, *input_shape), e.g. a few hundred training
    samples; the activation ranges are their min/max. Weights are int8 per output channel
    (``per_channel``). The model first goes through ``quant_pre_process`` (shape inference
    and graph cleanup) when that succeeds.

    Example:
        >>> quantize_onnx_static("cnn.onnx", "cnn-int8.onnx", x_train[:256])  # doctest: +SKIP
        PosixPath('cnn-int8.onnx')
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = _existing(src), Path(dst)
    if batch_size < 1:
        raise ConfigError(f"batch_size is {batch_size}", hint="use a positive batch size, e.g. 32")
    name, array = _calibration_array(src, calibration)

    class Reader(CalibrationDataReader):  # one {input name: batch} per call, then None
        def __init__(self) -> None:
            self.batches = iter(array[i : i + batch_size] for i in range(0, len(array), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    with _atomic(dst) as tmp, _quiet():
        model = str(src)
        prepared = str(Path(tmp).with_name("prepared.onnx"))
        try:
            quant_pre_process(model, prepared)
            model = prepared
        except Exception:  # symbolic shape inference cannot read some graphs: quantize as exported
            pass
        quantize_static(model, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return dst


def _existing(src: str | Path) -> Path:
    src = Path(src)
    if not src.is_file():
        raise ExportError(f"{src} is missing", hint="export the model first with dlforge.compress.export_onnx")
    return src


def _calibration_array(src: Path, calibration: Tensor) -> tuple[str, np.ndarray]:
    """The model's input name and ``calibration`` as the array it reads; a DataError when
    the shape or dtype does not fit the model's input."""
    model_input = ort_session(src, threads=1, optimization="none").get_inputs()[0]
    dims: list[Any] = [d if isinstance(d, int) else None for d in model_input.shape]  # None: dynamic
    dtype = _NUMPY_OF.get(model_input.type)
    expected = "[" + ", ".join("N" if i == 0 else "*" if d is None else str(d) for i, d in enumerate(dims)) + "]"
    wanted = f"{expected} {np.dtype(dtype).name if dtype else model_input.type}"
    shape = list(calibration.shape)
    fits = len(shape) == len(dims) and shape[0] > 0 and all(d is None or d == s for d, s in zip(dims[1:], shape[1:]))
    floating = calibration.is_floating_point()
    if not fits or dtype is None or floating != (dtype == np.float32):
        raise DataError(f"the calibration set has shape {shape} ({calibration.dtype}), the model reads {wanted}",
                        hint="calibrate on model-ready training inputs, e.g. the training split's x")
    return model_input.name, calibration.detach().cpu().numpy().astype(dtype)


@contextlib.contextmanager
def _atomic(dst: Path) -> Iterator[str]:
    """A temporary path beside ``dst``, renamed onto ``dst`` when the block succeeds."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    tmp = work / "model.onnx"
    try:
        yield str(tmp)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the quantizer's progress logging and prints (it logs each node at INFO)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


__all__ = ["quantize_onnx_dynamic", "quantize_onnx_static"]
