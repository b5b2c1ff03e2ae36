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


def test_chrono_init_gives_torchs_lstm_forget_gates_with_time_scales_up_to_t_max():
    # Reference: torch's own LSTM step. With the weights zeroed, one step from (h0 = 0, c0) on a
    # zero input gives c1 = f * c0 + i * tanh(b_g): the gates the biases alone set.
    hidden, t_max = 16, 30
    lstm = torch.nn.LSTM(2, hidden, batch_first=True)
    q17.chrono_init(lstm, t_max, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lstm.weight_ih_l0.zero_()
        lstm.weight_hh_l0.zero_()
        b_g = lstm.bias_ih_l0[2 * hidden:3 * hidden].clone()
        h0, x = torch.zeros(1, 1, hidden), torch.zeros(1, 1, 2)
        _, (h1, forget) = lstm(x, (h0, torch.ones(1, 1, hidden)))  # c1 = f
        lstm.bias_ih_l0[2 * hidden:3 * hidden] = 20.0  # tanh(b_g) = 1: c1 = i when c0 = 0
        _, (_, inp) = lstm(x, (h0, torch.zeros(1, 1, hidden)))
    assert (b_g == 0).all()
    scales = 1 / (1 - forget.flatten())  # a cell's memory time scale in steps: 1 / (1 - f)
    assert (scales >= 2 - 1e-6).all() and (scales <= t_max + 1e-4).all()  # log U(1, t_max - 1)
    assert scales.max() > t_max / 2 and scales.min() < t_max / 4  # spread over the range
    torch.testing.assert_close(inp, 1 - forget)  # input bias = -forget bias: i = 1 - f
    torch.testing.assert_close(h1, 0.5 * torch.tanh(forget))  # output gate bias 0: o = 0.5


def test_train_recall_clips_and_stops_at_the_first_solved_epoch(monkeypatch):
    from dlforge.data import prepare, recall_first
    data = prepare(recall_first(40, 6, q17.N_SYMBOLS, seed=0), val=0.2, test=0.0,
                   standardize=False, seed=0)
    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: calls.append(max_norm) or clip(params, max_norm))
    cfg = {"epochs": 4}
    q17._train_recall(None, cfg, data, 0, 0)
    batches = -(-32 // q17.BATCH_SIZE)  # 32 training sequences
    assert calls == [q17.CLIP] * 4 * batches  # every step clipped, all epochs run
    calls.clear()
    monkeypatch.setattr(q17, "SOLVED_LOSS", 10.0)  # every epoch counts as solved
    loss, acc = q17._train_recall(3, cfg, data, 0, 0)
    assert len(calls) == batches and loss < 10.0 and 0.0 <= acc <= 1.0  # stopped after one epoch
