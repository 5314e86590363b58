"""What a phase-by-phase step's tensors are, in words, for the step inspector.

The trainer records each phase's tensors (the focus example's slice, display-sized); this names
their rows and columns from the module types and the batch's layout, and measures what the
update changed (``update_fields``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from engine.probe import owned_parameters, parametrization_parts, parametrized_tensors
from engine.reduce import as_matrix, shrink_2d, to_numpy

__all__ = ["AxisReader", "parameter_owners", "update_fields"]

_CALL_SUFFIX = " (call "
#: Module types whose output keeps an image's layout (channels of 2-D maps).
_SPATIAL_TYPES = ("Conv", "Pool", "BatchNorm2d", "BatchNorm3d", "InstanceNorm", "GroupNorm", "Dropout2d", "Upsample",
                  "PixelShuffle", "ZeroPad", "ReflectionPad", "ReplicationPad", "ConstantPad")
_ACTIVATION_TYPES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid",
                     "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Identity", "Dropout")


def _owned(module: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """A layer's parameters by name, as the probe has them (a parametrized one's originals too)."""
    return owned_parameters(module, parametrized_tensors(module))


def parameter_owners(model: nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """(name, its parameters) of every layer owning a trainable parameter: those a module owns
    directly, and a parametrized one's originals (weight_norm's g and v), whose
    ``ParametrizationList`` is no owner of its own, as in the probe."""
    parts = parametrization_parts(model)
    owners = []
    for name, module in model.named_modules():
        if id(module) in parts:
            continue
        params = [p for _, p in _owned(module)]
        if any(p.requires_grad for p in params):
            owners.append((name or "<model>", params))
    return owners


def update_fields(model: nn.Module, owners: list[tuple[str, list[torch.nn.Parameter]]],
                   before: list[list[torch.Tensor]], shown: str | None) -> dict[str, Any]:
    """The update phase's change: ||Δw|| and ||w before|| per module owning parameters (all of
    them copied to the host at once), and the change, then the values, of ``shown``'s parameters,
    display-sized."""
    squares, tensors, shapes = [], {}, {}
    for (name, params), starts in zip(owners, before):
        deltas = [p.detach() - start for p, start in zip(params, starts)]
        squares.append(torch.stack([sum(torch.linalg.vector_norm(d.float()) ** 2 for d in deltas),
                                    sum(torch.linalg.vector_norm(s.float()) ** 2 for s in starts)]))
        if name == shown:
            module = model if name == "<model>" else model.get_submodule(name)
            named = [pname for pname, _ in _owned(module)]
            for pname, p, delta in zip(named, params, deltas):
                tensors[f"\u0394{pname}"] = to_numpy(shrink_2d(as_matrix(delta)))
                shapes[f"\u0394{pname}"] = tuple(int(n) for n in p.shape)
            for pname, p in zip(named, params):
                tensors[pname] = to_numpy(shrink_2d(as_matrix(p.detach())))
                shapes[pname] = tuple(int(n) for n in p.shape)
    norms = torch.stack(squares).double().sqrt().cpu().tolist() if squares else []
    changes = tuple((name, change, size) for (name, _), (change, size) in zip(owners, norms))
    reader = AxisReader(model, None, [])
    axes = {key: reader.parameter_axes(shown, key.removeprefix("\u0394")) for key in tensors}
    return dict(module=shown, tensors=tensors, changes=changes, module_type=reader.type_of(shown),
                axes={key: names for key, names in axes.items() if names is not None},
                shapes={key: shape for key, shape in shapes.items() if len(shape) > 2})


class AxisReader:
    """Names what the rows and columns of a phase's drawn matrices are, from the module types and
    the batch's layout: an example of a token or feature sequence is (positions × features), of an
    image (each channel's map, stacked) until a module flattens it, otherwise a row of features; a weight
    is (output units × input units), a conv kernel (filters × input channels·kernel pixels)."""

    def __init__(self, model: nn.Module, x: Any, forward: list[Any], batch_dim: int = 0) -> None:
        self.modules = dict(model.named_modules())
        self.recurrent = any(isinstance(m, nn.RNNBase) for m in self.modules.values())
        self.length: int | None = None  # positions of a sequence example
        self.rows = "positions"
        image = False
        if isinstance(x, torch.Tensor):
            along = 0 if batch_dim else 1  # (a sequence batch's time dimension: (N, T, ...) or (T, N, ...))
            if x.dim() == 2 and not x.is_floating_point():
                self.length, self.rows = int(x.shape[along]), "time steps" if self.recurrent else "tokens"
            elif x.dim() == 3:
                self.length, self.rows = int(x.shape[along]), "time steps" if self.recurrent else "positions"
            image = x.dim() == 4
        # Per forward module: whether its input and its output still have the image's layout.
        self.spatial: dict[str, tuple[bool, bool]] = {}
        for record in forward:
            kind = self.type_of(record.module) or ""
            keeps = any(t in kind for t in _SPATIAL_TYPES) or kind in _ACTIVATION_TYPES
            self.spatial[record.module] = (image, image and keeps)
            image = image and keeps

    def module_of(self, name: str | None) -> nn.Module | None:
        if name is None:
            return None
        name = name.split(_CALL_SUFFIX)[0]
        return self.modules.get("" if name == "<model>" else name)

    def type_of(self, name: str | None) -> str | None:
        module = self.module_of(name)
        return None if module is None else type(module).__name__

    def axes(self, kind: str, module: str | None, tensors: dict[str, np.ndarray]) -> dict[str, tuple[str, str]]:
        found = {}
        for key, array in tensors.items():
            if key in ("input", "output", "grad_output"):
                side = "input" if key == "input" else "output"
                names = self.example_axes(module, side, np.shape(array))
            elif key.startswith("grad_output["):
                names = self.other_output_axes(module, key, np.shape(array), tensors)
            elif kind == "backward":
                names = self.parameter_axes(module, key.removeprefix("grad:"))
            else:
                names = None
            if names is not None:
                found[key] = names
        return found

    def example_axes(self, module: str | None, side: str, shape: tuple[int, ...]) -> tuple[str, str] | None:
        if len(shape) != 2:
            return None
        rows = shape[0]
        spatial = self.spatial.get(module or "", (False, False))[0 if side == "input" else 1]
        if spatial:  # (each channel's map, stacked one under another: see Probe._display)
            return ("rows of each channel's map, stacked", "pixel columns")
        if rows == 1:
            return ("", "features")
        if self.length is not None and rows == self.length:
            return (self.rows, "features")
        return None

    def other_output_axes(self, module: str | None, key: str, shape: tuple[int, ...],
                          tensors: dict[str, np.ndarray]) -> tuple[str, str] | None:
        """Rows and columns of one example's slice of the gradient of an output other than a
        module's first (``key``: "grad_output[1][0]"): an RNN's h or c, (layers × hidden units)
        whatever its ``batch_first``, MultiheadAttention's weights (queries × keys, each head's
        stacked when they are not averaged)."""
        owner = self.module_of(module)
        if len(shape) != 2:
            return None
        rows = shape[0]
        if isinstance(owner, nn.RNNBase) and key.startswith("grad_output[1]"):
            if rows == 1:
                return ("", "hidden units")
            stacked = "layers" if not owner.bidirectional else \
                "layers \u00d7 directions" if owner.num_layers > 1 else "directions"
            return (stacked, "hidden units")
        if isinstance(owner, nn.MultiheadAttention) and key == "grad_output[1]":
            first = tensors.get("grad_output")
            queries = np.shape(first)[0] if first is not None and np.ndim(first) == 2 else None
            if rows == queries:
                return ("query positions", "key positions")
            if queries is not None and rows == owner.num_heads * queries:
                return ("query positions of each head, stacked", "key positions")
        return None

    def parameter_axes(self, module: str | None, name: str) -> tuple[str, str] | None:
        """Rows and columns of a parameter ``name`` (``out_proj.weight``) of ``module`` as drawn."""
        owner = self.module_of(module)
        if owner is None:
            return None
        path, _, leaf = name.rpartition(".")
        try:
            owner = owner.get_submodule(path) if path else owner
            param = owner.get_parameter(leaf)
        except AttributeError:
            return None
        bias = leaf.startswith("bias") or leaf.endswith("_bias")
        if isinstance(owner, nn.Embedding):
            return ("tokens of the vocabulary", "features")
        if isinstance(owner, nn.RNNBase):
            gates = {"LSTM": "4 gates", "GRU": "3 gates"}.get(type(owner).__name__)
            rows = f"units of {gates}" if gates else "units"
            return ("", rows) if bias else (rows, "hidden units" if leaf.startswith("weight_hh") else "input features")
        if isinstance(owner, nn.MultiheadAttention) and leaf.startswith("in_proj"):
            return ("", "query, key, value units") if bias else ("query, key, value units", "input features")
        if isinstance(owner, nn.modules.conv._ConvNd):
            return ("", "filters") if bias else ("filters", "input channels\u00b7kernel pixels")
        if param.dim() == 1:
            maps = isinstance(owner, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d))
            return ("", "channels" if maps else "features" if isinstance(owner, (nn.LayerNorm, nn.BatchNorm1d))
                    else "units")
        if param.dim() == 2 and isinstance(owner, nn.Linear):
            return ("output units", "input units")
        return None

    def shapes(self, module: str | None, tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Real shapes of the parameters among ``tensors`` that are drawn reshaped (a conv kernel)."""
        owner = self.module_of(module)
        found = {}
        if owner is None:
            return found
        for key in tensors:
            name = key.removeprefix("grad:")
            path, _, leaf = name.rpartition(".")
            try:
                param = (owner.get_submodule(path) if path else owner).get_parameter(leaf)
            except AttributeError:
                continue
            if param.dim() > 2:
                found[key] = tuple(int(n) for n in param.shape)
        return found
