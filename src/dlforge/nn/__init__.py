"""Building blocks shared by several model families: activations, initialisation, attention
and positional encodings."""

from __future__ import annotations

from dlforge.nn.activations import ACTIVATIONS
from dlforge.nn.attention import (
    LocalAttention,
    MultiHeadAttention,
    band_mask,
    local_attention,
    scaled_dot_product_attention,
)
from dlforge.nn.init import INIT_SCHEMES, init_weights
from dlforge.nn.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
)

__all__ = [
    "ACTIVATIONS",
    "INIT_SCHEMES",
    "LearnedPositionalEmbedding",
    "LocalAttention",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "alibi_bias",
    "alibi_slopes",
    "band_mask",
    "init_weights",
    "local_attention",
    "scaled_dot_product_attention",
]
