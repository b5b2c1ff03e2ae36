"""Post-training dynamic int8 quantization of ``nn.Linear`` layers (CPU inference).

Dynamic quantization stores each Linear layer's weights as int8 with one scale per
tensor and quantizes activations on the fly, batch by batch. It needs no calibration
data, so a server can apply it when it loads a model: the artifact on disk stays fp32
safetensors (``dlforge serve --quantize int8``).

Whether it is faster depends on the model: it pays where reading the weights dominates
(wide layers, a batch of a few samples); for a small layer the extra per-call work of
quantizing the activations costs more than it saves. Measure (lab topic 30 does).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    >>> small = quantize_dynamic_int8(model)
    >>> round(weight_bytes(small) / weight_bytes(model), 2)
    0.26
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


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
