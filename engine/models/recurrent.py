"""Recurrent networks: ``embed`` (token inputs), ``rnn`` (tanh RNN, LSTM or GRU), ``head``."""
from __future__ import annotations

import torch
from torch import nn

from engine.models.init import ModelSpec, init_weights

__all__ = ["RECURRENT_KINDS", "RecurrentNet", "build_recurrent"]

RECURRENT_KINDS: tuple[str, ...] = ("rnn", "lstm", "gru")


class RecurrentNet(nn.Module):
    """A ``depth``-layer recurrent net of hidden size ``width`` with a linear head.

    The head reads every step's output when ``per_token``, else only the last step's, so a
    classification signal has to travel the whole sequence. Float examples of shape (T, F) are
    fed as is; shape (F,) is read as F steps of one feature.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        out_features: int,
        spec: ModelSpec,
        vocab_size: int | None = None,
        per_token: bool = False,
    ) -> None:
        super().__init__()
        if spec.kind not in RECURRENT_KINDS:
            raise ValueError(f"RecurrentNet builds {RECURRENT_KINDS}, not {spec.kind!r}")
        if len(input_shape) not in (1, 2) or (vocab_size is not None and len(input_shape) != 1):
            raise ValueError(
                f"a recurrent net needs (T,) tokens or (T, F) / (F,) features, got {input_shape}"
            )
        self.tokens = vocab_size is not None
        self.per_token = per_token
        if vocab_size is not None:
            self.embed: nn.Embedding | None = nn.Embedding(vocab_size, spec.width)
            input_size = spec.width
        else:
            self.embed = None
            input_size = input_shape[1] if len(input_shape) == 2 else 1
        options = dict(
            num_layers=spec.depth,
            bias=spec.bias,
            batch_first=True,
            # PyTorch applies this dropout between stacked layers only, and warns for one layer.
            dropout=spec.dropout if spec.depth > 1 else 0.0,
        )
        if spec.kind == "rnn":
            self.rnn: nn.RNNBase = nn.RNN(input_size, spec.width, nonlinearity="tanh", **options)
        elif spec.kind == "lstm":
            self.rnn = nn.LSTM(input_size, spec.width, **options)
        else:
            self.rnn = nn.GRU(input_size, spec.width, **options)
        self.head = nn.Linear(spec.width, out_features, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        elif x.dim() == 2:
            x = x.unsqueeze(-1)
        outputs, _ = self.rnn(x)
        return self.head(outputs if self.per_token else outputs[:, -1])


def build_recurrent(
    input_shape: tuple[int, ...],
    out_features: int,
    spec: ModelSpec,
    vocab_size: int | None = None,
    per_token: bool = False,
) -> RecurrentNet:
    """An initialised recurrent net for ``spec.kind`` in rnn / lstm / gru."""
    model = RecurrentNet(input_shape, out_features, spec, vocab_size, per_token)
    init_weights(model, spec)
    return model
