"""BERT (Devlin et al., 2019) in dlforge's own modules, loading Hugging Face weights.

Token, position and segment embeddings feed ``num_layers`` post-LN encoder layers
(self-attention, then a GELU feed-forward net, each a residual branch closed by
LayerNorm). Module and attribute names follow ``transformers``' ``modeling_bert.py`` so
the weight map in :mod:`dlforge.models._bert_io` is a handful of renames; with the same
weights the outputs equal ``transformers.BertModel``'s. On top sits one head: a class per
sequence (BERT's tanh pooler on [CLS], or the mean over tokens as sentence-transformers
trained MiniLM), a class per token, or the masked-LM head tied to the word embeddings.
``causal=True`` lets each token see only itself and earlier ones. Layers skip padding
tokens (``BertModel.skip_padding``): the outputs at real tokens are unchanged, padding
positions read zeros, and a mostly padded batch runs as fast as its real tokens allow.
:func:`from_pretrained` reads a Hugging Face folder (``"minilm"``: the packaged
all-MiniLM-L6-v2).

Example:
    >>> import torch
    >>> from dlforge.models.bert import build_bert
    >>> model = build_bert((16,), 3, vocab_size=100, dim=32, num_layers=2, num_heads=4,
    ...                    ffn_dim=64)
    >>> model(torch.randint(1, 100, (2, 16))).shape      # padding id 0 is masked out
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dlforge.errors import ConfigError, DataError
from dlforge.models._bert_io import load_weights, minilm_path, pretrained_config  # HF folders
from dlforge.models._bert_unpad import Unpadding, zero_padding
from dlforge.models._config import (
    check_choice,
    check_dropout,
    check_positive,
    check_sizes,
    check_types,
    make_config,
)
from dlforge.nn import scaled_dot_product_attention

ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
               "relu": nn.ReLU}
TASK_HEADS = ("sequence", "token", "mlm")
POOLS = ("cls", "mean")


@dataclass
class BertConfig:
    input_shape: tuple[int, ...]  # (T,): token ids, padded with pad_token_id
    num_outputs: int  # classes; for task_head="mlm" it must equal vocab_size
    vocab_size: int = 30522
    dim: int = 768  # hidden_size
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072  # intermediate_size
    max_position: int = 512  # learned positions: no longer sequence can be read
    type_vocab_size: int = 2  # segments A and B of a sentence pair
    dropout: float = 0.1  # on embeddings, each residual branch and the head's input
    attention_dropout: float = 0.1  # on the attention weights
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"  # exact erf GELU, as Hugging Face's "gelu"
    pad_token_id: int = 0  # the attention mask is input != pad_token_id
    causal: bool = False  # True: token t sees tokens 0..t only
    task_head: str = "sequence"  # sequence: (B, out); token: (B, T, out); mlm: (B, T, vocab)
    pool: str = "cls"  # cls: tanh pooler on [CLS]; mean: mean over non-padding tokens
    head_dim: int | None = None  # None: dim // num_heads; set when heads were pruned away

    def __post_init__(self) -> None:
        check_types(self)
        check_sizes("input_shape", self.input_shape)
        if len(self.input_shape) != 1:
            raise ConfigError(f"model.input_shape is {list(self.input_shape)}, but BERT reads "
                              "token ids of shape (T,)", hint="use input_shape [T], e.g. [128]")
        for key in ("num_outputs", "vocab_size", "dim", "num_layers", "num_heads", "ffn_dim",
                    "max_position", "type_vocab_size"):
            check_positive(key, getattr(self, key))
        if self.head_dim is not None:
            check_positive("head_dim", self.head_dim)
        elif self.dim % self.num_heads != 0:
            raise ConfigError(
                f"model.dim is {self.dim}, not divisible by model.num_heads={self.num_heads}",
                hint="pick num_heads that divides dim, e.g. dim 768 with 12 heads")
        if self.input_shape[0] > self.max_position:
            raise ConfigError(
                f"model.input_shape allows {self.input_shape[0]} tokens, more than the "
                f"{self.max_position} learned positions (model.max_position)",
                hint="truncate the sequences, or build with a larger max_position "
                "(a pretrained model cannot grow its positions)")
        check_dropout(self.dropout)
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"model.attention_dropout is {self.attention_dropout}, "
                              "outside [0, 1)", hint="use a probability in [0, 1), e.g. 0.1")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"model.layer_norm_eps is {self.layer_norm_eps}",
                              hint="use a small positive number, e.g. 1e-12")
        check_choice("activation", self.activation, ACTIVATIONS)
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model.pad_token_id is {self.pad_token_id}, outside the "
                              f"vocabulary 0..{self.vocab_size - 1}",
                              hint="use the tokenizer's [PAD] id, 0 for BERT's vocabularies")
        check_choice("task_head", self.task_head, TASK_HEADS)
        check_choice("pool", self.pool, POOLS)
        if self.task_head == "mlm" and self.num_outputs != self.vocab_size:
            raise ConfigError(
                f"model.num_outputs is {self.num_outputs}, but the masked-LM head predicts "
                f"one of vocab_size={self.vocab_size} tokens",
                hint="set num_outputs equal to vocab_size for task_head mlm")


class BertModelOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, dim)
    pooler_output: Tensor | None  # (B, dim) for a sequence head, else None
    hidden_states: tuple[Tensor, ...] | None  # embeddings then each layer, when asked


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    Example:
        >>> emb = BertEmbeddings(BertConfig(input_shape=(5,), num_outputs=2, vocab_size=10,
        ...                                 dim=8, num_heads=2))
        >>> emb(torch.ones(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = config
        self.word_embeddings = nn.Embedding(c.vocab_size, c.dim, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position, c.dim)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        T = input_ids.shape[1]
        h = self.word_embeddings(input_ids)  # (B, T, dim)
        if token_type_ids is None:
            h = h + self.token_type_embeddings.weight[0]  # all segment A: skip the lookup
        else:
            h = h + self.token_type_embeddings(token_type_ids)  # (B, T, dim)
        h = h + self.position_embeddings.weight[:T]  # (T, dim): positions are 0..T-1
        return self.dropout(self.LayerNorm(h))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with ``query``/``key``/``value`` projections.

    The output projection lives in the layer (``attention_output``), as in BERT.
    ``explicit=True`` computes softmax(q k^T / sqrt(d)) v written out instead of the fused
    kernel (same numbers, slower; for reading and checking).

    Example:
        >>> attn = BertSelfAttention(dim=16, num_heads=4)
        >>> attn(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False,
                 explicit: bool = False, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim or dim // num_heads
        self.dropout, self.causal, self.explicit = dropout, causal, explicit
        self.query = nn.Linear(dim, num_heads * self.head_dim)  # heads side by side
        self.key = nn.Linear(dim, num_heads * self.head_dim)
        self.value = nn.Linear(dim, num_heads * self.head_dim)

    def forward(self, x: Tensor, bias: Tensor | None = None,
                unpadding: Unpadding | None = None) -> Tensor:
        """x (B, T, dim), or (N, dim) real tokens with ``unpadding``; ``bias`` (B, 1, 1, T)
        is added to the scores: 0 keeps a key, -inf blocks it."""
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, dim) or (N, dim)
        if unpadding is not None:
            q, k, v = unpadding.pad(q), unpadding.pad(k), unpadding.pad(v)  # (B, T, dim)
        B, T, D = q.shape
        shape = (B, T, self.num_heads, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d)
        out = scaled_dot_product_attention(
            q, k, v, mask=bias, causal=self.causal, fused=not self.explicit,
            dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, d)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, h * d), h * d = dim unpruned
        return out if unpadding is None else unpadding.unpad(out)  # as x


class BertResidualOutput(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))``: how each BERT sublayer ends (post-LN).

    Example:
        >>> out = BertResidualOutput(32, 8)
        >>> out(torch.randn(2, 5, 32), torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, in_dim: int, dim: int, dropout: float = 0.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))  # (B, T, dim)


class BertLayer(nn.Module):
    """Self-attention, then the feed-forward net; each closed by a residual LayerNorm.

    Example:
        >>> c = BertConfig(input_shape=(5,), num_outputs=2, vocab_size=10, dim=8, num_heads=2,
        ...                ffn_dim=16)
        >>> BertLayer(c)(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = config
        self.attention = BertSelfAttention(c.dim, c.num_heads, c.attention_dropout, c.causal,
                                           head_dim=c.head_dim)
        inner = c.num_heads * self.attention.head_dim  # dim, unless heads were pruned
        self.attention_output = BertResidualOutput(inner, c.dim, c.dropout, c.layer_norm_eps)
        self.intermediate = nn.Linear(c.dim, c.ffn_dim)
        self.activation = ACTIVATIONS[c.activation]()
        self.output = BertResidualOutput(c.ffn_dim, c.dim, c.dropout, c.layer_norm_eps)

    def forward(self, x: Tensor, bias: Tensor | None = None,
                unpadding: Unpadding | None = None) -> Tensor:
        """x (B, T, dim), or (N, dim) real tokens only when ``unpadding`` is given."""
        x = self.attention_output(self.attention(x, bias, unpadding), x)  # (B, T, dim)
        h = self.activation(self.intermediate(x))  # (B, T, ffn_dim)
        return self.output(h, x)  # (B, T, dim)


class BertEncoder(nn.Module):
    """The stack of layers; ``forward`` returns the last state and, if asked, every one.

    Example:
        >>> c = BertConfig(input_shape=(5,), num_outputs=2, vocab_size=10, dim=8, num_heads=2,
        ...                num_layers=3)
        >>> h, states = BertEncoder(c)(torch.randn(2, 5, 8), output_hidden_states=True)
        >>> h.shape, len(states)
        (torch.Size([2, 5, 8]), 4)
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, h: Tensor, bias: Tensor | None = None,
                unpadding: Unpadding | None = None, output_hidden_states: bool = False
                ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        states = [h]
        for layer in self.layer:
            h = layer(h, bias, unpadding)  # (B, T, dim) or (N, dim)
            states.append(h)
        return h, tuple(states) if output_hidden_states else None


class BertPooler(nn.Module):
    """tanh(dense(h[:, 0])): BERT's sequence summary, read from the [CLS] token.

    Example:
        >>> BertPooler(8)(torch.randn(2, 5, 8)).shape
        torch.Size([2, 8])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, h: Tensor) -> Tensor:
        return self.activation(self.dense(h[:, 0]))  # (B, dim)


class BertMLMHead(nn.Module):
    """dense, activation, LayerNorm, then a decoder whose weight IS the word embedding.

    Tying means the decoder adds only its bias: ``decoder.weight`` and
    ``word_embeddings.weight`` are one Parameter, trained by both uses.

    Example:
        >>> emb = nn.Embedding(10, 8)
        >>> head = BertMLMHead(8, emb)
        >>> head.decoder.weight is emb.weight, head(torch.randn(2, 5, 8)).shape
        (True, torch.Size([2, 5, 10]))
    """

    def __init__(self, dim: int, word_embeddings: nn.Embedding, activation: str = "gelu",
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = ACTIVATIONS[activation]()
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, word_embeddings.num_embeddings)
        self.decoder.weight = word_embeddings.weight  # (vocab, dim), shared

    def forward(self, h: Tensor) -> Tensor:
        h = self.LayerNorm(self.activation(self.dense(h)))  # (B, T, dim)
        return self.decoder(h)  # (B, T, vocab)


class BertModel(nn.Module):
    """Embeddings, encoder and (for a sequence head) the pooled summary.

    ``attention_mask`` (B, T) is 1/True on real tokens, as in ``transformers``; it
    becomes one additive (B, 1, 1, T) bias shared by every layer, and is dropped when
    nothing is padded so the fused kernel runs without a mask. With ``skip_padding``
    (the default) the layers compute only the real tokens (see :class:`Unpadding`):
    their outputs are unchanged, and the states at padding positions are zeros instead
    of values no token ever reads.

    Example:
        >>> c = BertConfig(input_shape=(6,), num_outputs=2, vocab_size=20, dim=8, num_heads=2,
        ...                num_layers=1)
        >>> out = BertModel(c)(torch.randint(1, 20, (3, 6)))
        >>> out.last_hidden_state.shape, out.pooler_output.shape
        (torch.Size([3, 6, 8]), torch.Size([3, 8]))
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        pooled = config.task_head == "sequence" and config.pool == "cls"
        self.pooler = BertPooler(config.dim) if pooled else None
        self.skip_padding = True

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False
                ) -> BertModelOutput:
        self._check_input(input_ids)
        h = self.embeddings(input_ids, token_type_ids)  # (B, T, dim)
        keep = None if attention_mask is None else attention_mask.bool()  # (B, T)
        # export and compile: one graph for padded and unpadded batches (no Python bool of
        # the data); compile keeps static shapes, so it masks padding instead of unpadding
        bias, exporting = None, torch.compiler.is_exporting()
        compiling = torch.compiler.is_compiling() and not exporting
        if keep is not None and (exporting or compiling or not bool(keep.all())):
            bias = torch.zeros(keep.shape, dtype=h.dtype, device=h.device)
            bias = bias.masked_fill(~keep, -math.inf)[:, None, None, :]  # (B, 1, 1, T)
        unpad = bias is not None and self.skip_padding and not compiling
        unpadding = Unpadding.of(keep) if unpad else None
        if unpadding is not None:
            h = unpadding.unpad(h)  # (N, dim)
        h, states = self.encoder(h, bias, unpadding, output_hidden_states)
        if unpadding is not None:
            h = unpadding.pad(h)  # (B, T, dim)
            states = None if states is None else tuple(unpadding.pad(s) for s in states)
        elif compiling and bias is not None and self.skip_padding:  # zeros at padding, as unpadded
            h = zero_padding(h, keep)  # (B, T, dim)
            states = None if states is None else tuple(zero_padding(s, keep) for s in states)
        pooled = None
        if self.pooler is not None:
            pooled = self.pooler(h)  # (B, dim)
        elif self.config.task_head == "sequence":  # pool="mean", over real tokens only
            w = (torch.ones_like(input_ids) if keep is None else keep).unsqueeze(-1).to(h.dtype)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)  # (B, dim); w (B, T, 1)
        return BertModelOutput(h, pooled, states)

    def _check_input(self, x: Tensor) -> None:
        integer = not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
        if x.dim() != 2 or not integer:
            raise DataError(
                f"BERT got input of shape {tuple(x.shape)} ({x.dtype}), expected (B, T) "
                "integer token ids",
                hint="tokenize the text to int64 ids (e.g. tokenizers.Tokenizer.encode_batch); "
                "add a batch dimension with x.unsqueeze(0)")
        if x.shape[1] > self.config.max_position:
            raise DataError(
                f"BERT got {x.shape[1]} tokens, more than its {self.config.max_position} "
                "learned positions", hint="truncate the sequences, e.g. to 512 tokens")


class BertClassifier(nn.Module):
    """BERT with one task head: (B, T) ids -> (B, out), (B, T, out) or (B, T, vocab).

    ``forward(x)`` masks ``x == pad_token_id``, so ``model(xb)`` in the training loop
    needs no mask. ``self.bert`` is the :class:`BertModel`, ``self.head`` the head.

    Example:
        >>> model = build_bert((8,), 4, vocab_size=50, dim=16, num_layers=1, num_heads=2,
        ...                    task_head="token")
        >>> model(torch.randint(0, 50, (2, 8))).shape
        torch.Size([2, 8, 4])
    """

    ARCH = "bert"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.dropout)
        if config.task_head == "mlm":
            self.head: nn.Module = BertMLMHead(config.dim, self.bert.embeddings.word_embeddings,
                                               config.activation, config.layer_norm_eps)
        else:
            self.head = nn.Linear(config.dim, config.num_outputs)
        self.apply(_init_bert_weights)
        # The tied MLM decoder is a Linear visited after the embedding: redo the embedding
        # so its padding row is zero again.
        _init_bert_weights(self.bert.embeddings.word_embeddings)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T) token ids; padding (``pad_token_id``) is masked out of attention."""
        out = self.bert(x, attention_mask=x != self.config.pad_token_id)
        if self.config.task_head == "mlm":
            return self.head(out.last_hidden_state)  # (B, T, vocab)
        if self.config.task_head == "token":
            return self.head(self.dropout(out.last_hidden_state))  # (B, T, num_outputs)
        return self.head(self.dropout(out.pooler_output))  # (B, num_outputs)


def _init_bert_weights(module: nn.Module) -> None:
    # BERT's scheme: N(0, 0.02) weights, zero biases, LayerNorm 1/0, zero padding row.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_bert(input_shape: Sequence[int], num_outputs: int, **options: Any) -> BertClassifier:
    """Build a randomly initialised BertClassifier; ``options`` are other BertConfig fields.

    Example:
        >>> model = build_bert((32,), 2, dim=64, num_layers=2, num_heads=4, ffn_dim=128)
        >>> len(model.bert.encoder.layer), model.head
        (2, Linear(in_features=64, out_features=2, bias=True))
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, **options}
    return BertClassifier(make_config(BertConfig, BertClassifier.ARCH, values))


def from_pretrained(path: str | Path, *, num_outputs: int | None = None, task_head: str = "sequence",
                    max_len: int | None = None, pool: str = "cls", dropout: float | None = None) -> BertClassifier:
    """Build a BertClassifier from a Hugging Face BERT folder (config.json + safetensors).

    ``path`` may be ``"minilm"`` for :func:`minilm_path`. The encoder (and pooler, and for
    ``task_head="mlm"`` the MLM head) take the folder's weights; a head the folder lacks
    keeps BERT's random init. ``num_outputs`` is required except for the MLM head;
    ``max_len`` (default: all positions) sets ``input_shape``; ``dropout`` overrides both
    dropouts of the folder's config.

    Example:
        >>> model = from_pretrained("minilm", num_outputs=2, pool="mean").eval()
        >>> model(torch.tensor([[101, 7592, 2088, 102]])).shape
        torch.Size([1, 2])
    """
    folder, values = pretrained_config(path, num_outputs=num_outputs, task_head=task_head,
                                       max_len=max_len, pool=pool, dropout=dropout)
    model = BertClassifier(make_config(BertConfig, BertClassifier.ARCH, values))
    load_weights(model, folder)
    return model


__all__ = [
    "BertClassifier", "BertConfig", "BertEmbeddings", "BertEncoder", "BertLayer", "BertMLMHead",
    "BertModel", "BertModelOutput", "BertPooler", "BertResidualOutput", "BertSelfAttention",
    "Unpadding", "build_bert", "from_pretrained", "minilm_path",
]
