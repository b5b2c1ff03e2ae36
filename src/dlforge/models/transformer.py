"""A Transformer encoder (Vaswani et al., 2017) for sequences, in one file.

Tokens (``vocab_size`` set, input (B, T) int64) or feature vectors (input (B, T, F)) are
embedded to ``dim``, given positions, and read by ``num_layers`` encoder layers of
multi-head self-attention and a feed-forward net, each wrapped in a residual connection
with LayerNorm before (pre-LN, ``norm_first=True``) or after (post-LN, the original
paper). The head reads a ``[CLS]`` vector or the mean over tokens (``task_head="sequence"``,
(B, num_outputs)) or every token (``task_head="token"``, (B, T, num_outputs), for
tagging); ``num_outputs`` logits classify, or ``num_outputs`` values regress.

Positions: ``sinusoidal`` and ``learned`` are added to the embeddings and exist for
``max_len`` steps only (learned rows past the training length are never trained; the
sinusoidal formula has no end, so raise ``max_len`` to read longer inputs). ``rotary``
(RoPE) rotates queries and keys and ``alibi`` adds ``-slope * |i - j|`` to the scores
inside every layer; both see only distances, so they accept any length. With
``positional="none"`` or one of ``"sinusoidal"``/``"learned"``, one ``EncoderLayer``
equals ``torch.nn.TransformerEncoderLayer(batch_first=True)`` with the same weights (with
``"alibi"``, it equals torch's layer given ``alibi_bias`` as its float ``src_mask``).

Example:
    >>> import torch
    >>> from dlforge.models.transformer import TransformerClassifier, TransformerConfig
    >>> model = TransformerClassifier(
    ...     TransformerConfig(input_shape=(9,), num_outputs=8, vocab_size=8, dim=32))
    >>> model(torch.randint(0, 8, (4, 9))).shape
    torch.Size([4, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dlforge.errors import ConfigError, DataError
from dlforge.models._config import (
    check_choice,
    check_dropout,
    check_positive,
    check_sizes,
    check_types,
    make_config,
)
from dlforge.nn import (
    ACTIVATIONS,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_slopes,
    scaled_dot_product_attention,
)

FFN_ACTIVATIONS = ("gelu", "relu")
POSITIONALS = ("sinusoidal", "learned", "rotary", "alibi", "none")
ABSOLUTE = ("sinusoidal", "learned")  # added to the embeddings; a table of max_len rows
RELATIVE = ("rotary", "alibi")  # applied inside attention; any length
POOLS = ("cls", "mean")
TASK_HEADS = ("sequence", "token")  # one prediction per sequence, or one per input step


@dataclass
class TransformerConfig:
    input_shape: tuple[int, ...]  # (T,) token ids when vocab_size is set, else (T, F)
    num_outputs: int
    vocab_size: int | None = None  # token ids 0 .. vocab_size-1; None: feature vectors
    dim: int = 64  # width of the residual stream
    num_heads: int = 4
    num_layers: int = 2
    ffn_dim: int = 128  # hidden width of each feed-forward net
    dropout: float = 0.1  # on attention weights, the FFN hidden layer and each residual branch
    norm_first: bool = True  # pre-LN trains stably without warmup; False is the 2017 post-LN
    activation: str = "gelu"
    positional: str = "sinusoidal"  # sinusoidal | learned | rotary | alibi | none (order-blind)
    max_len: int | None = None  # longest input for sinusoidal/learned; None: input_shape[0]
    pool: str = "cls"  # cls: a learned [CLS] vector read by the head; mean: mean over tokens
    task_head: str = "sequence"  # sequence: (B, num_outputs); token: (B, T, num_outputs)

    def __post_init__(self) -> None:
        check_types(self)
        check_sizes("input_shape", self.input_shape)
        expected = 1 if self.vocab_size is not None else 2
        if len(self.input_shape) != expected:
            raise ConfigError(
                f"model.input_shape is {list(self.input_shape)}, but a transformer "
                + ("over tokens needs (T,)" if expected == 1 else "over features needs (T, F)"),
                hint="token ids: input_shape [T] with vocab_size; feature vectors: "
                "input_shape [T, F] and no vocab_size",
            )
        check_positive("num_outputs", self.num_outputs)
        if self.vocab_size is not None:
            check_positive("vocab_size", self.vocab_size)
        for key in ("dim", "num_heads", "num_layers", "ffn_dim"):
            check_positive(key, getattr(self, key))
        if self.dim % self.num_heads != 0:
            raise ConfigError(
                f"model.dim is {self.dim}, not divisible by model.num_heads={self.num_heads}",
                hint="pick num_heads that divides dim, e.g. dim 64 with 4 or 8 heads",
            )
        check_dropout(self.dropout)
        check_choice("activation", self.activation, FFN_ACTIVATIONS)
        check_choice("positional", self.positional, POSITIONALS)
        if self.positional == "sinusoidal" and self.dim % 2 != 0:
            raise ConfigError(f"model.dim is {self.dim}, but sinusoidal positions need it even",
                              hint="use an even dim, or positional: learned")
        if self.positional == "rotary" and (self.dim // self.num_heads) % 2 != 0:
            raise ConfigError(
                f"model.dim / model.num_heads is {self.dim // self.num_heads}, but rotary "
                "positions turn pairs of each head's features and need it even",
                hint="pick dim and num_heads with an even ratio, e.g. dim 64 with 4 heads")
        if self.max_len is None:
            self.max_len = self.input_shape[0]
        if self.max_len < self.input_shape[0]:
            raise ConfigError(
                f"model.max_len is {self.max_len}, shorter than the {self.input_shape[0]} "
                "steps of model.input_shape",
                hint="remove model.max_len to use the input length, or raise it",
            )
        check_choice("pool", self.pool, POOLS)
        check_choice("task_head", self.task_head, TASK_HEADS)


class FeedForward(nn.Module):
    """The position-wise MLP: Linear(dim, ffn_dim), activation, dropout, Linear(ffn_dim, dim).

    Names match ``torch.nn.TransformerEncoderLayer`` (``linear1``, ``linear2``).

    Example:
        >>> FeedForward(8, 32)(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.activation(self.linear1(x)))  # (B, T, ffn_dim)
        return self.linear2(h)  # (B, T, dim)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each a residual branch with LayerNorm and dropout.

    Pre-LN (``norm_first=True``): ``x + drop(attn(norm1(x)))``, then
    ``x + drop(ffn(norm2(x)))``. Post-LN: ``norm1(x + drop(attn(x)))``, then
    ``norm2(x + drop(ffn(x)))``. ``forward`` returns ``(out, weights)``: weights
    (B, h, T, T) when ``need_weights``, else None. ``relative="rotary"`` rotates q and k
    by their step's position, ``relative="alibi"`` adds ``-slope_h * |i - j|`` to head h's
    scores; ``positions`` (T,) gives the steps' positions (default 0 .. T-1).

    Example:
        >>> layer = EncoderLayer(dim=16, num_heads=4, ffn_dim=32)
        >>> out, w = layer(torch.randn(2, 5, 16), need_weights=True)
        >>> out.shape, w.shape
        (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]))
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0,
                 activation: str = "gelu", norm_first: bool = True,
                 relative: str | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.ff = FeedForward(dim, ffn_dim, dropout, activation)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        if relative not in (None, *RELATIVE):
            raise ConfigError(f"relative is {relative!r}",
                              hint=f"use None or one of: {', '.join(RELATIVE)}")
        self.relative = relative
        # Neither has weights: the state dict is the same for every positional choice.
        self.rotary = RotaryEmbedding(dim // num_heads) if relative == "rotary" else None
        if relative == "alibi":
            self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)  # (h,)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = False,
                positions: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, T, dim); ``key_padding_mask`` (B, T), True marks padding."""
        if self.norm_first:
            a, weights = self._attend(self.norm1(x), key_padding_mask, need_weights, positions)
            x = x + a  # (B, T, dim)
            x = x + self.dropout2(self.ff(self.norm2(x)))  # (B, T, dim)
        else:
            a, weights = self._attend(x, key_padding_mask, need_weights, positions)
            x = self.norm1(x + a)  # (B, T, dim)
            x = self.norm2(x + self.dropout2(self.ff(x)))  # (B, T, dim)
        return x, weights

    def _attend(self, x: Tensor, key_padding_mask: Tensor | None, need_weights: bool,
                positions: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.relative is None:
            out, weights = self.self_attn(x, key_padding_mask=key_padding_mask,
                                          need_weights=need_weights)  # (B, T, dim), (B, h, T, T)
        else:
            out, weights = self._attend_relative(x, key_padding_mask, need_weights, positions)
        return self.dropout1(out), weights

    def _attend_relative(self, x: Tensor, key_padding_mask: Tensor | None, need_weights: bool,
                         positions: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """self_attn's own projections, with positions acting on q and k or on the scores."""
        attn = self.self_attn
        B, T, _ = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device)  # (T,)
        q, k, v = (proj(x).view(B, T, attn.num_heads, -1).transpose(1, 2)  # (B, h, T, d)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        mask: Tensor | None = None
        if self.rotary is not None:
            q, k = self.rotary.apply_rotary(q, k, positions)  # (B, h, T, d)
        else:
            distance = (positions[:, None] - positions[None, :]).abs()  # (T, T)
            mask = -self.slopes.to(q.dtype)[:, None, None] * distance  # (h, T, T)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, T), True = padding
            mask = ~pad if mask is None else mask.masked_fill(pad, -math.inf)  # (B, h, T, T)
        p = attn.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=p,
                                                        return_weights=True)
        else:
            out = scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=p, fused=attn.fused)
            weights = None
        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, h, T, d) -> (B, T, dim)
        return attn.out_proj(out), weights


class TransformerEncoder(nn.Module):
    """Embed tokens or project features, add positions, and run the encoder layers.

    ``embed(x)`` gives the (B, T, dim) layer input; ``encode(h, padding_mask)`` runs the
    layers (and, for pre-LN, the final LayerNorm that normalises the residual stream the
    layers only ever add to); ``forward`` does both. Keeping them apart lets the
    classifier put a [CLS] vector between the two. ``self.positional`` is the module
    added to the embeddings (sinusoidal, learned) or None; rotary and ALiBi live in the
    layers (``layer.relative``).

    Example:
        >>> enc = TransformerEncoder(TransformerConfig(input_shape=(6, 3), num_outputs=2,
        ...                                            dim=16))
        >>> enc(torch.randn(2, 6, 3)).shape
        torch.Size([2, 6, 16])
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.vocab_size is not None:
            self.embedding: nn.Module = nn.Embedding(c.vocab_size, c.dim)
        else:
            self.embedding = nn.Linear(c.input_shape[1], c.dim)
        assert c.max_len is not None  # filled in by TransformerConfig.__post_init__
        self.positional: nn.Module | None = None  # none, rotary, alibi: nothing is added
        if c.positional == "sinusoidal":
            self.positional = SinusoidalPositionalEncoding(c.dim, c.max_len)
        elif c.positional == "learned":
            self.positional = LearnedPositionalEmbedding(c.max_len, c.dim)
        self.dropout = nn.Dropout(c.dropout)
        relative = c.positional if c.positional in RELATIVE else None
        self.layers = nn.ModuleList(
            EncoderLayer(c.dim, c.num_heads, c.ffn_dim, c.dropout, c.activation, c.norm_first,
                         relative)
            for _ in range(c.num_layers)
        )
        # Post-LN already ends every layer with a norm; pre-LN needs one at the end.
        self.norm = nn.LayerNorm(c.dim) if c.norm_first else nn.Identity()

    def embed(self, x: Tensor) -> Tensor:
        """Token ids (B, T) or features (B, T, F) -> (B, T, dim) with positions added."""
        self._check_input(x)
        h = self.embedding(x)  # (B, T, dim)
        if self.positional is not None:
            h = self.positional(h)  # (B, T, dim)
        return self.dropout(h)

    def encode(self, h: Tensor, padding_mask: Tensor | None = None, need_weights: bool = False,
               positions: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Run the layers over h (B, T, dim); return (B, T, dim) and each layer's weights.

        ``positions`` (T,), default 0 .. T-1, are what rotary and ALiBi layers see.
        """
        maps = []
        for layer in self.layers:
            h, weights = layer(h, padding_mask, need_weights, positions)  # (B, T, dim)
            if weights is not None:
                maps.append(weights)
        return self.norm(h), maps  # (B, T, dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.encode(self.embed(x), padding_mask)[0]  # (B, T, dim)

    def _check_input(self, x: Tensor) -> None:
        c = self.config
        if c.vocab_size is not None:
            ok = x.dim() == 2 and not torch.is_floating_point(x)
            expected = "(B, T) integer token ids"
        else:
            ok = x.dim() == 3 and x.shape[2] == c.input_shape[1]
            expected = f"(B, T, {c.input_shape[1]})"
        if not ok:
            raise DataError(
                f"the transformer got input of shape {tuple(x.shape)} ({x.dtype}), "
                f"expected {expected}",
                hint="the data's per-sample shape must match model.input_shape (and token "
                "ids need vocab_size); add a batch dimension with x.unsqueeze(0)",
            )
        if c.positional in ABSOLUTE and x.shape[1] > c.max_len:  # type: ignore[operator]
            raise DataError(
                f"the transformer got {x.shape[1]} steps, more than model.max_len={c.max_len}: "
                f"its {c.positional} positions exist for {c.max_len} steps only",
                hint="build the model with a larger max_len (learned rows past the training "
                "length stay untrained), use positional rotary or alibi, which have no length "
                "limit, or truncate the sequences",
            )


class TransformerClassifier(nn.Module):
    """A Transformer encoder with a head: (B, T[, F]) -> (B, num_outputs) or (B, T, num_outputs).

    ``self.encoder`` is the :class:`TransformerEncoder` (``self.encoder.layers[i]`` is
    layer i), ``self.head`` the final Linear. With ``pool="cls"`` a learned vector is
    prepended to the embedded tokens (after absolute positions are added, so it has
    none; rotary and ALiBi, which only see distances, treat it as step 0 and the
    tokens as steps 1 .. T) and its final state feeds the head; with ``pool="mean"``
    the head reads the mean over non-padding tokens. ``task_head="token"`` applies the
    head to every token instead, (B, T, num_outputs), [CLS] left out; outputs at
    padding steps are meaningless and should carry no loss.

    Example:
        >>> model = build_transformer((12, 3), 2, dim=16, num_heads=2, pool="mean")
        >>> x, pad = torch.randn(4, 12, 3), torch.zeros(4, 12, dtype=torch.bool)
        >>> model(x, padding_mask=pad).shape
        torch.Size([4, 2])
    """

    ARCH = "transformer"

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        # BERT's 0.02: a small start keeps [CLS] from dominating the first attention.
        self.cls = (
            nn.Parameter(0.02 * torch.randn(1, 1, config.dim)) if config.pool == "cls" else None
        )  # (1, 1, dim)
        self.head = nn.Linear(config.dim, config.num_outputs)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x (B, T) token ids or (B, T, F) features; ``padding_mask`` (B, T), True = padding."""
        h, mask, _ = self._run(x, padding_mask, need_weights=False)  # (B, T', dim)
        if self.config.task_head == "token":
            tokens = h[:, 1:] if self.cls is not None else h  # (B, T, dim)
            return self.head(tokens)  # (B, T, num_outputs)
        if self.cls is not None:
            summary = h[:, 0]  # (B, dim): the [CLS] position
        elif mask is None:
            summary = h.mean(dim=1)  # (B, dim)
        else:
            keep = (~mask).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            summary = (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)  # (B, dim)
        return self.head(summary)  # (B, num_outputs)

    @torch.no_grad()
    def attention_maps(self, x: Tensor, padding_mask: Tensor | None = None) -> list[Tensor]:
        """Each layer's attention weights, one (B, h, T', T') tensor per layer, for figures.

        T' is T + 1 with ``pool="cls"`` (index 0 is [CLS]). Call in eval mode: in train
        mode the weights are taken after attention dropout. Padding columns are 0 and
        every other row sums to 1.

        Example:
            >>> model = build_transformer((5,), 3, vocab_size=4, dim=8, num_heads=2).eval()
            >>> [m.shape for m in model.attention_maps(torch.zeros(1, 5, dtype=torch.long))]
            [torch.Size([1, 2, 6, 6]), torch.Size([1, 2, 6, 6])]
        """
        return self._run(x, padding_mask, need_weights=True)[2]

    def _run(self, x: Tensor, padding_mask: Tensor | None,
             need_weights: bool) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        h = self.encoder.embed(x)  # (B, T, dim)
        B, T, _ = h.shape
        if padding_mask is not None and padding_mask.shape != (B, T):
            raise DataError(
                f"padding_mask has shape {tuple(padding_mask.shape)}, expected {(B, T)}",
                hint="pass one boolean per step, True where the step is padding",
            )
        if self.cls is not None:
            h = torch.cat([self.cls.expand(B, -1, -1).to(h.dtype), h], dim=1)  # (B, T+1, dim)
            if padding_mask is not None:
                never = padding_mask.new_zeros(B, 1)  # [CLS] is never padding
                padding_mask = torch.cat([never, padding_mask], dim=1)  # (B, T+1)
        h, maps = self.encoder.encode(h, padding_mask, need_weights)  # (B, T', dim)
        return h, padding_mask, maps


def build_transformer(input_shape: Sequence[int], num_outputs: int,
                      **options: Any) -> TransformerClassifier:
    """Build a TransformerClassifier; ``options`` are the other TransformerConfig fields.

    Example:
        >>> model = build_transformer((9,), 8, vocab_size=8, dim=32, num_layers=1)
        >>> len(model.encoder.layers), model.head
        (1, Linear(in_features=32, out_features=8, bias=True))
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, **options}
    return TransformerClassifier(make_config(TransformerConfig, TransformerClassifier.ARCH,
                                             values))
