"""The U-Net against a hand-computed shape table and parameter count, 2D and 3D."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlforge.errors import ConfigError, DataError
from dlforge.models import build, spec_of
from dlforge.models.unet import UNet, UNetConfig, build_unet

# (input_shape, widths, num_outputs) -> every level's map for a batch of 2, by hand:
# level i has widths[i] channels and each spatial side divided by 2**i.
SHAPE_TABLE = [
    (
        (1, 32, 48), (4, 8, 16, 32), 3,
        [(2, 4, 32, 48), (2, 8, 16, 24), (2, 16, 8, 12), (2, 32, 4, 6)],  # encoder levels 0..3
        [(2, 4, 32, 48), (2, 8, 16, 24), (2, 16, 8, 12)],  # decoder levels 0..2
        (2, 3, 32, 48),  # logits
    ),
    (
        (2, 8, 16, 12), (4, 8, 16), 2,
        [(2, 4, 8, 16, 12), (2, 8, 4, 8, 6), (2, 16, 2, 4, 3)],
        [(2, 4, 8, 16, 12), (2, 8, 4, 8, 6)],
        (2, 2, 8, 16, 12),
    ),
]


@pytest.mark.parametrize("input_shape, widths, classes, encoder, decoder, logits", SHAPE_TABLE)
def test_every_level_has_the_hand_computed_shape(input_shape, widths, classes, encoder, decoder, logits):
    model = build_unet(input_shape, classes, widths=widths)
    x = torch.randn(2, *input_shape)
    seen = {}
    for i, level in enumerate(model.decoder):
        level.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, tuple(out.shape)))
    assert [tuple(f.shape) for f in model.encode(x)] == encoder
    assert tuple(model(x).shape) == logits
    assert [seen[i] for i in range(len(decoder))] == decoder


def hand_count(in_channels: int, widths: tuple[int, ...], classes: int, dims: int, skip: bool = True) -> int:
    """Parameters by the formula: conv blocks have no bias; each norm learns a scale and shift."""
    kernel, up_kernel = 3**dims, 2**dims

    def block(c_in: int, c_out: int) -> int:
        return c_in * c_out * kernel + 2 * c_out

    total = block(in_channels, widths[0]) + block(widths[0], widths[0])
    for prev, w in itertools.pairwise(widths):
        total += block(prev, w) + block(w, w)  # strided-down stage
        # transposed conv (with bias) back to `prev`, then the decoder stage on the concat
        total += w * prev * up_kernel + prev + block((2 if skip else 1) * prev, prev) + block(prev, prev)
    return total + widths[0] * classes + classes  # 1x1 head with bias


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_of_a_small_unet_worked_out_by_hand():
    # enc0 (1*4*9+8) + (4*4*9+8) = 196; enc1 (4*8*9+16) + (8*8*9+16) = 896;
    # up0 8*4*4+4 = 132; dec0 (8*4*9+8) + (4*4*9+8) = 448; head 4*2+2 = 10.
    assert count(build_unet((1, 8, 8), 2, widths=(4, 8))) == 196 + 896 + 132 + 448 + 10


@pytest.mark.parametrize("input_shape, widths, classes", [(s[0], s[1], s[2]) for s in SHAPE_TABLE])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_parameter_count_matches_the_formula(input_shape, widths, classes, norm):
    model = build_unet(input_shape, classes, widths=widths, norm=norm)
    assert count(model) == hand_count(input_shape[0], widths, classes, len(input_shape) - 1)


@pytest.mark.parametrize("input_shape, widths, classes", [(s[0], s[1], s[2]) for s in SHAPE_TABLE])
def test_without_skip_connections_each_decoder_conv_loses_one_width_of_inputs(input_shape, widths, classes):
    dims = len(input_shape) - 1
    with_skip = count(build_unet(input_shape, classes, widths=widths))
    without = build_unet(input_shape, classes, widths=widths, skip_connections=False)
    assert count(without) == hand_count(input_shape[0], widths, classes, dims, skip=False)
    assert with_skip - count(without) == sum(w * w * 3**dims for w in widths[:-1])
    assert without(torch.randn(1, *input_shape)).shape == (1, classes, *input_shape[1:])


@pytest.mark.parametrize("input_shape, widths, classes, encoder, decoder, logits", SHAPE_TABLE)
def test_deep_supervision_adds_heads_on_inner_decoder_levels(input_shape, widths, classes, encoder, decoder, logits):
    model = build_unet(input_shape, classes, widths=widths, deep_supervision=True)
    # One 1x1 head (with bias) per decoder level 1..depth-2.
    aux = sum(w * classes + classes for w in widths[1:-1])
    assert count(model) == hand_count(input_shape[0], widths, classes, len(input_shape) - 1) + aux
    x = torch.randn(2, *input_shape)
    outputs = model.train()(x)
    # Training: main logits, then one map per inner decoder level at that level's size.
    assert [tuple(o.shape) for o in outputs] == [logits] + [(2, classes, *d[2:]) for d in decoder[1:]]
    assert tuple(model.eval()(x).shape) == logits  # eval: only the main output


def test_spec_round_trip_rebuilds_the_same_architecture():
    model = build({"arch": "unet", "widths": [4, 8], "norm": "batch", "dropout": 0.1,
                   "skip_connections": False}, input_shape=(1, 4, 8, 8), num_outputs=2)
    spec = spec_of(model)
    assert spec == {"arch": "unet", "input_shape": [1, 4, 8, 8], "num_outputs": 2, "widths": [4, 8],
                    "norm": "batch", "dropout": 0.1, "skip_connections": False, "deep_supervision": False}
    again = build(spec)
    assert isinstance(again, UNet) and again.config == model.config
    assert [tuple(p.shape) for p in again.parameters()] == [tuple(p.shape) for p in model.parameters()]


def test_eval_forward_is_deterministic_with_dropout():
    model = build_unet((1, 8, 8), 2, widths=(4, 8), dropout=0.5).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("options, message", [
    ({"input_shape": (1, 30, 32)}, "not divisible by 8"),
    ({"input_shape": (1, 32)}, "needs (C, H, W) or (C, D, H, W)"),
    ({"norm": "group"}, "model.norm is 'group'"),
    ({"widths": ()}, "model.widths is empty"),
    ({"dropout": 1.0}, "model.dropout is 1.0"),
])
def test_bad_configs_are_clear_config_errors(options, message):
    values = {"input_shape": (1, 32, 32), "num_outputs": 2, "widths": (4, 8, 16, 32), **options}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        UNetConfig(**values)


@pytest.mark.parametrize("shape, message", [((1, 8, 8), "expected \\(B, C, H, W\\)"),
                                            ((1, 3, 8, 8), "with C = 1"),
                                            ((1, 1, 8, 9), "not all divisible by 2")])
def test_wrong_inputs_are_data_errors(shape, message):
    model = build_unet((1, 8, 8), 2, widths=(4, 8))
    with pytest.raises(DataError, match=message):
        model(torch.zeros(shape))


def test_docstring_examples_run():
    import doctest

    import dlforge.models.unet as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
