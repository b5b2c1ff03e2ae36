"""Topic 23's compression half: distillation and pruning measured over seeds, merged into
topic 23's quick finding; the helpers against references (scipy's t, torch's prune)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import TensorDataset

from dlforge.compress.measure import zero_share
from dlforge.compress.prune import magnitude_prune
from dlforge.lab import experiment
from dlforge.lab import _q23_compression as q23c
from dlforge.lab import q23_transformer_limits as q23

from .cache import finding_for

QUICK = q23c.BUDGETS["quick"]


def test_topic_23_is_the_transformer_limits_module_not_its_helper():
    # the helper module _q23_compression must never be taken for the topic itself
    assert experiment(23) is q23
    assert q23.BUDGETS["quick"]["compression"] is QUICK
    assert "distillation and pruning make a Transformer-era model smaller and faster" in q23.CLAIM


def test_quick_finding_holds_the_compression_numbers_checks_and_figure():
    f = finding_for(23)
    n = f.numbers
    assert n["compression_seeds"] == list(range(QUICK["seeds"])) and QUICK["seeds"] >= 3
    rules = [str(c) for c in f.checks]
    for check in q23c._checks():
        assert str(check) in rules
    assert sum("Pruning and distillation" in fig.title for fig in f.figures) == 1
    for key in ("teacher_accuracy", "distill_100_alone", "distill_100_distilled",
                "distill_100_transfer", "distill_all_alone", "distill_all_distilled",
                "structured_speedup", "unstructured_speedup", "structured_retrained"):
        assert n[key] > 0
    for key in ("teacher_accuracy", "distilled_student_minus_alone", "prune_retrained_cost_90",
                "structured_speedup", "unstructured_speedup", "structured_retrained_cost"):
        assert n[f"{key}_ci_low"] <= n[key] <= n[f"{key}_ci_high"]
    assert n["student_parameters"] < n["teacher_parameters"]
    assert "Distillation:" in f.notes and "Pruning:" in f.notes


def _t_interval(values):
    """Reference: the 95% Student t interval written out with scipy."""
    a = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return a.mean() - half, a.mean() + half


def test_distillation_difference_is_computed_from_the_per_seed_numbers():
    n = finding_for(23).numbers
    alone, distilled = n["distill_100_alone_seeds"], n["distill_100_distilled_seeds"]
    assert len(alone) == len(distilled) == QUICK["seeds"]
    gains = [d - a for d, a in zip(distilled, alone)]  # paired by seed
    assert n["distilled_student_minus_alone"] == round(float(np.mean(gains)), 5)
    low, high = _t_interval(gains)
    assert n["distilled_student_minus_alone_ci_low"] == pytest.approx(low, abs=1e-5)
    assert n["distilled_student_minus_alone_ci_high"] == pytest.approx(high, abs=1e-5)
    assert n["distill_100_distilled"] == round(float(np.mean(distilled)), 5)


def test_pruning_costs_and_speedups_are_computed_from_the_per_seed_numbers():
    n = finding_for(23).numbers
    assert n["prune_sparsities"] == list(QUICK["sparsities"])
    teacher = n["teacher_accuracy_seeds"]
    for kind in ("plain", "retrained"):
        table = np.array(n[f"prune_{kind}_accuracy_seeds"])  # (seeds, sparsities)
        assert table.shape == (QUICK["seeds"], len(QUICK["sparsities"]))
        for i, amount in enumerate(QUICK["sparsities"]):
            cost = [t - row[i] for t, row in zip(teacher, table)]
            key = f"prune_{kind}_cost_{round(100 * amount)}"
            assert n[key] == pytest.approx(np.mean(cost), abs=2e-5)
            assert n[f"{key}_ci_high"] == pytest.approx(_t_interval(cost)[1], abs=1e-4)
    i = n["prune_sparsities"].index(0.9)
    gain = np.array(n["prune_retrained_accuracy_seeds"])[:, i] - np.array(n["prune_plain_accuracy_seeds"])[:, i]
    assert n["prune_retraining_gain_90"] == pytest.approx(gain.mean(), abs=2e-5)
    assert n["prune_retrained_sparsity"] == pytest.approx(0.9, abs=1e-3)  # masks held in retraining
    for key in ("structured_speedup", "unstructured_speedup"):
        assert n[key] == pytest.approx(np.mean(n[f"{key}_seeds"]), abs=2e-5)
    assert 0 < n["structured_parameter_share"] < 0.5  # half the channels: about a quarter of the weights


def test_prune_and_retrain_keeps_the_magnitude_mask_and_trains_the_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    original = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    magnitude_prune(reference, 0.7)  # the mask torch's global L1 pruning chooses
    pruned = q23c.prune_and_retrain(model, 0.7, data, epochs=3, seed=0)
    for ref, got in ((reference[1], pruned[1]), (reference[3], pruned[3])):
        assert torch.equal(ref.weight == 0, got.weight == 0)
        assert not prune.is_pruned(pruned)  # masks made permanent: plain state-dict names
    assert zero_share(pruned) == pytest.approx(0.7, abs=1 / 72)
    kept = reference[1].weight != 0
    assert not torch.equal(pruned[1].weight[kept], reference[1].weight[kept])  # retrained
    for before, after in zip(original.parameters(), model.parameters()):
        assert torch.equal(before, after)  # the model itself is untouched


def test_mean_interval_matches_scipy_and_accuracy_counts_hits():
    values = [0.01, 0.03, 0.02, 0.05]
    got = q23c.mean_interval(values, "gain")
    low, high = _t_interval(values)
    assert got == {"gain": 0.0275, "gain_ci_low": round(low, 5), "gain_ci_high": round(high, 5)}
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.eye(2))
        m.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert q23c.accuracy(m, TensorDataset(x, torch.tensor([0, 0, 0]))) == pytest.approx(2 / 3)


def test_student_epochs_give_every_set_at_least_the_same_steps():
    for n in (50, 100, 300, 1257):
        epochs = q23c.student_epochs(n)
        assert epochs >= q23c.MIN_EPOCHS
        assert epochs * math.ceil(n / q23c.BATCH_SIZE) >= q23c.STUDENT_STEPS
    assert q23c.student_epochs(100) == 125  # 4 batches of 32 per epoch
