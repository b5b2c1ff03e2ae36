"""build / config_from_spec / spec_of: filling from data, round trips, and every ConfigError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlforge.errors import ConfigError
from dlforge.models import (
    ARCHS,
    CNN,
    MLP,
    CNNConfig,
    MLPConfig,
    build,
    config_from_spec,
    spec_of,
)


def test_archs_map_names_to_config_and_model() -> None:
    from dlforge.models.rnn import RNNClassifier, RNNConfig
    from dlforge.models.bert import BertClassifier, BertConfig
    from dlforge.models.transformer import TransformerClassifier, TransformerConfig
    from dlforge.models.ensemble import Ensemble, EnsembleConfig
    from dlforge.models.unet import UNet, UNetConfig

    assert ARCHS == {"mlp": (MLPConfig, MLP), "cnn": (CNNConfig, CNN), "rnn": (RNNConfig, RNNClassifier),
                     "transformer": (TransformerConfig, TransformerClassifier), "bert": (BertConfig, BertClassifier),
                     "ensemble": (EnsembleConfig, Ensemble), "unet": (UNetConfig, UNet)}
    assert MLP.ARCH == "mlp" and CNN.ARCH == "cnn" and RNNClassifier.ARCH == "rnn"


ROUND_TRIP_SPECS = [
    ({"arch": "mlp"}, (1, 8, 8)),
    (
        {"arch": "mlp", "hidden": [20, 10], "activation": "gelu", "batch_norm": "after",
         "dropout": 0.2, "init": "he"},
        (5,),
    ),
    ({"arch": "cnn"}, (3, 16, 16)),
    (
        {"arch": "cnn", "channels": [4, 8, 8], "kernel_size": 5, "batch_norm": False,
         "pool": None, "global_pool": "max", "dropout": 0.1, "init": "xavier"},
        (2, 9, 7),
    ),
]


@pytest.mark.parametrize(("spec", "input_shape"), ROUND_TRIP_SPECS)
def test_spec_round_trip_rebuilds_the_same_model(spec: dict, input_shape: tuple) -> None:
    torch.manual_seed(0)
    model = build(spec, input_shape=input_shape, num_outputs=4).eval()
    saved = json.loads(json.dumps(spec_of(model)))  # what an artifact's model.json holds
    assert saved["arch"] == spec["arch"] and saved["input_shape"] == list(input_shape)
    for key, value in spec.items():
        assert saved[key] == value

    rebuilt = build(saved).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert spec_of(rebuilt) == saved
    x = torch.randn(3, *input_shape)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_spec_of_uses_lists_and_every_config_field() -> None:
    spec = spec_of(build({"arch": "cnn"}, input_shape=(1, 8, 8), num_outputs=2))
    assert spec == {
        "arch": "cnn",
        "input_shape": [1, 8, 8],
        "num_outputs": 2,
        "channels": [32, 64],
        "kernel_size": 3,
        "batch_norm": True,
        "activation": "relu",
        "dropout": 0.0,
        "pool": "max",
        "global_pool": "avg",
        "init": "default",
    }


def test_spec_of_rejects_foreign_modules() -> None:
    with pytest.raises(ConfigError, match="Linear is not a dlforge model") as info:
        spec_of(torch.nn.Linear(2, 2))
    assert "mlp, cnn" in info.value.hint


def test_data_fills_missing_keys_and_accepts_torch_and_numpy_shapes() -> None:
    config = config_from_spec(
        {"arch": "mlp", "hidden": [8]},
        input_shape=torch.Size([np.int64(1), 4]),
        num_outputs=np.int64(3),
    )
    assert config == MLPConfig(input_shape=(1, 4), num_outputs=3, hidden=(8,))
    assert type(config.input_shape[0]) is int and type(config.num_outputs) is int


def test_spec_values_that_agree_with_the_data_are_kept() -> None:
    spec = {"arch": "cnn", "input_shape": [1, 8, 8], "num_outputs": 10, "channels": [4]}
    original = json.dumps(spec)
    model = build(spec, input_shape=(1, 8, 8), num_outputs=10)
    assert model.config.input_shape == (1, 8, 8) and model.config.channels == (4,)
    assert json.dumps(spec) == original  # the caller's spec is not modified


def test_spec_alone_builds_without_data() -> None:
    model = build({"arch": "mlp", "input_shape": [6], "num_outputs": 2, "hidden": []})
    assert model(torch.zeros(1, 6)).shape == (1, 2)


def test_configs_validate_when_built_directly_in_python() -> None:
    assert MLPConfig(input_shape=[3], num_outputs=2, hidden=[4]).hidden == (4,)
    with pytest.raises(ConfigError, match=r"model\.dropout is -0\.1"):
        MLPConfig(input_shape=(3,), num_outputs=2, dropout=-0.1)
    with pytest.raises(ConfigError, match=r"model\.channels has the wrong type"):
        CNNConfig(input_shape=(1, 4, 4), num_outputs=2, channels="abc")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build({"arch": "mlp", "dropout": 2.0}, input_shape=(3,), num_outputs=2)


M = {"input_shape": (64,), "num_outputs": 10}  # what MLP data provides
C = {"input_shape": (3, 32, 32), "num_outputs": 10}  # what image data provides
MLP_KEYS = "arch, input_shape, num_outputs, hidden, activation, batch_norm, dropout, init"

# (spec, data passed to build, start of the message, part of the hint)
BAD_SPECS = [
    # arch
    ({}, M, "model.arch is missing", "allowed values: mlp, cnn"),
    ({"arch": "resnet"}, M, "model.arch 'resnet' is unknown", "allowed values: mlp, cnn"),
    ({"arch": ["mlp"]}, M, "model.arch ['mlp'] is unknown", "mlp, cnn"),
    # unknown and missing keys
    ({"arch": "mlp", "hiden": [8]}, M, "model.hiden is not a setting of the mlp model",
     f"did you mean 'hidden'? allowed keys: {MLP_KEYS}"),
    ({"arch": "cnn", "pooling": "max"}, C, "model.pooling is not a setting of the cnn model",
     "global_pool"),
    ({"arch": "mlp"}, {"num_outputs": 2}, "model.input_shape is missing", "pass input_shape="),
    ({"arch": "cnn", "input_shape": [1, 8, 8]}, {}, "model.num_outputs is missing", "num_outputs"),
    # the data disagrees with the spec
    ({"arch": "mlp", "num_outputs": 3}, M,
     "model.num_outputs is 3 but the data has 10 classes", "remove model.num_outputs"),
    ({"arch": "cnn", "input_shape": [1, 28, 28]}, C,
     "model.input_shape is [1, 28, 28] but the data has samples of shape [3, 32, 32]",
     "remove model.input_shape"),
    # wrong types
    ({"arch": "cnn", "channels": "abc"}, C, "model.channels has the wrong type: 'abc'",
     "a list of integers, like the default [32, 64]"),
    ({"arch": "cnn", "channels": [32, "x"]}, C, "model.channels[1] has the wrong type: 'x'",
     "a list of integers"),
    ({"arch": "mlp", "hidden": [8.5]}, M, "model.hidden[0] has the wrong type: 8.5",
     "a list of integers"),
    ({"arch": "mlp", "dropout": "x"}, M, "model.dropout has the wrong type: 'x'",
     "a number, like the default 0.0"),
    ({"arch": "cnn", "kernel_size": "3"}, C, "model.kernel_size has the wrong type: '3'",
     "an integer"),
    ({"arch": "cnn", "batch_norm": "yes"}, C, "model.batch_norm has the wrong type: 'yes'",
     "true or false"),
    ({"arch": "mlp", "batch_norm": True}, M, "model.batch_norm has the wrong type: True",
     "a string or null"),
    ({"arch": "mlp", "activation": 1}, M, "model.activation has the wrong type: 1", "a string"),
    ({"arch": "mlp", "num_outputs": True}, {"input_shape": (4,)},
     "model.num_outputs has the wrong type: True", "an integer"),
    ({"arch": "cnn", "global_pool": None}, C, "model.global_pool has the wrong type: None",
     "a string"),
    # out of range
    ({"arch": "mlp", "dropout": 1.0}, M, "model.dropout is 1.0, outside [0, 1)", "[0, 1)"),
    ({"arch": "cnn", "dropout": -0.5}, C, "model.dropout is -0.5", "[0, 1)"),
    ({"arch": "mlp", "hidden": [64, 0]}, M, "model.hidden[1] is 0", "positive"),
    ({"arch": "cnn", "channels": []}, C, "model.channels is empty", "at least one"),
    ({"arch": "cnn", "channels": [-8]}, C, "model.channels[0] is -8", "positive"),
    ({"arch": "mlp"}, {"input_shape": (0, 4), "num_outputs": 2}, "model.input_shape[0] is 0",
     "positive"),
    ({"arch": "mlp", "num_outputs": 0}, {"input_shape": (4,)}, "model.num_outputs is 0",
     "positive"),
    ({"arch": "cnn", "kernel_size": 4}, C, "model.kernel_size is 4", "odd"),
    ({"arch": "cnn", "kernel_size": 0}, C, "model.kernel_size is 0", "odd"),
    ({"arch": "cnn"}, {"input_shape": (64,), "num_outputs": 2},
     "model.input_shape is [64], but a cnn needs (C, H, W)", "arch: mlp"),
    # unknown values
    ({"arch": "mlp", "activation": "swish"}, M, "model.activation is 'swish'",
     "allowed values: relu, leaky_relu, gelu, tanh, sigmoid, identity"),
    ({"arch": "cnn", "activation": "RELU"}, C, "model.activation is 'RELU'", "relu, leaky_relu"),
    ({"arch": "mlp", "init": "kaiming"}, M, "model.init is 'kaiming'",
     "allowed values: default, xavier, he"),
    ({"arch": "mlp", "batch_norm": "middle"}, M, "model.batch_norm is 'middle'",
     "allowed values: null, before, after"),
    ({"arch": "cnn", "pool": "none"}, C, "model.pool is 'none'", "allowed values: max, avg, null"),
    ({"arch": "cnn", "global_pool": "sum"}, C, "model.global_pool is 'sum'",
     "allowed values: avg, max"),
]


@pytest.mark.parametrize(("spec", "data", "message", "hint"), BAD_SPECS)
def test_bad_specs_name_the_key_and_say_what_is_allowed(spec, data, message, hint) -> None:
    with pytest.raises(ConfigError) as info:
        build(spec, **data)
    assert info.value.message.startswith(message), info.value.message
    assert hint in info.value.hint


def test_non_mapping_spec_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model must be a mapping, got str"):
        build("mlp", input_shape=(4,), num_outputs=2)  # type: ignore[arg-type]
