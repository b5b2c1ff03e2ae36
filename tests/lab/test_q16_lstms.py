"""Topic 16 at the quick budget: LSTM versus plain RNN at a long T, forget gates."""

from __future__ import annotations

import torch

from dlforge.lab import q16_lstms as q16
from dlforge.models.rnn import lstm_cell

from .cache import finding_for


def test_lstm_solves_the_length_where_the_rnn_fails():
    n = finding_for(16).numbers
    assert n["length"] == q16.BUDGETS["quick"]["length"]
    assert n["seeds"] == q16.BUDGETS["quick"]["seeds"] == len(n["lstm_accuracy_per_seed"])
    # Means over seeds: one seed of either model breaking through its plateau is luck.
    assert n["lstm_accuracy"] >= q16.SOLVED_ABOVE
    assert n["rnn_accuracy"] < 0.6 and n["rnn_best_accuracy"] < 0.6
    assert n["lstm_seeds_solved"] > n["rnn_seeds_solved"]
    assert n["lstm_accuracy"] == round(sum(n["lstm_accuracy_per_seed"]) / n["seeds"], 4)
    assert n["lstm_minus_rnn"] == round(n["lstm_accuracy"] - n["rnn_accuracy"], 4)


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
