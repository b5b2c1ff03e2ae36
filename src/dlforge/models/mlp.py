"""A multilayer perceptron: flatten, hidden blocks of Linear [BN] act [BN] [Dropout], head.

Example:
    >>> import torch
    >>> from dlforge.models.mlp import MLP, MLPConfig
    >>> model = MLP(MLPConfig(input_shape=(1, 8, 8), num_outputs=10, hidden=(32,)))
    >>> model(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlforge.errors import DataError
from dlforge.models._config import (
    check_choice,
    check_dropout,
    check_positive,
    check_sizes,
    check_types,
    make_config,
)
from dlforge.models.quantized import is_tracing
from dlforge.nn import ACTIVATIONS, INIT_SCHEMES, init_weights

BATCH_NORM_PLACES = (None, "before", "after")


@dataclass
class MLPConfig:
    input_shape: tuple[int, ...]  # per-sample shape; flattened, so (1, 8, 8) gives 64 inputs
    num_outputs: int
    hidden: tuple[int, ...] = (64, 64)  # widths of the hidden blocks; () is a linear model
    activation: str = "relu"
    batch_norm: str | None = None  # None, "before" (Linear BN act) or "after" (Linear act BN)
    dropout: float = 0.0  # after each hidden block
    init: str = "default"  # default | xavier | he

    def __post_init__(self) -> None:
        check_types(self)
        check_sizes("input_shape", self.input_shape)
        check_positive("num_outputs", self.num_outputs)
        check_sizes("hidden", self.hidden, allow_empty=True)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("batch_norm", self.batch_norm, BATCH_NORM_PLACES)
        check_dropout(self.dropout)
        check_choice("init", self.init, INIT_SCHEMES)


def mlp_block(in_features: int, out_features: int, config: MLPConfig) -> nn.Sequential:
    """One hidden block: Linear, then activation, BatchNorm and dropout as configured.

    Example:
        >>> cfg = MLPConfig(input_shape=(4,), num_outputs=2, batch_norm="before")
        >>> [type(m).__name__ for m in mlp_block(4, 8, cfg)]
        ['Linear', 'BatchNorm1d', 'ReLU']
    """
    # BN right after the Linear subtracts the batch mean, which cancels any bias.
    layers: list[nn.Module] = [
        nn.Linear(in_features, out_features, bias=config.batch_norm != "before")
    ]
    if config.batch_norm == "before":
        layers.append(nn.BatchNorm1d(out_features))
    layers.append(ACTIVATIONS[config.activation]())
    if config.batch_norm == "after":
        layers.append(nn.BatchNorm1d(out_features))
    if config.dropout > 0:
        layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Flatten each sample, run the hidden blocks, and map to ``num_outputs`` logits.

    ``self.layers`` holds one ``nn.Sequential`` per hidden block, so probes and gradient
    monitors can reach block ``i`` as ``model.layers[i]``; ``self.head`` is the final
    Linear.
    """

    ARCH = "mlp"

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        widths = (math.prod(config.input_shape), *config.hidden)
        self.layers = nn.ModuleList(
            mlp_block(n_in, n_out, config) for n_in, n_out in zip(widths, widths[1:])
        )
        self.head = nn.Linear(widths[-1], config.num_outputs)
        init_weights(self, config.init, config.activation)
        # The head feeds the loss, not an activation, so it gets the linear gain.
        init_weights(self.head, config.init, "identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._flatten(x)  # (B, D)
        for layer in self.layers:
            x = layer(x)  # (B, hidden[i])
        return self.head(x)  # (B, num_outputs)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return each hidden block's output, first block first: one (B, hidden[i]) each.

        Example:
            >>> model = MLP(MLPConfig(input_shape=(4,), num_outputs=2, hidden=(8, 3)))
            >>> [f.shape[1] for f in model.features(torch.zeros(5, 4))]
            [8, 3]
        """
        x = self._flatten(x)  # (B, D)
        outputs = []
        for layer in self.layers:
            x = layer(x)  # (B, hidden[i])
            outputs.append(x)
        return outputs

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.config.input_shape
        # A traced graph (int8 quantization, torch.compile) has no Python checks; the int8
        # wrapper (dlforge.models.quantized.QuantizedModel) checks its inputs instead.
        if not is_tracing() and tuple(x.shape[1:]) != expected:
            raise DataError(
                f"the mlp got input of shape {tuple(x.shape)}, expected (B, {_dims(expected)})",
                hint="the data's per-sample shape must equal model.input_shape; "
                "add a batch dimension with x.unsqueeze(0) for a single sample",
            )
        return x.flatten(1)  # (B, D)


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(d) for d in shape)


def build_mlp(input_shape: Sequence[int], num_outputs: int, **options: Any) -> MLP:
    """Build an MLP from explicit arguments; ``options`` are the other MLPConfig fields.

    Example:
        >>> model = build_mlp((20,), 3, hidden=(16,), activation="gelu", dropout=0.1)
        >>> model.head
        Linear(in_features=16, out_features=3, bias=True)
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, **options}
    return MLP(make_config(MLPConfig, MLP.ARCH, values))
