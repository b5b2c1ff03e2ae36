"""Topic 27 at the quick budget: attention kernels agree; accuracy versus distance."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.lab import q27_attention_mechanism as q27
from dlforge.nn.attention import scaled_dot_product_attention

from .cache import finding_for


def test_explicit_fused_and_hand_attention_agree():
    n = finding_for(27).numbers
    assert n["explicit_vs_fused"] < 1e-10
    assert n["explicit_vs_hand"] < 1e-10
    assert n["weight_rows_sum_error"] < 1e-10
    assert n["explicit_vs_exact_max"] == max(n["explicit_vs_fused"], n["explicit_vs_hand"])


def test_transformer_stays_flat_while_the_rnn_drops():
    n = finding_for(27).numbers
    assert n["lengths"] == list(q27.BUDGETS["quick"]["lengths"])
    tf, rnn = n["transformer_accuracy"], n["rnn_accuracy"]
    assert len(tf) == len(rnn) == len(n["lengths"])
    # tf, rnn: element-wise means over seeds; the scalars below: means of each seed's own value
    f = finding_for(27)
    assert len(f.seeds) >= 3
    assert min(tf) >= 0.9 and n["transformer_min_accuracy"] <= min(tf) + 1e-4  # mean of minima <= minimum of means
    assert n["transformer_spread"] >= max(tf) - min(tf) - 1e-4 and n["transformer_spread"] <= 0.1
    assert rnn[0] >= 0.9  # the plain RNN remembers over the shortest distance...
    assert rnn[-1] < 0.6  # ...and fails at the longest
    assert n["rnn_drop"] == pytest.approx(rnn[0] - rnn[-1], abs=2e-4) and n["rnn_drop"] >= 0.3
    epochs = q27.BUDGETS["quick"]["epochs"]
    assert all(1 <= e <= epochs for e in n["transformer_epochs_to_solve"])


def test_quick_and_full_sweep_the_same_ends_on_the_same_task():
    quick, full = q27.BUDGETS["quick"], q27.BUDGETS["full"]
    assert quick["lengths"][0] == full["lengths"][0] and quick["lengths"][-1] == full["lengths"][-1]
    assert set(quick["lengths"]) <= set(full["lengths"])
    assert (quick["n"], quick["epochs"]) == (full["n"], full["epochs"])
    assert q27.SEEDS["quick"] >= 4 and q27.SEEDS["full"] >= 5


def test_hand_attention_matches_torch_sdpa_and_a_worked_example():
    torch.manual_seed(1)
    q, k, v = torch.randn(5, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), \
        torch.randn(6, 3, dtype=torch.float64)
    ref = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    torch.testing.assert_close(q27.attention_by_hand(q, k, v), ref)
    ours = scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]
    torch.testing.assert_close(ours, ref)
    # Two orthogonal unit keys, one query equal to the first: weights e^{1/sqrt2} : 1.
    e = math.exp(1 / math.sqrt(2))
    out = q27.attention_by_hand(torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([[1.0], [0.0]]))
    torch.testing.assert_close(out, torch.tensor([[e / (e + 1)]]))
