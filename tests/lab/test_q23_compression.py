"""Topic 23's compression half: distillation and pruning on one seed each, combined over seeds into
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
    assert f.seeds == list(range(q23.SEEDS["quick"])) and len(f.seeds) >= 5
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
        interval = f.intervals[key]  # over seeds: the mean lies inside, and it is the seeds' mean
        assert interval.low <= n[key] <= interval.high and interval.n == len(f.seeds)
        assert n[key] == pytest.approx(np.mean(f.per_seed[key]), abs=1e-4)
    assert n["student_parameters"] < n["teacher_parameters"]
    assert "Distillation:" in f.notes or "labelled images the student alone" in f.notes
    assert "Pruning:" in f.notes


def _t_interval(values):
    """Reference: the 95% Student t interval written out with scipy."""
    a = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return a.mean() - half, a.mean() + half


def test_distillation_difference_is_paired_within_each_seed_and_its_interval_matches_scipy():
    f = finding_for(23)
    alone, distilled = f.per_seed["distill_100_alone"], f.per_seed["distill_100_distilled"]
    gains = f.per_seed["distilled_student_minus_alone"]
    assert len(alone) == len(distilled) == len(gains) == len(f.seeds)
    assert gains == pytest.approx([d - a for d, a in zip(distilled, alone)], abs=2e-5)  # paired by seed
    low, high = _t_interval(gains)
    assert f.intervals["distilled_student_minus_alone"].low == pytest.approx(low, abs=1e-4)
    assert f.intervals["distilled_student_minus_alone"].high == pytest.approx(high, abs=1e-4)


def test_pruning_costs_and_speedups_are_computed_from_the_per_seed_numbers():
    f = finding_for(23)
    n, ps = f.numbers, f.per_seed
    assert n["prune_sparsities"] == list(QUICK["sparsities"])
    for kind in ("plain", "retrained"):
        accuracies = n[f"prune_{kind}_accuracy"]  # element-wise means over seeds
        assert len(accuracies) == len(QUICK["sparsities"])
        for i, amount in enumerate(QUICK["sparsities"]):
            key = f"prune_{kind}_cost_{round(100 * amount)}"
            assert n[key] == pytest.approx(n["teacher_accuracy"] - accuracies[i], abs=1e-4)
            if key in ps:
                assert f.intervals[key].high == pytest.approx(_t_interval(ps[key])[1], abs=1e-4)
    i = n["prune_sparsities"].index(0.9)
    gain = n["prune_retrained_accuracy"][i] - n["prune_plain_accuracy"][i]
    assert n["prune_retraining_gain_90"] == pytest.approx(gain, abs=1e-4)
    assert n["prune_retrained_sparsity"] == pytest.approx(0.9, abs=1e-3)  # masks held in retraining
    assert n["structured_retrained_cost"] == pytest.approx(n["teacher_accuracy"] - n["structured_retrained"], abs=1e-4)
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


def test_accuracy_counts_hits():
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


def test_speedup_times_both_models_in_turns_and_reads_their_fastest_blocks(monkeypatch):
    # the same work: about 1; four times the multiply-adds: clearly faster. Fastest blocks, so a
    # busy machine adds noise to a few blocks, not to the ratio.
    torch.manual_seed(0)
    wide, narrow = nn.Linear(512, 512), nn.Linear(512, 64)
    assert 0.7 < q23c.speedup(wide, copy.deepcopy(wide), (512,), batch=64, repeats=9) < 1.4
    assert q23c.speedup(wide, narrow, (512,), batch=64, repeats=9) > 2.0
    calls = []  # who runs when: the two alternate, the first of each pair alternating too
    a, b = nn.Identity(), nn.Identity()
    a.forward = lambda x: calls.append("a") or x
    b.forward = lambda x: calls.append("b") or x
    q23c.speedup(a, b, (2,), repeats=3, calls=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b | b a | a b
