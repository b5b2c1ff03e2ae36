"""Topic 20 at the quick budget: weight counts, equivariance, shifted digits."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn

from dlforge.lab import q20_parameter_sharing as q20
from dlforge.models import build

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(20).numbers


@pytest.mark.parametrize("side", [8, 16])
def test_weight_counts_match_formulas_and_real_modules(side):
    counts = q20.weight_counts(side)
    pixels, c = side * side, q20.CONV_CHANNELS
    assert counts["conv"] == c * 9 + c
    assert counts["dense"] == pixels * c * pixels + c * pixels
    real_cnn = build(q20.CNN_SPEC, input_shape=(1, side, side), num_outputs=10)  # counted off the meta device
    real_mlp = build(q20.MLP_SPEC, input_shape=(1, side, side), num_outputs=10)
    assert counts["cnn"] == sum(p.numel() for p in real_cnn.parameters())
    assert counts["mlp"] == sum(p.numel() for p in real_mlp.parameters())


def test_equivariance_error_is_zero_for_a_conv_and_large_for_a_dense_map():
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 12, 12)
    x[..., 2:10, 2:10] = torch.rand(4, 1, 8, 8)  # ink inside a 2-pixel background border
    conv = nn.Conv2d(1, 3, 3, padding=1)
    assert q20.equivariance_error(conv, x, 1, 2, margin=3) < 1e-6
    dense = nn.Linear(144, 144)
    as_image = lambda t: dense(t.flatten(1)).view(-1, 1, 12, 12)  # noqa: E731
    assert q20.equivariance_error(as_image, x, 1, 2, margin=3) > 1e-2
    # rolling by up to the border width is a true shift: no ink wraps around
    torch.testing.assert_close(q20._shift(x, 2, -2).sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))
    assert q20._shift(x, 2, -2)[..., :4, :].abs().sum() == 0


def test_numbers(numbers):
    assert numbers["conv_weights_per_side"] == [80] * len(q20.SIZES)
    assert len(set(numbers["cnn_model_weights_per_side"])) == 1  # global pooling: size-free
    assert 3.9 <= numbers["dense_growth_exponent"] <= 4.0  # (H W)^2 weights plus H W biases
    assert numbers["conv_equivariance_max_abs_diff"] <= 1e-5
    for name in ("cnn", "mlp"):
        assert numbers[f"{name}_accuracy_centred"] >= 0.9  # both learned centred digits
        drop = numbers[f"{name}_accuracy_centred"] - numbers[f"{name}_accuracy_shifted"]
        assert math.isclose(drop, numbers[f"{name}_accuracy_drop"], abs_tol=1e-4)


def test_docstring_examples():
    result = doctest.testmod(q20, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
