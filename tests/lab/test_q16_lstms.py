"""Topic 16 at the quick budget: LSTM versus plain RNN on the adding problem as T grows."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

from dlforge.data import adding_problem, prepare
from dlforge.lab import q16_lstms as q16
from dlforge.lab.finding import Figure
from dlforge.models.rnn import lstm_cell

from .cache import finding_for


def test_quick_and_full_sweep_the_same_ends():
    quick, full = q16.BUDGETS["quick"], q16.BUDGETS["full"]
    assert quick["lengths"][0] == full["lengths"][0] and quick["lengths"][-1] == full["lengths"][-1]
    assert set(quick["lengths"]) <= set(full["lengths"]) and quick["epochs"] == full["epochs"]
    assert quick["n"] == full["n"] and len(full["lengths"]) > len(quick["lengths"])
    assert q16.SEEDS["quick"] >= 3 and q16.SEEDS["full"] >= 5


def test_rnn_carries_short_distances_and_only_the_lstm_solves_the_longest():
    f = finding_for(16)
    n, lengths = f.numbers, q16.BUDGETS["quick"]["lengths"]
    shortest, longest = lengths[0], lengths[-1]
    assert n["lengths"] == lengths and len(f.seeds) == q16.SEEDS["quick"]
    assert n[f"rnn_nmse_T{shortest}"] < q16.CARRIES_AT  # the RNN carries the far value at T=10...
    assert n[f"rnn_nmse_T{longest}"] > 0.8  # ...and stays near the mean's 1.0 at T=50...
    assert n[f"lstm_nmse_T{longest}"] <= q16.SOLVED_AT  # ...where the LSTM solves it
    assert n["lstm_solves_longest"] == 1 and n["rnn_solves_longest"] == 0
    assert n["lstm_reach"] == longest and n["rnn_reach"] < longest
    assert f.verdict == "supported", f.check_results()


def test_sweep_numbers_are_consistent_seed_by_seed():
    f = finding_for(16)
    n, per_seed, lengths = f.numbers, f.per_seed, f.numbers["lengths"]

    def seeds_of(key):  # a number equal on every seed has no per_seed entry
        return per_seed.get(key, [n[key]] * len(f.seeds))

    for kind in ("rnn", "lstm"):
        err = [seeds_of(f"{kind}_nmse_T{T}") for T in lengths]  # per length, per seed
        assert seeds_of(f"{kind}_nmse_at_longest") == err[-1]
        assert seeds_of(f"{kind}_solves_longest") == [float(e <= q16.SOLVED_AT) for e in err[-1]]
        assert seeds_of(f"{kind}_reach") == [q16._reach(lengths, list(col)) for col in zip(*err)]
        assert n[f"{kind}_nmse"] == [n[f"{kind}_nmse_T{T}"] for T in lengths]
        assert all(1 <= e <= q16.BUDGETS["quick"]["epochs"] for e in n[f"{kind}_epochs"])
    assert seeds_of("rnn_nmse_at_shortest") == seeds_of(f"rnn_nmse_T{lengths[0]}")
    reach_gap = [a - b for a, b in zip(seeds_of("lstm_reach"), seeds_of("rnn_reach"))]
    assert seeds_of("lstm_reach_minus_rnn_reach") == reach_gap
    for key, values in per_seed.items():  # every varying number is the mean of its seeds
        assert n[key] == pytest.approx(statistics.fmean(values), rel=1e-4, abs=1e-6)


def test_reach_is_the_longest_length_where_the_far_value_is_carried():
    assert q16._reach([10, 30, 50], [0.1, 0.9, 0.05]) == 50
    assert q16._reach([10, 30, 50], [0.1, 0.3, 1.0]) == 30
    assert q16._reach([10, 30, 50], [0.6, 0.9, 1.0]) == 0


def test_nmse_is_one_for_the_mean_and_zero_for_the_exact_sum():
    data = prepare(adding_problem(200, 12, seed=3), val=0.2, test=0.0, standardize=False, seed=3)
    x, y = data.val.tensors

    class Mean(torch.nn.Module):
        def forward(self, x):
            return y.mean().expand(len(x), 1)

    class ExactSum(torch.nn.Module):  # the marked values, on the standardised target scale
        def forward(self, x):
            stats = data.preprocessing["target_standardize"]
            total = (x[..., 0] * x[..., 1]).sum(dim=1, keepdim=True)  # (N, 1)
            return (total - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])

    assert q16.nmse(Mean(), x, y) == pytest.approx(1.0, abs=1e-5)
    assert q16.nmse(ExactSum(), x, y) == pytest.approx(0.0, abs=1e-6)


def test_a_run_stops_once_solved_and_not_before():
    state = SimpleNamespace(should_stop=False, stop_reason=None)
    stop = q16._StopWhenSolved(val_variance=2.0)  # val_loss / 2.0 is the nMSE
    stop.on_validation_end(state, {"val_loss": 2.0 * q16.STOP_AT + 0.01})
    assert not state.should_stop
    stop.on_validation_end(state, {"val_loss": 2.0 * q16.STOP_AT})
    assert state.should_stop and state.stop_reason == "early_stopping"


def test_figure_over_seeds_draws_every_seed():
    fig = q16.figure_over_seeds(finding_for(16))
    assert isinstance(fig, Figure) and len(fig.png_base64) > 1000


def test_forget_gates_are_probabilities_and_gate_math_matches_the_kernel():
    n = finding_for(16).numbers
    assert 0 < n["forget_gate_mean"] < 1
    assert 0 < n["forget_gate_best_unit_kept"] <= 1
    assert n["gate_math_max_abs_error"] < 1e-4


def test_forget_gates_follow_lstm_cell_and_torch_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, batch_first=True).double()
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    _, h = q16.forget_gates(lstm, x)
    _, (h_n, _) = lstm(x)
    torch.testing.assert_close(h, h_n[0])
    # The forget gate at step t is what turns c_{t-1} into the kept part of c_t: with the
    # input and candidate weights zeroed, lstm_cell's c' equals f * c exactly.
    w_ih, w_hh = lstm.weight_ih_l0.detach(), lstm.weight_hh_l0.detach()
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    H = 5
    h_t, c_t = torch.zeros(4, H, dtype=torch.float64), torch.randn(4, H, dtype=torch.float64)
    x0 = x[:, 0]
    no_write = torch.ones(4 * H, dtype=torch.float64)
    no_write[2 * H:3 * H] = 0  # zero the candidate g, so nothing is written
    _, c_next = lstm_cell(x0, h_t, c_t, w_ih * no_write[:, None], w_hh * no_write[:, None],
                          b * no_write, None)
    f0, _ = q16.forget_gates(lstm, x[:, :1])  # h starts at zero, as here
    torch.testing.assert_close(c_next, f0[:, 0] * c_t)
