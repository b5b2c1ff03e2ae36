"""Positional encodings checked against their papers' formulas and a complex-number RoPE."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.errors import ConfigError
from dlforge.nn.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
)


def test_sinusoidal_table_matches_hand_computed_formula() -> None:
    dim, max_len = 6, 5
    pe = SinusoidalPositionalEncoding(dim, max_len)
    expected = torch.zeros(max_len, dim)
    for pos in range(max_len):
        for i in range(0, dim, 2):
            angle = pos / 10000 ** (i / dim)
            expected[pos, i] = math.sin(angle)
            expected[pos, i + 1] = math.cos(angle)
    torch.testing.assert_close(pe.table, expected)


def test_sinusoidal_adds_rows_from_offset_and_checks_length() -> None:
    pe = SinusoidalPositionalEncoding(4, 10)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(pe(x, offset=2), x + pe.table[2:5])
    with pytest.raises(ConfigError, match="max_len"):
        pe(torch.zeros(1, 11, 4))
    with pytest.raises(ConfigError, match="even"):
        SinusoidalPositionalEncoding(5, 10)


def test_learned_embedding_adds_its_rows_and_trains() -> None:
    pe = LearnedPositionalEmbedding(max_len=8, dim=4)
    x = torch.randn(2, 5, 4)
    out = pe(x)
    torch.testing.assert_close(out, x + pe.embedding.weight[:5])
    out.sum().backward()
    grad = pe.embedding.weight.grad
    assert torch.equal(grad[:5], torch.full((5, 4), 2.0))  # two sequences use each row
    assert torch.equal(grad[5:], torch.zeros(3, 4))
    with pytest.raises(ConfigError):
        pe(torch.zeros(1, 9, 4))


def _rope_complex_reference(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Meta's LLaMA formulation: adjacent pairs as complex numbers times e^(i p theta)."""
    head_dim = x.shape[-1]
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = torch.polar(torch.ones(len(positions), head_dim // 2, dtype=torch.float64),
                        positions.double()[:, None] * theta)  # (T, head_dim/2) complex
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], head_dim // 2, 2).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2)


def test_rotary_matches_complex_reference() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8, base=500.0)
    q = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    k = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    pos = torch.tensor([0, 3, 4, 7, 10, 11])
    q_rot, k_rot = rope.apply_rotary(q, k, pos)
    torch.testing.assert_close(q_rot, _rope_complex_reference(q, pos, 500.0))
    torch.testing.assert_close(k_rot, _rope_complex_reference(k, torch.arange(4), 500.0))
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps length


def test_rotary_dot_product_depends_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        qm = rope.rotate(q[None], torch.tensor([m]))[0]
        kn = rope.rotate(k[None], torch.tensor([n]))[0]
        return qm @ kn

    for shift in (-3, 0, 5):
        same = torch.stack([score(m, m - shift) for m in range(max(shift, 0), 40, 7)])
        torch.testing.assert_close(same, same[0].expand_as(same))
    assert not torch.allclose(score(5, 2), score(5, 4))  # and it does depend on m - n


def test_alibi_slopes_follow_press_et_al() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # 6 heads: the 4-head slopes, then the odd-numbered 8-head slopes for the remaining two.
    four = [2.0 ** (-2 * i) for i in range(1, 5)]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(four + [2.0 ** -1, 2.0 ** -3]))


def test_alibi_bias_is_minus_slope_times_distance() -> None:
    heads, T, S = 4, 3, 5
    bias = alibi_bias(heads, T, S)
    slopes = alibi_slopes(heads)
    assert bias.shape == (heads, T, S)
    for h in range(heads):
        for i in range(T):
            for j in range(S):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h].item() * abs(i - j))
