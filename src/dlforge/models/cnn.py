"""A plain convolutional classifier: conv blocks with pooling, global pooling, linear head.

Each block is Conv (padding keeps H, W) -> [BatchNorm] -> activation, followed by a 2x2
stride-2 pooling while the feature map is at least 2x2. Global pooling turns the last map
into one vector per sample; dropout (if any) acts on that vector before the head.

Example:
    >>> import torch
    >>> from dlforge.models.cnn import CNN, CNNConfig
    >>> model = CNN(CNNConfig(input_shape=(1, 28, 28), num_outputs=10))
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlforge.errors import ConfigError, DataError
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

POOLS = ("max", "avg", None)
GLOBAL_POOLS = ("avg", "max")


@dataclass
class CNNConfig:
    input_shape: tuple[int, ...]  # (C, H, W)
    num_outputs: int
    channels: tuple[int, ...] = (32, 64)  # output channels of each conv block
    kernel_size: int = 3  # odd, so "same" padding keeps H and W
    batch_norm: bool = True  # Conv -> BN -> act
    activation: str = "relu"
    # On the globally pooled features, just before the head (as torchvision's classifiers
    # do); conv maps get none, since neighbouring pixels are correlated and BN already
    # regularises the blocks.
    dropout: float = 0.0
    pool: str | None = "max"  # "max" | "avg" | None: 2x2 stride 2 after each block
    global_pool: str = "avg"  # "avg" | "max": over all of H, W before the head
    init: str = "default"  # default | xavier | he

    def __post_init__(self) -> None:
        check_types(self)
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"model.input_shape is {list(self.input_shape)}, but a cnn needs (C, H, W)",
                hint="give channels, height and width, e.g. [1, 28, 28]; "
                "use arch: mlp for flat feature vectors",
            )
        check_sizes("input_shape", self.input_shape)
        check_positive("num_outputs", self.num_outputs)
        check_sizes("channels", self.channels)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(
                f"model.kernel_size is {self.kernel_size}",
                hint="use an odd positive size (1, 3, 5, 7) so padding keeps H and W",
            )
        check_choice("activation", self.activation, ACTIVATIONS)
        check_dropout(self.dropout)
        check_choice("pool", self.pool, POOLS)
        check_choice("global_pool", self.global_pool, GLOBAL_POOLS)
        check_choice("init", self.init, INIT_SCHEMES)


def conv_block(in_channels: int, out_channels: int, config: CNNConfig) -> nn.Sequential:
    """One conv block: Conv2d with "same" padding, optional BatchNorm2d, activation.

    Example:
        >>> cfg = CNNConfig(input_shape=(3, 8, 8), num_outputs=2)
        >>> conv_block(3, 16, cfg)[0]
        Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    # BN subtracts the per-channel batch mean right after the conv, cancelling any bias.
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            config.kernel_size,
            padding=config.kernel_size // 2,
            bias=not config.batch_norm,
        )
    ]
    if config.batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(ACTIVATIONS[config.activation]())
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Conv blocks with pooling, then global pooling and a linear head.

    ``self.blocks`` holds one ``nn.Sequential`` per conv block; pooling lives outside the
    blocks because whether it runs depends on the size of the map that reaches it, which
    ``config.input_shape`` fixes: ``self.pool_after[i]`` says whether block ``i`` pools
    (decided here, not per call, so the model traces to one static graph for int8).
    """

    ARCH = "cnn"

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        channels = (config.input_shape[0], *config.channels)
        self.blocks = nn.ModuleList(
            conv_block(c_in, c_out, config) for c_in, c_out in zip(channels, channels[1:])
        )
        self.pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), None: None}[config.pool]
        self.pool_after = _pool_after(config)
        self.global_pool = (
            nn.AdaptiveAvgPool2d(1) if config.global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        )
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Linear(channels[-1], config.num_outputs)
        init_weights(self, config.init, config.activation)
        # The head feeds the loss, not an activation, so it gets the linear gain.
        init_weights(self.head, config.init, "identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]  # (B, C_last, H', W')
        x = self.global_pool(x).flatten(1)  # (B, C_last)
        x = self.dropout(x)
        return self.head(x)  # (B, num_outputs)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return each block's output after its pooling: one (B, channels[i], H_i, W_i) each.

        Example:
            >>> model = CNN(CNNConfig(input_shape=(1, 5, 7), num_outputs=2, channels=(4, 8)))
            >>> [tuple(f.shape) for f in model.features(torch.zeros(1, 1, 5, 7))]
            [(1, 4, 2, 3), (1, 8, 1, 1)]
        """
        self._check_input(x)
        outputs = []
        for block, pool in zip(self.blocks, self.pool_after):
            x = block(x)  # (B, channels[i], H, W)
            if pool:
                x = self.pool(x)  # (B, channels[i], H // 2, W // 2)
            outputs.append(x)
        return outputs

    def _check_input(self, x: torch.Tensor) -> None:
        c, h, w = self.config.input_shape
        if is_tracing():  # a traced graph has no Python checks (see dlforge.models.quantized)
            return
        if x.ndim != 4 or x.shape[1] != c:
            raise DataError(
                f"the cnn got input of shape {tuple(x.shape)}, expected (B, C, H, W) "
                f"= (B, {c}, {h}, {w})",
                hint="images need a batch dimension and model.input_shape[0] channels; "
                "add a batch dimension with x.unsqueeze(0) for a single image",
            )


def _pool_after(config: CNNConfig) -> tuple[bool, ...]:
    """Whether each block pools: while the map is at least 2x2 (halving a side of 1 would
    leave an empty map).

    Example:
        >>> _pool_after(CNNConfig(input_shape=(1, 5, 7), num_outputs=2, channels=(4, 8, 8)))
        (True, True, False)
    """
    _, h, w = config.input_shape
    flags = []
    for _ in config.channels:
        flags.append(config.pool is not None and min(h, w) >= 2)
        h, w = (h // 2, w // 2) if flags[-1] else (h, w)
    return tuple(flags)


def build_cnn(input_shape: Sequence[int], num_outputs: int, **options: Any) -> CNN:
    """Build a CNN from explicit arguments; ``options`` are the other CNNConfig fields.

    Example:
        >>> model = build_cnn((3, 32, 32), 10, channels=(16, 32, 64), pool="avg")
        >>> len(model.blocks)
        3
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, **options}
    return CNN(make_config(CNNConfig, CNN.ARCH, values))
