"""Magnitude and structured pruning: masks match torch's, removal matches zero-masking."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.testing import assert_close

from dlforge.compress import magnitude_prune, prune_structured
from dlforge.errors import ConfigError
from dlforge.models import build, spec_of
from dlforge.registry import load_artifact, save_artifact


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_layer_scope_equals_torch_l1_unstructured() -> None:
    model, reference = _net(), _net()
    report = magnitude_prune(model, 0.4, scope="layer")
    for name in ("0", "3"):
        layer = dict(reference.named_modules())[name]
        prune.l1_unstructured(layer, "weight", amount=0.4)
        mine = dict(model.named_modules())[name].weight
        assert torch.equal(mine, layer.weight)
        assert torch.equal(mine == 0, layer.weight_mask == 0)
    assert report.sizes == {"0": 36, "3": 1440}
    assert report.zeros == {"0": 14, "3": 576}  # round(0.4 * 36), round(0.4 * 1440)
    assert report.sparsity == {"0": 14 / 36, "3": 0.4}
    assert report.total_sparsity == 590 / 1476
    assert set(model.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_global_scope_equals_torch_global_unstructured() -> None:
    model, reference = _net(), _net()
    report = magnitude_prune(model, 0.5)
    prune.global_unstructured([(reference[0], "weight"), (reference[3], "weight")],
                              pruning_method=prune.L1Unstructured, amount=0.5)
    assert torch.equal(model[0].weight, reference[0].weight)
    assert torch.equal(model[3].weight, reference[3].weight)
    assert report.total_sparsity == 738 / 1476
    assert report.zeros["0"] == int((reference[0].weight_mask == 0).sum())


def test_only_named_layers_are_pruned() -> None:
    model = _net()
    report = magnitude_prune(model, 0.5, layers=["3"])
    assert list(report.sizes) == ["3"] and int((model[0].weight == 0).sum()) == 0


@pytest.mark.parametrize("amount", [-0.1, 1.5, "half", True])
def test_bad_amount_is_a_config_error(amount) -> None:
    with pytest.raises(ConfigError, match="amount"):
        magnitude_prune(_net(), amount)
    with pytest.raises(ConfigError, match="amount"):
        prune_structured(_mlp(), amount)


def test_bad_scope_or_layer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="scope"):
        magnitude_prune(_net(), 0.5, scope="row")
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        magnitude_prune(_net(), 0.5, layers=["nope"])
    with pytest.raises(ConfigError, match="ReLU"):
        magnitude_prune(_net(), 0.5, layers=["1"])


def test_pruned_mlp_artifact_loads(tmp_path) -> None:
    model = _mlp()
    magnitude_prune(model, 0.7)
    loaded = load_artifact(save_artifact(model, tmp_path / "a", task="classification")).model
    assert torch.equal(loaded.layers[0][0].weight, model.layers[0][0].weight)


# --- structured ------------------------------------------------------------------------

def _mlp(**options) -> nn.Module:
    torch.manual_seed(1)
    spec = {"arch": "mlp", "hidden": [16, 12], **options}
    model = build(spec, input_shape=(1, 4, 4), num_outputs=3)
    _randomise_norms(model)
    return model.eval()


def _cnn(**options) -> nn.Module:
    torch.manual_seed(2)
    spec = {"arch": "cnn", "channels": [8, 6], **options}
    model = build(spec, input_shape=(2, 8, 8), num_outputs=3)
    _randomise_norms(model)
    return model.eval()


def _randomise_norms(model: nn.Module) -> None:
    """Give BatchNorms non-trivial statistics and affine, so the test checks they are sliced."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()


def _masked(model: nn.Module, blocks, kept) -> nn.Module:
    """A copy with each removed unit zeroed: weights, bias, and its BatchNorm's affine.

    Zeroing gamma and beta makes BN output 0 whatever its running statistics, so a removed
    unit outputs act(0) (or 0 when BN follows the activation), like a pruned one.
    """
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for block, keep in zip(blocks(masked), kept):
            removed = torch.ones(block[0].weight.shape[0], dtype=torch.bool)
            removed[keep] = False
            for m in block:
                if isinstance(m, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
                    m.weight[removed] = 0
                    if m.bias is not None:
                        m.bias[removed] = 0
    return masked


@pytest.mark.parametrize("options", [
    {},
    {"batch_norm": "before"},
    {"batch_norm": "after", "dropout": 0.3},
    {"activation": "sigmoid"},
    {"activation": "sigmoid", "batch_norm": "before"},
    {"activation": "gelu", "batch_norm": "after"},
])
def test_structured_mlp_equals_masked_model(options) -> None:
    model = _mlp(**options)
    smaller, report = prune_structured(model, 0.5, norm="l1")
    assert type(smaller) is type(model) and not smaller.training
    assert smaller.config.hidden == (8, 6) and report.widths_after == (8, 6)
    masked = _masked(model, lambda m: m.layers, report.kept)
    x = torch.randn(5, 1, 4, 4)
    assert_close(smaller(x), masked(x))
    assert not torch.equal(smaller(x), model(x))


def test_structured_mlp_keeps_the_largest_neurons_and_shrinks_parameters() -> None:
    model = _mlp()
    with torch.no_grad():
        model.layers[0][0].weight[[3, 9]] *= 100
    smaller, report = prune_structured(model, 0.75)
    assert set(report.kept[0]) >= {3, 9} and len(report.kept[0]) == 4
    # 16 -> 4 and 12 -> 3 neurons: (16*4+4) + (4*3+3) + (3*3+3) = 95 weights;
    # before: (16*16+16) + (16*12+12) + (12*3+3) = 515
    assert (report.parameters_before, report.parameters_after) == (515, 95)
    assert sum(p.numel() for p in smaller.parameters()) == 95


@pytest.mark.parametrize("options", [
    {},
    {"batch_norm": False, "pool": "avg", "global_pool": "max"},
    {"activation": "gelu", "pool": None},
])
def test_structured_cnn_equals_masked_model(options) -> None:
    model = _cnn(**options)
    smaller, report = prune_structured(model, 0.5)
    assert smaller.config.channels == (4, 3)
    masked = _masked(model, lambda m: m.blocks, report.kept)
    x = torch.randn(4, 2, 8, 8)
    assert_close(smaller(x), masked(x))


def test_structured_cnn_parameters_and_artifact_shrink(tmp_path) -> None:
    model = _cnn()
    smaller, report = prune_structured(model, 0.5)
    # conv 2->8 (144) + bn (16) + conv 8->6 (432) + bn (12) + head 6->3 (21) = 625;
    # conv 2->4 (72) + bn (8) + conv 4->3 (108) + bn (6) + head 3->3 (12) = 206
    assert (report.parameters_before, report.parameters_after) == (625, 206)
    big = save_artifact(model, tmp_path / "big", task="classification")
    small = save_artifact(smaller, tmp_path / "small", task="classification")
    assert (small / "model.safetensors").stat().st_size < (big / "model.safetensors").stat().st_size
    loaded = load_artifact(small).model.eval()
    assert spec_of(loaded)["channels"] == [4, 3]
    x = torch.randn(2, 2, 8, 8)
    assert_close(loaded(x), smaller(x))


def test_structured_pruning_refuses_what_it_cannot_prune() -> None:
    bert = build({"arch": "bert", "vocab_size": 50, "dim": 16, "num_layers": 1, "num_heads": 2,
                  "ffn_dim": 32, "max_position": 8}, input_shape=(8,), num_outputs=2)
    with pytest.raises(ConfigError, match="BertClassifier") as err:
        prune_structured(bert, 0.5)
    assert "prune_heads" in err.value.hint
    with pytest.raises(ConfigError, match="no hidden layer"):
        prune_structured(_mlp(hidden=[]), 0.5)
    with pytest.raises(ConfigError, match="sigmoid"):
        prune_structured(_cnn(activation="sigmoid"), 0.5)
    with pytest.raises(ConfigError, match="norm"):
        prune_structured(_mlp(), 0.5, norm="l3")
    with pytest.raises(ConfigError, match="amount"):
        prune_structured(_mlp(), 1.0)
