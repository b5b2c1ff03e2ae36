"""Attention checked against torch: explicit vs fused, MHA vs nn.MultiheadAttention, local vs band."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dlforge.errors import ConfigError
from dlforge.nn.attention import (
    LocalAttention,
    MultiHeadAttention,
    band_mask,
    local_attention,
    scaled_dot_product_attention,
)

B, H, T, S, D = 2, 3, 5, 7, 4


def _qkv(t: int = T, s: int = S, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, t, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, s, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, s, D, generator=g, dtype=dtype)
    return q, k, v


def _masks() -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    return {
        "none": None,
        "bool": torch.rand(B, 1, T, S, generator=g) > 0.3,
        "float": torch.randn(T, S, generator=g, dtype=torch.float64),
    }


def test_explicit_matches_formula_without_mask() -> None:
    q, k, v = _qkv()
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    ref_w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-1)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_w @ v)


@pytest.mark.parametrize("mask_name", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_explicit_and_fused_agree_with_torch(mask_name: str, causal: bool) -> None:
    q, k, v = _qkv(s=T)  # square: the causal mask is then the usual lower triangle
    mask = _masks()[mask_name]
    if mask is not None:
        mask = mask[..., :T]
    explicit = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    fused = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, fused=True)
    torch.testing.assert_close(explicit, fused)
    ref_mask = mask
    if causal:
        tri = torch.ones(T, T, dtype=torch.bool).tril()
        ref_mask = tri if mask is None else (mask & tri if mask.dtype == torch.bool
                                             else mask.masked_fill(~tri, -math.inf))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask)
    # torch leaves rows with no allowed key as NaN; ours gives zeros there.
    torch.testing.assert_close(explicit, ref.nan_to_num(nan=0.0))


def test_fully_masked_rows_give_zeros_and_finite_grads() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv())
    mask = torch.ones(T, S, dtype=torch.bool)
    mask[2] = False  # query 2 may attend to nothing
    for fused in (False, True):
        out = scaled_dot_product_attention(q, k, v, mask=mask, fused=fused)
        assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
        partial = scaled_dot_product_attention(q, k, v, mask=mask, fused=not fused)
        torch.testing.assert_close(out, partial)
        for t in (q, k, v):
            t.grad = None


def test_fused_cannot_return_weights() -> None:
    q, k, v = _qkv()
    with pytest.raises(ConfigError):
        scaled_dot_product_attention(q, k, v, fused=True, return_weights=True)


def _copy_to_torch(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    """Our q/k/v projections become the three slices of torch's packed in_proj."""
    with torch.no_grad():
        wq, wk, wv = ref.in_proj_weight.chunk(3)
        bq, bk, bv = ref.in_proj_bias.chunk(3)
        for proj, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_mha_matches_torch_multihead_attention(cross: bool, causal: bool, fused: bool) -> None:
    torch.manual_seed(0)
    dim, heads = 12, 3
    ref = nn.MultiheadAttention(dim, heads, batch_first=True, dtype=torch.float64).eval()
    ours = MultiHeadAttention(dim, heads, fused=fused).double().eval()
    _copy_to_torch(ours, ref)

    x = torch.randn(B, T, dim, dtype=torch.float64)
    mem = torch.randn(B, S, dim, dtype=torch.float64) if cross else x
    s = mem.shape[1]
    pad = torch.zeros(B, s, dtype=torch.bool)
    pad[1, -2:] = True  # the second sequence's last two keys are padding
    # torch's bool attn_mask means "blocked"; ours means "may attend": pass torch a float one.
    causal_float = torch.zeros(T, s, dtype=torch.float64).masked_fill(
        ~torch.ones(T, s, dtype=torch.bool).tril(), -math.inf) if causal else None

    pad_float = torch.zeros(B, s, dtype=torch.float64).masked_fill(pad, -math.inf)
    ref_out, ref_w = ref(x, mem, mem, key_padding_mask=pad_float, attn_mask=causal_float,
                         need_weights=True, average_attn_weights=True)
    out, w = ours(x, mem, mem, key_padding_mask=pad, is_causal=causal, need_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w.mean(dim=1), ref_w)
    assert w.shape == (B, heads, T, s)
    out_no_w, none = ours(x, mem, mem, key_padding_mask=pad, is_causal=causal)
    assert none is None
    torch.testing.assert_close(out_no_w, ref_out)


def test_mha_attn_mask_combines_with_padding() -> None:
    torch.manual_seed(0)
    dim, heads = 8, 2
    ref = nn.MultiheadAttention(dim, heads, batch_first=True, dtype=torch.float64).eval()
    ours = MultiHeadAttention(dim, heads).double().eval()
    _copy_to_torch(ours, ref)
    x = torch.randn(B, T, dim, dtype=torch.float64)
    allowed = band_mask(T, 2)  # (T, T) True = may attend
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[0, 0] = True
    ref_out, _ = ref(x, x, x, key_padding_mask=pad, attn_mask=~allowed)  # torch: True = blocked
    out, _ = ours(x, key_padding_mask=pad, attn_mask=allowed)
    torch.testing.assert_close(out, ref_out)


def test_mha_rejects_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        MultiHeadAttention(10, 3)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("length", "window", "block_size"), [(17, 3, None), (16, 4, 5), (9, 0, None), (6, 10, None)]
)
def test_local_attention_equals_full_attention_with_band_mask(
    causal: bool, length: int, window: int, block_size: int | None
) -> None:
    q, k, v = _qkv(length, length)
    out = local_attention(q, k, v, window, causal=causal, block_size=block_size)
    ref = scaled_dot_product_attention(q, k, v, mask=band_mask(length, window, causal=causal))
    torch.testing.assert_close(out, ref)


def test_local_attention_module_matches_banded_mha() -> None:
    torch.manual_seed(0)
    local = LocalAttention(8, 2, window=2, causal=True).double()
    full = MultiHeadAttention(8, 2).double()
    full.load_state_dict(local.state_dict())
    x = torch.randn(B, 11, 8, dtype=torch.float64)
    out, _ = full(x, attn_mask=band_mask(11, 2, causal=True))
    torch.testing.assert_close(local(x), out)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest(fn, length: int) -> int:  # noqa: ANN001
    q, k, v = (torch.randn(1, 1, length, 2) for _ in range(3))
    with _LargestTensor() as mode:
        fn(q, k, v)
    return mode.largest


def test_local_attention_memory_grows_linearly() -> None:
    def local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return local_attention(q, k, v, window=4)

    def full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return scaled_dot_product_attention(q, k, v, mask=band_mask(q.shape[-2], 4))

    local_sizes = [_largest(local, n) for n in (128, 256, 512)]
    full_sizes = [_largest(full, n) for n in (128, 256, 512)]
    # Doubling T doubles local attention's largest intermediate, but quadruples full attention's.
    local_growth = [b / a for a, b in zip(local_sizes, local_sizes[1:])]
    full_growth = [b / a for a, b in zip(full_sizes, full_sizes[1:])]
    assert local_growth == pytest.approx([2.0, 2.0], rel=0.05)
    assert full_growth == pytest.approx([4.0, 4.0], rel=0.05)
    assert local_sizes[-1] < full_sizes[-1] / 20
