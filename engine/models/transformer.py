"""Encoder-only transformer: ``embed``, ``pos``, ``blocks.{i}`` (attn, norm1, norm2, ff), ``norm``,
``head``.

Blocks call ``self.attn(x, x, x, need_weights=False)`` so training takes PyTorch's fast path;
a probe that wants attention maps recomputes them from the module's input in its own hook.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from engine.models.init import ModelSpec, init_weights, make_activation

__all__ = [
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "Transformer",
    "build_transformer",
]

_FF_MULTIPLIER = 4  # feed-forward hidden size = 4 * d_model, as in "Attention Is All You Need"


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sin/cos position code; a buffer, so it owns no parameters."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
        )
        code = torch.zeros(max_len, d_model)
        code[:, 0::2] = torch.sin(position * frequency)
        code[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
        # Not persistent: it is a pure function of the shape, so checkpoints need not carry it.
        self.register_buffer("code", code, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.code[: x.shape[1]]


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward sub-layers with residuals; pre- or post-norm."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d_model = spec.width
        self.norm_first = spec.norm_first
        self.attn = nn.MultiheadAttention(
            d_model, spec.heads, dropout=spec.dropout, bias=spec.bias, batch_first=True
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, _FF_MULTIPLIER * d_model, bias=spec.bias),
            make_activation(spec.activation),
            nn.Linear(_FF_MULTIPLIER * d_model, d_model, bias=spec.bias),
        )
        self.dropout1 = nn.Dropout(spec.dropout) if spec.dropout > 0.0 else None
        self.dropout2 = nn.Dropout(spec.dropout) if spec.dropout > 0.0 else None

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(x, x, x, need_weights=False)[0]
        return self.dropout1(h) if self.dropout1 is not None else h

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ff(x)
        return self.dropout2(h) if self.dropout2 is not None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self._attend(self.norm1(x))
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self._feed_forward(x))


class Transformer(nn.Module):
    """Embeds tokens (or float features), adds positions, runs ``depth`` blocks, then a head.

    Float examples of shape (T, F) are projected per position by a linear ``embed``; float
    examples of shape (F,) are read as F positions of one feature each.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        out_features: int,
        spec: ModelSpec,
        vocab_size: int | None = None,
        per_token: bool | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) not in (1, 2) or (vocab_size is not None and len(input_shape) != 1):
            raise ValueError(
                f"a transformer needs (T,) tokens or (T, F) / (F,) features, got {input_shape}"
            )
        length = input_shape[0]
        if length > spec.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {spec.max_len}")
        self.tokens = vocab_size is not None
        self.per_token = spec.head == "token" if per_token is None else per_token
        d_model = spec.width
        if vocab_size is not None:
            self.embed: nn.Module = nn.Embedding(vocab_size, d_model)
        else:
            features = input_shape[1] if len(input_shape) == 2 else 1
            self.embed = nn.Linear(features, d_model, bias=spec.bias)
        self.pos = SinusoidalPositionalEncoding(d_model, spec.max_len)
        self.blocks = nn.ModuleList(TransformerBlock(spec) for _ in range(spec.depth))
        # Pre-norm leaves the residual stream unnormalised; post-norm blocks already end in one.
        self.norm = nn.LayerNorm(d_model) if spec.norm_first else None
        self.head = nn.Linear(d_model, out_features, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tokens and x.dim() == 2:
            x = x.unsqueeze(-1)
        h = self.pos(self.embed(x))
        for block in self.blocks:
            h = block(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h if self.per_token else h.mean(dim=1))


def build_transformer(
    input_shape: tuple[int, ...],
    out_features: int,
    spec: ModelSpec,
    vocab_size: int | None = None,
    per_token: bool | None = None,
) -> Transformer:
    """An initialised transformer; ``per_token`` None follows ``spec.head``."""
    model = Transformer(input_shape, out_features, spec, vocab_size, per_token)
    init_weights(model, spec)
    return model
