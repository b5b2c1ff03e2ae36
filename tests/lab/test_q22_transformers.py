"""Topic 22 at the quick budget: positions versus none, permutation invariance, heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlforge.lab import q22_transformers as q22

from .cache import finding_for


def test_positions_solve_the_order_task_and_no_positions_fail_it():
    n = finding_for(22).numbers
    assert n["length"] == q22.BUDGETS["quick"]["length"]
    assert n["positional_accuracy"] >= 0.9
    # Without positions the model only sees a bag of tokens: well short of solving it.
    assert n["no_position_best_accuracy"] < 0.6
    # means over seeds of paired differences: the difference of the means
    assert n["positional_minus_none"] == pytest.approx(n["positional_accuracy"] - n["no_position_accuracy"], abs=2e-4)
    f = finding_for(22)
    assert len(f.seeds) >= 3 and min(f.per_seed["positional_minus_none"]) > 0  # positions help on every seed
    assert n["positional_minus_none"] == pytest.approx(np.mean(f.per_seed["positional_minus_none"]), abs=1e-4)


def test_permutation_invariance_only_without_positions():
    n = finding_for(22).numbers
    assert n["no_position_permutation_change"] < 1e-5
    assert n["positional_permutation_change"] > 1e-2


def test_heads_and_attention_numbers_are_consistent():
    n = finding_for(22).numbers
    assert 0 <= n["one_head_accuracy"] <= 1 and n["multi_head_accuracy"] == n["positional_accuracy"]
    assert n["multi_minus_one_head"] == pytest.approx(n["multi_head_accuracy"] - n["one_head_accuracy"], abs=2e-4)
    assert 0 <= n["cls_attention_to_step0"] <= 1
    assert n["uniform_attention"] == round(1 / (n["length"] + 1), 4)


def test_permutation_change_matches_a_reference_shuffle():
    torch.manual_seed(0)
    model = q22.build_transformer(7, 5, 3, positional="none", num_heads=2).eval()
    x = torch.randint(0, 5, (4, 7))
    with torch.no_grad():
        ref = (model(x) - model(x.flip(1))).abs().max()
    torch.testing.assert_close(ref, torch.tensor(0.0), atol=1e-5, rtol=0)
    assert q22.permutation_change(model, x) < 1e-5
    positional = q22.build_transformer(7, 5, 3, positional="sinusoidal", num_heads=2)
    assert q22.permutation_change(positional, x) > 1e-4


def test_as_tokens_is_argmax_of_one_hot():
    x = torch.nn.functional.one_hot(torch.tensor([[2, 0, 1]]), 3).float()
    ds = q22.as_tokens(torch.utils.data.TensorDataset(x, torch.tensor([2])))
    assert torch.equal(ds.tensors[0], torch.tensor([[2, 0, 1]]))
