"""A U-Net for 2D and 3D segmentation: encoder, decoder with skip connections, 1x1 head.

Every stage is two conv blocks (3x3[x3] Conv -> InstanceNorm/BatchNorm -> LeakyReLU
[-> Dropout]). Encoder level 0 keeps the input size; each deeper level starts with a
stride-2 conv that halves every spatial side (as nnU-Net does, instead of max pooling).
Each decoder level doubles the sides with a 2x2[x2] stride-2 transposed conv, concatenates
the encoder map of the same size (unless ``skip_connections`` is false, the ablation), and
runs one stage. A 1x1 conv maps the full-size features to one logit per class.

Input sides must be divisible by ``2 ** (len(widths) - 1)``; anything else is a
ConfigError when the model is built (no silent padding: crop or pad your patches, or use
fewer levels).

Deep supervision (nnU-Net's): with ``deep_supervision`` true, decoder levels 1 to
``len(widths) - 2`` get their own 1x1 head too. In training mode ``forward`` then returns
a tuple ``(main, aux_1, aux_2, ...)``: ``aux_i`` is (B, num_outputs, H / 2**i, W / 2**i[,
...]), so its pixel ``j`` sits over input pixel ``2**i * j`` and matches the mask sliced
``mask[..., ::2**i, ::2**i]``; :func:`dlforge.train.fit` weights those losses. In eval
mode ``forward`` returns only ``main``, so inference code never sees the tuple.

Example:
    >>> import torch
    >>> from dlforge.models.unet import UNet, UNetConfig
    >>> model = UNet(UNetConfig(input_shape=(1, 32, 32), num_outputs=2, widths=(8, 16)))
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 2, 32, 32])
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

NORMS = ("instance", "batch")
# Slope 0.01 is nnU-Net's and MONAI's default for LeakyReLU.
NEGATIVE_SLOPE = 0.01


@dataclass
class UNetConfig:
    input_shape: tuple[int, ...]  # (C, H, W) for 2D or (C, D, H, W) for 3D
    num_outputs: int  # classes, background included: logits (B, num_outputs, H, W[, D])
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per level; depth = len(widths)
    # Instance norm, because segmentation batches are often 2-4 patches, too few for
    # batch statistics; its affine scale and shift are learned.
    norm: str = "instance"
    dropout: float = 0.0  # after every conv block's activation
    skip_connections: bool = True  # false drops the encoder-to-decoder concatenation
    deep_supervision: bool = False  # extra heads on decoder levels 1..depth-2 (see above)

    def __post_init__(self) -> None:
        check_types(self)
        if len(self.input_shape) not in (3, 4):
            raise ConfigError(
                f"model.input_shape is {list(self.input_shape)}, but a unet needs "
                "(C, H, W) or (C, D, H, W)",
                hint="give channels then the spatial sides, e.g. [1, 128, 128]",
            )
        check_sizes("input_shape", self.input_shape)
        check_positive("num_outputs", self.num_outputs)
        check_sizes("widths", self.widths)
        check_choice("norm", self.norm, NORMS)
        check_dropout(self.dropout)
        factor = 2 ** (len(self.widths) - 1)
        bad = [s for s in self.input_shape[1:] if s % factor]
        if bad:
            raise ConfigError(
                f"model.input_shape {list(self.input_shape)} has spatial sides not divisible "
                f"by {factor} = 2 ** (len(widths) - 1), which {len(self.widths)} levels need",
                hint=f"use patches whose sides are multiples of {factor}, or fewer widths",
            )

    @property
    def dims(self) -> int:
        """2 or 3: the number of spatial dimensions."""
        return len(self.input_shape) - 1

    @property
    def size_multiple(self) -> int:
        """What every input side must divide by: 2 ** (levels - 1)."""
        return 2 ** (len(self.widths) - 1)


def conv_block(in_channels: int, out_channels: int, config: UNetConfig, stride: int = 1) -> nn.Sequential:
    """Conv (3 per side, padding 1) -> norm -> LeakyReLU [-> Dropout].

    With ``stride=2`` the block halves every spatial side (the U-Net's downsampling).

    Example:
        >>> cfg = UNetConfig(input_shape=(1, 16, 16), num_outputs=2)
        >>> conv_block(1, 8, cfg, stride=2)[0]
        Conv2d(1, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    """
    conv = (nn.Conv2d, nn.Conv3d)[config.dims - 2]
    norm = {
        ("instance", 2): nn.InstanceNorm2d, ("instance", 3): nn.InstanceNorm3d,
        ("batch", 2): nn.BatchNorm2d, ("batch", 3): nn.BatchNorm3d,
    }[config.norm, config.dims]
    # The norm subtracts a per-channel mean right after the conv, cancelling any bias.
    layers: list[nn.Module] = [
        conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        norm(out_channels, affine=True),
        nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
    ]
    if config.dropout > 0:
        layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


def stage(in_channels: int, out_channels: int, config: UNetConfig, stride: int = 1) -> nn.Sequential:
    """Two conv blocks; the first may downsample with ``stride=2``.

    Example:
        >>> cfg = UNetConfig(input_shape=(1, 16, 16), num_outputs=2)
        >>> len(stage(1, 8, cfg))
        2
    """
    return nn.Sequential(
        conv_block(in_channels, out_channels, config, stride),
        conv_block(out_channels, out_channels, config),
    )


class UNet(nn.Module):
    """Encoder stages, decoder stages with transposed-conv upsampling, 1x1 head.

    ``self.encoder[i]`` outputs ``widths[i]`` channels at ``1 / 2**i`` of the input size;
    ``self.up[i]`` and ``self.decoder[i]`` bring level ``i + 1`` back to level ``i``.
    """

    ARCH = "unet"

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        up = (nn.ConvTranspose2d, nn.ConvTranspose3d)[config.dims - 2]
        head = (nn.Conv2d, nn.Conv3d)[config.dims - 2]
        self.encoder = nn.ModuleList(
            [stage(config.input_shape[0], w[0], config)]
            + [stage(w[i - 1], w[i], config, stride=2) for i in range(1, len(w))]
        )
        self.up = nn.ModuleList(up(w[i + 1], w[i], 2, stride=2) for i in range(len(w) - 1))
        skip = 2 if config.skip_connections else 1  # the concatenation doubles the channels
        self.decoder = nn.ModuleList(stage(skip * w[i], w[i], config) for i in range(len(w) - 1))
        self.head = head(w[0], config.num_outputs, 1)
        # aux_heads[i - 1] reads decoder level i; the lowest level (the bottleneck) has none.
        levels = range(1, len(w) - 1) if config.deep_supervision else range(0)
        self.aux_heads = nn.ModuleList(head(w[i], config.num_outputs, 1) for i in levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skips = self.encode(x)  # level i: (B, widths[i], H / 2**i, W / 2**i[, ...])
        x = skips[-1]
        aux = []
        for i in reversed(range(len(self.up))):
            x = self.up[i](x)  # (B, widths[i], H / 2**i, W / 2**i)
            if self.config.skip_connections:
                x = torch.cat([skips[i], x], dim=1)  # (B, 2 * widths[i], ...)
            x = self.decoder[i](x)  # (B, widths[i], ...)
            if self.training and 0 < i <= len(self.aux_heads):
                aux.insert(0, self.aux_heads[i - 1](x))  # (B, num_outputs, H / 2**i, ...)
        main = self.head(x)  # (B, num_outputs, H, W[, D])
        return (main, *aux) if aux else main

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return every encoder level's output, full size first.

        Example:
            >>> model = UNet(UNetConfig(input_shape=(1, 8, 8), num_outputs=2, widths=(4, 8)))
            >>> [tuple(f.shape) for f in model.encode(torch.zeros(1, 1, 8, 8))]
            [(1, 4, 8, 8), (1, 8, 4, 4)]
        """
        self._check_input(x)
        outputs = []
        for level in self.encoder:
            x = level(x)
            outputs.append(x)
        return outputs

    @property
    def size_multiple(self) -> int:
        """What every input side must divide by (see :func:`dlforge.models.sliding_window.fit_window`)."""
        return self.config.size_multiple

    def _check_input(self, x: torch.Tensor) -> None:
        c, dims = self.config.input_shape[0], self.config.dims
        factor = 2 ** (len(self.config.widths) - 1)
        layout = "(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)"
        if x.ndim != dims + 2 or x.shape[1] != c:
            raise DataError(
                f"the unet got input of shape {tuple(x.shape)}, expected {layout} with C = {c}",
                hint="add a batch dimension with x.unsqueeze(0) for a single image",
            )
        if any(s % factor for s in x.shape[2:]):
            raise DataError(
                f"the unet got spatial sides {tuple(x.shape[2:])}, not all divisible by {factor}",
                hint=f"crop or pad inputs to multiples of {factor}, or predict in patches",
            )


def build_unet(input_shape: Sequence[int], num_outputs: int, **options: Any) -> UNet:
    """Build a UNet from explicit arguments; ``options`` are the other UNetConfig fields.

    Example:
        >>> model = build_unet((1, 16, 16, 16), 3, widths=(8, 16, 32))
        >>> len(model.encoder), model.config.dims
        (3, 3)
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, **options}
    return UNet(make_config(UNetConfig, UNet.ARCH, values))
