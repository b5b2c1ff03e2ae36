"""Activation functions by the names configs use (``model.activation``).

Example:
    >>> from dlforge.nn import ACTIVATIONS
    >>> ACTIVATIONS["gelu"]()
    GELU(approximate='none')
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# Module classes double as zero-argument factories: every call gives a fresh module, so
# two layers never share one instance (hooks and probes attach per layer).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, PyTorch's default
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
