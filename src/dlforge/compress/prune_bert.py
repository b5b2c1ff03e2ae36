"""Structured pruning of BERT: remove attention heads and feed-forward neurons.

Michel, Levy and Neubig 2019 ("Are Sixteen Heads Really Better than One?") score each
head by ``|dL/d xi_h|``, the gradient of the loss with respect to a gate ``xi_h = 1`` on
the head's output, summed over a few batches, and find that many heads can go at a small
cost. :func:`head_importance` computes that score (or, with no data, a weight-norm proxy);
:func:`prune_heads` removes the weakest heads and REBUILDS the attention projections with
fewer rows (query/key/value) and columns (the output projection), so the model has fewer
parameters and does less work. :func:`prune_ffn` does the same for the feed-forward
neurons (``ffn_dim``), gated on the activation's output.

Every layer keeps the same number of heads: the pruned model is an ordinary
``BertConfig`` with a smaller ``num_heads`` and ``head_dim`` kept at its old value, so
the spec stays a flat JSON mapping, ``save_artifact``/``load_artifact`` need nothing new,
and every layer keeps one fused attention shape. Heads are ranked within each layer.

Example:
    >>> from dlforge.models.bert import build_bert
    >>> bert = build_bert((8,), 2, vocab_size=100, dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    >>> smaller, report = prune_heads(bert, 0.5)
    >>> smaller.config.num_heads, smaller.config.head_dim, report.widths_after
    (2, 8, (2, 2))
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dlforge.compress.prune import StructuredReport, _check_amount, _count
from dlforge.errors import ConfigError
from dlforge.models.bert import BertClassifier
from dlforge.targets import IGNORE_INDEX


def head_importance(model: BertClassifier, data: Dataset | None = None, *, batches: int = 4,
                    batch_size: int = 32) -> Tensor:
    """(num_layers, num_heads) importance of each head; larger is more important.

    With ``data`` (``(ids, label)`` pairs): ``sum over batches |dL/d xi|`` (Michel et al.),
    L the cross-entropy of the labels (per token for token and MLM heads), in eval mode. Without: the
    proxy ``||W_v[h]|| * ||W_o[:, h]||`` (Frobenius norms of the head's value rows and its
    output-projection columns), which bounds how much the head can move the output.

    Example:
        >>> from dlforge.models.bert import build_bert
        >>> head_importance(build_bert((8,), 2, vocab_size=50, dim=16, num_layers=3, num_heads=2)).shape
        torch.Size([3, 2])
    """
    layers = _layers(model)
    if data is None:
        return torch.stack([_norm_proxy(layer.attention.value.weight, layer.attention_output.dense.weight,
                                        layer.attention.num_heads) for layer in layers])
    modules = [layer.attention_output.dense for layer in layers]
    return _gradient_importance(model, data, layers[0].attention.num_heads, modules, batches, batch_size)


def ffn_importance(model: BertClassifier, data: Dataset | None = None, *, batches: int = 4,
                   batch_size: int = 32) -> Tensor:
    """(num_layers, ffn_dim) importance of each feed-forward neuron, as :func:`head_importance`
    (the gate sits on the activation's output; the proxy is ``||W_in[i]|| * ||W_out[:, i]||``).

    Example:
        >>> from dlforge.models.bert import build_bert
        >>> ffn_importance(build_bert((8,), 2, vocab_size=50, dim=16, num_layers=1, num_heads=2, ffn_dim=24)).shape
        torch.Size([1, 24])
    """
    layers = _layers(model)
    if data is None:
        return torch.stack([_norm_proxy(layer.intermediate.weight, layer.output.dense.weight, layer.intermediate.out_features)
                            for layer in layers])
    modules = [layer.output.dense for layer in layers]
    return _gradient_importance(model, data, model.config.ffn_dim, modules, batches, batch_size)


def prune_heads(model: BertClassifier, amount: float, *, data: Dataset | None = None,
                batches: int = 4, batch_size: int = 32) -> tuple[BertClassifier, StructuredReport]:
    """Remove the ``amount`` share of each layer's least important heads; returns a new model.

    Importance is :func:`head_importance` (``data`` given: gradients; else the weight-norm
    proxy). Each layer keeps ``max(1, H - round(amount * H))`` heads. In eval mode the
    result computes what ``model`` computes with the removed heads' outputs set to zero
    (:func:`gated`). ``report.kept[l]`` lists layer ``l``'s kept heads. ``model`` is unchanged.

    Example:
        >>> from dlforge.models.bert import build_bert
        >>> bert = build_bert((8,), 2, vocab_size=50, dim=16, num_layers=1, num_heads=4)
        >>> prune_heads(bert, 0.25)[0].config.num_heads
        3
    """
    _check_amount(amount, high_ok=False)
    kept = _top(head_importance(model, data, batches=batches, batch_size=batch_size), amount)
    H, d = model.config.num_heads, _layers(model)[0].attention.head_dim
    state = model.state_dict()
    for i, keep in enumerate(kept):
        rows = (keep[:, None] * d + torch.arange(d)).flatten()  # (h * d,) kept head slices
        prefix = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            for part in ("weight", "bias"):
                state[f"{prefix}attention.{name}.{part}"] = state[f"{prefix}attention.{name}.{part}"][rows]
        out = f"{prefix}attention_output.dense.weight"
        state[out] = state[out][:, rows]  # (dim, h * d)
    smaller = _rebuild(model, state, num_heads=len(kept[0]), head_dim=d)
    return smaller, _report(model, smaller, H, kept)


def prune_ffn(model: BertClassifier, amount: float, *, data: Dataset | None = None,
              batches: int = 4, batch_size: int = 32) -> tuple[BertClassifier, StructuredReport]:
    """Remove the ``amount`` share of each layer's least important feed-forward neurons.

    As :func:`prune_heads`, with :func:`ffn_importance`: ``intermediate`` loses rows and
    ``output.dense`` columns, and ``ffn_dim`` shrinks in every layer alike.

    Example:
        >>> from dlforge.models.bert import build_bert
        >>> bert = build_bert((8,), 2, vocab_size=50, dim=16, num_layers=1, num_heads=2, ffn_dim=40)
        >>> prune_ffn(bert, 0.5)[0].config.ffn_dim
        20
    """
    _check_amount(amount, high_ok=False)
    kept = _top(ffn_importance(model, data, batches=batches, batch_size=batch_size), amount)
    state = model.state_dict()
    for i, keep in enumerate(kept):
        prefix = f"bert.encoder.layer.{i}."
        for part in ("weight", "bias"):
            state[f"{prefix}intermediate.{part}"] = state[f"{prefix}intermediate.{part}"][keep]
        out = f"{prefix}output.dense.weight"
        state[out] = state[out][:, keep]  # (dim, kept)
    smaller = _rebuild(model, state, ffn_dim=len(kept[0]))
    return smaller, _report(model, smaller, model.config.ffn_dim, kept)


@contextlib.contextmanager
def gated(model: BertClassifier, heads: Tensor | None = None, ffn: Tensor | None = None) -> Iterator[None]:
    """Within the block, multiply each head's output by ``heads[l, h]`` (L, H) and each FFN
    neuron's by ``ffn[l, i]`` (L, ffn_dim): the gates of :func:`head_importance`.
    A gate of 0 is the head (or neuron) removed; the model itself is not changed.

    Example:
        >>> from dlforge.models.bert import build_bert
        >>> bert = build_bert((8,), 2, vocab_size=50, dim=16, num_layers=1, num_heads=2).eval()
        >>> x = torch.randint(1, 50, (3, 8))
        >>> with gated(bert, heads=torch.ones(1, 2)):
        ...     same = torch.equal(bert(x), bert(x))
        >>> same
        True
    """
    hooks = []
    for gate, attr in ((heads, "attention_output"), (ffn, "output")):
        if gate is None:
            continue
        for layer, g in zip(_layers(model), gate):
            hooks.append(getattr(layer, attr).dense.register_forward_pre_hook(_gate_hook(g)))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _gate_hook(gate: Tensor):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]  # (..., G * d): G gated groups of d features each
        groups = x.unflatten(-1, (len(gate), -1))  # (..., G, d)
        return ((groups * gate.to(x.dtype)[:, None]).flatten(-2), *args[1:])

    return hook


def _gradient_importance(model: BertClassifier, data: Dataset, groups: int, modules: list[nn.Module],
                         batches: int, batch_size: int) -> Tensor:
    """(L, groups) sum over batches of |dL/d gate|, the gates (all 1) on ``modules``' inputs."""
    if len(data) == 0:
        raise ConfigError("the dataset for head importance is empty", hint="pass a few labelled batches")
    device = next(model.parameters()).device
    gate = torch.ones(len(modules), groups, device=device, requires_grad=True)  # (L, G)
    loader = DataLoader(data, batch_size=batch_size)
    was_training = model.training
    model.eval()  # no dropout: the score is the loss's sensitivity, not noise
    hooks = [m.register_forward_pre_hook(_gate_hook(g)) for m, g in zip(modules, gate)]
    importance = torch.zeros_like(gate)
    try:
        for i, (xb, yb) in enumerate(loader):
            if i == batches:
                break
            out = model(xb.to(device))  # (B, K) or (B, T, K)
            loss = F.cross_entropy(out.flatten(0, -2), yb.to(device).flatten(), ignore_index=IGNORE_INDEX)
            (grad,) = torch.autograd.grad(loss, gate)
            importance += grad.abs()  # (L, G)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return importance.detach().cpu()


def _norm_proxy(w_in: Tensor, w_out: Tensor, groups: int) -> Tensor:
    """(groups,) ||rows of w_in|| * ||columns of w_out|| per group of features."""
    rows = w_in.detach().unflatten(0, (groups, -1)).flatten(1).norm(dim=1)  # (G,)
    cols = w_out.detach().unflatten(1, (groups, -1)).transpose(0, 1).flatten(1).norm(dim=1)  # (G,)
    return rows * cols


def _top(importance: Tensor, amount: float) -> list[Tensor]:
    """Per layer, indices (ascending) of the most important ``1 - amount`` share (at least 1)."""
    n = importance.shape[1]
    n_keep = max(1, n - round(amount * n))
    return [row.topk(n_keep).indices.sort().values for row in importance.cpu()]


def _layers(model: nn.Module) -> nn.ModuleList:
    if not isinstance(model, BertClassifier):
        raise ConfigError(f"cannot prune heads of a {type(model).__name__}",
                          hint="head and FFN pruning support dlforge's bert models; use prune_structured "
                          "for mlp and cnn")
    return model.bert.encoder.layer


def _rebuild(model: BertClassifier, state: dict[str, Tensor], **changes: int) -> BertClassifier:
    with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the RNG alone
        smaller = BertClassifier(dataclasses.replace(model.config, **changes))
    smaller.load_state_dict(state)
    smaller.bert.skip_padding = model.bert.skip_padding
    return smaller.to(next(model.parameters()).device).train(model.training)


def _report(model: nn.Module, smaller: nn.Module, before: int, kept: list[Tensor]) -> StructuredReport:
    L = len(kept)
    return StructuredReport((before,) * L, tuple(len(k) for k in kept), [k.tolist() for k in kept],
                            _count(model), _count(smaller))


__all__ = ["ffn_importance", "gated", "head_importance", "prune_ffn", "prune_heads"]
