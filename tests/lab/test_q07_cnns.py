"""Topic 7 at the quick budget: CNN versus MLP on digits at a counted parameter budget."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from torch import nn

from dlforge.lab import q07_cnns as q07

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(7)


def test_parameter_counts_match_the_architectures_by_hand(finding):
    n = finding.numbers
    c1, c2 = q07.CNN_SPEC["channels"]
    k = q07.CNN_SPEC["kernel_size"]
    # conv (no bias: BN follows) + BN scale and shift, twice, then the linear head
    cnn = 1 * c1 * k * k + 2 * c1 + c1 * c2 * k * k + 2 * c2 + c2 * 10 + 10
    assert n["cnn_params"] == cnn
    h = n["mlp_hidden_width"]
    assert n["mlp_params"] == 64 * h + h + h * 10 + 10
    assert abs(n["mlp_params"] - n["cnn_params"]) <= (64 + 1 + 10) / 2  # the closest width
    h1, h2 = q07.BIG_MLP_HIDDEN
    assert n["big_mlp_params"] == 64 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10


def test_count_parameters_agrees_with_pytorch():
    layer = nn.Conv2d(3, 8, 5)
    assert q07.count_parameters(layer) == 3 * 8 * 25 + 8
    assert q07.count_parameters(layer) == sum(p.numel() for p in layer.parameters())


def test_matched_width_inverts_the_parameter_formula():
    for width in (5, 40, 69, 300):
        params = width * (64 + 1) + 10 * (width + 1)
        assert q07.matched_mlp_width(params, 64, 10) == width


def test_first_conv_layer_versus_a_dense_layer_with_the_same_output(finding):
    n = finding.numbers
    c1 = q07.CNN_SPEC["channels"][0]
    assert n["conv1_weights"] == c1 * 3 * 3
    assert n["conv1_dense_equivalent_weights"] == 64 * (c1 * 64)  # 8x8 in, 16 maps of 8x8 out
    assert n["conv1_receptive_field_fraction"] == round(9 / 64, 4)


def test_all_three_models_learn_digits(finding):
    n = finding.numbers
    for name in ("cnn", "mlp", "big_mlp"):
        assert 0.9 <= n[f"{name}_test_accuracy"] <= 1.0
    assert n["big_mlp_over_cnn_params"] > 10


def test_figure_shows_filters(finding):
    image = Image.open(io.BytesIO(base64.b64decode(finding.figures[0].png_base64)))
    assert image.format == "PNG" and image.width > 400


def test_the_checks_read_paired_gaps_over_seeds(finding):
    n = finding.numbers
    assert len(finding.seeds) >= 3
    for other in ("mlp", "big_mlp"):
        gap = n[f"cnn_minus_{other}_accuracy"]
        # the mean of the per-seed gaps is the gap of the mean accuracies (up to rounding)
        assert gap == pytest.approx(n["cnn_test_accuracy"] - n[f"{other}_test_accuracy"], abs=2e-4)
        per_seed = finding.per_seed.get(f"cnn_minus_{other}_accuracy", [gap] * len(finding.seeds))
        assert len(per_seed) == len(finding.seeds) and abs(gap) < 0.1
    assert finding.intervals["cnn_minus_mlp_accuracy"].low > 0  # the claim at equal weights
