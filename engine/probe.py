"""The probe: per-layer measurements of any ``nn.Module`` through hooks.

One object owns every hook; ``attach``/``detach`` are idempotent and ``detach`` runs in ``finally``
blocks of its callers. Hooks exist only during a captured step, so an uncaptured step runs the
bare model. On CUDA each hook *appends device tensors* to a list; at the end of the step they are
concatenated and copied to the host in one transfer (asynchronously, read a step later), so the
training thread never synchronises per layer. Outputs of up to 65,536 values are copied in their
hooks and reduced together at the end of the step, and all parameters and gradients in one pass
(``engine.device_stats``): a small model's GPU step is bound by how many operations it launches.
Those reductions (a small model's parameters' too) wait for the step's end, as one function of the
step's inputs, which ``engine.step_graph`` can record as a CUDA graph and replay
(``ProbeConfig.step_graphs``).
On the CPU, where there is no transfer to save, the statistics are computed with numpy
(``engine.host_stats``), small outputs and their gradients all together at the end of the step.
``engine.capture_parse`` reads a step's copy back.

Definitions (documented once, here):

- *dead fraction* (ReLU, ReLU6, and LeakyReLU of slope 0: activations whose output and gradient
  are exactly zero below a threshold; a leaky unit always passes a gradient): the fraction of
  units whose output is <= 0 for every example of the batch. A unit is a feature (dim 1) of a
  2-D output, a channel (dim 1) of a 4-D conv output (over every position), and of a 3-D output
  either the last dimension of a sequence (over every position) or, after a conv1d or a
  normalisation of its channels (the last measured layer before it in the forward), a channel.
- *saturated fraction* (sigmoid, tanh, hardtanh with its own bounds): the fraction of outputs
  within ``saturation_margin`` (0.01, i.e. 1 % of the unit scale) of a bound, where the
  derivative is ~0.
- *histogram*: ``hist_bins`` equal bins over the activation's natural range (sigmoid/softmax
  [0, 1], tanh [-1, 1]) or [-hist_range, hist_range]; outliers are clamped into the edge bins.
  Big outputs are histogrammed over an evenly strided sample of at most 8,192 values
  (``engine.stats.HIST_SAMPLE``); every other statistic uses every value.
- *std* is the population standard deviation (numpy's default). An output bigger than
  ``engine.host_stats.BATCHED_MAX`` on the CPU takes its variance as E[x^2] - mean^2 when that
  cannot lose more than ~1e-5 of it (the mean doesn't dwarf the spread), else in two passes.
- *gradient w.r.t. the output* (``grad_output_norm``): the L2 norm of the loss's gradient w.r.t.
  the layer's output over the batch (over all its calls for a layer called more than once). Of a
  layer returning several tensors (LSTM's (output, (h, c)), a user's tuple or dict) it is the norm
  of all their gradients taken together, sqrt of the sum of their squared norms, where an output
  no gradient reaches adds 0: an LSTM read through ``h[-1]`` gets its whole gradient at h (see
  ``grad_outputs`` for which tensors count). Its backward phase comes when the last of them has
  its gradient. A layer none of whose outputs gets a gradient has none (NaN). Where a module
  returns a tensor and another computed from it, (z, f(z)), z's gradient already holds what came
  back through f(z), which is then counted in both.
- *parametrized layer*: a module with ``torch.nn.utils.parametrize`` parametrizations
  (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``, ``orthogonal``, your own
  ``register_parametrization``) is one layer. Its parameters are those it owns directly
  (``recurse=False``: a Linear's bias) and every parameter under its ``parametrizations``
  (weight_norm's ``parametrizations.weight.original0`` g and ``original1`` v, spectral_norm's
  ``original``); ``params`` counts them all. The ``ParametrizationList`` modules holding them, and
  the parametrization modules inside, are no layers and no phases of their own (the list's
  "output" is the computed weight, not an activation). Its *weight* figures (``weight_norm``,
  mean, std, NaN and Inf weights), the Weights view's matrix, the Network view's edges and a
  conv's kernels are of the tensors its forward uses: each parametrized tensor as its
  parametrizations compute it (``module.weight``), the rest of its direct parameters as they are.
  They are computed again after backward, from the parameters backward saw, with the
  parametrizations in eval mode so that nothing in them moves: spectral_norm's sigma then comes
  from the vectors its power iteration left in the forward, as the forward's own did, so it is the
  weight the forward used. Its *grad* figures (``grad_norm``, mean, std, NaN and Inf counts) are of
  its parameters' gradients (g, v and the bias; spectral_norm's original and the bias), and its
  update ratio of its parameters too (||delta theta|| / ||theta||, what the optimizer moves). The
  Weights view's gradient is dL/dW of the computed weight, and its last update the computed weight
  after the update minus before.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from engine.capture_parse import ACT_FIELDS, PARAM_FIELDS, Capture, LayerTable, ParsePlan, parse_capture
from engine.device_stats import (
    DEVICE_BATCH_BUDGET,
    DEVICE_BATCHED_MAX,
    DEVICE_PARAM_GROUP,
    DeviceActivationReducer,
    PendingDeviceActivation,
    Segments,
    sampled_count,
    unit_maxima,
)
from engine.host_stats import (
    BATCHED_MAX,
    ActivationReducer,
    ChangeMeter,
    PendingActivation,
    group_rows,
    host_array,
    sums_of_squares,
    sumsq,
)
from engine.reduce import as_matrix, shrink_2d, shrink_maps, to_numpy
from engine.snapshot import STAT_INDEX, LayerInfo, StatsFrame
from engine.stats import (
    hist_stride,
    histogram,
    moments,
    nonfinite_counts,
    unit_extremes,
)
from engine.step_graph import GRAPH_HELD_MAX, GRAPH_INPUT_MAX, GRAPH_PARAMS_MAX, StepGraphs, graph_input_max

__all__ = ["ProbeConfig", "Probe", "Capture", "PendingCapture", "PhaseRecord", "first_tensor", "grad_outputs",
           "known_batch_dim", "batch_dim_by_size", "input_batch_dim", "module_kind",
           "parametrized_tensors", "effective_tensor", "settled_parametrizations", "owned_parameters",
           "parametrization_parts"]

log = logging.getLogger(__name__)

RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU)
# Layers whose 3-D output is (batch, channels, positions): a ReLU after one judges channels.
CHANNELS_FIRST_1D = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.GroupNorm)
SATURATING = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Hardtanh: (-1.0, 1.0), nn.Hardsigmoid: (0.0, 1.0)}
ACTIVATIONS = RELU_FAMILY + tuple(SATURATING) + (
    nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Softsign, nn.Hardswish,
    nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Tanhshrink,
)
BOUNDED_RANGE = {nn.Softmax: (0.0, 1.0), nn.Softmin: (0.0, 1.0)}

# Largest column (units) the network graph draws unit by unit; beyond it values aren't shipped.
MAX_GRAPH_UNITS = 64

_EXACT = (torch.float32, torch.float64)  # dtypes measured as they are; others in float32


def _norm(tensor: torch.Tensor) -> torch.Tensor:
    """The L2 norm of a device tensor (summed in float32 for other dtypes than ``_EXACT``)."""
    return torch.linalg.vector_norm(tensor, dtype=None if tensor.dtype in _EXACT else torch.float32)


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """How the probe measures."""

    hist_bins: int = 48
    hist_range: float = 4.0
    saturation_margin: float = 0.01
    # On a CPU, statistics are computed with numpy (engine.host_stats); False makes the probe
    # use the device path's PyTorch reductions there too, so that path is tested without a GPU.
    host_statistics: bool = True
    # On CUDA, a small model's end-of-step reductions are recorded once as a CUDA graph and then
    # replayed (engine.step_graph): one launch instead of about a hundred. On an H200 this cut a
    # capture of the built-in models from 3.6-6.4 ms to 1.1-2.8 ms (scripts/gpu_check.sh).
    step_graphs: bool = True


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a module's output (LSTM returns (output, (h, c)); a
    dict, {"logits": ...}, is read in its order), else its first tensor of any kind."""
    if isinstance(value, torch.Tensor):  # (nearly every module)
        return value
    found = None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.is_floating_point():
                return item
            found = item if found is None else found
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (tuple, list)):
            stack.extend(reversed(item))
    return found


def grad_outputs(value: Any, inputs: Any = ()) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a module's output that a gradient can flow back into, with their places in
    it: every floating-point one that autograd made (it has a ``grad_fn``), each once, in
    ``first_tensor``'s order. LSTM's (output, (h, c)) gives [("[0]", output), ("[1][0]", h),
    ("[1][1]", c)]. Left out: a leaf (a parameter handed out: its gradient is its own) and a
    tensor of ``inputs`` handed back unchanged (its gradient is its producer's)."""
    found = [(path, tensor) for path, tensor in _tensors(value)
             if tensor.grad_fn is not None and tensor.is_floating_point()]
    if not found:
        return []
    passed = {id(tensor) for _, tensor in _tensors(inputs)}
    watched: list[tuple[str, torch.Tensor]] = []
    for path, tensor in found:
        if id(tensor) not in passed:
            passed.add(id(tensor))  # (a tensor returned twice is watched once)
            watched.append(("".join(f"[{step!r}]" for step in path), tensor))
    return watched


def _tensors(value: Any) -> list[tuple[tuple, torch.Tensor]]:
    """Every tensor in a nested value (tuples, lists, dicts), depth first, with its path."""
    found: list[tuple[tuple, torch.Tensor]] = []
    stack: list[tuple[tuple, Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append((path, item))
        elif isinstance(item, dict):
            stack.extend(reversed([((*path, key), entry) for key, entry in item.items()]))
        elif isinstance(item, (tuple, list)):
            stack.extend(reversed([((*path, index), entry) for index, entry in enumerate(item)]))
    return found


@dataclass(eq=False)  # compared by identity (plans compare layouts holding layers)
class _Layer:
    index: int
    name: str
    module: nn.Module
    role: str
    params: list[torch.nn.Parameter]
    activation: str | None
    bounds: tuple[float, float] | None
    relu_like: bool
    saturating: bool
    called: bool = False
    main_weight: torch.nn.Parameter | None = None
    hist_range: tuple[float, float] = (0.0, 1.0)  # set by the probe from its config
    # Its output's min and max were finite at the last capture read (device path): a big output,
    # reduced in its hook, then isn't counted for NaN and Inf (``Probe._activation_stats``).
    outputs_finite: bool = False
    saturation_bounds: tuple[float, float] | None = None  # bounds of a saturating layer
    # Whether the layer's 3-D output is (batch, channels, positions) (conv1d), else (batch,
    # positions, features); None for an activation, which keeps its producer's layout.
    channels_first: bool | None = None
    # Each parameter's name in the module (parallel to ``params``): "bias", and a parametrized
    # layer's "parametrizations.weight.original0".
    param_names: tuple[str, ...] = ()
    # A parametrized layer's tensors computed by parametrizations ("weight"), and the one of them
    # standing for its weight (then ``main_weight`` is None), with its shape. See the module docstring.
    parametrized: tuple[str, ...] = ()
    shown: str | None = None
    shown_shape: tuple[int, ...] | None = None

    def weight_shape(self) -> tuple[int, ...] | None:
        """Its weight's shape: its main weight's, or the computed tensor's that stands for it."""
        if self.shown is not None:
            return self.shown_shape
        # (A lazy module's parameters have no shape until its first forward.)
        weight = self.main_weight
        return tuple(weight.shape) if weight is not None and not is_lazy(weight) else None

    def info(self) -> LayerInfo:
        return LayerInfo(
            index=self.index, name=self.name or "<model>", type_name=type(self.module).__name__,
            kind=module_kind(self.module), role=self.role,
            params=sum(p.numel() for p in self.params if not is_lazy(p)), weight_shape=self.weight_shape(),
            activation=self.activation, called=self.called,
            # Read from the parameters each time the layers are listed, so a snapshot published
            # after the user (un)freezes a layer mid-run says so. The layer list itself is fixed at
            # discovery, and a Diagnostics keeps the infos it was built with: nothing more follows a
            # change of requires_grad during a run.
            trainable=not self.params or any(p.requires_grad for p in self.params),
            frozen_params=self._frozen_params(),
        )

    def _frozen_params(self) -> tuple[str, ...]:
        """Names of the parameters it owns that are frozen, when others are not (else none)."""
        frozen = sum(not p.requires_grad for p in self.params)
        if not frozen or frozen == len(self.params):
            return ()
        return tuple(name for name, p in zip(self.param_names, self.params) if not p.requires_grad)

    def plain_params(self) -> list[torch.nn.Parameter]:
        """The parameters its forward uses as they are (all but a parametrized layer's originals)."""
        return [p for name, p in zip(self.param_names, self.params) if not name.startswith("parametrizations.")]


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    """One forward or backward event of a recorded step, with display-sized tensors."""

    kind: str  # 'forward' | 'backward'
    module: str
    tensors: dict[str, np.ndarray]
    # A forward event's input is a sum the model's code made between modules (a residual
    # connection's x + sublayer(x)), no module's output.
    input_is_sum: bool = False


class PendingCapture:
    """The result of a captured step whose single host copy may still be in flight (CUDA)."""

    def __init__(self, parse: Callable[[np.ndarray], Capture], host: torch.Tensor | np.ndarray,
                 event: Any) -> None:
        self._parse = parse
        self._host = host
        self._event = event
        self._result: Capture | None = None

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def get(self) -> Capture:
        if self._result is None:
            if self._event is not None:
                self._event.synchronize()
            host = self._host
            self._result = self._parse(host.numpy() if isinstance(host, torch.Tensor) else host)
        return self._result


@dataclass
class _ParamPlan:
    """The parameter-owning layers in order, with what flattening their parameters needs."""

    layers: list[_Layer]
    params: list[torch.nn.Parameter]
    sizes: list[int]  # values each layer owns
    device: torch.device
    order_version: int
    host_groups: list[list[np.ndarray]] | None = None
    host_pointers: tuple[int, ...] | None = None
    # The device path's: flat views of the parameters (kept like host_groups), where each one
    # starts in their concatenation, and the segments of the layers (weights, or weights then
    # gradients) in it.
    device_views: list[torch.Tensor] | None = None
    device_pointers: tuple[int, ...] | None = None
    offsets: dict[int, int] | None = None
    groups: list[_ParamGroup] | None = None
    both_segments: Segments | None = None


@dataclass(frozen=True)
class _ParamGroup:
    """Consecutive parameter-owning layers whose statistics the device path reduces together:
    their parameters (``params``) and values (``values``) in the concatenation, and their segments."""

    params: slice
    values: slice
    segments: Segments
    layers: list[_Layer]
    param_layer: torch.Tensor  # per parameter: its layer in the group (on the device)


def _part(flat: torch.Tensor, values: slice) -> torch.Tensor:
    """``flat[values]``, or ``flat`` itself when that is all of it (a view costs a dispatch)."""
    return flat if values.start == 0 and values.stop == flat.numel() else flat[values]


def _param_groups(layers: list[_Layer], sizes: list[int], device: torch.device) -> list[_ParamGroup]:
    """Layers in groups of at most ``DEVICE_PARAM_GROUP`` values (a bigger layer alone)."""
    groups: list[_ParamGroup] = []
    first = param = value = 0
    for end in range(1, len(layers) + 1):
        held = sum(sizes[first:end])
        if end == len(layers) or held + sizes[end] > DEVICE_PARAM_GROUP:
            owners = [i for i, layer in enumerate(layers[first:end]) for _ in layer.params]
            count = len(owners)
            groups.append(_ParamGroup(slice(param, param + count), slice(value, value + held),
                                      Segments(sizes[first:end], device, by_rows=True), layers[first:end],
                                      torch.tensor(owners, dtype=torch.int64, device=device)))
            first, param, value = end, param + count, value + held
    return groups


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@functools.lru_cache(maxsize=None)
def _forward_signature(cls: type) -> inspect.Signature:
    """The signature of a module class's forward (self included), read once per class."""
    return inspect.signature(cls.forward)


def _io(args: tuple, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """A recorded forward phase's tensors: the output, and the input unless an in-place op
    (ReLU(inplace=True)) made it the output itself, its values gone."""
    tensors = {"output": out}
    inp = first_tensor(args)
    if inp is not None and inp.is_floating_point() and inp.layout == torch.strided and not _same_storage(inp, out):
        tensors["input"] = inp
    return tensors


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """A gradient as a strided tensor (an Embedding(sparse=True) leaves a sparse one)."""
    return grad if grad.layout == torch.strided else grad.to_dense()


def _outputs_zeros(module: nn.Module) -> bool:
    """Whether a unit of this activation can be dead: its output exactly zero (and so its
    gradient) for every input below a threshold. A leaky unit still passes a gradient."""
    if isinstance(module, nn.LeakyReLU):
        return module.negative_slope == 0
    return isinstance(module, RELU_FAMILY) and not isinstance(module, nn.PReLU)


def _main_weight(module: nn.Module, parametrized: tuple[str, ...] = ()) \
        -> tuple[torch.nn.Parameter | None, str | None]:
    """The parameter standing for the module's weight, or the name of the tensor its
    parametrizations compute that does (``parametrized``: their names)."""
    named = dict(module.named_parameters(recurse=False))
    for key in ("weight", "in_proj_weight", "weight_ih_l0"):
        if key in parametrized:
            return None, key
        if key in named:
            return named[key], None
    matrices = [p for p in named.values() if p.dim() >= 2]
    if matrices:
        return matrices[0], None
    if parametrized:
        return None, parametrized[0]
    return next(iter(named.values()), None), None


@functools.lru_cache(maxsize=None)
def _class_kind(cls: type) -> str:
    """The name of the nearest torch class in ``cls``'s MRO, other than ``nn.Module`` (a class that
    parametrize made, "ParametrizedLinear", is skipped); ``cls``'s own name when there is none."""
    for base in cls.__mro__:
        if base is nn.Module:
            break
        if base.__module__.startswith("torch.") and base.__module__ != parametrize.__name__:
            return base.__name__
    return cls.__name__


def module_kind(module: nn.Module) -> str:
    """What kind of torch module it is (``LayerInfo.kind``): its type's name for torch's own, the
    torch class a subclass extends ("Linear" for ``MaskedLinear(nn.Linear)``), the class a
    parametrized module had before its parametrizations ("Linear" for weight_norm's
    ParametrizedLinear); its type's name for a module of no torch class but ``nn.Module``."""
    return _class_kind(type(module))


def parametrized_tensors(module: nn.Module) -> tuple[str, ...]:
    """The names of a module's tensors that ``torch.nn.utils.parametrize`` computes from
    parameters ("weight" under weight_norm or spectral_norm); () for any other module."""
    if not parametrize.is_parametrized(module):
        return ()
    return tuple(name for name, plist in module.parametrizations.items()
                 if next(plist.parameters(), None) is not None)


def owned_parameters(module: nn.Module, parametrized: tuple[str, ...]) -> list[tuple[str, torch.nn.Parameter]]:
    """A layer's parameters by name: those the module owns directly, then (a parametrized one's)
    those under its parametrizations of ``parametrized``."""
    owned = list(module.named_parameters(recurse=False))
    for tensor in parametrized:
        owned += [(f"parametrizations.{tensor}.{name}", p)
                  for name, p in module.parametrizations[tensor].named_parameters()]
    return owned


@contextlib.contextmanager
def settled_parametrizations(module: nn.Module) -> Iterator[None]:
    """A module's parametrization modules (all its descendants' too) in eval mode for a while:
    computing a parametrized tensor then moves nothing (spectral_norm runs no power iteration)."""
    parts = [m for owner in module.modules() if parametrize.is_parametrized(owner)
             for m in owner.parametrizations.modules()]
    modes = [m.training for m in parts]
    for m in parts:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(parts, modes):
            m.training = mode


def effective_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor ``name`` of a parametrized module as its parametrizations compute it from the
    parameters as they are now, in eval mode (``settled_parametrizations``), without autograd."""
    with torch.no_grad(), settled_parametrizations(module):
        return getattr(module, name)


def parametrization_parts(model: nn.Module) -> set[int]:
    """The ids of every module inside a parametrized module's ``parametrizations``: the lists
    holding its originals, and the parametrizations in them, parts of that module's layer."""
    return {id(part) for module in model.modules() if parametrize.is_parametrized(module)
            for part in module.parametrizations.modules()}


def _sequence_first(module: nn.Module) -> bool | None:
    """Whether a module of a type known to take sequences (RNN, LSTM, GRU, MultiheadAttention, the
    Transformer layers) has them time first, (T, N, ...), its ``batch_first`` False; None for any
    other type."""
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention, nn.Transformer)):
        return not module.batch_first
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return not module.self_attn.batch_first
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)) and len(module.layers):
        return not module.layers[0].self_attn.batch_first
    return None


def known_batch_dim(module: nn.Module, place: str, ndim: int) -> int | None:
    """The batch's dimension in a tensor of ``module``'s as its type and ``batch_first`` say, or
    None where they don't say (any other type, an unbatched sequence). ``place``: "input" (the
    first tensor of its arguments), "output" (the first of its output, ``first_tensor``), or the
    place of another tensor of its output, as ``grad_outputs`` names it ("output[1][0]": LSTM's h).
    An RNN's h and c are (layers·directions, N, hidden) whatever ``batch_first`` is, and
    MultiheadAttention's weights (N, [heads,] T, S)."""
    first = _sequence_first(module)
    if first is None:
        return None
    other = place.startswith("output[")
    if isinstance(module, nn.MultiheadAttention) and other:
        return 0 if ndim >= 3 else None
    if ndim != 3:
        return None
    if isinstance(module, nn.RNNBase) and other:
        return 1
    return 1 if first else 0


def batch_dim_by_size(shape: tuple[int, ...], batch: int | None, preferred: Sequence[int | None] = ()) -> int:
    """The dimension of a tensor of ``shape`` that holds a batch of ``batch`` examples, where no
    module type says it: the one dimension that long; among several (T == N), the first of
    ``preferred`` that is one of them, else the first of them; 0 when none is, or unknown."""
    if batch is None or len(shape) < 2:
        return 0
    candidates = [dim for dim, size in enumerate(shape) if size == batch]
    if len(candidates) == 1:
        return candidates[0]
    return next((dim for dim in preferred if dim in candidates), candidates[0] if candidates else 0)


def input_batch_dim(x: Any, y: Any) -> int:
    """Which dimension of a batch's input ``x`` holds its examples, as its targets ``y`` tell.

    Dimension 0, as Glassbox's own batches and a DataLoader's default collation stack them, unless
    the targets say otherwise: a loader that collates sequences time first (``pad_sequence``) gives
    ``x`` of (T, N, ...) (token ids, or features) with targets of (N, ...), whose one dimension as
    long as the targets' first is the batch's. Shapes alone can't tell the rest, which stays 0:
    targets as long as ``x``'s first dimension ((T, N) with (T, N) targets looks like (N, T)),
    targets of every token flattened (T·N, ...), and a 2-D float ``x`` (a length mismatch between
    features and targets is far likelier than a (T, N) batch of single numbers)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not isinstance(y, torch.Tensor) or y.dim() == 0:
        return 0
    examples = int(y.shape[0])
    if examples == x.shape[0] or (x.dim() == 2 and x.is_floating_point()):
        return 0
    matching = [dim for dim in range(1, x.dim()) if x.shape[dim] == examples]
    return matching[0] if len(matching) == 1 else 0


def _layout_context(model: nn.Module) -> dict[str, int]:
    """Per module inside one of a type ``_sequence_first`` knows (a Transformer layer's Linear,
    LayerNorm, Dropout), the batch's dimension in that nearest such module's sequences: it breaks
    a tie in ``Probe._batch_dim`` (a (T, N, E) tensor where T == N)."""
    found: dict[str, int] = {}
    for name, module in model.named_modules():  # (parents first: the nearest one is written last)
        first = _sequence_first(module)
        if first is not None:
            for inner, _ in module.named_modules(prefix=name):
                found[inner] = 1 if first else 0
    return found


class Probe:
    """Hooks into a model and measures each layer at captured steps.

    The trainer drives it: ``begin_step`` before the forward, ``after_backward`` once gradients
    exist, ``before_update``/``after_update`` around the optimizer step, then ``finish``.
    """

    def __init__(self, model: nn.Module, config: ProbeConfig | None = None) -> None:
        self.model = model
        self.config = config or ProbeConfig()
        self._handles: list[Any] = []
        self._first_param = next(model.parameters(), None)  # its .device follows model.to()
        self._hook_table: tuple[list, list] | None = None
        self._grad_hooks: dict[tuple[int, int], Callable] = {}
        self._table: LayerTable | None = None
        self._parse_plans: list[ParsePlan] = []  # the last few layouts' plans, newest first
        self._reducer = ActivationReducer(self.config.saturation_margin, self.config.hist_bins)
        self._device_reducer = DeviceActivationReducer(self.config.saturation_margin, self.config.hist_bins)
        self._zero: torch.Tensor | None = None  # a figure a layer doesn't have, on the device
        self._change_meter = ChangeMeter()
        self.graphs = StepGraphs()  # used when config.step_graphs (CUDA)
        self._attached = False
        self._parts = parametrization_parts(model)
        self._layers = self._discover(model)
        # Parametrized layers (see the module docstring): their weight figures are computed apart.
        self._effective_layers = [layer for layer in self._layers if layer.parametrized and layer.params]
        self._effective_segments: Segments | None = None  # (their sizes, on the device path)
        spread = self.config.hist_range
        for layer in self._layers:
            layer.hist_range = layer.bounds if layer.bounds is not None else (-spread, spread)
            layer.saturation_bounds = layer.bounds if layer.saturating else None
        measured = {id(layer.module) for layer in self._layers}
        # Leaf modules the probe doesn't measure (dropout, pooling, flatten...) still appear as
        # phases when a step is walked through, so the walk-through skips nothing.
        self._walk_only = [(name, m) for name, m in model.named_modules()
                           if not list(m.children()) and id(m) not in measured and name and id(m) not in self._parts]
        self._layout_context = _layout_context(model)
        self._by_module = {id(layer.module): layer for layer in self._layers}
        self._order_fixed = False
        self._order_version = 0
        self._plan: _ParamPlan | None = None
        self._forward_order: list[int] = []
        self.focus_layer: str | None = None
        self.focus_example: int = 0
        # The focus as the step under way began: a focus changed mid-step (between phases)
        # applies from the next step, so one step's views are all of one layer and example.
        self._step_focus: tuple[str | None, int] = (None, 0)
        # The shape of each view a step graph computes at the step's end, learned from the first
        # step that computed it at once: (layer id, key, source shapes) -> shape.
        self._view_shapes: dict[tuple, tuple[int, ...]] = {}
        self._capturing = False
        self._want_tensors = False
        self._recording = False
        self._reset_step()

    # --- layers --------------------------------------------------------------------------
    def _discover(self, model: nn.Module) -> list[_Layer]:
        layers: list[_Layer] = []
        for name, module in model.named_modules():
            if id(module) in self._parts:  # (a parametrized module's layer holds it)
                continue
            parametrized = parametrized_tensors(module)
            owned = owned_parameters(module, parametrized)
            params = [p for _, p in owned]
            if isinstance(module, nn.MultiheadAttention):
                role = "attention"
            elif params:
                role = "param"
            elif isinstance(module, ACTIVATIONS):
                role = "activation"
            else:
                continue
            bounds = None
            for kind, rng in {**SATURATING, **BOUNDED_RANGE}.items():
                if isinstance(module, kind):
                    bounds = rng
            if isinstance(module, nn.Hardtanh):  # its bounds are settings (ReLU6 is one too)
                bounds = (float(module.min_val), float(module.max_val))
            main, shown = _main_weight(module, parametrized)
            shown_shape = None
            if shown is not None:
                try:  # (computed once: it keeps its shape)
                    shown_shape = tuple(effective_tensor(module, shown).shape)
                except Exception as exc:  # (a user's parametrization may raise anything)
                    log.info("%s.%s could not be computed: %s", name, shown, exc)
            layers.append(_Layer(
                index=len(layers), name=name, module=module, role=role, params=params,
                activation=type(module).__name__.lower() if isinstance(module, ACTIVATIONS) else None,
                bounds=bounds, relu_like=_outputs_zeros(module),
                saturating=isinstance(module, tuple(SATURATING)) and not isinstance(module, nn.ReLU6),
                main_weight=main,
                channels_first=None if role == "activation" else isinstance(module, CHANNELS_FIRST_1D),
                param_names=tuple(n for n, _ in owned), parametrized=parametrized, shown=shown,
                shown_shape=shown_shape,
            ))
        return layers

    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        return tuple(layer.info() for layer in self._layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name or "<model>" for layer in self._layers)

    def _fix_order(self) -> None:
        """Reorder layers by first forward call; uncalled ones follow their parent (out_proj)."""
        called = [self._layers[i] for i in dict.fromkeys(self._forward_order)]
        seen = {id(layer) for layer in called}
        rest = [layer for layer in self._layers if id(layer) not in seen]
        ordered = list(called)
        for layer in rest:
            parent = max((i for i, c in enumerate(ordered) if layer.name.startswith(c.name + ".")),
                         default=None)
            if parent is None:
                ordered.append(layer)
            else:
                ordered.insert(parent + 1, layer)
        for index, layer in enumerate(ordered):
            layer.index = index
        self._layers = ordered
        self._order_fixed = True
        self._order_version += 1

    # --- hooks ---------------------------------------------------------------------------
    # The probe is attached to its model for its whole life, but its hooks are registered only
    # for the forward of a captured step (``begin_step`` arms them, ``finish`` and ``abandon_step``
    # remove them): a module with any hook takes PyTorch's slower call path, which on a small
    # model costs a few percent of every step, captured or not.
    def attach(self) -> "Probe":
        """Measure this model from the next captured step on (idempotent)."""
        self._attached = True
        return self

    def detach(self) -> None:
        """Stop measuring and remove every hook (idempotent; safe in ``finally``)."""
        self._attached = False
        self._disarm()

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def armed(self) -> bool:
        """Whether hooks are registered on the model right now (during a captured forward)."""
        return bool(self._handles)

    def __enter__(self) -> "Probe":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _arm(self, record: bool) -> None:
        if self._hook_table is None:  # made once: a captured step only registers them
            self._hook_table = (
                [(module, self._make_walk_hook(name), False) for name, module in self._walk_only],
                [(layer.module, self._make_attention_hook(layer), True) if layer.role == "attention"
                 else (layer.module, self._make_hook(layer), False) for layer in self._layers],
            )
        walk, measured = self._hook_table
        try:
            for module, hook, with_kwargs in (walk + measured if record else measured):
                self._handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))
        except BaseException:
            self._disarm()
            raise

    def _disarm(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def _make_hook(self, layer: _Layer) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._on_forward(layer, args, output)
        return hook

    def _make_walk_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not self._recording:
                return
            out = first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            self._note_summed_input(args)
            in_dim, out_dim = self._io_dims(name, module, args, out)
            self._phase_events.append(("forward", name, self._display(_io(args, out),
                                                                      {"input": in_dim, "output": out_dim})))
            if output is not out:  # (several tensors: LSTM's (output, (h, c)))
                self._watch_outputs(name, args, output, out, module=module, path=name, out_dim=out_dim)
            elif out.requires_grad:
                out.register_hook(lambda grad: self._phase_events.append(
                    ("backward", name, self._display({"grad_output": grad}, {"grad_output": out_dim})))
                    if self._recording and grad is not None else None)
        return hook

    def _watch_outputs(self, name: str, args: tuple, output: Any, out: torch.Tensor,
                       layer: _Layer | None = None, call: int = 0, *, module: nn.Module, path: str,
                       out_dim: int = 0) -> None:
        """Hook every tensor of a module's output of several that a gradient can reach
        (``grad_outputs``). Once the last of their gradients has come, a measured ``layer``'s are
        measured, a ``gout`` piece each, which the host sums per layer as it sums a layer's calls
        (*gradient w.r.t. the output* in the module's docstring); its views show the first tensor's
        (``out``), as they show its activation. Then too the backward phase ``name`` is recorded,
        with every gradient that came: "grad_output" the first tensor's, the others' by place
        ("grad_output[1][0]" for LSTM's h), each taken along its batch dimension (``out_dim`` the
        first tensor's; ``module``, named ``path``, made them)."""
        watched = grad_outputs(output, args)
        if not watched:
            return
        if layer is not None and len(watched) == 1 and watched[0][1] is out:
            out.register_hook(self._grad_hook(layer, call))  # (MultiheadAttention's (output, None))
            return
        measures = [] if layer is None else [self._output_grad_hook(layer, call, tensor is out)
                                             for _, tensor in watched]
        keys = ["grad_output" if tensor is out else f"grad_output{place}" for place, tensor in watched]
        dims = {key: out_dim if tensor is out else self._batch_dim(path, module, tensor, f"output{key[11:]}", out_dim)
                for key, (_, tensor) in zip(keys, watched)} if self._recording else {}

        def on_grads(grads: Sequence[torch.Tensor | None]) -> None:
            # (None: an output no gradient reached, though the node making it ran, as cuDNN's LSTM
            # node runs for h when its output is unused.)
            if not self._capturing:
                return
            for measure, grad in zip(measures, grads):
                if grad is not None:
                    measure(grad)
            if self._recording:
                shown = {key: grad for key, grad in zip(keys, grads) if grad is not None}
                if shown:
                    self._phase_events.append(("backward", name, self._display(shown, dims)))

        # (Called once per backward, after the last of the tensors' gradients that backward
        # computes has come: when the module's backward phase is over.)
        register_multi_grad_hook([tensor for _, tensor in watched], on_grads)

    def _make_attention_hook(self, layer: _Layer) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._on_forward(layer, args, output)
            if self._capturing and self._want_tensors and layer.name == self._step_targets.get("attention"):
                self._capture_attention(layer, args, kwargs)
        return hook

    # --- per step ------------------------------------------------------------------------
    def _reset_step(self) -> None:
        # Pieces are device tensors on CUDA (concatenated and copied once), numpy arrays on the
        # CPU; a None is a slot the end-of-step activation batch fills in.
        self._pieces: list[torch.Tensor | np.ndarray | None] = []
        # Small outputs (copied) for the end-of-step batch, and where their rows go.
        self._pending_acts: list[tuple[int, PendingActivation | PendingDeviceActivation]] = []
        self._batched = 0  # values copied into _pending_acts (device path)
        self._channels_first = False  # the layout of the last 3-D output a measured layer made
        self._pending_grads: list[tuple[_Layer, np.ndarray]] = []  # small output gradients (CPU)
        self._grad_norms: list[tuple[_Layer, torch.Tensor]] = []  # output gradients' norms (device)
        # The device path's reductions left for the step's end: (slots in _pieces, the tensors
        # they read, what computes the slots' pieces from them); see ``_device_copy``.
        self._jobs: list[tuple[list[int], list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]] = []
        self._grad_outputs: list[tuple[_Layer, torch.Tensor]] = []  # small output gradients, held (device)
        self._deferring = False  # the device path leaves its reductions to the step's end
        self._held_big = 0  # values of big outputs and gradients held for a step graph
        self._graph_max = GRAPH_INPUT_MAX  # what a step graph's inputs may hold on this step's device
        self._views_deferred = False  # some view is computed by the step's end (its example is in the graph)
        # The device path's copies of the weights and (small models, until their views are
        # taken) of the gradients, as backward left them.
        self._weights: torch.Tensor | None = None
        self._grads: torch.Tensor | None = None
        self._layout: list[tuple] = []  # (kind, owner, key, shape, meta): see engine.capture_parse
        self._phase_events: list[tuple[str, str, dict[str, torch.Tensor]]] = []
        self._summed_inputs: set[int] = set()  # forward events (by index) whose input is a sum made between modules
        self._calls: dict[int, int] = {}
        self._step_targets: dict[str, str | None] = {}
        # Where the focus example is taken from (steps with views or phases only): the batch's
        # size, read from the model's input; the batch dimension of every module output whose
        # example is taken, by id (the tensor held, so no other takes its id), for the modules it feeds;
        # each measured call's output's, for its gradient; those a step graph's views took.
        self._batch: int | None = None
        self._targets: Any = None
        self._tokens: torch.Tensor | None = None  # the focus example's input token ids (attention maps' labels)
        self._produced: dict[int, tuple[torch.Tensor, int]] = {}
        self._out_dims: dict[tuple[int, int], int] = {}
        self._deferred_dims: list[int] = []
        self._before_flat: torch.Tensor | np.ndarray | None = None
        # The parametrized layers' computed tensors this step (by layer id, then name), and dL/dW of
        # the focused one's (see ``_keep_effective_grad``).
        self._effective: dict[int, dict[str, torch.Tensor]] = {}
        self._effective_grad: torch.Tensor | None = None
        self._host = True  # statistics computed with numpy (CPU), else on the device
        self._device = torch.device("cpu")  # the parameters' device, read when a capture begins

    def begin_step(self, capture: bool, tensors: bool = False, record: bool = False, targets: Any = None) -> None:
        """Arm the hooks for the coming forward/backward (only a captured step has any). The batch's
        ``targets`` tell where its input holds its examples (``input_batch_dim``), for the views."""
        self._disarm()
        self._reset_step()
        self._targets = targets
        self._capturing = (capture or record) and self._attached
        record = record and self._capturing
        if self._capturing:
            first = self._first_param
            self._device = torch.device("cpu") if first is None else first.device
            self._host = self._device.type == "cpu" and self.config.host_statistics
            self._graph_max = graph_input_max(self._device, GRAPH_INPUT_MAX)
            self._arm(record)
        self._want_tensors = tensors and self._capturing
        self._recording = record
        if self._want_tensors or record:  # (the batch's size: see _batch_dim)
            self._handles.append(self.model.register_forward_pre_hook(self._note_batch))
            self._handles.append(self.model.register_forward_hook(self._forget_produced))
        self._deferring = self._capturing and not self._host and not record
        self._forward_order = []
        # (The root module is listed as "<model>"; its own name is "".)
        focus = "<model>" if self.focus_layer == "" else self.focus_layer
        self._step_focus = (focus, self.focus_example)
        self._step_targets = {kind: self._target(kind) for kind in ("conv", "attention")} \
            if self._want_tensors else {}
        if self._want_tensors and self._effective_layers:  # (a parametrized layer's dL/dW, for its view)
            focused = next((layer for layer in self._effective_layers
                            if layer.shown is not None and self._is_focus(layer)), None)
            if focused is not None:
                computing = focused.module.parametrizations[focused.shown]
                self._handles.append(computing.register_forward_hook(self._keep_effective_grad))

    def _keep_effective_grad(self, module: nn.Module, args: tuple, out: Any) -> None:
        """(A forward hook on the focused parametrized layer's ``ParametrizationList``, on steps with
        views.) Its output is the weight the layer's forward uses: its gradient is kept (summed,
        where the forward computes it more than once) for the Weights view."""
        if self._capturing and isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._add_effective_grad)

    def _add_effective_grad(self, grad: torch.Tensor) -> None:
        if self._capturing:
            grad = grad.detach()
            self._effective_grad = grad if self._effective_grad is None else self._effective_grad + grad

    def abandon_step(self) -> None:
        """Drop a step that an exception interrupted: hooks removed, nothing kept."""
        self._disarm()
        self._capturing = self._want_tensors = self._recording = False
        self._reset_step()

    @property
    def capturing(self) -> bool:
        return self._capturing

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Forward passes inside don't count (validation, decision-boundary grids), and a step
        under way keeps what it has captured so far."""
        state = (self._capturing, self._want_tensors, self._recording)
        self._capturing = self._want_tensors = self._recording = False
        try:
            yield
        finally:
            self._capturing, self._want_tensors, self._recording = state

    def _is_focus(self, layer: _Layer) -> bool:
        return (layer.name or "<model>") == self._step_focus[0]

    def _target(self, kind: str) -> str | None:
        """The layer whose feature maps ('conv') or attention ('attention') the views get: the
        focused one if it is of that kind, else the first conv or the last attention layer."""
        def matches(layer: _Layer) -> bool:
            if kind == "attention":
                return layer.role == "attention"
            shape = layer.weight_shape()
            return shape is not None and len(shape) == 4
        focused = next((item for item in self._layers if self._is_focus(item)), None)
        if focused is not None and matches(focused):
            return focused.name
        candidates = [item.name for item in self._layers if matches(item) and item.called]
        if not candidates:
            return None
        # The first conv layer's filters are the readable ones (edges, strokes); the last
        # attention layer is usually where an alignment such as reversal shows.
        return candidates[0] if kind == "conv" else candidates[-1]

    def _push(self, kind: str, owner: "_Layer | list[_Layer] | None", key: str,
              tensor: torch.Tensor | np.ndarray, meta: tuple | None = None,
              model_tensor: torch.Tensor | None = None) -> None:
        """Queue a tensor for the step's single copy. Owners are kept as objects (their index is
        read when parsing), since the first capture reorders the layers.

        ``model_tensor``: the model's tensor (output, gradient, weight) that ``tensor`` may be a
        view of. Such a view is copied now: a later in-place op or the update may change it, and
        each view shows its tensor as it was when pushed. Anything else (figures, the probe's own
        copies, pooled results) is the probe's alone and waits as it is.
        """
        if isinstance(tensor, np.ndarray):
            piece: torch.Tensor | np.ndarray = tensor.reshape(-1)
        elif self._host:
            piece = np.array(host_array(tensor if tensor.device.type == "cpu" else tensor.cpu()))
        else:  # flattened in ``finish``
            piece = tensor.detach() if tensor.requires_grad else tensor
            if piece.dtype != torch.float32:
                piece = piece.float()
            elif model_tensor is not None and _same_storage(piece, model_tensor):
                piece = piece.clone()
        self._pieces.append(piece)
        self._layout.append((kind, owner, key, tuple(tensor.shape), meta))

    def _slot(self, kind: str, owner: "_Layer | list[_Layer]", key: str, shape: tuple[int, ...],
              meta: tuple | None = None) -> int:
        """A place in the step's copy for a piece computed at the step's end; its index."""
        self._pieces.append(None)
        self._layout.append((kind, owner, key, shape, meta))
        return len(self._pieces) - 1

    def _example_of(self, dim: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
        """What takes this step's focus example from a batch along its dimension ``dim``
        (``_batch_dim``); the example is fixed now, as a step graph fixes it."""
        focus = self._step_focus[1]

        def example(x: torch.Tensor) -> torch.Tensor:
            return x.select(dim, min(focus, x.shape[dim] - 1)) if x.dim() > dim and x.shape[dim] else x
        return example

    def _note_batch(self, module: nn.Module, args: tuple) -> None:
        """(The model's forward pre-hook, on steps with views or phases.) The batch's size: the
        model input's dimension that holds its examples, the first unless the targets say otherwise."""
        if not self._capturing or self._batch is not None:
            return
        x = first_tensor(args)
        if x is not None and x.dim() >= 1:
            dim = input_batch_dim(x, self._targets)
            self._batch = int(x.shape[dim])
            self._produced[id(x)] = (x, dim)
            if self._step_targets.get("attention") and x.dim() == 2 and not x.is_floating_point():
                self._tokens = x.select(dim, min(self._step_focus[1], self._batch - 1))  # (T token ids)

    def _batch_dim(self, name: str, module: nn.Module, tensor: torch.Tensor, place: str,
                   hint: int | None = None) -> int:
        """The dimension of one of ``module``'s tensors (``place``: see ``known_batch_dim``) that
        holds the batch, for the focus example to be taken along.

        As the module's type and ``batch_first`` say where they do (LSTM(batch_first=False)'s
        output is (T, N, H), its h (layers, N, H)). Any other module's (a Linear's, a user's) is
        the one dimension as long as the batch: a Linear applied to such an LSTM's (T, N, H) output
        keeps it in dimension 1. Where several dimensions are that long (T == N), the ``hint`` (the
        dimension the module's input had, where a module whose example was taken made it), then
        the dimension of the Transformer layer the module is part of, then the first of them; 0
        where none is (the batch was folded into another dimension), as before.
        """
        known = known_batch_dim(module, place, tensor.dim())
        if known is not None:
            return known
        return batch_dim_by_size(tuple(tensor.shape), self._batch, (hint, self._layout_context.get(name)))

    def _forget_produced(self, *_: Any) -> None:
        """(The model's forward hook, with ``_note_batch``.) The outputs held for their batch
        dimensions are read during the forward only: let them go before the backward."""
        self._produced = {}

    def _note_summed_input(self, args: tuple) -> None:
        """(Recording, just before a forward event is appended.) Note that event when its module's
        input is a sum the model's code made between modules: an addition autograd recorded, whose
        result no module returned (a residual connection's x + sublayer(x), seen in no phase of
        its own). By event, not name: a module called twice may take a sum only once."""
        inp = first_tensor(args)
        fn = getattr(inp, "grad_fn", None)
        if fn is not None and type(fn).__name__.startswith("AddBackward") and id(inp) not in self._produced:
            self._summed_inputs.add(len(self._phase_events))  # (the event appended next: this call's)

    def _io_dims(self, name: str, module: nn.Module, args: tuple, out: torch.Tensor) -> tuple[int, int]:
        """The batch's dimension in a module's input (its arguments' first tensor) and in its
        output ``out``; the output's is kept for the modules it feeds (called on steps with views
        or phases only)."""
        inp = first_tensor(args)
        in_dim = 0
        if inp is not None:
            made = self._produced.get(id(inp))
            in_dim = self._batch_dim(name, module, inp, "input", made[1] if made is not None and made[0] is inp
                                     else None)
        out_dim = self._batch_dim(name, module, out, "output", in_dim)
        self._produced[id(out)] = (out, out_dim)
        return in_dim, out_dim

    def _graphing(self) -> bool:
        """Whether a step graph may replay this step's end (the device path on a device the graphs
        can record on, small models)."""
        return (self.config.step_graphs and self._deferring and self.graphs.off_because is None
                and self.graphs.can_record_on(self._device))

    def _push_view(self, layer: _Layer, key: str, sources: list[torch.Tensor],
                   view: Callable[..., torch.Tensor], held: bool, dim: int = 0) -> None:
        """Push ``view(*sources)`` for the views.

        ``held``: the sources are the probe's own (its copies, or gradients it holds to the step's
        end); else they are the model's, and a view sharing their memory is copied now. When a
        step graph may replay the step's end, a view of held sources is computed there with the
        reductions, once its shape is known: the first step that needs it computes it at once.
        ``dim``: the batch dimension the view takes its example along (a graph fixes it too).
        """
        known = None  # (the view's shape is cached under this key when it may be deferred)
        if held and self._graphing():
            known = (id(layer), key, tuple(tuple(t.shape) for t in sources), dim)
            shape = self._view_shapes.get(known)
            if shape is not None:
                slot = self._slot("tensor", layer, key, shape)
                self._jobs.append(([slot], sources, lambda tensors: (view(*tensors).float(),)))
                self._views_deferred = True
                self._deferred_dims.append(dim)
                return
        piece = view(*sources)
        if known is not None:
            if len(self._view_shapes) > 1024:  # (a long session of changing focus)
                self._view_shapes.clear()
            self._view_shapes[known] = tuple(piece.shape)
        self._push("tensor", layer, key, piece, model_tensor=None if held else sources[0])

    def _on_forward(self, layer: _Layer, args: tuple, output: Any) -> None:
        if not layer.called:
            layer.called = True
        if not self._capturing:
            return
        self._forward_order.append(layer.index)
        if layer.channels_first is not None:
            self._channels_first = layer.channels_first
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        call = self._calls.get(layer.index, 0)
        self._calls[layer.index] = call + 1
        if out.numel() == 0:
            return
        host = self._host and out.is_cpu
        copy = None  # the probe's flat copy of the output, if it took one: the views below are taken from it
        # A ReLU after a conv1d judges channels: (batch, channels, positions) is measured as
        # (batch, channels, positions, 1), whose units are those of a 2-D conv's output.
        measured = out.unsqueeze(-1) if layer.relu_like and self._channels_first and out.dim() == 3 else out
        if host and out.numel() <= BATCHED_MAX:
            # Reduced with the step's other small outputs in ``finish``; copied now, since a
            # later in-place op (ReLU(inplace=True)) may still change this output.
            pending = PendingActivation(host_array(out).copy(), tuple(measured.shape), layer.hist_range,
                                        layer.saturation_bounds, layer.relu_like)
            slot = self._slot("act", layer, "stats", (ACT_FIELDS + self.config.hist_bins,),
                              (measured.shape, None, True))
            self._pending_acts.append((slot, pending))
        elif host:
            row, sampled = self._reducer.row_now(measured, layer.hist_range, layer.saturation_bounds,
                                                 layer.relu_like)
            self._push("act", layer, "stats", row, (measured.shape, sampled, True))
        elif out.numel() <= DEVICE_BATCHED_MAX and self._batched + out.numel() <= DEVICE_BATCH_BUDGET:
            # Copied now (an in-place op may change it), reduced with the others in ``finish``:
            # one dispatch (no detach, no reshape; it is flattened where it is reduced).
            with torch.no_grad():
                values = out.clone(memory_format=torch.contiguous_format) if out.dtype in _EXACT \
                    else out.float().contiguous()
            self._batched += values.numel()
            shape = tuple(measured.shape)
            slot = self._slot("act", layer, "stats", (ACT_FIELDS + self.config.hist_bins,),
                              (measured.shape, sampled_count(values.numel()), True))
            self._pending_acts.append((slot, PendingDeviceActivation(
                values, shape, layer.hist_range, layer.saturation_bounds, layer.relu_like,
                unit_maxima(values, shape, layer.relu_like, self._batched))))
            copy = values
        elif self._reserve_graph_room(out.numel()):
            # A step graph will replay its reductions with the rest: copied now (as above), reduced
            # at the step's end.
            with torch.no_grad():
                held = out.clone(memory_format=torch.contiguous_format) if out.dtype in _EXACT \
                    else out.float().contiguous()
            sampled = -(-held.numel() // hist_stride(held.numel()))
            slot = self._slot("act", layer, "stats", (ACT_FIELDS + self.config.hist_bins,),
                              (measured.shape, sampled, True))
            zero = self._zero_on(held.device)  # (held by the job, as a replay reads it)
            self._jobs.append(([slot], [held.view(measured.shape)],
                               lambda tensors: (self._activation_stats(layer, tensors[0], zero)[0].float(),)))
            copy = held
        else:
            # (Counting NaN and Inf reads the output twice more: left out while it was finite.)
            counted = not layer.outputs_finite
            stats, sampled = self._activation_stats(layer, measured, self._zero_on(out.device), count=counted)
            self._push("act", layer, "stats", stats, (measured.shape, sampled, counted))
        # Where the batch is in its input and output (only where an example of them is taken).
        dims = self._io_dims(layer.name, layer.module, args, out) if self._recording else None
        if output is not out:  # (several tensors: LSTM's (output, (h, c)))
            self._watch_outputs(self._call_name(layer, call), args, output, out, layer, call, module=layer.module,
                                path=layer.name, out_dim=0 if dims is None else dims[1])
        elif out.requires_grad:
            out.register_hook(self._grad_hook(layer, call))
        if self._want_tensors and call == 0 and out.dim() >= 1:
            focused = self._is_focus(layer)
            maps = out.dim() == 4 and layer.name == self._step_targets.get("conv")
            # (Few enough units per example to draw, along whichever dimension holds the batch.)
            small = out.numel() <= MAX_GRAPH_UNITS * max(out.shape)
            if small or focused or maps:
                dims = dims or self._io_dims(layer.name, layer.module, args, out)
                dim = self._out_dims[(id(layer), 0)] = dims[1]
                graphed = out.numel() <= MAX_GRAPH_UNITS * out.shape[dim]  # one example's units are drawn
                # From the probe's copy (of the output's shape) if it took one: then it may be
                # left to the step's end.
                source, held = (out, False) if copy is None else (copy, True)
                example = self._example_of(dim)
                if graphed:
                    self._push_view(layer, "unit_value", [source], lambda x: example(x).reshape(-1), held, dim)
                if focused:
                    self._push_view(layer, "activation", [source], lambda x: shrink_2d(as_matrix(example(x))), held,
                                    dim)
                if maps:
                    self._push_view(layer, "feature_maps", [source], lambda x: shrink_maps(example(x)), held, dim)
        if self._recording:
            self._note_summed_input(args)
            self._out_dims[(id(layer), call)] = dims[1]
            self._phase_events.append(("forward", self._call_name(layer, call),
                                       self._display(_io(args, out), {"input": dims[0], "output": dims[1]})))

    def _call_name(self, layer: _Layer, call: int) -> str:
        name = layer.name or "<model>"
        return name if call == 0 else f"{name} (call {call + 1})"

    def _display(self, tensors: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        """The focus example's slice of each tensor (taken along its batch dimension, ``dims``:
        see ``_batch_dim``), shrunk, still on the device. An example of three or more axes (an
        image's channels × rows × columns, attention's heads × T × T) is drawn as its last two
        axes' maps stacked one under another, so each map stays a picture (flattened to one row
        per channel, shrinking averaged pixels of different rows)."""
        shown = {}
        for key, value in tensors.items():
            value = self._example_of(dims.get(key, 0))(value)
            value = value.detach()
            matrix = value.reshape(-1, value.shape[-1]) if value.dim() >= 3 else as_matrix(value)
            shown[key] = shrink_2d(matrix).clone()
        return shown

    def _grad_hook(self, layer: _Layer, call: int) -> Callable:
        """The hook for the gradient of one call's output (made once, like the forward hooks)."""
        hook = self._grad_hooks.get((id(layer), call))  # the probe keeps its layers alive
        if hook is None:
            hook = self._grad_hooks[(id(layer), call)] = self._make_grad_hook(layer, call)
        return hook

    def _output_grad_hook(self, layer: _Layer, call: int, shown: bool) -> Callable:
        """The hook measuring the gradient of one tensor of a call's output of several; whether the
        views show it (``shown``); its backward phase is ``_watch_outputs``'s to record."""
        key = (id(layer), call, shown)
        hook = self._grad_hooks.get(key)
        if hook is None:
            hook = self._grad_hooks[key] = self._make_grad_hook(layer, call, shown, recorded=False)
        return hook

    def _make_grad_hook(self, layer: _Layer, call: int, shown: bool = True, recorded: bool = True) -> Callable:
        views = shown and call == 0

        def on_grad(grad: torch.Tensor | None) -> None:
            if grad is None or not self._capturing:  # (None: see _watch_outputs)
                return
            held = False  # (held to the step's end: a view of it may be computed there too)
            if self._host and grad.is_cpu:
                if grad.numel() <= BATCHED_MAX:  # reduced with the others in ``finish``
                    self._pending_grads.append((layer, host_array(grad).copy()))
                else:
                    self._push("gout", layer, "sumsq", np.array([sumsq(grad)]))
            elif self._deferring and (grad.numel() <= DEVICE_BATCHED_MAX or self._reserve_graph_room(grad.numel())):
                # Held (backward doesn't change a gradient it has passed on) and reduced at the step's end.
                self._grad_outputs.append((layer, grad))
                held = True
            else:  # squared and shipped together in ``finish``
                self._grad_norms.append((layer, _norm(grad)))
            if self._want_tensors and views:
                # (Its output's batch dimension, where the forward took an example of it.)
                dim = self._out_dims.get((id(layer), call))
                if dim is not None and grad.dim() > dim:
                    graphed = grad.numel() <= MAX_GRAPH_UNITS * grad.shape[dim]
                    example = self._example_of(dim)
                    if graphed:
                        self._push_view(layer, "unit_grad", [grad], lambda g: example(g).reshape(-1), held, dim)
                    if self._is_focus(layer):
                        self._push_view(layer, "output_grad", [grad], lambda g: shrink_2d(as_matrix(example(g))),
                                        held, dim)
            if recorded and self._recording:
                dims = {"grad_output": self._out_dims.get((id(layer), call), 0)}
                self._phase_events.append(("backward", self._call_name(layer, call),
                                           self._display({"grad_output": grad}, dims)))
        return on_grad

    def _zero_on(self, device: torch.device) -> torch.Tensor:
        """A figure a layer doesn't have, on the device (one tensor, kept)."""
        if self._zero is None or self._zero.device != device:
            self._zero = torch.zeros((), device=device)
        return self._zero

    def _reserve_graph_room(self, values: int) -> bool:
        """Whether a big output, or its gradient, of this many values is held to the step's end,
        where a step graph reduces it with the rest (one of at most ``GRAPH_HELD_MAX`` values,
        counted against half of what the graph's inputs may hold); otherwise it is reduced in its
        hook, which takes no copy."""
        if not self._graphing() or values > GRAPH_HELD_MAX or self._held_big + values > self._graph_max // 2:
            return False
        self._held_big += values
        return True

    @staticmethod
    def _note_finite_outputs(frame: StatsFrame, plan: ParsePlan) -> None:
        """Which layers' outputs were finite at a capture just read (see ``_Layer.outputs_finite``):
        an output turning NaN or Inf is counted from the next capture on."""
        ends = frame.values[plan.act_layers][:, [STAT_INDEX["act_min"], STAT_INDEX["act_max"]]]
        for index, finite in zip(plan.act_layers, np.isfinite(ends).all(axis=1)):
            plan.table.layers[index].outputs_finite = bool(finite)

    def _activation_stats(self, layer: _Layer, out: torch.Tensor, zero: torch.Tensor,
                          count: bool = True) -> tuple[torch.Tensor, int]:
        """An output's row of ``ACT_FIELDS`` and histogram. Unless ``count``, the places of its NaN
        and Inf counts hold its min and max again: the host reads what they tell of the counts
        (``engine.capture_parse.nonfinite_bounds``: exact while it is finite)."""
        x = out.detach()
        x = x if x.dtype in _EXACT else x.float()
        flat = x.reshape(-1)
        mean, var = moments(flat)
        if layer.relu_like:  # (its extremes and its units' maxima in one pass)
            low, high, units = unit_extremes(x)
            dead = (units <= 0).sum(dtype=torch.float32)
        else:
            (low, high), dead = torch.aminmax(flat), zero
        nan, inf = nonfinite_counts(flat, mean) if count else (low, high)
        if layer.saturating and layer.bounds is not None:
            lo, hi = layer.bounds
            margin = self.config.saturation_margin
            saturated = ((flat < lo + margin) | (flat > hi - margin)).sum(dtype=torch.float32)
        else:
            saturated = zero
        hist, sampled = histogram(flat, *layer.hist_range, self.config.hist_bins)
        return torch.cat([torch.stack([mean, var, low, high, nan, inf, dead, saturated]), hist]), sampled

    def _capture_attention(self, layer: _Layer, args: tuple, kwargs: dict) -> None:
        """Recompute the focus example's attention weights (heads, T, S) from the layer's inputs.

        Works whatever ``need_weights`` the model passed; runs the module's own forward on one
        example, in eval mode (no dropout, so the training RNG is untouched), without grad.
        """
        module: nn.MultiheadAttention = layer.module  # type: ignore[assignment]
        bound = _forward_signature(type(module)).bind(module, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        bdim = 0 if module.batch_first else 1
        query = a["query"]
        batch = query.shape[bdim] if query.dim() == 3 else 1
        e = min(self._step_focus[1], batch - 1)  # the example shown: the last if the batch is smaller
        q, k, v = (t.narrow(bdim, e, 1) if t.dim() == 3 else t for t in (query, a["key"], a["value"]))
        kpm = a.get("key_padding_mask")
        if kpm is not None and kpm.dim() == 2:
            kpm = kpm[e:e + 1]
        mask = a.get("attn_mask")
        if mask is not None and mask.dim() == 3:
            h = module.num_heads
            mask = mask[e * h:(e + 1) * h]
        was_training = module.training
        module.training = False
        try:
            with torch.no_grad():
                _, weights = module.forward(q, k, v, key_padding_mask=kpm, need_weights=True,
                                            attn_mask=mask, average_attn_weights=False,
                                            is_causal=bool(a.get("is_causal", False)) and mask is not None)
        finally:
            module.training = was_training
        if weights is not None:
            maps = weights[0] if weights.dim() == 4 else weights
            self._push("tensor", layer, "attention", shrink_maps(maps, max_count=64, max_side=512))
            tokens = self._tokens
            if tokens is not None and tokens.numel() == maps.shape[-1] <= 512:  # (the model's input tokens)
                self._push("tensor", layer, "tokens", tokens.float())

    def _param_plan(self, device: torch.device) -> _ParamPlan:
        """Layers owning parameters, in order, and their parameters (cached while the order holds)."""
        plan = self._plan
        if plan is None or plan.device != device or plan.order_version != self._order_version:
            layers = [layer for layer in self._layers if layer.params]
            sizes = [sum(p.numel() for p in layer.params) for layer in layers]
            plan = self._plan = _ParamPlan(layers, [p for layer in layers for p in layer.params], sizes, device,
                                           self._order_version)
        return plan

    def _host_groups(self, plan: _ParamPlan) -> list[list[np.ndarray]]:
        """Each layer's parameters as flat numpy views, kept while the parameters keep their
        storage (optimizers update in place)."""
        pointers = tuple(p.data_ptr() for p in plan.params)
        groups = plan.host_groups
        if groups is None or plan.host_pointers != pointers:
            groups = [[host_array(p) for p in layer.params] for layer in plan.layers]
            # Other dtypes than float32/64, and non-contiguous parameters, give copies, which
            # mustn't be reused.
            native = all(p.dtype in (torch.float32, torch.float64) and p.is_contiguous() for p in plan.params)
            plan.host_groups, plan.host_pointers = (groups, pointers) if native else (None, None)
        return groups

    def _device_views(self, plan: _ParamPlan) -> list[torch.Tensor]:
        """Each parameter as a flat view, kept like ``_host_groups``; the segments (made once, on
        the device, so no host-to-device copy happens inside a captured step after the first)."""
        pointers = tuple(p.data_ptr() for p in plan.params)
        views = plan.device_views
        if views is None or plan.device_pointers != pointers:
            views = [p.detach().reshape(-1) for p in plan.params]
            contiguous = all(p.is_contiguous() for p in plan.params)  # else reshape copied
            plan.device_views, plan.device_pointers = (views, pointers) if contiguous else (None, None)
        if plan.groups is None:
            plan.groups = _param_groups(plan.layers, plan.sizes, plan.device)
            both = Segments(plan.sizes + plan.sizes, plan.device)
            plan.both_segments = both if both.ids is not None else None  # (see ATOMIC_SUMS_MAX)
            offsets = itertools.accumulate([p.numel() for p in plan.params], initial=0)
            plan.offsets = {id(p): offset for p, offset in zip(plan.params, offsets)}
        return views

    @staticmethod
    def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
        flat = torch.cat(tensors)
        return flat if flat.dtype in _EXACT else flat.float()

    def after_backward(self) -> None:
        """Weights and gradients as backward left them (before clipping and the update)."""
        if not self._capturing:
            return
        self._produced = {}  # (the forward's outputs, held for their batch dimensions, are let go)
        plan = self._param_plan(self._device)
        layers = plan.layers
        if layers:
            # A parameter without a gradient (frozen, or unused by this forward) counts as zeros;
            # a layer none of whose parameters has one gets no gradient figures at all.
            if self._host:  # numpy over views of the tensors, no copies
                grads = [[host_array(_dense(p.grad)) if p.grad is not None else np.zeros(p.numel(), np.float32)
                          for p in layer.params] for layer in layers]
                rows = group_rows(self._host_groups(plan) + grads)  # weights, then gradients
            else:  # a copy of weights and gradients, a few operations for every layer at once
                rows = self._device_param_rows(plan)
            if rows is not None:  # (else they are reduced at the step's end)
                self._push("pstats", layers, "weight", rows[:len(layers)])
                self._push("pstats", layers, "grad", rows[len(layers):])
            gradless = [layer for layer in layers if all(p.grad is None for p in layer.params)]
            if gradless:
                empty = np.zeros(0) if self._host else torch.zeros(0, device=self._device)
                self._push("nograd", gradless, "grad", empty)
            if self._effective_layers:  # (models with parametrized layers only)
                self._push_effective_weights()
        if self._want_tensors:
            for layer in layers:
                self._push_weight_views(layer, plan)
        self._grads = None
        if self._recording:
            self._record_param_grads()

    def _push_effective_weights(self) -> None:
        """The parametrized layers' weight figures: of the tensors their forward used (see the
        module docstring), which replace those of their parameters when the step is read."""
        layers = self._effective_layers
        groups = []
        for layer in layers:
            computed = {name: effective_tensor(layer.module, name) for name in layer.parametrized}
            self._effective[id(layer)] = computed
            groups.append(list(computed.values()) + [p.detach() for p in layer.plain_params()])
        if self._host:
            rows: torch.Tensor | np.ndarray = group_rows([[host_array(t) for t in group] for group in groups])
        else:
            segments = self._effective_segments
            if segments is None or segments.device != self._device:  # (made once: no copy to the device after)
                segments = self._effective_segments = Segments([sum(t.numel() for t in group) for group in groups],
                                                               self._device)
            rows = segments.figures(self._joined([t.reshape(-1) for group in groups for t in group]))[0].float()
        self._push("effective", layers, "weight", rows)

    def _params_deferred(self, plan: _ParamPlan) -> bool:
        """Whether this step leaves the parameters' reductions to its end (device path): a model
        of one group, small enough that holding copies of its gradients and weights costs little."""
        return (self._deferring and len(plan.groups) == 1
                and 2 * sum(plan.sizes) <= min(GRAPH_PARAMS_MAX, self._graph_max))

    def _device_param_rows(self, plan: _ParamPlan) -> torch.Tensor | None:
        """The (2 * layers, 5) rows of the weights, then the gradients (device path); None when
        they are left to the step's end, as ``_jobs`` (a model of one parameter group), or pushed
        group by group (a big model's)."""
        views = self._device_views(plan)
        grads = [_dense(p.grad).reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                 for p in plan.params]
        # The weights' copy is also what the update is measured against.
        if plan.both_segments is not None:  # small: one copy, one pass
            both = self._joined(views + grads)
            self._weights, self._grads = both[:sum(plan.sizes)], both[sum(plan.sizes):]
            reduced, segments = [both], plan.both_segments
        elif len(plan.groups) == 1 and (not self._deferring or self._params_deferred(plan)):
            # (Left to the step's end, the gradients' copy is held until then: small models only.)
            self._weights, self._grads = self._joined(views), self._joined(grads)
            reduced, segments = [self._weights, self._grads], plan.groups[0].segments
        else:  # big: the weights' copy is kept whole, the rest is made a group at a time
            self._weights = self._joined(views)
            for group in plan.groups:  # (each group's figures pushed as they are made)
                self._push_group_figures(group, "weight", _part(self._weights, group.values))
                self._push_group_figures(group, "grad", self._joined(grads[group.params]))
            return None

        def param_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
            rows = [segments.figures(t)[0] for t in tensors]
            return (rows[0] if len(rows) == 1 else torch.cat(rows)).float()

        if not self._deferring:
            return param_rows(reduced)
        count = len(plan.layers)
        slots = [self._slot("pstats", plan.layers, key, (count, PARAM_FIELDS)) for key in ("weight", "grad")]
        self._jobs.append((slots, reduced, lambda tensors: param_rows(tensors).split(count)))
        return None

    def _push_group_figures(self, group: _ParamGroup, key: str, flat: torch.Tensor) -> None:
        """A group's weight or gradient figures; by rows, what the host makes them from."""
        if group.segments.by_rows:
            self._push("prows", group.layers, key, *group.segments.row_piece(flat, key))
        else:
            self._push("pstats", group.layers, key, group.segments.figures(flat)[0])

    def _param_source(self, plan: _ParamPlan, p: torch.Tensor, grad: bool = False) \
            -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], bool]:
        """Where a view finds a parameter (or its gradient) as backward left it, and what takes it
        from there: the device path's flat copy of them all (held), when the step's end reads
        that copy anyway; else its part of that copy, or the model's tensor."""
        copy = self._grads if grad else self._weights
        if copy is not None and plan.offsets is not None:
            offset, count, shape = plan.offsets[id(p)], p.numel(), p.shape

            def part(flat: torch.Tensor) -> torch.Tensor:
                return flat[offset:offset + count].view(shape)
            return (copy, part, True) if self._params_deferred(plan) else (part(copy), lambda tensor: tensor, True)
        return (_dense(p.grad) if grad else p).detach(), lambda tensor: tensor, False

    def _push_computed_weight_views(self, layer: _Layer) -> None:
        """``_push_weight_views`` of a parametrized layer: of the weight its parametrizations
        computed (``_push_effective_weights``), and its gradient dL/dW."""
        w = self._effective.get(id(layer), {}).get(layer.shown)
        if w is None:
            return
        if w.dim() == 2 and max(w.shape) <= MAX_GRAPH_UNITS:
            self._push_view(layer, "graph_weight", [w], lambda x: x, held=False)
        if self._is_focus(layer):
            self._push_view(layer, "weight", [w], lambda x: shrink_2d(as_matrix(x)), held=False)
            grad = self._effective_grad
            if grad is not None and grad.shape == w.shape:
                self._push_view(layer, "weight_grad", [grad], lambda g: shrink_2d(as_matrix(g)), held=False)
        if w.dim() == 4 and layer.name == self._step_targets.get("conv"):
            side = w.shape[-2:]
            self._push_view(layer, "kernels", [w], lambda x: shrink_maps(x.reshape(-1, *side)), held=False)

    def _push_weight_views(self, layer: _Layer, plan: _ParamPlan) -> None:
        if layer.shown is not None:
            self._push_computed_weight_views(layer)
            return
        w = layer.main_weight
        if w is None:
            return
        graphed = w.dim() == 2 and max(w.shape) <= MAX_GRAPH_UNITS
        kernels = w.dim() == 4 and layer.name == self._step_targets.get("conv")
        if not (graphed or kernels or self._is_focus(layer)):
            return
        source, weight, held = self._param_source(plan, w)
        if graphed:
            self._push_view(layer, "graph_weight", [source], weight, held)
        if self._is_focus(layer):
            self._push_view(layer, "weight", [source], lambda x: shrink_2d(as_matrix(weight(x))), held)
            if w.grad is not None:
                grad_source, grad, grad_held = self._param_source(plan, w, grad=True)
                self._push_view(layer, "weight_grad", [grad_source], lambda x: shrink_2d(as_matrix(grad(x))),
                                grad_held)
        if kernels:
            side = w.shape[-2:]
            self._push_view(layer, "kernels", [source], lambda x: shrink_maps(weight(x).reshape(-1, *side)), held)

    def _record_param_grads(self) -> None:
        """Attach each module's parameter gradients to its backward phase; those of a module never
        called as one (MultiheadAttention's out_proj) go to its nearest ancestor's, named from it
        ("grad:out_proj.weight")."""
        backward = {name: tensors for kind, name, tensors in self._phase_events if kind == "backward"}
        for layer in self._layers:
            name = layer.name or "<model>"
            owner, prefix = name, ""
            while owner not in backward and "." in owner:  # up to the nearest ancestor with a phase
                owner, _, child = owner.rpartition(".")
                prefix = f"{child}.{prefix}"
            if owner not in backward or (prefix and layer.called):
                continue
            tensors = backward[owner]
            for pname, p in zip(layer.param_names, layer.params):
                if p.grad is not None:
                    tensors[f"grad:{prefix}{pname}"] = shrink_2d(as_matrix(_dense(p.grad).detach())).clone()
                    tensors[f"{prefix}{pname}"] = shrink_2d(as_matrix(p.detach())).clone()

    def before_update(self) -> None:
        if not self._capturing:
            return
        plan = self._param_plan(self._device)
        if not plan.layers:
            return
        # One copy of every parameter, kept until after the update (the device path made its
        # copy after backward; clipping changes gradients only).
        if self._host:
            self._before_flat = np.concatenate([a for group in self._host_groups(plan) for a in group])
        else:
            self._before_flat = self._weights if self._weights is not None else self._joined(self._device_views(plan))

    def after_update(self) -> None:
        if not self._capturing or self._before_flat is None:
            return
        before = self._before_flat
        self._before_flat = None
        plan = self._param_plan(self._device)
        layers = plan.layers
        focus = next((layer for layer in layers if self._is_focus(layer)), None)
        shown = focus.main_weight if self._want_tensors and focus is not None else None  # its change is shown
        delta = None  # the device path's change of the shown weight, if made here
        after = None  # the device path's copy of them all, when their reductions are left to the step's end
        if isinstance(before, np.ndarray):
            self._push("update", layers, "norms", self._change_meter.rows(self._host_groups(plan), before))
        elif self._params_deferred(plan):
            segments = plan.groups[0].segments

            def update_norms(tensors: list[torch.Tensor]) -> tuple[torch.Tensor]:
                start, after = tensors
                change = after - start
                return (segments.square_sums(change, start).float(),)

            slot = self._slot("update", layers, "norms", (len(layers), 2))
            after = self._joined(self._device_views(plan))
            self._jobs.append(([slot], [before, after], update_norms))
        else:
            views = self._device_views(plan)
            norms = []
            for group in plan.groups:  # (a big model's change is made and let go a group at a time)
                tensors, params = views[group.params], plan.params[group.params]
                starts = list(_part(before, group.values).split([t.numel() for t in tensors]))
                # Each parameter's change, and its norm and its weights': no copy of them all joined.
                changes = list(torch._foreach_sub(tensors, starts))
                delta = next((c for c, p in zip(changes, params) if p is shown), delta)
                squares = torch.stack(torch._foreach_norm(changes + starts)).double().square().view(2, -1).T
                norms.append(torch.zeros((len(group.layers), 2), dtype=torch.float64, device=squares.device)
                             .index_add_(0, group.param_layer, squares))
                del changes, starts
            self._push("update", layers, "norms", norms[0] if len(norms) == 1 else torch.cat(norms))
        if shown is not None:
            offset = 0
            for p in plan.params:
                if p is shown:
                    self._push_weight_update(focus, p, offset, before, after, delta)
                offset += p.numel()
        elif self._want_tensors and focus is not None and focus.shown is not None:  # (a parametrized layer's)
            start = self._effective.get(id(focus), {}).get(focus.shown)
            if start is not None:
                change = effective_tensor(focus.module, focus.shown) - start
                self._push("tensor", focus, "weight_update", shrink_2d(as_matrix(change)))

    def _push_weight_update(self, layer: _Layer, p: torch.Tensor, offset: int, before: torch.Tensor | np.ndarray,
                            after: torch.Tensor | None, delta: torch.Tensor | None) -> None:
        """The view of the focused weight's change; ``offset``: where ``p`` is in the flat copies;
        ``delta``: its change, if made already."""
        count, shape = p.numel(), p.shape
        if after is not None:  # (both copies are the probe's: it may be left to the step's end)
            self._push_view(layer, "weight_update", [before, after], lambda start, end: shrink_2d(as_matrix(
                (end[offset:offset + count] - start[offset:offset + count]).view(shape))), held=True)
            return
        if delta is not None:
            change = delta.view(shape)
        else:
            start = before[offset:offset + count]
            start = torch.from_numpy(start) if isinstance(start, np.ndarray) else start
            change = p.detach() - start.reshape(shape)
        self._push("tensor", layer, "weight_update", shrink_2d(as_matrix(change)))

    def phase_events(self) -> list[PhaseRecord]:
        """The recorded step's forward/backward events, on the host."""
        return [PhaseRecord(kind, name, {k: to_numpy(v) for k, v in tensors.items()},
                            input_is_sum=index in self._summed_inputs)
                for index, (kind, name, tensors) in enumerate(self._phase_events)]

    def _layer_table(self) -> LayerTable:
        if self._table is None or self._table.order_version != self._order_version:
            layers = list(self._layers)
            bins, spread = self.config.hist_bins, self.config.hist_range
            self._table = LayerTable(
                order_version=self._order_version, layers=layers, names=self.layer_names,
                hist_ranges=_read_only(np.array([layer.hist_range for layer in layers], np.float32)
                                       .reshape(len(layers), 2)),
                hist_edges=_read_only(np.linspace(-spread, spread, bins + 1, dtype=np.float32)),
                bins=bins,
            )
        return self._table

    def _parse_plan(self, layout: list[tuple], table: LayerTable) -> ParsePlan:
        """The plan of this layout, made once: steps with and without views alternate between a
        few layouts, so the last few are kept."""
        for plan in self._parse_plans:
            if plan.matches(layout, table):
                return plan
        plan = ParsePlan(layout, table)
        self._parse_plans = [plan] + self._parse_plans[:3]
        return plan

    def _defer_activations(self) -> None:
        """Leave the batched outputs' rows to the step's end (device path)."""
        if not self._pending_acts:
            return
        slots = [slot for slot, _ in self._pending_acts]
        items = [item for _, item in self._pending_acts]
        layout = self._device_reducer.arrange(items, items[0].values.device)  # (held by the job)
        reducer = self._device_reducer

        def activation_rows(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            units = iter(tensors[len(items):])
            pending = [item._replace(values=values, units=None if item.units is None else next(units))
                       for item, values in zip(items, tensors)]
            return reducer.rows(pending, layout).unbind(0)

        tensors = [item.values for item in items] + [item.units for item in items if item.units is not None]
        self._jobs.append((slots, tensors, activation_rows))

    def _defer_output_gradients(self) -> None:
        """Leave the squared norms of the outputs' gradients to the step's end (device path):
        those taken in their hooks, and the small gradients held since."""
        if not (self._grad_norms or self._grad_outputs):
            return
        owners = self._grad_norms + self._grad_outputs
        taken = len(self._grad_norms)

        def squared_norms(tensors: list[torch.Tensor]) -> tuple[torch.Tensor]:
            grads = tensors[taken:]
            norms = list(torch._foreach_norm(grads)) if grads and all(g.dtype in _EXACT for g in grads) \
                else [_norm(g) for g in grads]
            return (torch.stack(tensors[:taken] + norms).square().float(),)

        slot = self._slot("gout", [layer for layer, _ in owners], "sumsq", (len(owners),))
        self._jobs.append(([slot], [tensor for _, tensor in owners], squared_norms))

    def _device_copy(self, plan: ParsePlan, scalars: torch.Tensor) -> torch.Tensor:
        """The step's pieces and scalars as one flat float32 tensor on the device.

        Every piece the step has pushed, and every tensor a job left to the step's end reads, is
        an input of one function that computes the jobs and joins the pieces; on CUDA, with
        ``step_graphs``, a small model's function is replayed from a CUDA graph.
        """
        inputs: list[torch.Tensor] = []
        where: dict[int, int] = {}  # id(tensor) -> its index in inputs (each tensor once)

        def take(tensor: torch.Tensor) -> int:
            index = where.get(id(tensor))
            if index is None:
                index = where[id(tensor)] = len(inputs)
                inputs.append(tensor)
            return index

        template = tuple(None if piece is None else take(piece) for piece in self._pieces)
        jobs = [(slots, [take(t) for t in tensors], compute) for slots, tensors, compute in self._jobs]
        last = take((scalars.detach() if scalars.requires_grad else scalars).float())

        def join(tensors: list[torch.Tensor]) -> torch.Tensor:
            pieces = [None if index is None else tensors[index] for index in template]
            for slots, indices, compute in jobs:
                for slot, piece in zip(slots, compute([tensors[index] for index in indices])):
                    pieces[slot] = piece
            # (One call flattens and joins every piece: far fewer Python calls than a reshape each.)
            return torch._utils._flatten_dense_tensors(pieces + [tensors[last]])

        if self._graphing() and sum(t.numel() for t in inputs) <= self._graph_max:
            key = (template, tuple((tuple(slots), tuple(indices)) for slots, indices, _ in jobs),
                   (self._step_focus[1], tuple(self._deferred_dims)) if self._views_deferred
                   else None)  # (a graph fixes the example, and the dimension it is taken along)
            flat = self.graphs.run(plan, key, join, inputs)
            return flat if flat.is_cuda else flat.clone()  # (a CPU stand-in's replays reuse their output)
        return join(inputs)

    def finish(self, step: int, scalars: torch.Tensor) -> PendingCapture | None:
        """Gather the step's measurements into one tensor and start its single host copy.

        Args:
            step: the step number this capture belongs to.
            scalars: (k, 2) loss and accuracy of the last k steps (this one last), shipped in the
                same copy so the loop never reads a loss on its own.
        """
        self._disarm()
        if not self._capturing:
            return None
        if not self._order_fixed:
            self._fix_order()
        self._capturing = False
        if self._host:
            if self._pending_acts:
                rows = self._reducer.rows([item for _, item in self._pending_acts])
                for (slot, _), row in zip(self._pending_acts, rows):
                    self._pieces[slot] = row
            if self._pending_grads:
                layers, grads = zip(*self._pending_grads)
                self._push("gout", list(layers), "sumsq", sums_of_squares(list(grads)))
            plan = self._parse_plan(self._layout, self._layer_table())
            flat: torch.Tensor | np.ndarray = np.concatenate(
                self._pieces + [host_array(scalars if scalars.is_cpu else scalars.cpu())])
        else:
            self._defer_activations()
            self._defer_output_gradients()
            plan = self._parse_plan(self._layout, self._layer_table())
            flat = self._device_copy(plan, scalars)
        # The scalars follow the layout's pieces; the next step builds a new layout. What the step
        # copied is released now (not at the next captured step).
        self._pieces, self._weights, self._grads, self._jobs = [], None, None, []
        self._pending_acts, self._pending_grads, self._grad_norms, self._grad_outputs = [], [], [], []
        self._produced = {}
        (focus, example), tensors_wanted = self._step_focus, self._want_tensors

        def parse(host: np.ndarray) -> Capture:
            capture = parse_capture(host, plan, step, focus, example, tensors_wanted)
            self._note_finite_outputs(capture.frame, plan)
            return capture

        if isinstance(flat, torch.Tensor) and flat.is_cuda:
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return PendingCapture(parse, host, event)
        return PendingCapture(parse, flat, None)
