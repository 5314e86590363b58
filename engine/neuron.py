"""One unit written out: its forward and backward computation with live numbers, and a gradient
check of one of its weights against a central finite difference."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from engine.probe import batch_dim_by_size, first_tensor, known_batch_dim

__all__ = ["NeuronTrace", "PendingTrace", "GradientCheck", "trace_unit", "check_gradient"]


@dataclass(frozen=True, slots=True)
class NeuronTrace:
    """Unit ``unit`` of Linear layer ``layer`` for one example: z = w·a + b, out = g(z).

    ``delta`` is ∂L/∂z of the whole batch's loss L at this example, so ``weight_grads`` = δ·a is the
    example's share of the batch gradient: the shares of all examples add up to
    ``batch_weight_grads``, the unit's row of ∂L/∂W that the update uses (and the gradient check
    measures). With a mean loss a share is the example's own gradient divided by the batch size.

    For a Linear applied to every position of a sequence, one position's computation (the first:
    ``position`` 0); its ∂L/∂wᵢ is that position's share of the gradient.

    ``dropout``: a dropout module with 0 < p < 1 in training mode ran in the recomputation. Its
    masks are a seeded draw of the trace's own, not the ones the training step drew, so every
    figure (and the batch gradient) is that of one other draw: it equals the step's only in
    expectation. (Dropout called as a function in ``forward`` is not seen.)

    ``computed_weight``: the Linear's weight is computed by parametrizations (weight_norm,
    spectral_norm): ``weights`` are that computed weight's, as the forward uses it, and the
    gradients are w.r.t. it; the update moves the parameters it is computed from (weight_norm's g
    and v), which get their gradients from this one through the parametrization.
    """

    pending: ClassVar[bool] = False  # (a PendingTrace is a unit still to be written out)

    layer: str
    unit: int
    inputs: np.ndarray  # a_i, what the layer received
    weights: np.ndarray  # w_i of this unit
    bias: float
    z: float  # pre-activation
    activation: str | None  # name of g, or None when no activation module follows
    output: float  # g(z)
    delta: float  # dL/dz
    weight_grads: np.ndarray  # dL/dw_i = delta * a_i, this example's share
    bias_grad: float
    position: int | None = None  # the position shown, for a Linear applied along a sequence
    example: int = 0  # which example of the batch is written out
    batch_size: int = 1
    batch_weight_grads: np.ndarray | None = None  # dL/dw_i of the whole batch (autograd), None if w is frozen
    batch_bias_grad: float | None = None
    reduction: str | None = None  # "mean" or "sum": how the loss combines the examples, as measured; None: unknown
    dropout: bool = False  # active dropout drew masks of its own in the recomputation (see above)
    computed_weight: bool = False  # w is computed by parametrizations (see above)

    def forward_text(self, terms: int = 4) -> str:
        shown = " + ".join(f"{w:.3g}·{a:.3g}" for w, a in zip(self.weights[:terms], self.inputs[:terms]))
        more = " + …" if len(self.weights) > terms else ""
        then = f"a = {self.activation}(z) = {self.output:.4g}" if self.activation else \
            "no activation module takes z (a function in forward may apply one)"
        return f"z = Σ wᵢaᵢ + b = {shown}{more} + {self.bias:.3g} = {self.z:.4g};  {then}"

    def backward_text(self, terms: int = 4) -> str:
        shown = ", ".join(f"{self.delta:.3g}·{a:.3g} = {g:.3g}"
                          for a, g in zip(self.inputs[:terms], self.weight_grads[:terms]))
        where = "" if self.position is None else f", position {self.position}"
        return (f"For example {self.example} of the batch{where}: δ = ∂L/∂z = {self.delta:.4g};  "
                f"its share of ∂L/∂wᵢ is δ·aᵢ: {shown}{' …' if len(self.inputs) > terms else ''}")

    def batch_description(self) -> str:
        """'mean over 32 examples' (or 'sum over', or just '32 examples' when the loss's way of
        combining them is not known)."""
        examples = f"{self.batch_size} example{'s' if self.batch_size != 1 else ''}"
        return f"{self.reduction} over {examples}" if self.reduction in ("mean", "sum") else examples

    def batch_text(self, terms: int = 4) -> str:
        """The whole batch's ∂L/∂wᵢ, and how the examples' shares make it up ('' when not known)."""
        if self.batch_weight_grads is None:
            return ""
        shown = ", ".join(f"{g:.3g}" for g in self.batch_weight_grads[:terms])
        more = " …" if len(self.batch_weight_grads) > terms else ""
        every = " and positions" if self.position is not None else ""
        text = (f"Whole batch ({self.batch_description()}): ∂L/∂wᵢ = {shown}{more} — the shares of all the "
                f"batch's examples{every} added up")
        if self.reduction == "mean" and self.batch_size > 1:
            text += f" (each share is that example's own gradient ÷ {self.batch_size}, as the loss is a mean)"
        if self.computed_weight:
            return text + (". The check below uses this one; the update moves the parameters w is computed from "
                           "(its parametrization's), whose gradients come from this one.")
        if self.dropout:  # the update used the step's own masks: see dropout_text
            return text + ". The check below uses this one."
        return text + ". The update and the check below use this one."

    def dropout_text(self) -> str:
        """One line when active dropout makes these figures another draw than the step's ('' else)."""
        if not self.dropout:
            return ""
        return ("Dropout is active: these numbers come from one dropout draw of their own, while the training "
                "step drew different masks, so they match the step's figures only in expectation, not exactly.")


@dataclass(frozen=True, slots=True)
class PendingTrace:
    """A unit asked for during a phase-by-phase step: it is written out once the step ends (the
    model is then in a settled state: the step's update applied, no step half-shown)."""

    pending: ClassVar[bool] = True

    layer: str
    unit: int


@dataclass(frozen=True, slots=True)
class GradientCheck:
    parameter: str
    index: tuple[int, ...]
    autograd: float
    numeric: float

    @property
    def relative_error(self) -> float:
        scale = max(abs(self.autograd), abs(self.numeric), 1e-12)
        return abs(self.autograd - self.numeric) / scale


#: Modules that pass z on without being its activation.
_NOT_ACTIVATIONS = ("Dropout", "Flatten", "Identity", "Unflatten")
#: Every kind of dropout module (all of torch's nn.Dropout* family).
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _draws_masks(module: nn.Module) -> bool:
    """A dropout module that zeroes units at random as it is now (p = 0 keeps all, p = 1 drops all:
    neither is random; in eval mode it does nothing)."""
    return isinstance(module, _DROPOUTS) and module.training and 0.0 < float(module.p) < 1.0


@contextlib.contextmanager
def _same_draw(x: torch.Tensor) -> Iterator[None]:
    """The random stream forked and seeded alike, so every forward of a twin draws the same dropout
    masks (the trace, and each side of the finite difference, see one function of the weights)."""
    devices = list(range(torch.cuda.device_count())) if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


def _twin(model: nn.Module) -> nn.Module:
    """A copy to recompute on, each module in the mode it trains in, as the trainer leaves it
    between steps (batch norm on the batch's own statistics, as in the step, unless the user keeps
    it in eval mode; its running statistics move in the copy alone). Its parametrizations are in
    eval mode: each forward then computes the same weights from the same parameters
    (spectral_norm's sigma from its vectors as the last training step left them, with no power
    iteration of its own), so the trace and both sides of a finite difference see one function."""
    twin = copy.deepcopy(model)
    for owner in twin.modules():  # (for good: the twin is the recomputation's alone)
        if parametrize.is_parametrized(owner):
            for part in owner.parametrizations.modules():
                part.training = False
    return twin


def _computing(module: nn.Module, name: str) -> nn.Module | None:
    """The ``ParametrizationList`` computing a module's tensor ``name`` (a weight_norm Linear's
    weight), or None when it is a plain one. Its output is the tensor the module's forward uses."""
    return module.parametrizations[name] if parametrize.is_parametrized(module, name) else None


def _not_linear(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why a module's output isn't F.linear(input, weight, bias) of its weight (``weight``: as its
    forward had it) and bias (a subclass of nn.Linear with a forward of its own: a mask, a low-rank
    term), else None; called in its forward hook, before any in-place op changes the output."""
    with torch.no_grad():
        try:
            expected = F.linear(inp, weight, module.bias)
        except RuntimeError as exc:
            return f"F.linear(input, weight, bias) fails on its input ({exc})"
        if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
            return "its output's shape is not that of F.linear(input, weight, bias)"
        tol = max(1e-4, 16 * torch.finfo(expected.dtype).eps) if expected.is_floating_point() else 0.0
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        error = float((out - expected).abs().max()) if expected.numel() else 0.0
        if not error <= tol * max(scale, 1e-12):  # (NaN too)
            return (f"its output differs from F.linear(input, weight, bias) by up to {error:.3g} (of values up to "
                    f"{scale:.3g}): its forward computes something else")
    return None


def trace_unit(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, layer: str,
               unit: int, example: int = 0, batch_dim: int = 0) -> NeuronTrace:
    """Recompute the batch on a copy of the model and write out one Linear unit of one example
    (taken along ``x``'s dimension ``batch_dim``: ``engine.probe.input_batch_dim``).

    The copy keeps the training model, its gradients and its random stream untouched. The
    activation shown is the module that takes this Linear's output in the forward pass as it runs
    (not the one defined next); none is claimed when a function in ``forward`` applies it.

    A Linear whose weight parametrizations compute (weight_norm, spectral_norm) is written out with
    that computed weight (``NeuronTrace.computed_weight``). Raises ValueError for a module that is
    no nn.Linear, and for a subclass whose output on this batch is not F.linear(input, weight,
    bias) (a MaskedLinear's weight * mask): its Σ wᵢaᵢ + b would not be the z it produced.
    """
    twin = _twin(model)
    modules = dict(twin.named_modules())
    linear = modules.get(layer)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{layer!r} is not a Linear layer")
    computing = _computing(linear, "weight")
    seen: dict[str, torch.Tensor] = {}
    consumers: list[tuple[nn.Module, torch.Tensor]] = []  # (module, its output) for modules fed z itself
    dropped: list[nn.Module] = []  # dropout modules that drew masks in this forward
    unlike: list[str] = []  # why a call of the Linear's output wasn't F.linear of its weight and bias
    made: dict[int, tuple[torch.Tensor, int]] = {id(x): (x, batch_dim)}  # tensors whose batch dimension is known
    examples = int(x.shape[batch_dim])

    def keep_weight(_module, _args, weight):
        if weight.requires_grad:  # (its gradient: the computed weight's)
            weight.retain_grad()
        seen["weight"] = weight

    def keep_linear(_module, args, output):
        seen["linear_in"] = first_tensor(args)
        out = first_tensor(output)
        # (The weight its forward computed: reading linear.weight would compute another.)
        why = _not_linear(linear, seen["linear_in"], out, seen["weight"] if computing is not None else linear.weight)
        if why is not None:
            unlike.append(why)
        if out.requires_grad:
            out.retain_grad()
        seen["linear_out"] = out

    def watch(module, args, output):
        if _draws_masks(module):
            dropped.append(module)
        z = seen.get("linear_out")
        if z is not None and module is not linear and args and first_tensor(args) is z:
            consumers.append((module, first_tensor(output)))
        out = first_tensor(output)
        dim = known_batch_dim(module, "output", out.dim()) if out is not None else None
        if dim is not None:  # (a time-first LSTM's (T, N, H): which dimension the batch is, even when T == N)
            made[id(out)] = (out, dim)

    handles = [linear.register_forward_hook(keep_linear)]
    if computing is not None:  # (the weight as its parametrizations compute it, in the forward)
        handles.append(computing.register_forward_hook(keep_weight))
    handles += [m.register_forward_hook(watch) for m in twin.modules() if not list(m.children())]
    try:
        with _same_draw(x):
            out = twin(x)
            if unlike:
                raise ValueError(f"{layer!r} ({type(linear).__name__}) is not written out as a Linear: {unlike[0]}, "
                                 "so Σ wᵢaᵢ + b would not be the z it produced")
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.retain_grad()
            loss = loss_fn(out, y)
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    following = consumers[0] if consumers else None
    is_activation = following is not None and not list(following[0].parameters()) \
        and type(following[0]).__name__ not in _NOT_ACTIVATIONS and not isinstance(following[0], _DROPOUTS)
    linear_in = seen["linear_in"]
    producer = made.get(id(linear_in))
    in_dim = producer[1] if producer is not None and producer[0] is linear_in else \
        batch_dim_by_size(tuple(linear_in.shape[:-1]), examples, (0,))
    inputs = linear_in.select(in_dim, example).detach()
    position = 0 if inputs.dim() > 1 else None  # a Linear along a sequence: its first position

    def pick(t: torch.Tensor) -> float:
        """This unit's value in the example's output (or its gradient), at the position shown."""
        row = t.select(in_dim, example).reshape(-1, t.shape[-1])
        return float(row[position or 0, unit])

    a = inputs.reshape(-1, inputs.shape[-1])[position or 0].double().numpy()
    z_tensor = seen["linear_out"]
    delta = pick(z_tensor.grad) if z_tensor.grad is not None else float("nan")
    weight = seen["weight"] if computing is not None else linear.weight
    w = weight.detach()[unit].double().numpy()
    b = float(linear.bias.detach()[unit]) if linear.bias is not None else 0.0
    z = pick(z_tensor.detach())
    output = pick(following[1].detach()) if is_activation else z
    weight_grad = weight.grad
    bias_grad = linear.bias.grad if linear.bias is not None else None
    return NeuronTrace(layer=layer, unit=unit, inputs=a, weights=w, bias=b, z=z,
                       activation=type(following[0]).__name__ if is_activation else None, output=output,
                       delta=delta, weight_grads=delta * a, bias_grad=delta, position=position, example=example,
                       batch_size=examples,
                       batch_weight_grads=None if weight_grad is None else weight_grad[unit].double().numpy(),
                       batch_bias_grad=None if bias_grad is None else float(bias_grad[unit]),
                       reduction=_reduction(loss_fn, out, y, example), dropout=bool(dropped),
                       computed_weight=computing is not None)


def _reduction(loss_fn: Callable, out: object, y: torch.Tensor, example: int) -> str | None:
    """How the loss combines the batch's examples, measured rather than assumed: the gradient of
    the batch loss at one example's outputs against that of the loss of the example alone is 1/B
    for a mean and 1 for a sum. None when it is neither (a weighted loss) or can't be told."""
    if not isinstance(out, torch.Tensor) or out.grad is None or out.dim() == 0:
        return None
    batch = len(out)
    try:
        alone = out.detach()[example:example + 1].clone().requires_grad_()
        with torch.enable_grad():
            torch.autograd.backward(loss_fn(alone, y[example:example + 1]))
    except Exception:  # a loss that can't take a single example: say nothing about it
        return None
    own = alone.grad[0].double() if alone.grad is not None else None
    if own is None or not float(own.abs().max()) > 0:
        return None
    shared = out.grad[example].double()
    for name, factor in (("mean", 1.0 / batch), ("sum", 1.0)):
        if torch.allclose(shared, factor * own, rtol=1e-3, atol=1e-6 * factor * float(own.abs().max())):
            return name
    return None


def check_gradient(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, parameter: str,
                   index: tuple[int, ...], eps: float = 1e-6) -> GradientCheck:
    """Autograd's ∂L/∂θ for one weight θ against (L(θ+ε) − L(θ−ε)) / 2ε, in float64, in the mode the
    model trains in, every forward with the same dropout draw (so it is one function of θ). A
    module's weight that parametrizations compute ("0.weight" under weight_norm) is checked as the
    computed weight, as ``trace_unit`` writes it out."""
    twin = _twin(model).double()
    x = x.double() if x.is_floating_point() else x
    y = y.double() if y.is_floating_point() else y
    owner, _, name = parameter.rpartition(".")
    module = dict(twin.named_modules()).get(owner)
    computing = None if module is None else _computing(module, name)
    if computing is not None:
        return _check_computed(twin, computing, loss_fn, x, y, parameter, tuple(index), eps)
    param = dict(twin.named_parameters())[parameter]
    twin.zero_grad()
    with _same_draw(x):
        loss_fn(twin(x), y).backward()
    analytic = float(param.grad[index])
    with torch.no_grad():
        original = float(param[index])
        param[index] = original + eps
        with _same_draw(x):
            plus = float(loss_fn(twin(x), y))
        param[index] = original - eps
        with _same_draw(x):
            minus = float(loss_fn(twin(x), y))
        param[index] = original
    return GradientCheck(parameter=parameter, index=tuple(index), autograd=analytic,
                         numeric=(plus - minus) / (2 * eps))


def _check_computed(twin: nn.Module, computing: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                    parameter: str, index: tuple[int, ...], eps: float) -> GradientCheck:
    """``check_gradient`` of one entry of a weight that parametrizations compute (``computing``,
    its ``ParametrizationList``): autograd's ∂L/∂W at the computed weight against the central
    difference of the loss with that entry of the computed weight moved by ±ε."""
    shift: list[torch.Tensor] = []  # the move of the computed weight, if any
    kept: list[torch.Tensor] = []

    def hook(_module, _args, weight):
        if shift:
            return weight + shift[0]
        if weight.requires_grad:
            weight.retain_grad()
        kept.append(weight)
        return None

    handle = computing.register_forward_hook(hook)
    try:
        twin.zero_grad()
        with _same_draw(x):
            loss_fn(twin(x), y).backward()
        grad = kept[-1].grad if kept else None
        if grad is None:
            raise ValueError(f"{parameter} gets no gradient")
        analytic = float(grad[index])
        with torch.no_grad():
            losses = []
            for sign in (1.0, -1.0):
                move = torch.zeros_like(kept[-1])
                move[index] = sign * eps
                shift[:] = [move]
                with _same_draw(x):
                    losses.append(float(loss_fn(twin(x), y)))
    finally:
        handle.remove()
    return GradientCheck(parameter=parameter, index=index, autograd=analytic,
                         numeric=(losses[0] - losses[1]) / (2 * eps))
