"""Topic 1: linear probes on an MLP's hidden layers, checked against scikit-learn."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dlforge.data import load_source, prepare
from dlforge.lab import q01_what_is_deep_learning as q01
from dlforge.models import build

from .cache import finding_for


@pytest.fixture(scope="module")
def finding():
    return finding_for(1)


def test_raw_probe_equals_scikit_learn_on_the_same_split(finding):
    cfg = q01.BUDGETS["quick"]
    data = prepare(load_source("spirals", n_samples=cfg["n_train"] + cfg["n_test"], noise=0.05, seed=0),
                   val=0, test=q01.held_out_fraction(cfg), seed=0)
    (x, y), (xt, yt) = data.train.tensors, data.test.tensors
    assert (len(y), len(yt)) == (cfg["n_train"], cfg["n_test"])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x.numpy(), y.numpy())
    assert finding.seeds[0] == 0  # seed 0's value is the first of the per-seed values
    assert finding.per_seed["probe_raw_accuracy"][0] == round(probe.score(xt.numpy(), yt.numpy()), 4)
    values = finding.per_seed["probe_raw_accuracy"]
    assert finding.numbers["probe_raw_accuracy"] == pytest.approx(sum(values) / len(values), abs=1e-4)


def test_probes_cover_input_and_every_hidden_layer(finding):
    n = finding.numbers
    depth = len(q01.BUDGETS["quick"]["hidden"])
    assert len(n["probe_trained_accuracy"]) == len(n["probe_init_accuracy"]) == depth + 1
    # element-wise means over seeds: the raw input's probe is the same for both networks
    assert n["probe_trained_accuracy"][0] == n["probe_init_accuracy"][0]
    assert n["probe_trained_accuracy"][0] == pytest.approx(n["probe_raw_accuracy"], abs=1e-4)
    assert n["probe_last_trained_accuracy"] == pytest.approx(n["probe_trained_accuracy"][-1], abs=1e-4)
    gain = n["probe_trained_accuracy"][-1] - n["probe_trained_accuracy"][1]
    assert n["first_to_last_gain"] == pytest.approx(gain, abs=2e-4)


def test_training_makes_the_last_layer_linearly_separable(finding):
    n = finding.numbers
    assert n["net_test_accuracy"] >= 0.9
    # the head is itself a linear probe of the last layer, so a fitted probe does as well
    assert n["probe_last_trained_accuracy"] >= n["net_test_accuracy"] - 0.03
    assert n["probe_last_trained_accuracy"] - n["probe_raw_accuracy"] >= 0.2
    assert 0.45 <= n["probe_raw_accuracy"] <= 0.75  # a line catches parts of the arms only
    assert finding.intervals["first_to_last_gain"].low > 0  # deeper layers separate better


def test_probe_accuracies_on_a_perfectly_separable_feature():
    # A one-layer identity MLP whose features are the inputs: the probe must score 1.0 on
    # points separated by x0 = 0, and the raw probe must equal the layer probe.
    model = build({"arch": "mlp", "hidden": [2], "activation": "identity"}, input_shape=(2,), num_outputs=2)
    with torch.no_grad():
        model.layers[0][0].weight.copy_(torch.eye(2))
        model.layers[0][0].bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = (x[:, 0] > 0).long()
    scores = q01.probe_accuracies(model, x[:100], y[:100], x[100:], y[100:])
    assert scores[0] == scores[1] >= 0.97


def test_figure_is_a_png(finding):
    image = Image.open(io.BytesIO(base64.b64decode(finding.figures[0].png_base64)))
    assert image.format == "PNG" and image.width > 300
