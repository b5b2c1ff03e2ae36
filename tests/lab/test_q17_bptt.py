"""Topic 17 at the quick budget: hand-written BPTT, truncated BPTT's cost and reach."""

from __future__ import annotations

import pytest
import torch

from dlforge.lab import q17_bptt as q17

from .cache import finding_for


def test_hand_bptt_equals_autograd_through_torch_rnn():
    # Reference: torch.nn.RNN's fused kernel with the same weights, in float64.
    torch.manual_seed(1)
    T, F_, H, O = 9, 2, 4, 3
    rnn = torch.nn.RNN(F_, H, batch_first=True).double()
    with torch.no_grad():
        rnn.bias_hh_l0.zero_()  # the hand version has one bias b
    w_hy = torch.randn(O, H, dtype=torch.float64, requires_grad=True)
    c = torch.randn(O, dtype=torch.float64, requires_grad=True)
    x = torch.randn(T, F_, dtype=torch.float64)
    target = torch.randn(T, O, dtype=torch.float64)
    out, _ = rnn(x[None])  # (1, T, H)
    loss = 0.5 * ((out[0] @ w_hy.T + c - target) ** 2).sum()
    loss.backward()
    with torch.no_grad():
        mine = q17.manual_bptt(x, target, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0,
                               w_hy, c)
    torch.testing.assert_close(mine["loss"], loss.detach(), rtol=1e-12, atol=0)
    for name, ref in (("w_xh", rnn.weight_ih_l0.grad), ("w_hh", rnn.weight_hh_l0.grad),
                      ("b", rnn.bias_ih_l0.grad), ("w_hy", w_hy.grad), ("c", c.grad)):
        torch.testing.assert_close(mine[name], ref, rtol=1e-10, atol=1e-12)


def test_finding_gradient_check_is_at_float64_precision():
    assert finding_for(17).numbers["bptt_max_relative_error"] < 1e-10


def test_full_bptt_memory_is_linear_in_t_and_truncated_is_flat():
    n = finding_for(17).numbers
    lengths = q17.BUDGETS["quick"]["lengths"]
    full, trunc = n["full_bytes"], n["truncated_bytes"]
    per_step = [b / T for b, T in zip(full, lengths)]
    assert max(per_step) / min(per_step) < 1.2  # bytes per step constant: linear growth
    assert len(set(trunc)) == 1 and trunc[0] < full[0]
    # With k steps per chunk, a chunk holds about k/T of a full pass's activations.
    k = q17.BUDGETS["quick"]["k"]
    assert trunc[0] / full[-1] < 2 * k / lengths[-1]


def test_saved_bytes_counts_one_chunk_when_k_covers_the_sequence():
    assert q17.saved_bytes(30, k=30) == q17.saved_bytes(30, k=None)
    assert q17.saved_bytes(30, k=10) == q17.saved_bytes(10, k=None)


def test_truncation_shorter_than_the_dependency_stays_near_chance():
    n = finding_for(17).numbers
    assert n["task_k"] < n["task_length"] - 1  # the cut is closer to the loss than the answer
    assert n["full_bptt_accuracy"] >= 0.9
    assert n["truncated_bptt_accuracy"] < 0.5
    assert n["truncated_bptt_accuracy"] < n["full_bptt_accuracy"] - 0.4


def test_gain_share_is_per_seed_and_its_mean_is_the_number():
    f = finding_for(17)
    assert len(f.seeds) == q17.SEEDS["quick"]
    shares = f.per_seed.get("truncated_gain_share", [f.numbers["truncated_gain_share"]] * len(f.seeds))
    full = f.per_seed.get("full_bptt_accuracy", [f.numbers["full_bptt_accuracy"]] * len(f.seeds))
    trunc = f.per_seed.get("truncated_bptt_accuracy", [f.numbers["truncated_bptt_accuracy"]] * len(f.seeds))
    chance = f.numbers["chance_accuracy"]
    for share, a_full, a_trunc in zip(shares, full, trunc):
        assert share == pytest.approx((a_trunc - chance) / (a_full - chance), abs=1e-3)
    assert f.numbers["truncated_gain_share"] == pytest.approx(sum(shares) / len(shares), abs=1e-4)


def test_full_bptt_restarts_only_while_the_training_loss_stays_above_solved(monkeypatch):
    # Scripted attempts (training loss, val accuracy): the rule reads the training loss only.
    script = iter([(1.38, 0.26), (1.20, 0.80), (0.01, 1.0), (0.0, 1.0)])
    seen = []

    def fake(k, cfg, data, init_seed, seed):
        seen.append(init_seed)
        return next(script)

    monkeypatch.setattr(q17, "_train_recall", fake)
    acc, attempts, init_seed = q17._train_full_bptt({}, None, seed=7)
    assert (acc, attempts) == (1.0, 3) and init_seed == 7 + 2 * q17.ATTEMPT_SEED_STRIDE
    assert seen == [7, 7 + q17.ATTEMPT_SEED_STRIDE, 7 + 2 * q17.ATTEMPT_SEED_STRIDE]  # stopped once solved
    stuck = iter([(1.38, 0.3), (1.30, 0.2)] + [(1.39, 0.9)] * q17.ATTEMPTS)
    monkeypatch.setattr(q17, "_train_recall", lambda *a: next(stuck))
    acc, attempts, init_seed = q17._train_full_bptt({}, None, seed=0)
    assert attempts == q17.ATTEMPTS and (acc, init_seed) == (0.2, q17.ATTEMPT_SEED_STRIDE)  # lowest loss, not best val


def test_attempts_stay_within_the_limit():
    f = finding_for(17)
    attempts = f.per_seed.get("full_bptt_attempts", [f.numbers["full_bptt_attempts"]] * len(f.seeds))
    assert all(1 <= a <= q17.ATTEMPTS for a in attempts)
