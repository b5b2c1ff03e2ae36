"""Intermediate-layer distillation for BERT students (DistilBERT, TinyBERT, MiniLM style).

Besides the teacher's soft outputs (:class:`dlforge.train.losses.DistillationLoss`), a
BERT student can match what the teacher computes inside: the hidden states after mapped
layers (MSE, through a learned linear projection when the widths differ, as TinyBERT's
``W_h``) and the attention distributions inside mapped layers (KL(teacher || student)
per query token, as MiniLM and TinyBERT). With ``layer_map={s: t}``, student layer ``s``
(1-based; 0 is the embeddings, hidden states only) learns from teacher layer ``t``::

    loss = DistillationLoss(student logits, [label, teacher logits])
         + hidden_weight    * mean over mapped (s, t) of MSE(W h_s, h_t)
         + attention_weight * mean over mapped (s, t), s > 0, of KL(A_t || A_s)

Both intermediate terms average over real tokens only (padding is left out), MSE over
features too, and the KL over heads and query tokens; the KL needs equal head counts.

The states are read with forward hooks on each encoder layer (its input, output and
attention mask), so the BERT forward pass is unchanged and costs nothing extra when no
one distils. Attention log-probabilities are recomputed from a layer's input with its own
query and key projections: the fused attention kernel never forms them.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dlforge.models.bert import build_bert
    >>> teacher = build_bert((8,), 2, vocab_size=50, dim=32, num_layers=4, num_heads=4)
    >>> student = build_bert((8,), 2, vocab_size=50, dim=16, num_layers=2, num_heads=4)
    >>> data = TensorDataset(torch.randint(1, 50, (16, 8)), torch.randint(0, 2, (16,)))
    >>> distill_bert(teacher, student, data, epochs=1, batch_size=8, device="cpu").epochs_run
    1
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dlforge.errors import ConfigError
from dlforge.models.bert import BertClassifier, Unpadding
from dlforge.train import FitResult, fit
from dlforge.train.losses import DistillationLoss


class Captured(NamedTuple):
    """What one forward pass of a BERT computed inside, in padded form."""

    states: list[Tensor]  # [embeddings, after layer 1, ..., after layer L], each (B, T, dim)
    keep: Tensor  # (B, T) True at real tokens
    layers: nn.ModuleList  # the encoder layers, to recompute attention from their inputs

    def attention_logprobs(self, layer: int) -> Tensor:
        """(B, H, T, T) log softmax(q k^T / sqrt(d)) inside ``layer`` (1-based); -inf at
        blocked keys (padding, and later tokens for a causal model)."""
        module = self.layers[layer - 1].attention
        h = self.states[layer - 1]  # (B, T, dim): the layer's input
        B, T, _ = h.shape
        q, k = (proj(h).view(B, T, module.num_heads, module.head_dim).transpose(1, 2)
                for proj in (module.query, module.key))  # (B, H, T, d) each
        scores = q @ k.transpose(-2, -1) / math.sqrt(module.head_dim)  # (B, H, T, T)
        blocked = ~self.keep[:, None, None, :]  # (B, 1, 1, T)
        if module.causal:
            blocked = blocked | torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
        return scores.masked_fill(blocked, -math.inf).log_softmax(dim=-1)


@contextlib.contextmanager
def capture(model: BertClassifier) -> Iterator[list[Captured]]:
    """Record, for each forward pass of ``model`` in the block, its :class:`Captured` states.

    Example:
        >>> from dlforge.models.bert import build_bert
        >>> bert = build_bert((6,), 2, vocab_size=20, dim=8, num_layers=2, num_heads=2)
        >>> with capture(bert) as seen:
        ...     _ = bert(torch.tensor([[5, 6, 7, 0, 0, 0]]))
        >>> len(seen[0].states), seen[0].states[-1].shape, seen[0].keep.tolist()
        (3, torch.Size([1, 6, 8]), [[True, True, True, False, False, False]])
    """
    layers = model.bert.encoder.layer
    seen: list[Captured] = []
    pending: list[Tensor] = []

    def before(module: nn.Module, args: tuple) -> None:
        x, bias, unpadding = (*args, None, None)[:3]
        if module is layers[0]:  # a new forward pass: start from the embeddings
            pending.clear()
            pending.append(_padded(x, unpadding))
            keep = torch.ones(pending[0].shape[:2], dtype=torch.bool, device=x.device) if bias is None \
                else bias[:, 0, 0, :] == 0  # (B, T)
            seen.append(Captured(pending, keep, layers))
        pending.append(unpadding)  # replaced by the output in after()

    def after(module: nn.Module, args: tuple, out: Tensor) -> None:
        pending[-1] = _padded(out, pending[-1])
        if module is layers[-1]:
            seen[-1] = seen[-1]._replace(states=list(pending))

    hooks = [h for layer in layers for h in (layer.register_forward_pre_hook(before),
                                              layer.register_forward_hook(after))]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def hidden_mse(student: Tensor, teacher: Tensor, keep: Tensor) -> Tensor:
    """Mean of (student - teacher)^2 over real tokens and features; states (B, T, D), keep (B, T).

    Example:
        >>> keep = torch.tensor([[True, False]])
        >>> hidden_mse(torch.ones(1, 2, 2), torch.zeros(1, 2, 2), keep).item()
        1.0
    """
    return ((student - teacher) ** 2)[keep].mean()  # (N, D) real tokens -> ()


def attention_kl(student: Tensor, teacher: Tensor, keep: Tensor) -> Tensor:
    """KL(teacher || student) of attention log-probabilities (B, H, T, T), summed over keys
    and averaged over heads and real query tokens (``keep`` (B, T)).

    Example:
        >>> p = torch.tensor([0.5, 0.5, 0.0]).log().expand(1, 1, 3, 3)
        >>> attention_kl(p, p, torch.tensor([[True, True, False]])).item()
        0.0
    """
    terms = teacher.exp() * (teacher - student)  # (B, H, T, T)
    terms = torch.where(torch.isneginf(teacher), torch.zeros_like(terms), terms)  # 0 log 0 = 0
    per_query = terms.sum(dim=-1).transpose(1, 2)  # (B, T, H)
    return per_query[keep].mean()  # (N, H) -> ()


class IntermediateLoss(nn.Module):
    """The hidden-state and attention terms of BERT distillation, with the projection ``W``.

    Example:
        >>> loss = IntermediateLoss(16, 32, {1: 2}, hidden_weight=1.0, attention_weight=0.0)
        >>> loss.projection
        Linear(in_features=16, out_features=32, bias=False)
    """

    def __init__(self, student_dim: int, teacher_dim: int, layer_map: Mapping[int, int], *,
                 hidden_weight: float, attention_weight: float) -> None:
        super().__init__()
        self.layer_map = dict(layer_map)
        self.hidden_weight, self.attention_weight = float(hidden_weight), float(attention_weight)
        self.projection = nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, student: Captured, teacher: Captured) -> Tensor:
        keep = teacher.keep
        total = student.states[0].new_zeros(())
        if self.hidden_weight:
            hidden = [hidden_mse(self.projection(student.states[s]), teacher.states[t], keep)
                      for s, t in self.layer_map.items()]
            total = total + self.hidden_weight * torch.stack(hidden).mean()
        attention_pairs = [(s, t) for s, t in self.layer_map.items() if s > 0]
        if self.attention_weight and attention_pairs:
            kl = [attention_kl(student.attention_logprobs(s), teacher.attention_logprobs(t), keep)
                  for s, t in attention_pairs]
            total = total + self.attention_weight * torch.stack(kl).mean()
        return total


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer s learns from teacher layer s * L_t / L_s (TinyBERT's uniform map).

    Example:
        >>> uniform_layer_map(2, 6)
        {1: 3, 2: 6}
    """
    return {s: s * teacher_layers // student_layers for s in range(1, student_layers + 1)}


def distill_bert(
    teacher: BertClassifier, student: BertClassifier, train: Dataset, val: Dataset | None = None, *,
    layer_map: Mapping[int, int] | None = None, hidden_weight: float = 1.0, attention_weight: float = 1.0,
    temperature: float = 4.0, alpha: float = 0.1, **fit_kwargs: Any,
) -> FitResult:
    """Train ``student`` on ``train`` ((ids, label) pairs) from ``teacher``'s logits, hidden
    states and attention, through :func:`dlforge.train.fit`; see the module docstring.

    ``layer_map`` defaults to :func:`uniform_layer_map`. The teacher runs in eval mode on
    every batch (its states are too large to store for a whole dataset). ``val`` is
    scored with the student's plain cross-entropy. ``fit_kwargs`` go to ``fit``.

    Example:
        >>> distill_bert(teacher, student, train, val, layer_map={1: 2, 2: 4},   # doctest: +SKIP
        ...              hidden_weight=1.0, attention_weight=1.0, epochs=3, batch_size=32)
    """
    for name, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, BertClassifier) or model.config.task_head != "sequence":
            raise ConfigError(f"the {name} is a {type(model).__name__}, not a sequence-classifying bert",
                              hint="intermediate distillation needs two bert models with task_head sequence; "
                              "use dlforge.compress.distillation.distill for others")
    if "loss" in fit_kwargs:
        raise ConfigError("distill_bert sets the loss itself", hint="remove loss=...; tune the weights instead")
    ls, lt = student.config.num_layers, teacher.config.num_layers
    layer_map = uniform_layer_map(ls, lt) if layer_map is None else dict(layer_map)
    for s, t in layer_map.items():
        if not (0 <= s <= ls and 0 <= t <= lt):
            raise ConfigError(f"layer_map pairs student layer {s} with teacher layer {t}",
                              hint=f"student layers are 0..{ls}, teacher layers 0..{lt} (0: the embeddings)")
    if attention_weight and student.config.num_heads != teacher.config.num_heads:
        raise ConfigError(f"the student has {student.config.num_heads} heads and the teacher "
                          f"{teacher.config.num_heads}: their attention maps cannot be compared",
                          hint="give the student as many heads, or set attention_weight=0")
    objective = IntermediateLoss(student.config.dim, teacher.config.dim, layer_map,
                                 hidden_weight=hidden_weight, attention_weight=attention_weight)
    pair = _Pair(student, teacher, objective)
    soft = DistillationLoss(temperature=temperature, alpha=alpha)

    def loss(out: Tensor, labels: Tensor) -> Tensor:
        if not pair.training:  # validation: the student's own cross-entropy
            return soft(out, labels)
        packed = torch.cat([labels.float()[:, None], pair.teacher_logits], dim=1)  # (B, 1 + K)
        return soft(out, packed) + pair.intermediate

    was_training = teacher.training
    teacher.eval()
    try:
        return fit(pair, train, val, loss=loss, **fit_kwargs)
    finally:
        teacher.train(was_training)


class _Pair(nn.Module):
    """What ``fit`` trains: the student and the projection. The teacher is held outside
    the module tree, so it is neither optimised nor switched to train mode. Each forward
    leaves the teacher's logits and the intermediate loss for the loss function to read."""

    def __init__(self, student: BertClassifier, teacher: BertClassifier, objective: IntermediateLoss) -> None:
        super().__init__()
        self.student, self.objective, self._teacher = student, objective, (teacher,)

    def forward(self, x: Tensor) -> Tensor:
        teacher = self._teacher[0].to(x.device)
        if not self.training:
            return self.student(x)
        with torch.no_grad(), capture(teacher) as t:
            self.teacher_logits = teacher(x).float()  # (B, K)
        with capture(self.student) as s:
            out = self.student(x)  # (B, K)
        self.intermediate = self.objective(s[0], t[0])
        return out


def _padded(x: Tensor, unpadding: Unpadding | None) -> Tensor:
    return x if unpadding is None else unpadding.pad(x)  # (B, T, dim)


__all__ = ["Captured", "IntermediateLoss", "attention_kl", "capture", "distill_bert", "hidden_mse",
           "uniform_layer_map"]
