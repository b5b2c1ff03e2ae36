"""The MLP against hand-built torch.nn.Sequential references with the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlforge.errors import DataError
from dlforge.models.mlp import MLP, MLPConfig, build_mlp

REFERENCE_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and buffers in registration order (the layouts differ in names)."""
    src_tensors = [*src.parameters(), *src.buffers()]
    dst_tensors = [*dst.parameters(), *dst.buffers()]
    assert [t.shape for t in src_tensors] == [t.shape for t in dst_tensors]
    with torch.no_grad():
        for s, d in zip(src_tensors, dst_tensors):
            d.copy_(s)


def reference_mlp(
    in_features: int, hidden: tuple[int, ...], out: int, act, batch_norm: str | None
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers.append(nn.Linear(in_features, width, bias=batch_norm != "before"))
        if batch_norm == "before":
            layers.append(nn.BatchNorm1d(width))
        layers.append(act())
        if batch_norm == "after":
            layers.append(nn.BatchNorm1d(width))
        in_features = width
    layers.append(nn.Linear(in_features, out))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation", sorted(REFERENCE_ACTIVATIONS))
def test_matches_sequential_for_each_activation(activation: str) -> None:
    torch.manual_seed(0)
    model = MLP(
        MLPConfig(input_shape=(1, 8, 8), num_outputs=10, hidden=(32, 16), activation=activation)
    )
    ref = reference_mlp(64, (32, 16), 10, REFERENCE_ACTIVATIONS[activation], None)
    copy_weights(model, ref)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(model(x), ref(x))


@pytest.mark.parametrize("batch_norm", ["before", "after"])
def test_batch_norm_matches_sequential_in_train_and_eval(batch_norm: str) -> None:
    torch.manual_seed(0)
    model = build_mlp((12,), 3, hidden=(16, 8), batch_norm=batch_norm)
    ref = reference_mlp(12, (16, 8), 3, nn.ReLU, batch_norm)
    copy_weights(model, ref)
    kinds = [type(m).__name__ for m in model.layers[0]]
    if batch_norm == "before":
        expected = ["Linear", "BatchNorm1d", "ReLU"]
    else:
        expected = ["Linear", "ReLU", "BatchNorm1d"]
    assert kinds == expected

    x = torch.randn(32, 12) * 3 + 1
    model.train(), ref.train()
    torch.testing.assert_close(model(x), ref(x))
    # Both updated their running statistics the same way.
    torch.testing.assert_close([*model.buffers()], [*ref.buffers()])

    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x))
    assert not torch.allclose(model.train()(x), model.eval()(x))  # BN really switched modes


def test_no_hidden_layers_is_a_linear_model() -> None:
    model = build_mlp((2, 3), 4, hidden=())
    x = torch.randn(7, 2, 3)
    expected = torch.nn.functional.linear(x.flatten(1), model.head.weight, model.head.bias)
    torch.testing.assert_close(model(x), expected)
    assert len(model.layers) == 0 and model.features(x) == []


def test_dropout_drops_in_train_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    p = 0.5
    # Identity activation: any exact zero in a block's output comes from dropout.
    model = build_mlp((20,), 3, hidden=(2000,), activation="identity", dropout=p)
    x = torch.randn(16, 20)

    model.eval()
    clean = model.features(x)[0]
    twin = build_mlp((20,), 3, hidden=(2000,), activation="identity")
    twin.load_state_dict(model.state_dict())
    twin.eval()
    torch.testing.assert_close(model(x), twin(x))

    model.train()
    dropped = model.features(x)[0]
    kept = dropped != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.02)
    torch.testing.assert_close(dropped[kept], clean[kept] / (1 - p))  # inverted dropout
    assert not torch.allclose(model(x), twin(x))


def test_features_returns_each_hidden_block_output() -> None:
    torch.manual_seed(0)
    model = build_mlp((1, 4, 4), 5, hidden=(12, 7, 3), activation="tanh").eval()
    x = torch.randn(6, 1, 4, 4)
    feats = model.features(x)
    assert [tuple(f.shape) for f in feats] == [(6, 12), (6, 7), (6, 3)]
    torch.testing.assert_close(feats[0], model.layers[0](x.flatten(1)))
    torch.testing.assert_close(model.head(feats[-1]), model(x))


def test_he_init_gives_hidden_layers_relu_gain_and_the_head_linear_gain() -> None:
    torch.manual_seed(0)
    model = build_mlp((1024,), 1024, hidden=(1024,), init="he")
    assert model.layers[0][0].weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    assert model.head.weight.std().item() == pytest.approx(math.sqrt(1 / 1024), rel=0.02)
    assert torch.count_nonzero(model.layers[0][0].bias) == 0


def test_wrong_input_shape_says_what_was_expected() -> None:
    model = build_mlp((1, 8, 8), 10)
    with pytest.raises(DataError, match=r"shape \(4, 64\), expected \(B, 1, 8, 8\)"):
        model(torch.zeros(4, 64))
    with pytest.raises(DataError, match=r"expected \(B, 1, 8, 8\)"):
        model(torch.zeros(1, 8, 8))  # a single sample without its batch dimension
