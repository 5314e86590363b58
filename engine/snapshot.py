"""Immutable values that cross from the training thread to whoever watches it.

Everything here is plain Python or numpy: no torch tensors, so a consumer (the Qt app, a test,
a script) never touches the device and never races the training loop. Heavy tensors are reduced
to display size in the engine before they land here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

__all__ = [
    "STAT_NAMES",
    "SAVED_RUN_ID",
    "LayerInfo",
    "StatsFrame",
    "TensorViews",
    "NetworkView",
    "BoundaryView",
    "PhaseInfo",
    "Metrics",
    "Hyper",
    "Snapshot",
    "ErrorEvent",
    "SeriesData",
    "ViewData",
]

# Columns of StatsFrame.values, one row per layer. NaN where a statistic does not apply
# (e.g. gradient statistics of a ReLU, which owns no parameters).
STAT_NAMES: tuple[str, ...] = (
    # L2 norm of the parameters the module owns directly (a parametrized layer's: of its computed
    # weight and its other direct parameters; its gradient figures are of every parameter it has,
    # its parametrizations' originals too: see ``engine.probe``)
    "weight_norm",
    "weight_mean",
    "weight_std",
    "grad_norm",  # L2 norm of their gradients as backward left them (before clipping)
    "grad_mean",
    "grad_std",
    "update_ratio",  # ||w_after - w_before|| / ||w_before||
    "act_mean",  # statistics of the module's output over the whole batch
    "act_std",
    "act_min",
    "act_max",
    "dead_fraction",  # ReLU family: units zero for every example of the batch
    "saturated_fraction",  # sigmoid/tanh: outputs within 1 % of their bounds
    "grad_output_norm",  # ||dL/d(output)||, the error signal arriving at the module
    "nan_weights",
    "inf_weights",
    "nan_grads",
    "inf_grads",
    "nan_acts",
    "inf_acts",
)
STAT_INDEX: dict[str, int] = {name: i for i, name in enumerate(STAT_NAMES)}

LayerRole = Literal["param", "activation", "attention"]


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One measured layer: a module named as ``model.named_modules()`` names it."""

    index: int
    name: str
    type_name: str
    role: LayerRole
    params: int  # number of parameters owned directly (recurse=False), a parametrized one's originals too
    weight_shape: tuple[int, ...] | None = None
    activation: str | None = None  # 'relu', 'sigmoid', ... for activation modules
    called: bool = True  # False for modules that own parameters but are never called
    # False when every parameter it owns directly has requires_grad=False (a frozen layer): it gets
    # no gradient and no update. True for a layer owning none (there is nothing to freeze).
    trainable: bool = True
    # A partly frozen layer's frozen parameters, by name ("weight" with its bias still trained): its
    # gradient norm and update are the rest's alone. Empty for a layer frozen whole or not at all.
    frozen_params: tuple[str, ...] = ()
    # The torch class it is an instance of (``engine.probe.module_kind``): "Linear" for a subclass
    # MaskedLinear(nn.Linear) and for weight_norm's ParametrizedLinear, whose ``type_name`` says
    # what it is. Empty where unknown (a run saved before this was recorded): read ``type_name``.
    kind: str = ""


@dataclass(frozen=True, slots=True)
class StatsFrame:
    """Per-layer statistics of one captured step."""

    step: int
    loss: float
    layer_names: tuple[str, ...]
    values: np.ndarray  # (n_layers, len(STAT_NAMES)) float64
    histograms: np.ndarray  # (n_layers, bins) float32, fraction of outputs per bin
    hist_edges: np.ndarray  # (bins + 1,) float32, the default range's edges
    # (n_layers, 2): each row's own [lo, hi] (sigmoid rows span [0, 1], tanh [-1, 1]); None means
    # every row uses hist_edges.
    hist_ranges: np.ndarray | None = None

    def stat(self, name: str) -> np.ndarray:
        """One statistic for every layer, shape (n_layers,)."""
        return self.values[:, STAT_INDEX[name]]


@dataclass(frozen=True, slots=True)
class TensorViews:
    """Display-sized tensors of the focused layer and example, captured on request."""

    step: int
    layer: str
    example: int
    weight: np.ndarray | None = None  # 2-D view of the weight tensor
    weight_grad: np.ndarray | None = None
    weight_update: np.ndarray | None = None  # w_after - w_before of the last update
    activation: np.ndarray | None = None  # the example's output, 1-D or 2-D
    output_grad: np.ndarray | None = None  # dL/d(output) for the example, same shape
    feature_maps: np.ndarray | None = None  # (channels, H, W) for conv layers
    kernels: np.ndarray | None = None  # (n, kh, kw) conv kernels
    attention: np.ndarray | None = None  # (heads, T, T)
    tokens: tuple[str, ...] | None = None  # labels for attention axes
    # Feature maps/kernels and attention come from the focused layer when it is a conv or
    # attention layer, otherwise from the model's first such layer; these name the source.
    feature_layer: str | None = None
    attention_layer: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkView:
    """Columns of units for the network graph: input, then each layer with parameters."""

    step: int
    column_names: tuple[str, ...]
    column_sizes: tuple[int, ...]
    activations: tuple[np.ndarray | None, ...]  # per column, per unit (None when collapsed)
    gradients: tuple[np.ndarray | None, ...]  # dL/d(unit) per column (None when unknown)
    weights: tuple[np.ndarray | None, ...]  # between column i and i+1: (out, in) or None
    # Per pair of neighbouring columns (i, i+1): whether column i feeds column i+1 in the forward
    # pass as traced, so the pair may be joined (by edges or a band); False draws no link at all.
    # Empty when nobody traced it (every pair is joined).
    connected: tuple[bool, ...] = ()
    note: str = ""  # one line naming the links the columns can't show (a second head's, a skip's)


@dataclass(frozen=True, slots=True)
class BoundaryView:
    """The model's prediction over the 2-D input plane."""

    step: int
    extent: tuple[float, float, float, float]  # x0, x1, y0, y1
    prediction: np.ndarray  # (H, W) in [0, 1] (binary prob) or class index (multi-class)
    n_classes: int
    points: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,)
    hidden: np.ndarray | None = None  # (units, h, w) first hidden layer's responses
    hidden_layer: str | None = None
    hidden_units: int = 0  # units the layer has (``hidden`` shows at most 16 of them)


@dataclass(frozen=True, slots=True)
class PhaseInfo:
    """Where a phase-by-phase step stands, with the tensors of that very moment."""

    index: int
    total: int
    kind: Literal["forward", "loss", "backward", "update"]
    module: str | None
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # the labels of every phase of this step, for a timeline
    # What a reader needs to make sense of the tensors: input/output/grad_output* are one example's
    # slice (``example`` of a batch of ``batch_size``); parameters and their gradients are the
    # whole batch's. None where unknown.
    example: int | None = None
    batch_size: int | None = None
    module_type: str | None = None  # "Linear", "LSTM", ... of ``module``
    # Per tensor, what the rows and the columns of the drawn matrix are ("tokens", "features");
    # a row name of "" for a single row. Only where it is known.
    axes: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # Per parameter tensor, its real shape where the drawn matrix is a reshaping of it (a conv
    # kernel (8, 1, 3, 3) drawn as 8 x 9).
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # The update phase's: the optimizer and its learning rate, the clipping norm, the gradients'
    # total L2 norm before clipping, and per module owning parameters (module, ||Δw||, ||w before||),
    # all its parameters together. ``module`` is then the layer whose change ``tensors`` shows.
    # A forward phase's input is a sum the model's code made between modules (a residual
    # connection's x + sublayer(x)), which no phase of its own shows.
    input_is_sum: bool = False
    optimizer: str | None = None
    lr: float | None = None
    clip_norm: float | None = None
    grad_norm: float | None = None
    changes: tuple[tuple[str, float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Metrics:
    train_loss: float
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    val_step: int | None = None


@dataclass(frozen=True, slots=True)
class Hyper:
    """Hyperparameters that can change while training runs."""

    optimizer: Literal["sgd", "momentum", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = None
    batch_size: int = 64
    momentum: float = 0.9


#: The ``run_id`` of a snapshot read back from a run file: it is no live run's, and never changes.
SAVED_RUN_ID = -1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the worker publishes: the newest state of one run."""

    run_id: int
    step: int
    state: Literal["running", "paused", "stepping"]
    scenario: str
    device: str
    layers: tuple[LayerInfo, ...]
    metrics: Metrics
    hyper: Hyper
    stats: StatsFrame | None = None
    tensors: TensorViews | None = None
    network: NetworkView | None = None
    boundary: BoundaryView | None = None
    phase: PhaseInfo | None = None
    steps_per_s: float = 0.0
    probe_overhead: float | None = None  # fractional extra time of captured steps, e.g. 0.12; None until measured
    capture_every: int = 1  # the probe measures one step in this many
    capture_adaptive: bool = False  # the interval follows the measured overhead
    diagnoses: tuple = ()  # engine.diagnostics.Diagnosis findings so far, errors first
    neuron: object | None = None  # engine.neuron.NeuronTrace of the inspected unit
    gradient_check: object | None = None  # engine.neuron.GradientCheck, the latest one asked for


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An exception from user code or the loop, caught in the worker."""

    message: str
    module: str | None = None
    phase: str | None = None
    step: int | None = None
    run_id: int = 0


@dataclass(frozen=True, slots=True)
class SeriesData:
    """One scalar series over the run, possibly decimated: lo/hi bound each point's bucket."""

    steps: np.ndarray  # (n,) float64, step of each point (bucket centre when decimated)
    values: np.ndarray  # (n,) mean over the bucket
    lo: np.ndarray | None = None  # (n,) min over the bucket
    hi: np.ndarray | None = None  # (n,) max over the bucket


@dataclass(frozen=True, slots=True)
class ViewData:
    """Everything a view may draw in one frame; built by the app's bridge on the GUI thread."""

    snapshot: Snapshot
    # Recent captured frames, oldest first, ending with the one shown (bounded, ~256).
    frames: tuple[StatsFrame, ...] = ()
    # Run-long scalar series, decimated: "loss", "val_loss", "train_acc", "val_acc",
    # and per layer "<stat>/<layer name>" for stat in STAT_NAMES.
    series: Mapping[str, SeriesData] = field(default_factory=dict)
    selected_layer: str | None = None
    selected_unit: int | None = None
    viewed_step: int | None = None  # the earlier step on screen while scrubbing (None: live)
