"""Pruning: zero the smallest weights (unstructured) or remove whole neurons/channels.

Unstructured magnitude pruning (:func:`magnitude_prune`) zeroes individual weights. That
is sparsity, not a speed-up: the tensors keep their shape and dense kernels do the same
work on zeros (pytorch#36214); it helps only once a sparse format or a compressor uses it.

Structured pruning (:func:`prune_structured`) removes the weakest hidden neurons of an MLP
or output channels of a CNN and rebuilds the same model class from a smaller spec, so
the artifact is smaller and inference is faster.

Example:
    >>> from dlforge.models import build
    >>> model = build({"arch": "mlp", "hidden": [32]}, input_shape=(8,), num_outputs=2)
    >>> magnitude_prune(model, 0.5).total_sparsity
    0.5
    >>> smaller, report = prune_structured(model, 0.5)
    >>> smaller.config.hidden
    (16,)
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from dlforge.errors import ConfigError
from dlforge.models import CNN, MLP
from dlforge.nn import ACTIVATIONS

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = {"l1": 1, "l2": 2}


@dataclass
class PruneReport:
    """Zero weights per pruned layer (by module name) after :func:`magnitude_prune`."""

    zeros: dict[str, int]
    sizes: dict[str, int]

    @property
    def sparsity(self) -> dict[str, float]:
        """Share of zero weights in each layer."""
        return {name: self.zeros[name] / self.sizes[name] for name in self.sizes}

    @property
    def total_sparsity(self) -> float:
        """Share of zero weights over all pruned layers together."""
        return sum(self.zeros.values()) / sum(self.sizes.values())


@dataclass
class StructuredReport:
    """What :func:`prune_structured` removed: widths before/after and parameter counts."""

    widths_before: tuple[int, ...]
    widths_after: tuple[int, ...]
    kept: list[list[int]]  # indices of the kept units of each layer, ascending
    parameters_before: int
    parameters_after: int


def magnitude_prune(
    model: nn.Module, amount: float, *, scope: str = "global", layers: Sequence[str] | None = None
) -> PruneReport:
    """Zero the ``amount`` share of smallest-magnitude weights of Linear/Conv layers, in place.

    ``scope="global"`` ranks all selected weights together (``global_unstructured``), so
    layers end up with different sparsity; ``"layer"`` prunes each layer by ``amount``
    (``l1_unstructured``). ``layers`` names modules (``model.named_modules()``); default:
    every Linear/Conv. The masks are made permanent, so the state dict keeps plain names.
    Unstructured sparsity is not a speed-up: dense kernels do the same work on zeros.

    Example:
        >>> model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> report = magnitude_prune(model, 0.3, scope="layer")
        >>> report.sparsity
        {'0': 0.3, '2': 0.3}
    """
    _check_amount(amount, high_ok=True)
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope is {scope!r}", hint="use 'global' or 'layer'")
    targets = _select_layers(model, layers)
    if scope == "global":
        prune.global_unstructured(
            [(m, "weight") for m in targets.values()],
            pruning_method=prune.L1Unstructured,
            amount=amount,
        )
    else:
        for module in targets.values():
            prune.l1_unstructured(module, "weight", amount=amount)
    for module in targets.values():
        prune.remove(module, "weight")
    return PruneReport(
        zeros={name: int((m.weight == 0).sum()) for name, m in targets.items()},
        sizes={name: m.weight.numel() for name, m in targets.items()},
    )


def prune_structured(
    model: nn.Module, amount: float, *, norm: str = "l2"
) -> tuple[nn.Module, StructuredReport]:
    """Remove the ``amount`` share of each hidden layer's weakest units; returns a new model.

    MLP: hidden neurons, ranked by the ``norm`` of their incoming weights. CNN: conv output
    channels, ranked by the norm of their filters (BatchNorm and the next layer's inputs
    shrink with them). Each layer keeps at least one unit. The result is the same class
    built from a smaller spec (``hidden`` or ``channels``), so ``save_artifact`` stores
    it; in eval mode it computes what ``model`` computes with the removed units zeroed
    (their weights, biases and BatchNorm affine set to 0). ``model`` is unchanged.

    Example:
        >>> from dlforge.models import build
        >>> cnn = build({"arch": "cnn", "channels": [8, 16]}, input_shape=(1, 8, 8), num_outputs=3)
        >>> prune_structured(cnn, 0.25)[0].config.channels
        (6, 12)
    """
    _check_amount(amount, high_ok=False)
    if norm not in NORMS:
        raise ConfigError(f"norm is {norm!r}", hint="use 'l1' or 'l2'")
    if isinstance(model, MLP):
        return _prune_mlp(model, amount, NORMS[norm])
    if isinstance(model, CNN):
        return _prune_cnn(model, amount, NORMS[norm])
    hint = "structured pruning supports dlforge's mlp and cnn models"
    if getattr(type(model), "ARCH", None) == "bert":
        hint += "; for bert use dlforge.compress.prune_bert (prune_heads, prune_ffn)"
    raise ConfigError(f"cannot prune a {type(model).__name__} structurally", hint=hint)


def speedup(model: nn.Module, smaller: nn.Module, input_shape: Sequence[int], batch: int = 32,
            *, repeats: int = 9, calls: int = 20) -> float:
    """Eval-mode time of ``model`` over that of ``smaller`` on one CPU thread.

    The two are timed in alternation (``calls`` forward passes each, ``repeats`` times) and
    the median of the per-repeat ratios is returned, so a busy machine skews both alike.

    Example:
        >>> speedup(model, smaller, (1, 8, 8))  # doctest: +SKIP
        1.9
    """
    x = torch.randn(batch, *input_shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()
        smaller.eval()
        with torch.inference_mode():
            model(x)  # warm-up
            smaller(x)
            ratios = [_time(model, x, calls) / _time(smaller, x, calls) for _ in range(repeats)]
    finally:
        torch.set_num_threads(threads)
    return statistics.median(ratios)


def _time(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return time.perf_counter() - start


def _check_amount(amount: float, *, high_ok: bool) -> None:
    number = isinstance(amount, (int, float)) and not isinstance(amount, bool)
    if not (number and 0 <= amount and (amount <= 1 if high_ok else amount < 1)):
        raise ConfigError(
            f"amount is {amount!r}",
            hint="give the share to prune as a number from 0 up to "
            + ("1" if high_ok else "but not including 1 (a layer cannot lose every unit)"),
        )


def _select_layers(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if names is None:
        found = {n: m for n, m in modules.items() if isinstance(m, PRUNABLE)}
        if not found:
            raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to prune")
        return found
    for name in names:
        if name not in modules:
            raise ConfigError(f"the model has no layer {name!r}",
                              hint="use names from model.named_modules(), e.g. 'layers.0.0'")
        if not isinstance(modules[name], PRUNABLE):
            raise ConfigError(f"layer {name!r} is a {type(modules[name]).__name__}",
                              hint="only Linear and Conv layers can be magnitude-pruned")
    return {name: modules[name] for name in names}


def _keep(weight: torch.Tensor, amount: float, p: int) -> torch.Tensor:
    """Indices (ascending) of the units whose incoming weights have the largest norm."""
    scores = weight.detach().flatten(1).norm(p=p, dim=1)
    n_keep = max(1, len(scores) - round(amount * len(scores)))
    return scores.topk(n_keep).indices.sort().values


def _copy_slice(dst: nn.Module, src: nn.Module, rows: torch.Tensor, cols: torch.Tensor | None) -> None:
    """Copy ``src``'s parameters and buffers into ``dst``, keeping output units ``rows``."""
    with torch.no_grad():
        for name, tensor in [*src.named_parameters(), *src.named_buffers()]:
            if name == "num_batches_tracked":
                value = tensor
            elif name == "weight" and cols is not None:
                value = tensor[rows][:, cols]
            else:
                value = tensor[rows]
            getattr(dst, name).copy_(value)


def _rebuild(model: nn.Module, **changes: tuple[int, ...]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the RNG alone
        smaller = type(model)(dataclasses.replace(model.config, **changes))
    return smaller.train(model.training)


def _report(model: nn.Module, smaller: nn.Module, before, after, kept) -> StructuredReport:
    return StructuredReport(tuple(before), tuple(after), [k.tolist() for k in kept],
                            _count(model), _count(smaller))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prune_mlp(model: MLP, amount: float, p: int) -> tuple[MLP, StructuredReport]:
    cfg = model.config
    if not cfg.hidden:
        raise ConfigError("this mlp has no hidden layer to prune", hint="hidden is ()")
    source = copy.deepcopy(model)
    kept = [_keep(block[0].weight, amount, p) for block in source.layers]
    # A removed neuron with zeroed weights still outputs act(0) (0.5 for sigmoid) unless a
    # BatchNorm follows the activation; fold that constant into the next layer.
    dead = 0.0 if cfg.batch_norm == "after" else float(ACTIVATIONS[cfg.activation]()(torch.zeros(1)))
    nexts = [*(block[0] for block in source.layers[1:]), source.head]
    if dead:
        with torch.no_grad():
            for block, nxt, keep, follower in zip(source.layers, nexts, kept, [*source.layers[1:], None]):
                removed = torch.ones(block[0].out_features, dtype=torch.bool)
                removed[keep] = False
                shift = nxt.weight[:, removed].sum(1) * dead
                if nxt.bias is not None:
                    nxt.bias += shift
                else:  # Linear without bias: a BatchNorm follows; shift its mean instead
                    follower[1].running_mean -= shift
    smaller = _rebuild(model, hidden=tuple(len(k) for k in kept))
    cols = torch.arange(source.layers[0][0].in_features)
    for block, new_block, keep in zip(source.layers, smaller.layers, kept):
        for old, new in zip(block, new_block):
            if isinstance(old, (nn.Linear, nn.BatchNorm1d)):
                _copy_slice(new, old, keep, cols if isinstance(old, nn.Linear) else None)
        cols = keep
    _copy_slice(smaller.head, source.head, torch.arange(cfg.num_outputs), cols)
    return smaller, _report(model, smaller, cfg.hidden, smaller.config.hidden, kept)


def _prune_cnn(model: CNN, amount: float, p: int) -> tuple[CNN, StructuredReport]:
    cfg = model.config
    if float(ACTIVATIONS[cfg.activation]()(torch.zeros(1))) != 0:
        raise ConfigError(
            f"cannot prune a cnn with activation {cfg.activation!r} structurally: a removed "
            "channel would still feed act(0) != 0 through zero padding",
            hint="structured pruning of cnns supports relu, leaky_relu, gelu, tanh, identity",
        )
    kept = [_keep(block[0].weight, amount, p) for block in model.blocks]
    smaller = _rebuild(model, channels=tuple(len(k) for k in kept))
    cols = torch.arange(cfg.input_shape[0])
    for block, new_block, keep in zip(model.blocks, smaller.blocks, kept):
        for old, new in zip(block, new_block):
            if isinstance(old, (nn.Conv2d, nn.BatchNorm2d)):
                _copy_slice(new, old, keep, cols if isinstance(old, nn.Conv2d) else None)
        cols = keep
    _copy_slice(smaller.head, model.head, torch.arange(cfg.num_outputs), cols)
    return smaller, _report(model, smaller, cfg.channels, smaller.config.channels, kept)
