"""init_weights and ACTIVATIONS, checked against the formulas and torch's functional ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import ConfigError
from dlforge.nn import ACTIVATIONS, INIT_SCHEMES, init_weights

FAN_IN, FAN_OUT = 2048, 1024  # 2M weights: the sample std is within ~0.1% of the truth


@pytest.mark.parametrize(
    ("nonlinearity", "gain"),
    [
        ("relu", math.sqrt(2)),
        ("leaky_relu", math.sqrt(2)),
        ("gelu", math.sqrt(2)),
        ("tanh", 5 / 3),
        ("sigmoid", 1.0),
        ("identity", 1.0),
    ],
)
def test_he_linear_std_is_gain_over_sqrt_fan_in(nonlinearity: str, gain: float) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    init_weights(layer, "he", nonlinearity)
    expected = gain / math.sqrt(FAN_IN)
    assert layer.weight.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(layer.weight.mean().item()) < 0.01 * expected
    assert torch.count_nonzero(layer.bias) == 0


def test_he_conv_uses_fan_in_of_the_kernel() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 256, kernel_size=3)
    init_weights(conv, "he", "relu")
    fan_in = 64 * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0


def test_xavier_stays_within_the_uniform_bound_and_fills_it() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    init_weights(layer, "xavier")
    bound = math.sqrt(6 / (FAN_IN + FAN_OUT))
    w = layer.weight.detach()
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.999 * bound  # uniform, so the edges are reached
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("scheme", ["xavier", "he"])
def test_batch_norm_is_reset_to_identity_affine(scheme: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        for bn in (net[1], net[3]):
            bn.weight.uniform_(2, 3)
            bn.bias.uniform_(2, 3)
    init_weights(net, scheme)
    for bn in (net[1], net[3]):
        torch.testing.assert_close(bn.weight.detach(), torch.ones(bn.num_features))
        torch.testing.assert_close(bn.bias.detach(), torch.zeros(bn.num_features))


def test_default_leaves_pytorch_init_untouched() -> None:
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Conv1d(2, 3, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_weights(net, "default", "tanh")
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unknown_scheme_names_model_init_and_lists_schemes() -> None:
    with pytest.raises(ConfigError, match=r"model\.init is 'glorot'") as info:
        init_weights(nn.Linear(2, 2), "glorot")
    assert info.value.hint == "allowed values: default, xavier, he"
    assert INIT_SCHEMES == ("default", "xavier", "he")


def test_unknown_nonlinearity_names_model_activation() -> None:
    with pytest.raises(ConfigError, match=r"model\.activation is 'swish'") as info:
        init_weights(nn.Linear(2, 2), "he", "swish")
    assert "relu" in info.value.hint and "identity" in info.value.hint


REFERENCE_ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.01),
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_ACTIVATIONS))
def test_activation_matches_torch_functional(name: str) -> None:
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(ACTIVATIONS[name]()(x), REFERENCE_ACTIVATIONS[name](x))


def test_activation_names_and_fresh_instances() -> None:
    assert set(ACTIVATIONS) == set(REFERENCE_ACTIVATIONS)
    # A shared instance would make per-layer hooks fire for every layer at once.
    assert ACTIVATIONS["relu"]() is not ACTIVATIONS["relu"]()
