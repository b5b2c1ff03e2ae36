"""Topic 11 at the quick budget: BN statistics, learning-rate range, init-scale spread."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlforge.data import load_source, prepare
from dlforge.lab import q11_batch_normalization as q11
from dlforge.train import seed_everything

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(11).numbers


@pytest.fixture(scope="module")
def data():
    return prepare(load_source("digits"), val=0.15, test=0.15, seed=0)


def test_bn_output_is_standardised_while_its_input_is_not(numbers):
    # (x - mean) / sqrt(var + eps) with eps = 1e-5 and var ~ 1 leaves std 1 - 5e-6.
    assert numbers["bn_max_abs_mean"] < 1e-5
    assert numbers["bn_max_abs_std_error"] < 1e-4
    assert numbers["bn_input_max_abs_mean"] > 0.1 or abs(numbers["bn_input_max_std"] - 1) > 0.1


def test_training_mode_bn_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(64, 5, generator=g) + 2  # (B, F), far from mean 0 / std 1
    bn = nn.BatchNorm1d(5).train()
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(bn(x), expected, rtol=1e-5, atol=1e-5)


def test_normalized_stats_undo_the_affine_part(data):
    seed_everything(0)
    model = q11.make_net(data, batch_norm=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.fill_(3.0)
                m.bias.fill_(-2.0)
    stats = q11.normalized_stats(model, data.train.tensors[0][:128])
    assert stats["max_abs_mean"] < 1e-5 and stats["max_abs_std_error"] < 1e-4


def test_bn_net_output_does_not_depend_on_hidden_weight_scale(data, numbers):
    # BN divides by sqrt(var + eps): exact invariance needs var >> eps, so scales >= 1.
    x = data.train.tensors[0][:64]
    outs = []
    for scale in (1.0, 10.0):
        seed_everything(0)
        model = q11.make_net(data, batch_norm=True, scale=scale).train()
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    assert numbers["bn_initial_loss_spread"] < 0.01 < 1 < numbers["plain_initial_loss_spread"]


def test_bn_trains_where_plain_sgd_diverges(numbers):
    lrs = numbers["lrs"]
    plain, bn = numbers["plain_val_accuracy_by_lr"], numbers["bn_val_accuracy_by_lr"]
    assert len(plain) == len(bn) == len(lrs)
    only_bn = [lr for lr, p, b in zip(lrs, plain, bn) if b >= q11.TRAINS_AT > p]
    assert only_bn and min(only_bn) > numbers["plain_max_trainable_lr"]
    assert numbers["plain_init_accuracy_spread"] > numbers["bn_init_accuracy_spread"]


def test_injected_noise_shifts_layer_inputs_more_than_the_plain_net(numbers):
    assert numbers["noisy_bn_hidden_mean_drift"] > numbers["plain_hidden_mean_drift"]
    assert numbers["bn_hidden_mean_drift"] < numbers["plain_hidden_mean_drift"]


def test_noisy_shift_acts_only_in_training_mode():
    layer = q11.NoisyShift(0.5)
    x = torch.randn(16, 4)
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    assert not torch.allclose(layer.train()(x), x)
