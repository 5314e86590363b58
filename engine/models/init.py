"""What every architecture shares: the model spec, activation modules, and weight initialisation.

Activations are always separate module instances (never functional calls, never shared), because
the probe finds them by type in ``named_modules()`` and a shared module would be measured twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "NORMS",
    "MODEL_KINDS",
    "ModelSpec",
    "make_activation",
    "activation_gain",
    "init_weights",
]

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "identity")
INITS: tuple[str, ...] = ("default", "zeros", "constant", "normal", "xavier", "he")
NORMS: tuple[str, ...] = ("none", "batch", "layer")
MODEL_KINDS: tuple[str, ...] = ("mlp", "cnn", "transformer", "rnn", "lstm", "gru")

_LEAKY_SLOPE = 0.01
_MATRIX = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BIASED = (*_MATRIX, nn.RNNBase, nn.MultiheadAttention)

ModelKind = Literal["mlp", "cnn", "transformer", "rnn", "lstm", "gru"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Architecture and initialisation of a model; fields a kind does not use are ignored.

    Attributes:
        kind: one of ``MODEL_KINDS``.
        depth: hidden layers (mlp), blocks (transformer) or stacked recurrent layers; for a cnn
            only when ``channels`` is empty (then stacks of 8, 16, 32, ... channels).
        width: hidden units (mlp), d_model (transformer), hidden size (recurrent, and their
            embedding size), units of the hidden linear layer before a cnn's head.
        activation: one of ``ACTIVATIONS``; recurrent cells keep their own tanh/sigmoid.
        init: one of ``INITS``; see ``init_weights``.
        init_scale: multiplies the initial weight matrices, whatever the scheme.
        init_std: standard deviation for ``init='normal'``.
        init_constant: value for ``init='constant'``.
        norm: 'none', 'batch' or 'layer' (mlp and cnn; a transformer always uses LayerNorm).
        dropout: dropout probability after each hidden layer / attention and feed-forward.
        residual: mlp only, add a block's input to its output when their shapes match.
        bias: whether linear and conv layers have biases.
        channels: output channels of each cnn conv stack.
        kernel_size: cnn kernel side (odd sizes keep the spatial size before pooling).
        heads: transformer attention heads (must divide width).
        norm_first: transformer pre-norm (True) or post-norm (False).
        head: transformer output when built without a data set: 'token' (per position) or
            'pooled' (mean over positions); ``build_model`` picks it from the data set's task.
        max_len: longest sequence the transformer's positional encoding covers.
    """

    kind: ModelKind
    depth: int = 2
    width: int = 16
    activation: str = "relu"
    init: str = "default"
    init_scale: float = 1.0
    init_std: float = 0.01
    init_constant: float = 0.1
    norm: str = "none"
    dropout: float = 0.0
    residual: bool = False
    bias: bool = True
    channels: tuple[int, ...] = (8, 16)
    kernel_size: int = 3
    heads: int = 4
    norm_first: bool = True
    head: str = "token"
    max_len: int = 512

    def __post_init__(self) -> None:
        choices = {
            "kind": (self.kind, MODEL_KINDS),
            "activation": (self.activation, ACTIVATIONS),
            "init": (self.init, INITS),
            "norm": (self.norm, NORMS),
            "head": (self.head, ("token", "pooled")),
        }
        for field_name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"ModelSpec.{field_name}={value!r}; expected one of {allowed}")
        if self.depth < 0 or self.width < 1:
            raise ValueError(
                f"ModelSpec needs depth >= 0 and width >= 1, got {self.depth}, {self.width}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelSpec.dropout must be in [0, 1), got {self.dropout}")
        if any(c < 1 for c in self.channels) or self.kernel_size < 1:
            raise ValueError("ModelSpec.channels and kernel_size must be positive")
        if self.kind == "transformer" and self.width % self.heads != 0:
            raise ValueError(
                f"transformer width {self.width} is not divisible by {self.heads} heads"
            )
        if self.kind in ("rnn", "lstm", "gru") and self.depth < 1:
            raise ValueError("a recurrent model needs depth >= 1")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module; call once per place it is used."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(_LEAKY_SLOPE)
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def activation_gain(name: str) -> float:
    """The gain ``torch.nn.init.calculate_gain`` gives for an activation.

    GELU has no entry there; it behaves like ReLU for the variance it passes on, so it borrows
    ReLU's sqrt(2).
    """
    if name == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", _LEAKY_SLOPE)
    if name == "identity":
        return nn.init.calculate_gain("linear")
    return nn.init.calculate_gain("relu" if name == "gelu" else name)


def _fill(weight: torch.Tensor, spec: ModelSpec, gain: float) -> None:
    """Draw one weight tensor (fan-in over dims 1:) by ``spec.init``, then apply the scale."""
    fan_in = weight[0].numel()
    fan_out = weight.shape[0] * (weight[0, 0].numel() if weight.dim() > 2 else 1)
    if spec.init == "zeros":
        weight.zero_()
    elif spec.init == "constant":
        weight.fill_(spec.init_constant)
    elif spec.init == "normal":
        weight.normal_(0.0, spec.init_std)
    elif spec.init == "he":
        weight.normal_(0.0, gain / math.sqrt(fan_in))
    elif spec.init == "xavier":
        weight.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
    weight.mul_(spec.init_scale)


def _reset_default(model: nn.Module) -> None:
    """Redraw every parameter as PyTorch's constructors would."""
    for module in model.modules():
        if not isinstance(module, nn.MultiheadAttention) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    # After its out_proj's own reset: attention's reset draws in_proj and zeroes out_proj.bias,
    # which is exactly the order its constructor uses.
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()


def _weight_matrices(model: nn.Module, activation: str) -> list[tuple[torch.Tensor, float]]:
    """(weight, gain) pairs the init schemes draw; views for stacked gate/q-k-v matrices."""
    out: list[tuple[torch.Tensor, float]] = []
    act_gain = activation_gain(activation)
    tanh_gain = nn.init.calculate_gain("tanh")
    for module in model.modules():
        if isinstance(module, _MATRIX):
            out.append((module.weight, act_gain))
        elif isinstance(module, nn.RNNBase):
            # Gates are stacked along dim 0 (4 for LSTM, 3 for GRU); drawing each gate's block
            # separately gives every gate the fan-out it really has. The cell's own nonlinearity
            # is tanh, hence tanh's gain.
            for name, param in module.named_parameters(recurse=False):
                if name.startswith("weight_"):
                    out.extend((block, tanh_gain) for block in param.chunk(_gates(module), 0))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            # q, k and v are linear maps into a softmax, not into the activation: gain 1.
            out.extend((block, 1.0) for block in module.in_proj_weight.chunk(3, 0))
    return out


def _gates(module: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(module.mode, 1)


@torch.no_grad()
def init_weights(model: nn.Module, spec: ModelSpec) -> None:
    """(Re)initialise ``model`` by ``spec.init``, drawing from torch's global RNG.

    Schemes, applied to linear, conv, recurrent and attention projection weights:
    'default' redraws PyTorch's own initialisation; 'he' draws N(0, gain / sqrt(fan_in)) and
    'xavier' N(0, gain * sqrt(2 / (fan_in + fan_out))) with the gain of ``spec.activation``
    (recurrent matrices: tanh's; attention q/k/v: 1); 'normal' draws N(0, init_std); 'zeros' and
    'constant' fill. Every scheme then multiplies those weights by ``init_scale``, and every
    scheme but 'default' zeroes their biases; LSTM forget-gate biases then get +1 (see
    ``_open_forget_gates``). Norm layers return to weight 1, bias 0 (and fresh running
    statistics). Embeddings are lookup tables, not maps of activations, so they always
    get PyTorch's N(0, 1) and no scale.
    """
    _reset_default(model)
    matrices = _weight_matrices(model, spec.activation)
    if spec.init == "default":
        for weight, _ in matrices:
            weight.mul_(spec.init_scale)
    else:
        for weight, gain in matrices:
            _fill(weight, spec, gain)
        for module in model.modules():
            if isinstance(module, _BIASED):
                for name, param in module.named_parameters(recurse=False):
                    if "bias" in name:
                        param.zero_()
    _open_forget_gates(model)


def _open_forget_gates(model: nn.Module) -> None:
    """Add 1 to every LSTM forget-gate bias (Jozefowicz et al., 2015; Keras does the same).

    With PyTorch's zero-centred biases the forget gate starts near 0.5, so the cell keeps only
    ~0.5**T of what it saw T steps ago and the LSTM loses the very advantage over a plain RNN
    that the long_range task demonstrates; at 0.73 it learns that task in a few hundred steps.
    """
    for module in model.modules():
        if isinstance(module, nn.LSTM) and module.bias:
            for name, param in module.named_parameters(recurse=False):
                if name.startswith("bias_ih"):
                    param.chunk(4)[1].add_(1.0)  # gate order: input, forget, cell, output
