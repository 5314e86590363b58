"""Small convolutional network: ``features.{i}`` (conv, norm, act, pool), ``flatten``,
``hidden`` + ``hidden_act`` (+ ``dropout``), ``head``."""
from __future__ import annotations

import torch
from torch import nn

from engine.models.init import ModelSpec, init_weights, make_activation

__all__ = ["ConvBlock", "CNN", "build_cnn", "cnn_channels"]


def cnn_channels(spec: ModelSpec) -> tuple[int, ...]:
    """The conv stacks' channels: ``spec.channels``, or 8, 16, 32, ... for ``depth`` stacks."""
    return spec.channels or tuple(8 * 2**i for i in range(spec.depth))


class ConvBlock(nn.Module):
    """conv ('same' padding) -> norm -> act -> 2x2 max-pool (skipped once the map is below 2x2)."""

    def __init__(self, in_channels: int, out_channels: int, spec: ModelSpec, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            spec.kernel_size,
            padding=spec.kernel_size // 2,
            bias=spec.bias,
        )
        self.norm: nn.Module | None = None
        if spec.norm == "batch":
            self.norm = nn.BatchNorm2d(out_channels)
        elif spec.norm == "layer":
            # GroupNorm with one group normalises over (C, H, W) per example: LayerNorm for maps.
            self.norm = nn.GroupNorm(1, out_channels)
        self.act = make_activation(spec.activation)
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.norm is not None:
            h = self.norm(h)
        h = self.act(h)
        return self.pool(h) if self.pool is not None else h


class CNN(nn.Module):
    """Conv stacks over (C, H, W) images, a hidden linear layer of ``width`` units, a head."""

    def __init__(self, input_shape: tuple[int, ...], out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"a CNN needs image inputs (C, H, W), got examples of shape {input_shape}"
            )
        channels, height, width = input_shape
        # Padding k // 2 keeps the size for odd kernels and grows it by one pixel for even ones;
        # track the size to size the hidden layer.
        grow = 1 - spec.kernel_size % 2
        blocks = []
        for out_channels in cnn_channels(spec):
            height, width = height + grow, width + grow
            pool = min(height, width) >= 2
            blocks.append(ConvBlock(channels, out_channels, spec, pool))
            if pool:
                height, width = height // 2, width // 2
            channels = out_channels
        self.features = nn.ModuleList(blocks)
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(channels * height * width, spec.width, bias=spec.bias)
        self.hidden_act = make_activation(spec.activation)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0.0 else None
        self.head = nn.Linear(spec.width, out_features, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.features:
            x = block(x)
        h = self.hidden_act(self.hidden(self.flatten(x)))
        if self.dropout is not None:
            h = self.dropout(h)
        return self.head(h)


def build_cnn(input_shape: tuple[int, ...], out_features: int, spec: ModelSpec) -> CNN:
    """An initialised CNN for images of ``input_shape`` (C, H, W)."""
    model = CNN(input_shape, out_features, spec)
    init_weights(model, spec)
    return model
