"""Attention written out (for reading and figures) and fused (for speed), plus local attention.

Mask convention, the same everywhere in this file and as in
``torch.nn.functional.scaled_dot_product_attention``: a boolean mask is True where a
query **may attend**; a float mask is added to the scores (0 keeps, ``-inf`` blocks).
``key_padding_mask`` follows ``torch.nn.MultiheadAttention``: True marks **padding**.
A query row with no key left to attend to gives zeros, not NaN.

Example:
    >>> q = k = v = torch.randn(2, 4, 5, 8)                       # (B, h, T, d)
    >>> out = scaled_dot_product_attention(q, k, v, causal=True)
    >>> fused = scaled_dot_product_attention(q, k, v, causal=True, fused=True)
    >>> torch.testing.assert_close(out, fused)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlforge.errors import ConfigError


def _additive_bias(
    mask: Tensor | None, causal: bool, T: int, S: int, *, device: torch.device, dtype: torch.dtype
) -> Tensor | None:
    """Turn a boolean/float mask and the causal flag into one additive bias, or None."""
    bias = None
    if mask is not None:
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, device=device, dtype=dtype).masked_fill(~mask, -math.inf)
        else:
            bias = mask.to(dtype)
    if causal:
        # Top-left aligned, as torch's is_causal: query i sees keys 0..i.
        allowed = torch.ones(T, S, dtype=torch.bool, device=device).tril()  # (T, S)
        causal_bias = torch.zeros(T, S, device=device, dtype=dtype).masked_fill(~allowed, -math.inf)
        bias = causal_bias if bias is None else bias + causal_bias
    return bias


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    fused: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q @ k^T / sqrt(d) + mask) @ v over the last two dimensions.

    ``q`` is (B, h, T, d), ``k`` (B, h, S, d), ``v`` (B, h, S, d_v) (any leading dims
    work); ``mask`` broadcasts to (B, h, T, S). ``fused=True`` calls
    ``torch.nn.functional.scaled_dot_product_attention`` with the same mask semantics;
    it cannot return the weights. With ``return_weights`` the result is
    ``(out, weights)``, weights (B, h, T, S) after dropout.

    Example:
        >>> q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
        >>> out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
        >>> out.shape, w.shape
        (torch.Size([1, 2, 3, 4]), torch.Size([1, 2, 3, 5]))
    """
    T, S, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if fused and mask is None and not return_weights:
        # No row can be empty here (top-left causal keeps key 0), and is_causal lets torch
        # pick its flash kernel instead of reading a (T, S) mask.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    bias = _additive_bias(mask, causal, T, S, device=q.device, dtype=q.dtype)  # (.., T, S)
    # Rows whose every key is blocked: softmax would give 0/0 = NaN there.
    empty = None if bias is None else torch.isneginf(bias).all(dim=-1, keepdim=True)  # (.., T, 1)

    if fused:
        if return_weights:
            raise ConfigError("the fused path cannot return attention weights",
                              hint="pass fused=False to get the weights")
        if empty is not None:
            bias = bias.masked_fill(empty, 0.0)  # any finite row; its output is zeroed below
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        return out if empty is None else out.masked_fill(empty, 0.0)

    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, h, T, S)
    if bias is not None:
        scores = scores + bias
        # Give empty rows finite scores so neither softmax nor its backward produces NaN.
        scores = scores.masked_fill(empty, 0.0)
    weights = scores.softmax(dim=-1)  # (B, h, T, S)
    if empty is not None:
        weights = weights.masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (B, h, T, d_v)
    return (out, weights) if return_weights else out


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    B, T, D = x.shape
    return x.view(B, T, num_heads, D // num_heads).transpose(1, 2)  # (B, T, h, d) -> (B, h, T, d)


def _merge_heads(x: Tensor) -> Tensor:
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)  # (B, h, T, d) -> (B, T, h*d)


def _check_heads(dim: int, num_heads: int) -> None:
    if dim % num_heads != 0:
        raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}",
                          hint="pick num_heads that divides dim, e.g. dim=64 with 4 or 8 heads")


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q/K/V projections; self or cross attention.

    ``forward`` returns ``(out, weights)``: out (B, T, dim); weights (B, h, T, S) per head
    when ``need_weights`` (computed on the explicit path), else None. Without
    ``need_weights`` the ``fused`` path is used when ``fused=True``.

    Example:
        >>> mha = MultiHeadAttention(dim=16, num_heads=4)
        >>> x = torch.randn(2, 5, 16)                          # (B, T, dim)
        >>> pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
        >>> out, w = mha(x, key_padding_mask=pad, need_weights=True)
        >>> out.shape, w.shape
        (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]))
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 fused: bool = True) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.dim, self.num_heads, self.dropout, self.fused = dim, num_heads, dropout, fused
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, T, dim); key/value (B, S, dim), default: query (self-attention).

        ``key_padding_mask`` (B, S), True = padding; ``attn_mask`` broadcastable to
        (B, h, T, S), boolean True = may attend, or additive float.
        """
        key = query if key is None else key
        value = key if value is None else value
        q = _split_heads(self.q_proj(query), self.num_heads)  # (B, h, T, d)
        k = _split_heads(self.k_proj(key), self.num_heads)    # (B, h, S, d)
        v = _split_heads(self.v_proj(value), self.num_heads)  # (B, h, S, d)

        mask = attn_mask
        if key_padding_mask is not None:
            keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S), True = may attend
            if mask is None:
                mask = keep
            elif mask.dtype == torch.bool:
                mask = mask & keep
            else:
                mask = mask.to(q.dtype).masked_fill(~keep, -math.inf)
        p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(
                q, k, v, mask=mask, causal=is_causal, dropout_p=p, return_weights=True)
        else:
            out = scaled_dot_product_attention(
                q, k, v, mask=mask, causal=is_causal, dropout_p=p, fused=self.fused)
            weights = None
        return self.out_proj(_merge_heads(out)), weights  # (B, T, dim)


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, *, causal: bool = False,
    block_size: int | None = None,
) -> Tensor:
    """Sliding-window self-attention: query i attends to keys j with |i - j| <= window.

    With ``causal`` only keys i - window <= j <= i. Queries are cut into blocks of
    ``block_size`` (default ``max(window, 1)``) and each block scores only its
    ``block_size + 2 * window`` neighbouring keys, so the score tensor is
    (B, h, T / block, block, block + 2 * window): linear in T, no (T, T) tensor.
    q, k, v are (B, h, T, d); the result equals full attention with a band mask.

    Example:
        >>> q = k = v = torch.randn(1, 2, 100, 8)                   # (B, h, T, d)
        >>> local_attention(q, k, v, window=4).shape
        torch.Size([1, 2, 100, 8])
    """
    *lead, T, d = q.shape
    bq = block_size or max(window, 1)
    n_blocks = -(-T // bq)
    pad = n_blocks * bq - T
    width = bq + 2 * window  # keys a block can see

    q_blocks = F.pad(q, (0, 0, 0, pad)).view(*lead, n_blocks, bq, d)  # (B, h, nb, bq, d)
    # Pad keys by `window` on the left so block b's keys start at index b * bq.
    k_pad = F.pad(k, (0, 0, window, window + pad))                   # (B, h, nb*bq + 2w, d)
    v_pad = F.pad(v, (0, 0, window, window + pad))
    k_win = k_pad.unfold(-2, width, bq).transpose(-2, -1)              # (B, h, nb, width, d)
    v_win = v_pad.unfold(-2, width, bq).transpose(-2, -1)              # (B, h, nb, width, d)

    # Absolute positions of each block's queries and keys decide what is in the band.
    blocks = torch.arange(n_blocks, device=q.device)[:, None, None] * bq   # (nb, 1, 1)
    q_pos = blocks + torch.arange(bq, device=q.device)[None, :, None]      # (nb, bq, 1)
    k_pos = blocks - window + torch.arange(width, device=q.device)[None, None, :]  # (nb, 1, width)
    offset = q_pos - k_pos
    allowed = (offset.abs() <= window) & (k_pos >= 0) & (k_pos < T)        # (nb, bq, width)
    if causal:
        allowed &= offset >= 0

    out = scaled_dot_product_attention(q_blocks, k_win, v_win, mask=allowed)  # (B, h, nb, bq, d)
    return out.reshape(*lead, n_blocks * bq, d)[..., :T, :]                  # (B, h, T, d)


def band_mask(
    T: int, window: int, *, causal: bool = False, device: torch.device | None = None
) -> Tensor:
    """The (T, T) boolean mask (True = may attend) that ``local_attention`` applies.

    Example:
        >>> band_mask(4, 1).int()
        tensor([[1, 1, 0, 0],
                [1, 1, 1, 0],
                [0, 1, 1, 1],
                [0, 0, 1, 1]], dtype=torch.int32)
    """
    pos = torch.arange(T, device=device)
    offset = pos[:, None] - pos[None, :]  # (T, T): query minus key
    allowed = offset.abs() <= window
    return allowed & (offset >= 0) if causal else allowed


class LocalAttention(nn.Module):
    """Multi-head self-attention restricted to a sliding window, memory linear in length.

    Example:
        >>> attn = LocalAttention(dim=16, num_heads=4, window=2, causal=True)
        >>> attn(torch.randn(2, 50, 16)).shape                    # (B, T, dim)
        torch.Size([2, 50, 16])
    """

    def __init__(self, dim: int, num_heads: int, window: int, *, causal: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads, self.window, self.causal = num_heads, window, causal
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        q = _split_heads(self.q_proj(x), self.num_heads)  # (B, h, T, d)
        k = _split_heads(self.k_proj(x), self.num_heads)
        v = _split_heads(self.v_proj(x), self.num_heads)
        out = local_attention(q, k, v, self.window, causal=self.causal)  # (B, h, T, d)
        return self.out_proj(_merge_heads(out))
