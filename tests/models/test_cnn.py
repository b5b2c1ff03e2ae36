"""The CNN against a forward pass written with torch.nn.functional and the same weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import DataError
from dlforge.models.cnn import CNN, CNNConfig, build_cnn

FUNCTIONAL_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


def functional_forward(
    model: CNN, x: torch.Tensor, running: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """The CNN written out with F ops; ``running`` holds copies of the BN running stats."""
    cfg = model.config
    act = FUNCTIONAL_ACTIVATIONS[cfg.activation]
    for i, block in enumerate(model.blocks):
        conv = block[0]
        x = F.conv2d(x, conv.weight, conv.bias, padding=cfg.kernel_size // 2)
        if cfg.batch_norm:
            bn = block[1]
            mean, var = running[i]
            x = F.batch_norm(
                x, mean, var, bn.weight, bn.bias, training=model.training, momentum=0.1, eps=1e-5
            )
        x = act(x)
        if cfg.pool == "max" and min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, 2)
        elif cfg.pool == "avg" and min(x.shape[-2:]) >= 2:
            x = F.avg_pool2d(x, 2)
    if cfg.global_pool == "avg":
        pooled = F.adaptive_avg_pool2d(x, 1)
    else:
        pooled = F.adaptive_max_pool2d(x, 1)
    return F.linear(pooled.flatten(1), model.head.weight, model.head.bias)


@pytest.mark.parametrize(
    "options",
    [
        dict(batch_norm=True, pool="max", global_pool="avg", activation="relu", kernel_size=3),
        dict(batch_norm=False, pool="avg", global_pool="max", activation="gelu", kernel_size=5),
        dict(batch_norm=True, pool=None, global_pool="avg", activation="tanh", kernel_size=1),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_matches_functional_forward(options: dict, training: bool) -> None:
    torch.manual_seed(0)
    model = build_cnn((3, 13, 11), 4, channels=(6, 8, 5), init="he", **options).train(training)
    if options["batch_norm"]:  # non-trivial running stats, so eval mode is really tested
        with torch.no_grad():
            for block in model.blocks:
                block[1].running_mean.uniform_(-1, 1)
                block[1].running_var.uniform_(0.5, 2)
    running = []
    if options["batch_norm"]:
        running = [(b[1].running_mean.clone(), b[1].running_var.clone()) for b in model.blocks]
    x = torch.randn(4, 3, 13, 11)

    expected = functional_forward(model, x, running)
    torch.testing.assert_close(model(x), expected)
    for block, (mean, var) in zip(model.blocks, running):
        torch.testing.assert_close(block[1].running_mean, mean)
        torch.testing.assert_close(block[1].running_var, var)


@pytest.mark.parametrize(
    ("input_shape", "channels", "sizes"),
    [
        ((1, 8, 8), (4, 8, 16), [(4, 4), (2, 2), (1, 1)]),
        ((1, 28, 28), (4, 8), [(14, 14), (7, 7)]),
        ((3, 5, 7), (4, 8, 16), [(2, 3), (1, 1), (1, 1)]),  # pooling stops at 1x1
        ((2, 2, 9), (4, 4), [(1, 4), (1, 4)]),  # one side reached 1: no more pooling
        ((1, 1, 1), (4,), [(1, 1)]),
    ],
)
def test_feature_and_output_shapes_for_odd_sizes(input_shape, channels, sizes) -> None:
    model = build_cnn(input_shape, 10, channels=channels)
    x = torch.randn(2, *input_shape)
    feats = model.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, *hw) for c, hw in zip(channels, sizes)]
    assert model(x).shape == (2, 10)


def test_no_pooling_keeps_the_image_size() -> None:
    model = build_cnn((2, 9, 6), 3, channels=(4, 4), pool=None, kernel_size=5)
    feats = model.features(torch.zeros(1, 2, 9, 6))
    assert [tuple(f.shape[-2:]) for f in feats] == [(9, 6), (9, 6)]


def test_dropout_acts_on_pooled_features_in_train_only() -> None:
    torch.manual_seed(0)
    p = 0.5
    model = build_cnn((1, 8, 8), 3, channels=(256,), dropout=p)
    seen: dict[str, torch.Tensor] = {}
    model.dropout.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    x = torch.randn(8, 1, 8, 8)

    model.train()
    model(x)
    assert seen["out"].shape == (8, 256)  # one vector per sample, just before the head
    kept = seen["out"] != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.05)
    torch.testing.assert_close(seen["out"][kept], seen["inp"][kept] / (1 - p))

    model.eval()
    twin = build_cnn((1, 8, 8), 3, channels=(256,))
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), twin.eval()(x))


def test_batch_norm_removes_the_redundant_conv_bias() -> None:
    with_bn = build_cnn((3, 8, 8), 2, channels=(4,))
    without = build_cnn((3, 8, 8), 2, channels=(4,), batch_norm=False)
    assert with_bn.blocks[0][0].bias is None
    assert isinstance(with_bn.blocks[0][1], torch.nn.BatchNorm2d)
    assert without.blocks[0][0].bias is not None and len(without.blocks[0]) == 2


def test_he_init_on_convs() -> None:
    torch.manual_seed(0)
    model = build_cnn((64, 8, 8), 10, channels=(128, 128), init="he")
    conv = model.blocks[1][0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.02)


@pytest.mark.parametrize("shape", [(1, 28, 28), (28, 28), (2, 3, 28, 28), (2, 1, 1, 28, 28)])
def test_wrong_rank_or_channels_names_the_expected_shape(shape) -> None:
    model = CNN(CNNConfig(input_shape=(1, 28, 28), num_outputs=10))
    with pytest.raises(DataError, match=r"expected \(B, C, H, W\) = \(B, 1, 28, 28\)"):
        model(torch.zeros(shape))
