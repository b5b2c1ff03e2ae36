"""Dynamic int8 quantization against PyTorch's fp32 module and its own quantized Linear."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.testing import assert_close

from dlforge.compress import quantize_dynamic_int8, weight_bytes
from dlforge.models import build


def test_int8_copy_is_close_to_fp32_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [128, 128]}, input_shape=(64,), num_outputs=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = quantize_dynamic_int8(model)
    x = torch.randn(32, 64)
    with torch.inference_mode():
        ref, got = model(x), small(x)
    # int8 weights with one scale per tensor: errors of a few per cent of the logits' spread
    assert (got - ref).abs().max() < 0.05 * ref.std()
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the fp32 model is unchanged
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3


def test_each_layer_equals_torch_dynamic_quantized_linear() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(32, 16)
    (qlayer,) = [m for m in quantize_dynamic_int8(nn.Sequential(layer)).modules()
                 if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    layer.qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.ao.nn.quantized.dynamic.Linear.from_float(layer)
    x = torch.randn(8, 32)
    assert_close(qlayer(x), reference(x), rtol=0, atol=0)


def test_weight_bytes_counts_int8_weights() -> None:
    model = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 10))
    fp32 = (100 * 200 + 200 + 200 * 10 + 10) * 4
    assert weight_bytes(model) == fp32
    assert weight_bytes(quantize_dynamic_int8(model)) == 100 * 200 + 200 * 10 + (200 + 10) * 4
