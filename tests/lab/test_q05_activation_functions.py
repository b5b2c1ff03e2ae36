"""Topic 5: depth collapse without a non-linearity, activation ranges, training speed."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import TensorDataset

from dlforge.lab import q05_activation_functions as q05
from dlforge.models import build
from dlforge.train import fit

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(5)


def test_collapse_gives_the_same_map_as_the_network():
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [9, 7, 5], "activation": "identity"},
                  input_shape=(4,), num_outputs=3).double()
    x = torch.randn(50, 4, dtype=torch.float64)
    A, c = q05.collapse(model)
    assert A.shape == (3, 4) and c.shape == (3,)
    with torch.no_grad():
        assert_close(x @ A.T + c, model(x), rtol=1e-12, atol=1e-12)


def test_ranges_equal_the_closed_forms(finding):
    n = finding.numbers
    assert n["sigmoid_min"] == pytest.approx(1 / (1 + math.exp(6)), rel=1e-5)
    assert n["sigmoid_max"] == pytest.approx(1 / (1 + math.exp(-6)), rel=1e-5)
    assert n["tanh_max"] == pytest.approx(math.tanh(6), rel=1e-5) and n["tanh_max"] < 1
    assert n["tanh_min"] == -n["tanh_max"]
    assert n["sigmoid_mean"] == pytest.approx(0.5, abs=1e-9)  # not zero-centred
    assert n["tanh_abs_mean"] < 1e-12
    assert 15 < n["sigmoid_float32_is_1_from"] < 18
    assert torch.sigmoid(torch.tensor(n["sigmoid_float32_is_1_from"])).item() == 1.0


def test_deep_linear_net_is_one_linear_map_and_fits_like_logistic_regression(finding):
    n = finding.numbers
    assert n["collapse_max_rel_error"] < 1e-12
    # circles: the best line is no better than a coin flip, loss near log 2
    assert n["logreg_train_loss"] == pytest.approx(math.log(2), abs=0.01)
    assert n["deep_linear_train_loss"] >= n["logreg_train_loss"] - q05.LINEAR_LOSS_SLACK
    assert n["deep_linear_minus_logreg_loss"] == pytest.approx(
        n["deep_linear_train_loss"] - n["logreg_train_loss"], abs=1e-4)
    assert n["deep_linear_train_accuracy"] < 0.65
    assert n["identity_epochs_to_target"] == n["max_epochs"] + 1  # never reached
    assert n["relu_train_accuracy"] >= 0.98


def test_epochs_to_target_are_counted_in_range(finding):
    n = finding.numbers
    for act in ("sigmoid", "tanh", "relu"):
        assert 1 <= n[f"{act}_epochs_to_target"] <= n["max_epochs"] + 1
    assert n["relu_epochs_to_target"] <= n["max_epochs"]
    # the savings are paired per seed: their mean is the difference of the means
    for act in ("sigmoid", "tanh"):
        saved = n[f"relu_saves_epochs_vs_{act}"]
        assert saved == pytest.approx(n[f"{act}_epochs_to_target"] - n["relu_epochs_to_target"], abs=1e-3)
        values = finding.per_seed.get(f"relu_saves_epochs_vs_{act}", [saved] * len(finding.seeds))
        assert len(values) == len(finding.seeds) == q05.SEEDS["quick"]
        assert saved == pytest.approx(sum(values) / len(values), abs=1e-3)
    # sigmoid never reaches the target in this budget on any seed; tanh about as fast as ReLU
    assert min(finding.per_seed.get("relu_saves_epochs_vs_sigmoid", [n["relu_saves_epochs_vs_sigmoid"]])) > 20
    assert -3 <= n["relu_saves_epochs_vs_tanh"] <= 5


def test_stop_at_loss_stops_training():
    data = TensorDataset(torch.randn(64, 2), torch.randint(0, 2, (64,)))
    result = fit(torch.nn.Linear(2, 2), data, epochs=5, batch_size=16, device="cpu",
                 callbacks=[q05.StopAtLoss(target=100.0)])
    assert len(result.epochs) == 1
