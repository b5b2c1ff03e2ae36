"""Post-training dynamic int8 quantization of ``nn.Linear`` layers (CPU inference).

Dynamic quantization stores each Linear layer's weights as int8 with one scale per
tensor and quantizes activations on the fly, batch by batch. It needs no calibration
data, so a server can apply it when it loads a model: the artifact on disk stays fp32
safetensors (``dlforge serve --quantize int8``).

Whether it is faster depends on the model: it pays where reading the weights dominates
(wide layers, a batch of a few samples); for a small layer the extra per-call work of
quantizing the activations costs more than it saves. Measure (lab topic 30 does).

Static int8 (:func:`quantize_static_int8`) quantizes activations too, with scales
measured on calibration data (the training split): int8 convolutions and Linear layers end
to end, for MLPs and CNNs. Quantization-aware training lives in
:mod:`dlforge.compress.qat` (it trains, and the server, which imports this module, never
loads the trainer). Each returns a :class:`Quantized`: the int8 model, and the recipe and
state an artifact stores (``save_artifact(fp32, dir, ..., quantization=q.recipe, state=q.state)``).
int8 runs on the CPU only.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    >>> small = quantize_dynamic_int8(model)
    >>> round(weight_bytes(small) / weight_bytes(model), 2)
    0.26
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.errors import DataError
from dlforge.models import quantized


@dataclass
class Quantized:
    """An int8 model and what an artifact stores to rebuild it (:mod:`dlforge.models.quantized`)."""

    model: nn.Module  # int8, CPU, eval mode
    recipe: dict[str, Any]
    state: dict[str, torch.Tensor]


def quantize_static_int8(model: nn.Module, calibration: torch.Tensor | Iterable[Any], *, batches: int | None = None,
                         batch_size: int = 256, qconfig: str = "default", engine: str = "x86") -> Quantized:
    """Static post-training int8 of an MLP or CNN (``model``, fp32, is unchanged).

    ``calibration`` is model-ready inputs: a tensor (N, *input_shape), a dataset of
    ``(x, y)`` samples, or an iterable of batches (tensors or ``(x, y)`` tuples); at most
    ``batches`` batches of ``batch_size`` are run to set the activation scales. A few
    hundred training samples are enough; use the training split, never the test split.

    Example:
        >>> from dlforge.models import build
        >>> cnn = build({"arch": "cnn", "channels": [8]}, input_shape=(1, 8, 8), num_outputs=10)
        >>> q = quantize_static_int8(cnn, torch.randn(64, 1, 8, 8))
        >>> q.recipe["kind"], q.model(torch.randn(2, 1, 8, 8)).shape
        ('static_int8', torch.Size([2, 10]))
    """
    recipe = quantized.static_recipe(model, engine=engine, qconfig=qconfig)
    observed = quantized.prepare(_cpu(model), recipe)
    seen = 0
    with torch.no_grad():
        for xb in itertools.islice(_batches(calibration, model.config.input_shape, batch_size), batches):
            observed(xb)  # the observers record the activations' ranges
            seen += len(xb)
    if seen == 0:
        raise DataError("the calibration set is empty", hint="pass some training inputs, e.g. 256 samples")
    return Quantized(quantized.convert(observed, model, recipe), recipe, _cpu_state(observed))


def dynamic_int8(model: nn.Module) -> Quantized:
    """Dynamic int8 (Linear, LSTM and GRU weights) in the form an artifact stores: the
    recipe ``{"kind": "dynamic_int8"}`` and the fp32 state, quantized again at load.

    Example:
        >>> q = dynamic_int8(nn.Sequential(nn.Linear(4, 8)))
        >>> q.recipe
        {'kind': 'dynamic_int8'}
    """
    return Quantized(quantized.dynamic(model), {"kind": "dynamic_int8"}, _cpu_state(model))


def _cpu(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _batches(calibration: Any, input_shape: tuple[int, ...], batch_size: int) -> Iterator[torch.Tensor]:
    """Calibration batches (B, *input_shape) on the CPU, whatever form ``calibration`` has."""
    if isinstance(calibration, TensorDataset):
        calibration = calibration.tensors[0]
    elif isinstance(calibration, Dataset) and hasattr(calibration, "__len__"):
        calibration = torch.stack([torch.as_tensor(calibration[i][0]) for i in range(len(calibration))])
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.split(batch_size)
    for batch in calibration:
        xb = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(xb, torch.Tensor) or xb.ndim < 1 or tuple(xb.shape[1:]) != tuple(input_shape):
            shape = tuple(xb.shape) if isinstance(xb, torch.Tensor) else type(xb).__name__
            raise DataError(f"calibration batch of shape {shape}; the model expects per-sample shape "
                            f"{tuple(input_shape)}, i.e. batches (B, {', '.join(map(str, input_shape))})",
                            hint="calibrate on model-ready training inputs (encoded like the training split)")
        yield xb.detach().cpu().float()


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference (its Linear layers; ``model`` is unchanged).

    Uses ``torch.ao.quantization.quantize_dynamic``, which PyTorch has deprecated in
    favour of torchao; it still works in the torch dlforge pins, and its warnings are muted.
    """
    source = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices, one per layer
        return torch.ao.quantization.quantize_dynamic(source, {nn.Linear}, dtype=torch.qint8)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored: float parameters and buffers at their dtype,
    the packed int8 weights (and fp32 biases) of dynamically quantized Linear layers."""
    total = 0
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    for tensor in [*model.parameters(), *model.buffers()]:
        total += tensor.numel() * tensor.element_size()
    return total
