"""Topic 16 at the quick budget: LSTM versus plain RNN as the distance to remember grows."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

from dlforge.lab import q16_lstms as q16
from dlforge.lab.finding import Figure
from dlforge.models.rnn import lstm_cell

from .cache import finding_for


def test_quick_and_full_sweep_the_same_ends():
    quick, full = q16.BUDGETS["quick"], q16.BUDGETS["full"]
    assert quick["lengths"][0] == full["lengths"][0] and quick["lengths"][-1] == full["lengths"][-1]
    assert set(quick["lengths"]) < set(full["lengths"]) and quick["epochs"] == full["epochs"]
    assert q16.SEEDS["quick"] >= 3 and q16.SEEDS["full"] >= 5


def test_rnn_solves_short_distances_and_the_lstm_holds_longer():
    f = finding_for(16)
    n, lengths = f.numbers, q16.BUDGETS["quick"]["lengths"]
    assert n["lengths"] == lengths and len(f.seeds) == q16.SEEDS["quick"]
    assert n["rnn_accuracy_at_shortest"] >= 0.8 and n["rnn_solves_shortest"] >= 0.75
    assert n["rnn_accuracy_T60"] < 0.5  # the RNN stays near chance (0.25) at T=60...
    assert n["lstm_accuracy_T60"] >= 0.6  # ...where the LSTM solves most seeds
    assert n["lstm_solves_longest"] > n["rnn_solves_longest"]
    assert n["lstm_reach"] > n["rnn_reach"]


def test_sweep_numbers_are_consistent_seed_by_seed():
    f = finding_for(16)
    n, per_seed, lengths = f.numbers, f.per_seed, f.numbers["lengths"]
    longest = lengths[-1]

    def seeds_of(key):  # a number equal on every seed has no per_seed entry
        return per_seed.get(key, [n[key]] * len(f.seeds))

    lstm, rnn = seeds_of(f"lstm_accuracy_T{longest}"), seeds_of(f"rnn_accuracy_T{longest}")
    assert seeds_of("lstm_minus_rnn_at_longest") == pytest.approx([a - b for a, b in zip(lstm, rnn)], abs=1e-4)
    assert seeds_of("lstm_solves_longest") == [float(a >= q16.SOLVED_AT) for a in lstm]
    shortest = seeds_of(f"rnn_accuracy_T{lengths[0]}")
    assert seeds_of("rnn_solves_shortest") == [float(a >= q16.SOLVED_AT) for a in shortest]
    for kind in ("rnn", "lstm"):
        assert all(r in (0, *lengths) for r in seeds_of(f"{kind}_reach"))
        assert n[f"{kind}_accuracy"] == [n[f"{kind}_accuracy_T{T}"] for T in lengths]
        assert all(1 <= e <= q16.BUDGETS["quick"]["epochs"] for e in n[f"{kind}_epochs"])
    for key, values in per_seed.items():  # every varying number is the mean of its seeds
        assert n[key] == pytest.approx(statistics.fmean(values), rel=1e-4, abs=1e-6)


def test_reach_is_the_longest_solved_length():
    assert q16._reach([10, 30, 60], [1.0, 0.3, 0.95]) == 60
    assert q16._reach([10, 30, 60], [1.0, 0.95, 0.3]) == 30
    assert q16._reach([10, 30, 60], [0.5, 0.3, 0.25]) == 0


def test_a_run_stops_once_solved_and_not_before():
    state = SimpleNamespace(should_stop=False, stop_reason=None)
    q16._StopWhenSolved().on_validation_end(state, {"val_accuracy": q16.STOP_AT - 0.01})
    assert not state.should_stop
    q16._StopWhenSolved().on_validation_end(state, {"val_accuracy": q16.STOP_AT})
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
