"""Models the probe can see into: MLP, CNN, transformer and recurrent nets built from a ModelSpec.

Module names are part of the contract (the probe hooks ``named_modules()``): every activation is
its own module instance, and each architecture's module documents the names it uses.
"""
from __future__ import annotations

import math

from torch import nn

from engine.data import Dataset
from engine.models.cnn import CNN, build_cnn
from engine.models.init import (
    ACTIVATIONS,
    INITS,
    MODEL_KINDS,
    NORMS,
    ModelSpec,
    activation_gain,
    init_weights,
    make_activation,
)
from engine.models.mlp import MLP, build_mlp
from engine.models.recurrent import RECURRENT_KINDS, RecurrentNet, build_recurrent
from engine.models.transformer import Transformer, build_transformer

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "MODEL_KINDS",
    "NORMS",
    "ModelSpec",
    "MLP",
    "CNN",
    "Transformer",
    "RecurrentNet",
    "activation_gain",
    "build_model",
    "build_mlp",
    "build_cnn",
    "build_transformer",
    "build_recurrent",
    "init_weights",
    "make_activation",
]


def build_model(spec: ModelSpec, dataset: Dataset) -> nn.Module:
    """An initialised model sized for ``dataset``; draws from torch's global RNG.

    Sequence models give one output per position for a 'tokens' task and one per example
    otherwise (the transformer mean-pools, recurrent nets read the last step), whatever
    ``spec.head`` says.

    Raises:
        ValueError: the kind cannot take this data set's inputs or produce its targets.
    """
    per_token = dataset.task == "tokens"
    if spec.kind in ("mlp", "cnn"):
        if dataset.vocab_size is not None or per_token:
            raise ValueError(
                f"a {spec.kind} cannot read token sequences ({dataset.name!r}); "
                "use a transformer or a recurrent model"
            )
        if spec.kind == "mlp":
            return build_mlp(math.prod(dataset.input_shape), dataset.n_outputs, spec)
        return build_cnn(dataset.input_shape, dataset.n_outputs, spec)
    if spec.kind == "transformer":
        return build_transformer(
            dataset.input_shape, dataset.n_outputs, spec, dataset.vocab_size, per_token
        )
    if spec.kind in RECURRENT_KINDS:
        return build_recurrent(
            dataset.input_shape, dataset.n_outputs, spec, dataset.vocab_size, per_token
        )
    raise ValueError(f"unknown model kind {spec.kind!r}")
