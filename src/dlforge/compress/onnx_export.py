"""Export a dlforge model to ONNX and check that ONNX Runtime computes what PyTorch does.

:func:`export_onnx` runs PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``)
with the input named ``x`` and the output ``logits``. The batch dimension is always dynamic;
so is the sequence dimension of token ids (B, T) and of series (B, T, F) read by an rnn or a
transformer, and every spatial dimension of a U-Net's images (a dimension the model fixes,
e.g. a Flatten over T, stays fixed). :func:`parity` runs the file in ONNX Runtime on held-out
inputs and compares it with the PyTorch model.

Example:
    >>> import torch
    >>> from dlforge.models import build
    >>> model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3)
    >>> path = export_onnx(model, torch.randn(2, 4), "/tmp/mlp.onnx")  # doctest: +SKIP
    >>> parity(model, path, torch.randn(100, 4)).argmax_agreement  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dlforge.errors import ConfigError, DlforgeError, ExportError
from dlforge.models import spec_of
from dlforge.registry.runtimes import OrtModule

# Families whose float inputs (B, T, F) are sequences of any length T.
SEQUENCE_ARCHS = ("rnn", "transformer")
_MISSING_OP = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)'")
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript", "torch.export")


def export_onnx(model: nn.Module, example: Tensor, path: str | Path, *, opset: int | None = None) -> Path:
    """Write ``model`` as an ONNX file at ``path`` and return the path.

    ``example`` is a model-ready batch (N, *input_shape) that fixes the dtypes and the
    shapes that are not dynamic. The file appears complete or not at all; an op ONNX cannot
    express raises :class:`~dlforge.errors.ExportError` naming the model family and the op.
    ``opset`` None lets the exporter pick (20 with torch 2.13).

    Example:
        >>> export_onnx(bert, torch.randint(1, 100, (2, 16)), "bert.onnx")  # doctest: +SKIP
        PosixPath('bert.onnx')
    """
    path = Path(path)
    family = _family(model)
    if example.ndim < 1 or example.shape[0] < 1:
        raise ExportError(f"the example batch has shape {list(example.shape)}",
                          hint="pass at least one model-ready sample, shape (N, *input_shape)")
    if example.shape[0] < 2:  # a batch of 1 would be specialised to 1 (PyTorch's 0/1 rule)
        example = example.expand(2, *example.shape[1:]).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    was_training = model.training
    model.eval()
    try:
        with _quiet():
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, verbose=False, input_names=["x"],
                              output_names=["logits"], dynamic_shapes=(_dynamic_dims(family, example),),
                              opset_version=opset, external_data=False, optimize=True)
        if not tmp.is_file():
            raise ExportError(f"the ONNX exporter wrote no file for this {family} model")
        os.replace(tmp, path)
    except DlforgeError:
        raise
    except Exception as err:  # the exporter raises RuntimeError, TorchExportError, ... of its own
        raise _explain(err, family) from None
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


@dataclass
class Parity:
    """How far ONNX Runtime's outputs are from PyTorch's on ``n`` held-out samples.

    ``max_abs_diff`` is over every output value; ``argmax_agreement`` is the fraction of
    rows (samples, or tokens for per-token heads) whose argmax over the last dim agrees.
    """

    max_abs_diff: float
    argmax_agreement: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def parity(model: nn.Module, onnx_path: str | Path, x: Tensor, *, batch_size: int = 256) -> Parity:
    """Run ``x`` through ``model`` and through ``onnx_path`` in ONNX Runtime; compare.

    Example:
        >>> parity(model, "model.onnx", held_out_x)  # doctest: +SKIP
        Parity(max_abs_diff=4.7e-07, argmax_agreement=1.0, n=360)
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size is {batch_size}", hint="use a positive batch size, e.g. 256")
    runtime = OrtModule(onnx_path)
    was_training = model.training
    model.eval()
    worst, agree, rows = 0.0, 0, 0
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            ref = model(xb).float()  # (b, ..., K)
            got = runtime(xb)  # (b, ..., K) float32
            worst = max(worst, float((ref - got).abs().max()))
            agree += int((ref.argmax(dim=-1) == got.argmax(dim=-1)).sum())
            rows += ref.argmax(dim=-1).numel()
    finally:
        model.train(was_training)
    return Parity(max_abs_diff=worst, argmax_agreement=agree / rows if rows else 1.0, n=len(x))


def _family(model: nn.Module) -> str:
    try:
        return spec_of(model)["arch"]
    except ConfigError:  # not a dlforge model: name its class
        return type(model).__name__


def _dynamic_dims(family: str, example: Tensor) -> dict[int, Any]:
    """Dynamic dims of ``x``: batch always (DYNAMIC: an error if the model fixes it), the
    others where the model allows (AUTO: a dim the model fixes stays fixed)."""
    dims: dict[int, Any] = {0: torch.export.Dim.DYNAMIC}
    tokens = not example.is_floating_point() and example.ndim == 2  # (B, T) token ids
    series = family in SEQUENCE_ARCHS and example.is_floating_point() and example.ndim == 3  # (B, T, F)
    if tokens or series:
        dims[1] = torch.export.Dim.AUTO
    if family == "unet":  # (B, C, *S): images of any size
        dims.update({d: torch.export.Dim.AUTO for d in range(2, example.ndim)})
    return dims


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: progress prints, 'torchvision is not installed' and deprecation notes."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _explain(err: Exception, family: str) -> ExportError:
    """A short dlforge error for an exporter failure, naming the op when the message does."""
    cause: BaseException | None = err
    while cause is not None:  # the model refused the example itself (e.g. a DataError): say that
        if isinstance(cause, DlforgeError):
            return ExportError(f"exporting the {family} model failed: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    missing = _MISSING_OP.search(text)
    if missing:
        return ExportError(f"the {family} model uses {missing.group(1)}, an op ONNX cannot express "
                           "(no ONNX function is registered for it); nothing was written",
                           hint="replace that op in the model, or serve it with --runtime torch")
    summary = text.split("## Exception summary", 1)[-1].strip().splitlines()
    detail = next((line.strip() for line in summary if line.strip()), type(err).__name__)
    return ExportError(f"exporting the {family} model to ONNX failed: {detail[:300]}; nothing was written",
                       hint="serve it with --runtime torch; data-dependent Python control flow in forward "
                       "(if on a tensor's value) is the usual cause")


__all__ = ["SEQUENCE_ARCHS", "Parity", "export_onnx", "parity"]
