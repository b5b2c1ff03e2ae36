"""Positional information for attention: sinusoidal, learned, rotary (RoPE) and ALiBi.

Sinusoidal and learned encodings are added to the token embeddings (B, T, dim); rotary
embeddings rotate queries and keys (B, h, T, head_dim); ALiBi is an additive bias on the
attention scores (h, T, S), usable as the float ``mask`` of
``dlforge.nn.attention.scaled_dot_product_attention``.

Example:
    >>> pe = SinusoidalPositionalEncoding(dim=8, max_len=32)
    >>> pe(torch.zeros(2, 10, 8)).shape
    torch.Size([2, 10, 8])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dlforge.errors import ConfigError


def _check_length(T: int, max_len: int) -> None:
    if T > max_len:
        raise ConfigError(f"sequence length {T} exceeds max_len={max_len}",
                          hint="build the encoding with a larger max_len or truncate the input")


class SinusoidalPositionalEncoding(nn.Module):
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(same).

    ``forward(x, offset=0)`` adds rows ``offset .. offset + T - 1`` of the table to x
    (B, T, dim). The table is a non-persistent buffer: it is rebuilt, not saved.

    Example:
        >>> pe = SinusoidalPositionalEncoding(dim=4, max_len=3)
        >>> pe.table[0]
        tensor([0., 1., 0., 1.])
    """

    def __init__(self, dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 2 != 0:
            raise ConfigError(f"sinusoidal encoding needs an even dim, got {dim}",
                              hint="use an even model dim")
        self.max_len = max_len
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]                 # (L, 1)
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
        angles = pos * inv_freq                                                    # (L, dim/2)
        # sin and cos interleave: column 2i is sin, column 2i+1 is cos.
        table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)       # (L, dim)
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = x.shape[1]
        _check_length(offset + T, self.max_len)
        return x + self.table[offset:offset + T].to(x.dtype)  # (B, T, dim)


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position (BERT, GPT-2), added to x (B, T, dim).

    Example:
        >>> pe = LearnedPositionalEmbedding(max_len=16, dim=8)
        >>> pe(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, dim)
        # GPT-2 and BERT use std 0.02: N(0, 1) would swamp token embeddings of that scale.
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = x.shape[1]
        _check_length(offset + T, self.max_len)
        pos = torch.arange(offset, offset + T, device=x.device)  # (T,)
        return x + self.embedding(pos)                            # (B, T, dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., RoFormer): rotate pairs of q/k features.

    Feature pairs are adjacent, (x0, x1), (x2, x3), ..., as in RoFormer and Meta's LLaMA
    reference (the complex-number view); pair i turns by angle p * base^(-2i/head_dim) at
    position p. Then q_m . k_n depends only on m - n.

    Example:
        >>> rope = RotaryEmbedding(head_dim=8)
        >>> q = k = torch.randn(1, 2, 5, 8)                          # (B, h, T, head_dim)
        >>> q_rot, k_rot = rope.apply_rotary(q, k, torch.arange(5))
        >>> q_rot.shape
        torch.Size([1, 2, 5, 8])
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ConfigError(f"rotary embedding needs an even head_dim, got {head_dim}",
                              hint="use an even head_dim (dim / num_heads)")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (head_dim/2,)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate x (..., T, head_dim) by the angles of ``positions`` (T,)."""
        angles = positions.to(torch.float64)[:, None] * self.inv_freq  # (T, head_dim/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]                            # (..., T, head_dim/2)
        # (x1 + i x2) * (cos + i sin), written out in reals.
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (.., T, hd/2, 2)
        return out.flatten(-2)                                          # (..., T, head_dim)

    def apply_rotary(self, q: Tensor, k: Tensor, positions: Tensor | None = None, *,
                     k_positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotate q (..., T, head_dim) and k (..., S, head_dim).

        ``positions`` (T,) default 0..T-1; ``k_positions`` (S,) default ``positions`` (or
        0..S-1 when S differs from T).
        """
        T, S = q.shape[-2], k.shape[-2]
        if positions is None:
            positions = torch.arange(T, device=q.device)
        if k_positions is None:
            k_positions = positions if S == T else torch.arange(S, device=k.device)
        return self.rotate(q, positions), self.rotate(k, k_positions)


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al., 2022): 2^(-8/n), 2^(-16/n), ... for n a power of 2.

    Otherwise take the slopes of the nearest lower power of two p, then every other slope
    of 2p for the remaining heads (the paper's reference code).

    Example:
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(p)
    if p != num_heads:
        slopes += power_of_two(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes)


def alibi_bias(num_heads: int, T: int, S: int) -> Tensor:
    """Additive ALiBi bias (h, T, S): -slope_h * |i - j| for query i, key j.

    Positions count from 0 for both queries and keys; combine with ``causal=True`` for a
    decoder, which blocks j > i.

    Example:
        >>> alibi_bias(2, 3, 3)[0]
        tensor([[-0.0000, -0.0625, -0.1250],
                [-0.0625, -0.0000, -0.0625],
                [-0.1250, -0.0625, -0.0000]])
    """
    distance = (torch.arange(T)[:, None] - torch.arange(S)[None, :]).abs()  # (T, S)
    return -alibi_slopes(num_heads)[:, None, None] * distance                # (h, T, S)
