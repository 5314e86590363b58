"""Multi-layer perceptron: ``flatten``, ``layers.{i}`` (linear, norm, act, dropout), ``head``."""
from __future__ import annotations

import torch
from torch import nn

from engine.models.init import ModelSpec, init_weights, make_activation

__all__ = ["MLPBlock", "MLP", "build_mlp"]


class MLPBlock(nn.Module):
    """linear -> norm -> act -> dropout, plus the block's input when residual and shapes match."""

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=spec.bias)
        # Absent modules are None so they never appear in named_modules() for the probe.
        self.norm: nn.Module | None = None
        if spec.norm == "batch":
            self.norm = nn.BatchNorm1d(out_features)
        elif spec.norm == "layer":
            self.norm = nn.LayerNorm(out_features)
        self.act = make_activation(spec.activation)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0.0 else None
        self.residual = spec.residual and in_features == out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        if self.norm is not None:
            h = self.norm(h)
        h = self.act(h)
        if self.dropout is not None:
            h = self.dropout(h)
        return x + h if self.residual else h

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class MLP(nn.Module):
    """Flattens each example, then ``depth`` hidden blocks of ``width`` units and a linear head."""

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        sizes = [in_features] + [spec.width] * spec.depth
        self.layers = nn.ModuleList(MLPBlock(a, b, spec) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], out_features, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def build_mlp(in_features: int, out_features: int, spec: ModelSpec) -> MLP:
    """An initialised MLP from ``in_features`` inputs to ``out_features`` outputs."""
    model = MLP(in_features, out_features, spec)
    init_weights(model, spec)
    return model
