"""Diagnostics: recognise the classic training pathologies from the probe's measurements.

Feed every captured :class:`~engine.snapshot.StatsFrame` to :meth:`Diagnostics.update`, in step
order. Each check looks at per-layer statistics (see ``engine.probe`` for how they are measured)
and keeps a little state across frames, so that a condition must *persist* before it is reported
and a single noisy batch never raises an alarm. A finding records the step its condition began,
the layers it concerns, the numbers behind it and concrete fixes; once raised it stays in
``findings`` (its ``last_step`` moves on while the condition still holds), so a report lists
everything that went wrong during a run. Windows count *captured frames*, not steps.

Checks and thresholds (the defaults of :class:`Thresholds`). Calibration runs were built with
``engine.scenarios.build_run`` on CPU, capturing every step, seed 0. "Healthy" means
circles-mlp and moons-mlp (ReLU, He, 400 steps), spirals-mlp (tanh, Xavier, 400), xor-mlp,
blobs-mlp, regression-mlp (200), shapes-mlp, shapes-cnn (BatchNorm), reverse-transformer
(pre-norm; 150 each), long-range-rnn and -lstm (100).

- ``vanishing_gradients`` (warning): among trainable layers owning parameters (a frozen one, all
  its parameters' ``requires_grad`` False, is left out of this and of the gradient and learning-rate
  checks below: it gets no gradient by choice), in forward order, the first layer's gradient norm
  is below ``vanishing_ratio`` = 1e-4 of the last layer's, for ``confirm`` = 3 frames in a row.
  Healthy runs: log10(first/last) never below -1.7 (the transformer's embedding; MLPs >= -1.0).
  A 10-layer sigmoid MLP: -7 to -9.6 (default init), -10 to -18 (``init='normal'``), from step 1.
  Alternatively the first layer's update ratio stays below ``vanishing_update`` = 1e-7 for
  ``window`` frames while some layer still moves by >= 1e-4 (healthy minimum 5.9e-6, again the
  embedding).
- ``exploding_gradients`` (error), any of, for ``confirm`` frames in a row:
  activations' std growing by ``activation_growth`` = 1e3 from the first layer to a deeper one
  (healthy max x25, shapes-cnn; a 50-layer ReLU stack with He init x2: x1e11 at step 1);
  a layer's gradient norm over ``grad_to_weight`` = 1e3 times its weight norm (healthy max 2.5,
  regression-mlp; that stack: 2e12); the first layer's gradient norm over
  ``exploding_ratio`` = 1e3 times the last's (healthy max x9, circles); or a gradient norm jumping
  ``grad_jump`` = 1e4 times above its median over the previous ``window`` frames while it is at
  least ``jump_floor`` = 10 times its weights (healthy max jump x11.5). Activation growth or a
  gradient-to-weight ratio of ``extreme_growth`` = 1e9 is reported from its first frame: that
  stack overflows to NaN on its second step, so there is no third frame to wait for.
- ``dead_units`` (warning; error when a whole layer is dead): a ReLU-family layer's dead fraction
  >= ``dead_fraction`` = 0.9 in every one of ``window`` = 10 frames. Healthy max 0.56 (the
  shapes-cnn hidden ReLU; the deep He-init stack 0.66); zeros init, a very negative bias or a
  blown-up ReLU net: 0.94 to 1.0.
- ``saturation`` (warning): a sigmoid/tanh layer's saturated fraction (outputs within 1 % of a
  bound) >= ``saturated_fraction`` = 0.5 in every one of ``window`` frames. Healthy max 0.27
  (spirals and xor, tanh); a sigmoid MLP with ``init_scale=30``: 0.84; tanh x10: 0.87.
- ``nan_inf`` (error, at once): the first layer in forward order whose weights (written by the
  previous update) or activations (forward) are non-finite; otherwise, if the loss is not finite,
  the loss (no layer); otherwise the layer closest to the output whose gradients are (backward,
  where autograd starts). Healthy: never.
- ``diverging_loss`` (error): a non-finite loss at once, or a loss above ``loss_growth`` = 10 times
  its starting value (the lowest of the first 3 captured losses; the first is measured before any
  update) for ``confirm`` frames. Healthy max 1.23 times the start (spirals); SGD lr 100 on xor:
  x45 from step 2, up to x235; SGD lr 50 on circles: x1e13.
- ``learning_rate`` (warning): a layer's median update ratio ||dw||/||w|| over ``window`` frames
  above ``update_high`` = 0.1 (too large), or every layer's below ``update_low`` = 1e-6 (too
  small; not reported once the run has diverged, blown up or gone non-finite, since huge weights
  also move little relative to their size). The rule of thumb is ~1e-3; healthy window medians
  stay below 0.07 (single steps reach 0.12 on xor's first Adam steps, hence the median), SGD lr
  1e-6: 3e-7 at most.
- ``symmetry`` (error): a weight layer (2-D or larger weight) with more than one output unit whose
  parameters are all equal, std <= ``symmetry_rel_std`` = 1e-3 x |mean| (+1e-12; float32 moments
  of a constant tensor read ~2e-4 x |mean|, healthy layers read >> 1), for ``symmetry_frames`` = 5
  frames including at least one after an update: its units compute the same function and get the
  same gradient, so they can never differ. Limitation: the frame holds per-layer moments only, so
  identical rows with a *different* bias value (constant init with biases) can't be told apart
  from healthy weights; zeros init, and constant init without biases, are caught.
- ``model_warning`` (warning, before training): a warning that a user's model or loss raised on
  its first batch (``Run.model_warnings``), such as torch's "target size ... different to the
  input size" from a loss that broadcasts its target: the run trains without an error, on the
  wrong quantity.
- ``probabilities_to_logit_loss`` (warning, before training): a user's model whose outputs on the
  first batch are already probabilities, fed to a loss that makes probabilities itself
  (``engine.user_model.check_user_model``). Softmax outputs are told by their values: every row
  (along the last dimension, or dimension 1) non-negative and summing to 1 within
  ``probability_sum_tolerance`` = 1e-4 (float32 softmax rows of 2 to 1000 classes sum to 1 within
  1e-6; raw logits essentially never do). Sigmoid outputs, all in [0, 1], can't be told from small
  positive logits by value, so the output's last operation (through reshapes) must also be a
  sigmoid, read from the autograd graph of a second forward. The loss counts as cross-entropy on
  logits when it is an ``nn.CrossEntropyLoss`` or ``nn.BCEWithLogitsLoss`` (whatever its options),
  the functional ``F.cross_entropy`` or ``F.binary_cross_entropy_with_logits`` (or a partial of
  one), or, for any other callable (a lambda or function wrapping one, whose type says nothing),
  when its value on the first batch equals one of those functionals' (mean or sum, within 1e-5).
  log_softmax with NLLLoss reads negative values and another loss; positive logits don't sum to 1
  per row and come out of no sigmoid. Softmax twice squeezes a row's probabilities towards
  uniform (a 2-class softmax output into cross-entropy can reach no loss below 0.31), so the
  gradients are small and training crawls.
- ``input_scale`` (warning, before training): the inputs' features are far from unit scale,
  measured on the tensor form's X (its first 100,000 examples) or the loader's first batch:
  per feature (a column of 2-D inputs; the last axis of 3-D, sequence inputs; the channel, axis
  1, of images) the standard deviation over everything else. Either the largest std is above
  ``input_std_high`` = 50, or the largest over the smallest (features with a spread, a constant
  one is left out) is above ``input_std_ratio`` = 1e3. The built-in data sets read a largest std
  of 1.2 (blobs-mlp) and a ratio of 1.8 (moons; 2.0 in their first 64 examples); pixel values
  of 0-255 spread by 62 to 79 per channel (MNIST's and CIFAR-10's usual normalisation constants
  times 255; uniform noise 74), so a limit of 100 would miss them all. A feature with a spread
  whose mean is farther than ``input_mean_high`` = 50 from zero (a year, 2000 ± 10) is found too:
  its weights act as large biases. Integer inputs (token ids for an Embedding) are not features
  and are skipped. The feature axis is the channel axis (1) when a convolution or a BatchNorm
  takes the input as it is, the last axis when a Linear, a recurrent layer, attention or a
  LayerNorm does; when a function reshapes the input first, 3-D inputs are taken as (N, T,
  features) and images' channels as axis 1.
- ``overfitting`` (warning): with validation (``update_validation``), the validation loss above
  its lowest by ``overfit_rise`` = 50 % (and by at least ``overfit_floor`` = 5 % of the larger of
  the first pass's validation and training losses, so that a near-zero loss that creeps up is
  no finding) while the training loss has fallen by ``overfit_train_drop`` = 50 % since that
  lowest pass, for ``overfit_confirm`` = 5 validation passes in a row. The training loss is the
  mean over the steps since the previous pass. Measured through ``glassbox report`` (a pass every
  10 steps, seeds 0 to 7): overfit-mlp's validation loss is lowest at step 10 or 20, the finding
  starts 40 to 70 steps later and is confirmed by step 130; overfit-dropout's starts between steps
  290 and 870; overfit-weight-decay's never comes in 1000 steps (its validation loss stays within
  1.24 times its lowest). The examples and the lessons' cures (19 scenarios, seeds 0 to 2, 500
  steps) are never found overfitting: at most 2 passes in a row meet both conditions, in
  lr-clipped, whose validation loss swings up to 10x between passes at SGD lr 10 (still 2 over
  1500 steps, 8 seeds).
  Its swings decided the training-loss condition: with a 30 % drop instead of 50 %, lr-clipped
  met both 5 passes in a row on 2 seeds of 8 within 1500 steps; with a 30 % rise and a 10 % drop,
  within 500.
- ``no_gradient`` (warning): trainable layers that run in the forward pass but whose parameters
  get no gradient at all (none, not a NaN one: that is ``nan_inf``'s) while other layers' do, in
  every one of ``window`` frames: an auxiliary head whose loss was left out of the total, a branch
  whose result is unused or detached. Frozen layers are left out, as above. All 30 built-in
  scenarios (60 steps, seed 0): never; a layer only some steps use (a mixture of experts) would
  need every one of 10 frames without it.

Severities: ``error`` means training is broken, ``warning`` that it is badly hampered, ``info``
is reserved for notes. Imports no Qt.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from engine.snapshot import STAT_INDEX, LayerInfo, StatsFrame

__all__ = ["CODES", "Diagnosis", "Thresholds", "Diagnostics", "diagnose_frames", "before_training"]

CODES: tuple[str, ...] = (
    "vanishing_gradients", "exploding_gradients", "dead_units", "saturation", "nan_inf",
    "diverging_loss", "learning_rate", "symmetry", "model_warning", "probabilities_to_logit_loss",
    "input_scale", "overfitting", "no_gradient",
)
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_RELU_FAMILY = {"relu", "relu6", "leakyrelu", "leaky_relu", "prelu"}
_SATURATING = {"sigmoid", "tanh", "hardtanh", "hardsigmoid"}
_NONFINITE = ("nan_weights", "inf_weights", "nan_acts", "inf_acts", "nan_grads", "inf_grads")


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One recognised problem.

    Attributes:
        code: one of ``CODES``.
        severity: 'info', 'warning' or 'error'.
        layers: the layers concerned, in forward order (empty for the loss).
        step: the step at which the condition began.
        message: what is wrong, in plain words.
        evidence: the numbers behind it.
        fixes: concrete things to try.
        last_step: the latest step at which the condition still held.
    """

    code: str
    severity: str
    layers: tuple[str, ...]
    step: int
    message: str
    evidence: dict[str, float]
    fixes: tuple[str, ...]
    last_step: int = 0

    def to_json(self) -> dict:
        return {
            "code": self.code, "severity": self.severity, "layers": list(self.layers),
            "step": self.step, "last_step": self.last_step, "message": self.message,
            "evidence": {k: (float(v) if math.isfinite(v) else None) for k, v in self.evidence.items()},
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When each check fires; the module docstring gives the calibration behind each value."""

    confirm: int = 3  # frames in a row for fast conditions (gradient flow, loss)
    window: int = 10  # frames for sustained conditions (dead, saturated, update ratio)
    vanishing_ratio: float = 1e-4
    vanishing_update: float = 1e-7
    exploding_ratio: float = 1e3
    activation_growth: float = 1e3
    grad_to_weight: float = 1e3
    extreme_growth: float = 1e9  # growth (activations) or gradient/weight ratio reported at once
    grad_jump: float = 1e4
    jump_floor: float = 10.0
    dead_fraction: float = 0.9
    saturated_fraction: float = 0.5
    loss_growth: float = 10.0
    update_high: float = 1e-1
    update_low: float = 1e-6
    symmetry_rel_std: float = 1e-3
    symmetry_frames: int = 5
    # before training, on the first batch (``engine.user_model.check_user_model``)
    probability_sum_tolerance: float = 1e-4  # |row sum - 1| of softmax outputs
    input_std_high: float = 50.0
    input_std_ratio: float = 1e3
    input_mean_high: float = 50.0  # |mean| of a feature with a spread
    # validation passes (``Diagnostics.update_validation``), counted in passes, not frames
    overfit_rise: float = 0.5  # validation loss above its lowest by this fraction of it
    overfit_floor: float = 0.05  # ... and by this fraction of the first pass's losses
    overfit_train_drop: float = 0.5  # training loss below (1 - this) of its value at the lowest
    overfit_confirm: int = 5


#: The fix that clipping is; a run that already clips is told so instead (``Diagnostics.clip_norm``).
_CLIP = "Clip the gradient norm (e.g. clip_norm 1.0)."


def _clipping_on(clip_norm: float) -> str:
    return (f"Clipping is already on (clip_norm {clip_norm:g}): it caps each update's size, not the cause; "
            "a smaller clip_norm caps it further.")


_FIXES = {
    "vanishing_gradients": (
        "Initialise weights to match the activation: He for ReLU-like units, Xavier/Glorot for tanh.",
        "Use a non-saturating activation (ReLU, leaky ReLU, GELU) instead of sigmoid or tanh.",
        "Add normalisation (BatchNorm or LayerNorm) between layers.",
        "Add residual connections so the gradient has a short path to the early layers.",
        "Make the network shallower.",
    ),
    "exploding_gradients": (
        "Scale the initial weights down: He init at scale 1 for ReLU, Xavier for tanh.",
        "Add normalisation (BatchNorm or LayerNorm) to keep activations at unit scale.",
        _CLIP,
        "Lower the learning rate.",
        "Add residual connections with normalisation, or make the network shallower.",
    ),
    "dead_units": (
        "Lower the learning rate; a large step can push biases so negative that units never fire again.",
        "Use leaky ReLU or GELU, which still pass a gradient for negative inputs.",
        "Use He initialisation with zero (or slightly positive) biases.",
        "Add normalisation before the activation.",
    ),
    "saturation": (
        "Shrink the initial weights: Xavier/Glorot init for sigmoid and tanh.",
        "Normalise the inputs and add BatchNorm or LayerNorm before the activation.",
        "Prefer ReLU-like activations in hidden layers; keep sigmoid for outputs.",
        "Lower the learning rate if the pre-activations grew during training.",
    ),
    "nan_inf": (
        "Lower the learning rate.",
        _CLIP,
        "Look for log(0), division by zero or sqrt of a negative number in the model or the loss; "
        "use numerically stable forms (e.g. cross-entropy on logits).",
        "Normalise the inputs and check the data for NaN or infinite values.",
    ),
    "diverging_loss": (
        "Lower the learning rate, by 10x at a time.",
        _CLIP,
        "Use an adaptive optimizer such as Adam, or add a learning-rate warm-up.",
    ),
    "learning_rate_high": (
        "Lower the learning rate until weights change by about 1e-3 of their size per step.",
        "Use learning-rate warm-up or a decaying schedule.",
        _CLIP,
    ),
    "learning_rate_low": (
        "Raise the learning rate until weights change by about 1e-3 of their size per step.",
        "Use an adaptive optimizer such as Adam.",
    ),
    "symmetry": (
        "Initialise weights randomly (He for ReLU, Xavier for tanh/sigmoid); zeros or a constant "
        "make every unit of a layer compute the same thing.",
        "Biases may start at zero, but weights may not.",
    ),
    "model_warning": (
        "Read the warning: PyTorch raises it where a computation is legal but probably not what was meant.",
    ),
    "probabilities_to_logit_loss": (
        "Return raw scores (logits) from the model: drop its final softmax or sigmoid. CrossEntropyLoss and "
        "BCEWithLogitsLoss apply it themselves, in a numerically stable way.",
        "Turn outputs into probabilities only where you need to read them (predictions, metrics), "
        "outside the loss.",
        "If the model must output probabilities, give the loss what it expects instead: log_softmax with "
        "NLLLoss, or sigmoid with BCELoss (less stable for confident predictions).",
    ),
    "input_scale": (
        "Standardise each input feature: subtract its mean and divide by its standard deviation, both "
        "computed on the training data (e.g. scikit-learn's StandardScaler).",
        "Divide 0-255 pixel values by 255, then optionally normalise each channel by its mean and std.",
        "Apply the same training-set mean and std to validation and test data.",
        "Or let the model do it: a BatchNorm1d or LayerNorm as its first layer.",
    ),
    "overfitting": (
        "Stop early: keep the weights from where the validation loss was lowest.",
        "Regularise: weight decay (try 1e-4 to 1e-2) or dropout between the hidden layers.",
        "Get more training examples, or augment them (noise, flips, crops) so they can't be memorised.",
        "Use a smaller model: fewer or narrower layers.",
    ),
    "no_gradient": (
        "Add the loss of this part's output to the total (loss = main_loss + weight * aux_loss) if it should learn.",
        "Look for .detach(), torch.no_grad() or a step with no gradient (argmax, round, .item()) between "
        "it and the loss.",
        "Freeze it on purpose (requires_grad_(False)) or remove it if it isn't needed.",
    ),
    "broadcast_target": (
        "Give the loss an output and a target of the same shape: reshape the target (y.view(-1, 1)) "
        "or the output (output.squeeze(1)).",
        "A (N, 1) output against (N,) targets is broadcast to (N, N): the loss compares every "
        "prediction with every target, and the model learns to predict their mean.",
    ),
}


class _Streak:
    """How many frames in a row a condition has held, and the step it began."""

    __slots__ = ("count", "start")

    def __init__(self) -> None:
        self.count = 0
        self.start = 0

    def see(self, holds: bool, step: int) -> int:
        if holds:
            if self.count == 0:
                self.start = step
            self.count += 1
        else:
            self.count = 0
        return self.count


def before_training(code: str, message: str, evidence: dict[str, float]) -> Diagnosis:
    """A warning found on the first batch, before any step (``code`` has its fixes in ``_FIXES``)."""
    return Diagnosis(code=code, severity="warning", layers=(), step=0, message=message,
                     evidence={k: float(v) for k, v in evidence.items()}, fixes=_FIXES[code])


def _col(frame: StatsFrame, name: str) -> np.ndarray:
    return frame.values[:, STAT_INDEX[name]]


def _fmt(value: float) -> str:
    return f"{value:.2g}"


class Diagnostics:
    """Watches a run frame by frame and keeps what it recognised.

    Args:
        layers: the probe's layers (``trainer.probe.layers``), for their roles and activations.
        thresholds: when each check fires.
        model_warnings: what a user's model warned of on its first batch, found from the start.
        model_findings: what checking a user's model on its first batch found (``before_training``
            findings, ``Run.model_findings``), found from the start.

    Validation results come through :meth:`update_validation`, for the overfitting check.
    ``clip_norm`` is the run's gradient clipping as it is now (None: off); set it as it changes, so a
    run that already clips is not told to clip.
    """

    def __init__(self, layers: Iterable[LayerInfo], thresholds: Thresholds = Thresholds(),
                 model_warnings: Iterable[str] = (), model_findings: Iterable[Diagnosis] = ()) -> None:
        self.layers = tuple(layers)
        self.thresholds = thresholds
        self.clip_norm: float | None = None
        self._info = {layer.name: layer for layer in self.layers}
        self._found: dict[str, Diagnosis] = {}
        for number, text in enumerate(model_warnings):
            broadcast = "target size" in text and "different to the input size" in text
            self._found[f"model_warning/{number}"] = Diagnosis(
                code="model_warning", severity="warning", layers=(), step=0,
                message=f"PyTorch warned while running your model on its first batch: {text}",
                evidence={}, fixes=_FIXES["broadcast_target" if broadcast else "model_warning"])
        for finding in model_findings:
            self._found.setdefault(finding.code, finding)
        self._streaks: dict[str, _Streak] = {}
        self._updates: deque[np.ndarray] = deque(maxlen=thresholds.window)
        self._steps: deque[int] = deque(maxlen=thresholds.window)
        self._grads: deque[np.ndarray] = deque(maxlen=thresholds.window)
        self._losses: list[float] = []
        self._frames = 0
        self._names: tuple[str, ...] | None = None
        # Validation: the last pass taken, the lowest (step, validation loss, training loss), the
        # scale of the first pass, and the frames' training losses since the last pass (summed:
        # a run without validation must not keep them all).
        self._val_step = -1
        self._val_best: tuple[int, float, float] | None = None
        self._val_scale: float | None = None
        self._train_sum = 0.0
        self._train_count = 0
        self._train_last = math.nan
        # no_gradient: per layer, the frames in a row it had no gradient and the step they began.
        self._gradless: dict[str, tuple[int, int]] = {}

    # --- public ------------------------------------------------------------------------
    @property
    def findings(self) -> tuple[Diagnosis, ...]:
        """Everything found so far, errors first, then by the step it began."""
        found = sorted(self._found.values(), key=lambda d: (_SEVERITY_ORDER.get(d.severity, 3), d.step, d.code))
        if self.clip_norm is not None:
            instead = _clipping_on(self.clip_norm)
            found = [replace(d, fixes=tuple(instead if fix == _CLIP else fix for fix in d.fixes))
                     if _CLIP in d.fixes else d for d in found]
        return tuple(found)

    def update(self, frame: StatsFrame) -> list[Diagnosis]:
        """Take one captured frame (in step order) and return the findings so far."""
        if frame.layer_names != self._names:
            # A new layer order (the probe fixes it after the first forward): windows restart.
            self._names = frame.layer_names
            self._updates.clear()
            self._steps.clear()
            self._grads.clear()
        self._frames += 1
        self._check_nonfinite(frame)
        self._check_loss(frame)
        self._check_gradient_flow(frame)
        self._check_exploding(frame)
        self._check_units(frame, "dead_fraction", "dead_units", _RELU_FAMILY, self.thresholds.dead_fraction)
        self._check_units(frame, "saturated_fraction", "saturation", _SATURATING,
                          self.thresholds.saturated_fraction)
        self._check_learning_rate(frame)
        self._check_symmetry(frame)
        self._check_no_gradient(frame)
        if math.isfinite(frame.loss):
            self._train_sum += frame.loss
            self._train_count += 1
            self._train_last = frame.loss
        self._updates.append(_col(frame, "update_ratio").copy())
        self._steps.append(frame.step)
        self._grads.append(_col(frame, "grad_norm").copy())
        return list(self.findings)

    def update_validation(self, step: int, val_loss: float, train_loss: float | None = None) -> list[Diagnosis]:
        """Take one validation pass (in step order) and return the findings so far.

        Args:
            step: the step after which validation ran; a pass at or before the last one taken is
                ignored, so a caller may hand the same pass again.
            val_loss: the loss on the held-out examples.
            train_loss: the training loss to set against it, best the mean over the steps since
                the previous pass; None: the mean loss of the frames given to :meth:`update`
                since then (the latest frame's if none came).
        """
        if step <= self._val_step:
            return list(self.findings)
        self._val_step = step
        if train_loss is None:
            train_loss = self._train_sum / self._train_count if self._train_count else self._train_last
        self._train_sum, self._train_count = 0.0, 0
        self._check_overfitting(step, float(val_loss), float(train_loss))
        return list(self.findings)

    # --- helpers -------------------------------------------------------------------------
    def _streak(self, key: str) -> _Streak:
        streak = self._streaks.get(key)
        if streak is None:
            streak = self._streaks[key] = _Streak()
        return streak

    def _raise(self, key: str, code: str, severity: str, layers: Iterable[str], start: int, now: int,
               message: str, evidence: dict[str, float], fixes: tuple[str, ...]) -> None:
        known = self._found.get(key)
        if known is not None:
            if _SEVERITY_ORDER[severity] < _SEVERITY_ORDER[known.severity]:  # worse (a layer now wholly dead)
                self._found[key] = replace(known, severity=severity, message=message, fixes=fixes, last_step=now,
                                           evidence={**known.evidence, **{k: float(v) for k, v in evidence.items()}})
            else:
                self._found[key] = replace(known, last_step=now)
            return
        self._found[key] = Diagnosis(code=code, severity=severity, layers=tuple(layers), step=start,
                                     message=message, evidence={k: float(v) for k, v in evidence.items()},
                                     fixes=fixes, last_step=now)

    def _param_rows(self, frame: StatsFrame) -> list[int]:
        """Rows of layers owning parameters that took part in the step, in forward order.

        A frozen layer (``trainable`` False) is left out: it gets no gradient and no update by the
        user's choice, which is no finding, and its zero update would otherwise be named among
        stalled layers, or stand first in the order and hide the trainable layers' own stall. So is
        a partly frozen one (``frozen_params``, a bias trained beside a frozen weight): its gradient
        norm and update ratio are its trained parameters' alone, no measure of the layer's.
        """
        rows = []
        for i, name in enumerate(frame.layer_names):
            info = self._info.get(name)
            if info is not None and (info.params <= 0 or not info.called or not info.trainable or info.frozen_params):
                continue
            if np.isfinite(frame.values[i, STAT_INDEX["weight_norm"]]):
                rows.append(i)
        return rows

    def _kind(self, name: str) -> str:
        info = self._info.get(name)
        if info is None:
            return ""
        return (info.activation or info.type_name or "").lower()

    # --- checks --------------------------------------------------------------------------
    def _check_nonfinite(self, frame: StatsFrame) -> None:
        if "nan_inf" in self._found:
            if self._any_nonfinite(frame):
                self._raise("nan_inf", "nan_inf", "error", (), frame.step, frame.step, "", {}, ())
            return
        counts = {name: np.nan_to_num(_col(frame, name), nan=0.0) for name in _NONFINITE}
        names = frame.layer_names
        weights = counts["nan_weights"] + counts["inf_weights"]
        acts = counts["nan_acts"] + counts["inf_acts"]
        grads = counts["nan_grads"] + counts["inf_grads"]
        where = origin = None
        for i in range(len(names)):
            if weights[i] > 0:
                where, origin = i, "weights"
                break
            if acts[i] > 0:
                where, origin = i, "forward"
                break
        if where is None and not math.isfinite(frame.loss):
            # Every measured output is finite, so the loss itself made the NaN (and every gradient
            # from it): naming the last layer's gradients "the backward" would send the user there.
            kind = "NaN" if frame.loss != frame.loss else "infinite"
            after = ", and the gradients computed from it are not finite either" if grads.any() else ""
            self._raise("nan_inf", "nan_inf", "error", (), frame.step, frame.step,
                        f"Every layer's output is finite but the loss is {kind} at step {frame.step}: the loss "
                        f"function made it (or a computation in forward after the last measured layer){after}.",
                        {**{key: float(np.sum(counts[key])) for key in _NONFINITE},
                         "forward": 0.0, "backward": 0.0, "loss_fn": 1.0},
                        _FIXES["nan_inf"])
            return
        if where is None:
            bad = np.flatnonzero(grads > 0)
            if len(bad):
                where, origin = int(bad[-1]), "backward"
        if where is None:
            return
        name = names[where]
        text = {
            "weights": f"The weights of {name} hold NaN or infinite values at step {frame.step}: the "
                       "previous update wrote them, so every output from here on is garbage.",
            "forward": f"The first non-finite value appears in the forward pass, in the output of {name} "
                       f"at step {frame.step}; everything computed after it is NaN or infinite too.",
            "backward": f"The forward pass is finite but the gradients turn NaN or infinite in the "
                        f"backward pass, first at {name} (step {frame.step}).",
        }[origin]
        evidence = {f"{key}": float(counts[key][where]) for key in _NONFINITE}
        evidence["forward"] = float(origin == "forward")
        evidence["backward"] = float(origin == "backward")
        evidence["loss_fn"] = 0.0
        self._raise("nan_inf", "nan_inf", "error", (name,), frame.step, frame.step, text, evidence,
                    _FIXES["nan_inf"])

    def _any_nonfinite(self, frame: StatsFrame) -> bool:
        return any(np.nansum(_col(frame, name)) > 0 for name in _NONFINITE)

    def _check_loss(self, frame: StatsFrame) -> None:
        t = self.thresholds
        loss = frame.loss
        if not math.isfinite(loss):
            self._raise("diverging_loss", "diverging_loss", "error", (), frame.step, frame.step,
                        f"The loss became {'NaN' if loss != loss else 'infinite'} at step {frame.step}; "
                        "training cannot recover from here.", {"loss": loss}, _FIXES["diverging_loss"])
            return
        # The best of the first three losses: the first is measured before any update.
        reference = min(self._losses) if self._losses else float("nan")
        grown = bool(self._losses) and reference > 0 and loss > t.loss_growth * reference
        if len(self._losses) < 3:
            self._losses.append(loss)
        streak = self._streak("loss")
        if streak.see(grown, frame.step) >= t.confirm:
            self._raise("diverging_loss", "diverging_loss", "error", (), streak.start, frame.step,
                        f"The loss has grown to {_fmt(loss / reference)} times its starting value "
                        f"({_fmt(reference)} to {_fmt(loss)}): the updates are making the model worse.",
                        {"loss": loss, "start_loss": reference, "growth": loss / reference},
                        _FIXES["diverging_loss"])

    def _check_gradient_flow(self, frame: StatsFrame) -> None:
        t = self.thresholds
        rows = self._param_rows(frame)
        grad = _col(frame, "grad_norm")
        names = frame.layer_names
        usable = [i for i in rows if np.isfinite(grad[i]) and grad[i] > 0]
        vanishing = exploding = False
        if len(usable) >= 2:
            first, last = grad[usable[0]], grad[usable[-1]]
            ratio = first / last
            vanishing = ratio < t.vanishing_ratio
            exploding = ratio > t.exploding_ratio
            streak = self._streak("vanishing")
            if streak.see(vanishing, frame.step) >= t.confirm:
                small = [names[i] for i in usable[:-1] if grad[i] < t.vanishing_ratio * last]
                self._raise("vanishing", "vanishing_gradients", "warning", small, streak.start, frame.step,
                            f"Gradients shrink by {_fmt(1 / ratio)}x on their way back to the input: "
                            f"{names[usable[0]]} gets {_fmt(first)} against {_fmt(last)} at "
                            f"{names[usable[-1]]}, so the early layers barely learn.",
                            {"first_grad_norm": first, "last_grad_norm": last, "ratio": ratio},
                            _FIXES["vanishing_gradients"])
            streak = self._streak("exploding_flow")
            if streak.see(exploding, frame.step) >= t.confirm:
                big = [names[i] for i in usable[:-1] if grad[i] > t.exploding_ratio * last]
                self._raise("exploding", "exploding_gradients", "error", big, streak.start, frame.step,
                            f"Gradients grow by {_fmt(ratio)}x on their way back to the input: "
                            f"{names[usable[0]]} gets {_fmt(first)} against {_fmt(last)} at "
                            f"{names[usable[-1]]}.",
                            {"first_grad_norm": first, "last_grad_norm": last, "ratio": ratio},
                            _FIXES["exploding_gradients"])
        # Early layers that no longer move while later ones still do.
        update = _col(frame, "update_ratio")
        moving = [i for i in rows if np.isfinite(update[i])]
        stalled = False
        if len(moving) >= 2:
            # Exactly zero is no gradient at all (dead units, zero weights): not a vanishing one.
            stalled = 0.0 < update[moving[0]] < t.vanishing_update and np.nanmax(update[moving]) >= 1e-4
        streak = self._streak("vanishing_update")
        if streak.see(stalled, frame.step) >= t.window and "vanishing" not in self._found:
            still = [names[i] for i in moving if update[i] < t.vanishing_update]
            self._raise("vanishing", "vanishing_gradients", "warning", still, streak.start, frame.step,
                        f"{names[moving[0]]} changes by only {_fmt(update[moving[0]])} of its size per "
                        "step while later layers still move: too little gradient reaches it.",
                        {"first_update_ratio": float(update[moving[0]]),
                         "max_update_ratio": float(np.nanmax(update[moving]))},
                        _FIXES["vanishing_gradients"])

    def _check_exploding(self, frame: StatsFrame) -> None:
        t = self.thresholds
        names = frame.layer_names
        holds = False
        layers: list[str] = []
        evidence: dict[str, float] = {}
        message = ""
        extreme = False
        # Activations growing with depth.
        std = _col(frame, "act_std")
        # (NaN compares false; a spread too big for float32, inf, is the worst growth of all.)
        measured = [i for i in range(len(names)) if std[i] > 0]
        first = next((i for i in measured if np.isfinite(std[i])), None)
        if first is not None:
            base = std[first]
            grown = [i for i in measured if i > first and std[i] > t.activation_growth * base]
            if grown:
                holds = True
                peak = max(grown, key=lambda i: std[i])
                layers = [names[i] for i in grown]
                evidence = {"first_act_std": base, "max_act_std": float(std[peak]),
                            "growth": float(std[peak] / base)}
                extreme = evidence["growth"] >= t.extreme_growth
                message = (f"Activations blow up with depth: their spread grows from {_fmt(base)} at "
                           f"{names[first]} to {_fmt(std[peak])} at {names[peak]} "
                           f"({_fmt(std[peak] / base)}x), and the gradients follow.")
        # Gradients far larger than the weights they update, or jumping step over step.
        rows = self._param_rows(frame)
        grad = _col(frame, "grad_norm")
        weight = _col(frame, "weight_norm")
        if not holds:
            size = {i: self._info[names[i]].params if names[i] in self._info else 1 for i in rows}
            over = [i for i in rows if np.isfinite(grad[i]) and weight[i] > 1e-6 * math.sqrt(max(size[i], 1))
                    and grad[i] > t.grad_to_weight * weight[i]]
            if over:
                holds = True
                worst = max(over, key=lambda i: grad[i] / weight[i])
                layers = [names[i] for i in over]
                evidence = {"grad_norm": float(grad[worst]), "weight_norm": float(weight[worst]),
                            "ratio": float(grad[worst] / weight[worst])}
                extreme = evidence["ratio"] >= t.extreme_growth
                message = (f"The gradient of {names[worst]} is {_fmt(grad[worst] / weight[worst])} times "
                           "larger than its weights; one step would wipe out what the layer holds.")
        if not holds and len(self._grads) >= t.window:
            before = _column_nanmedian(np.stack(self._grads))
            jumped = [i for i in rows if np.isfinite(grad[i]) and before[i] > 0
                      and grad[i] > t.grad_jump * before[i] and grad[i] > t.jump_floor * weight[i]]
            if jumped:
                holds = True
                worst = max(jumped, key=lambda i: grad[i] / before[i])
                layers = [names[i] for i in jumped]
                evidence = {"grad_norm": float(grad[worst]), "recent_median": float(before[worst]),
                            "jump": float(grad[worst] / before[worst])}
                message = (f"The gradient of {names[worst]} jumped {_fmt(grad[worst] / before[worst])}x "
                           "above its recent level.")
        streak = self._streak("exploding")
        # Growth by a billion cannot be a noisy batch, and the next frame is often already NaN.
        if streak.see(holds, frame.step) >= t.confirm or extreme:
            self._raise("exploding", "exploding_gradients", "error", layers, streak.start, frame.step,
                        message, evidence, _FIXES["exploding_gradients"])

    def _check_units(self, frame: StatsFrame, stat: str, code: str, kinds: set[str], limit: float) -> None:
        t = self.thresholds
        values = _col(frame, stat)
        names = frame.layer_names
        for i, name in enumerate(names):
            value = values[i]
            kind = self._kind(name)
            applies = np.isfinite(value) and (kind in kinds or name not in self._info)
            streak = self._streak(f"{code}:{name}")
            if streak.see(bool(applies and value >= limit), frame.step) < t.window:
                continue
            key = code
            if code == "dead_units":
                severity = "error" if value >= 0.999 else "warning"
                text = (f"{100 * value:.0f} % of the units of {name} output zero for every example, "
                        "so they pass no gradient and cannot recover by themselves.")
            else:
                severity = "warning"
                text = (f"{100 * value:.0f} % of the outputs of {name} sit at the flat ends of the "
                        "activation, where its slope is nearly zero, so little gradient gets through.")
            known = self._found.get(key)
            if known is not None and name not in known.layers:
                # Another layer joins the finding: keep the earliest start, list layers in order.
                merged = tuple(n for n in names if n in known.layers or n == name)
                self._found[key] = replace(
                    known, layers=merged, last_step=frame.step, step=min(known.step, streak.start),
                    severity="error" if "error" in (known.severity, severity) else known.severity,
                    evidence={**known.evidence, f"{stat}:{name}": float(value)})
                continue
            self._raise(key, code, severity, (name,), streak.start, frame.step, text,
                        {f"{stat}:{name}": float(value)}, _FIXES[code])

    def _check_learning_rate(self, frame: StatsFrame) -> None:
        t = self.thresholds
        if len(self._updates) + 1 < t.window:
            return
        rows = self._param_rows(frame)
        if not rows:
            return
        names = frame.layer_names
        history = np.stack(list(self._updates)[-(t.window - 1):] + [_col(frame, "update_ratio")])
        median = _column_nanmedian(history[:, rows])
        finite = np.isfinite(median)
        start = self._steps[-(t.window - 1)] if t.window > 1 else frame.step
        high = [rows[k] for k in range(len(rows)) if finite[k] and median[k] > t.update_high]
        if high:
            worst = max(high, key=lambda i: median[rows.index(i)])
            value = float(median[rows.index(worst)])
            self._raise("learning_rate_high", "learning_rate", "warning", [names[i] for i in high],
                        start, frame.step,
                        f"Each step changes the weights of {names[worst]} by {_fmt(value)} of their size "
                        "(a healthy step is around 0.001): the learning rate is too large for this layer.",
                        {"median_update_ratio": value, "target": 1e-3}, _FIXES["learning_rate_high"])
        # Weights that blew up also move little relative to their size; that is not a small rate.
        broken = any(code in self._found for code in ("nan_inf", "diverging_loss", "exploding"))
        if finite.any() and np.all(median[finite] < t.update_low) and not broken:
            value = float(np.max(median[finite]))
            self._raise("learning_rate_low", "learning_rate", "warning",
                        [names[rows[k]] for k in range(len(rows)) if finite[k]], start, frame.step,
                        f"No layer changes by more than {_fmt(value)} of its size per step (a healthy "
                        "step is around 0.001): the learning rate is too small to make progress.",
                        {"max_median_update_ratio": value, "target": 1e-3}, _FIXES["learning_rate_low"])

    def _check_overfitting(self, step: int, val_loss: float, train_loss: float) -> None:
        t = self.thresholds
        streak = self._streak("overfitting")
        if not (math.isfinite(val_loss) and math.isfinite(train_loss)):
            streak.see(False, step)  # (a diverged run is diagnosed as such)
            return
        if self._val_scale is None:
            self._val_scale = max(val_loss, train_loss)
        best = self._val_best
        if best is None or val_loss < best[1]:
            self._val_best = (step, val_loss, train_loss)
            streak.see(False, step)
            return
        best_step, best_val, best_train = best
        risen = best_val > 0 and val_loss > (1 + t.overfit_rise) * best_val \
            and val_loss - best_val > t.overfit_floor * self._val_scale
        falling = train_loss < (1 - t.overfit_train_drop) * best_train
        if streak.see(risen and falling, step) >= t.overfit_confirm:
            self._raise("overfitting", "overfitting", "warning", (), streak.start, step,
                        f"The validation loss has risen to {val_loss:.3g}, {val_loss / best_val:.1f} times its "
                        f"lowest ({best_val:.3g} at step {best_step}), while the training loss fell from "
                        f"{best_train:.3g} to {train_loss:.3g}: the model is memorising its training "
                        "examples instead of learning what carries over to new ones.",
                        {"val_loss": val_loss, "best_val_loss": best_val, "best_step": best_step,
                         "train_loss": train_loss, "train_loss_at_best": best_train,
                         "rise": val_loss / best_val},
                        _FIXES["overfitting"])

    def _check_no_gradient(self, frame: StatsFrame) -> None:
        """Per layer: the frames in a row (and the step they began) it ran without any gradient."""
        t = self.thresholds
        rows = self._param_rows(frame)
        grad = _col(frame, "grad_norm")
        bad = _col(frame, "nan_grads") + _col(frame, "inf_grads")  # (a NaN gradient is nan_inf's)
        reached = [i for i in rows if np.isfinite(grad[i])]
        if not reached or not math.isfinite(frame.loss):  # (no backward to judge by)
            return
        missing = {frame.layer_names[i] for i in rows if np.isnan(grad[i]) and not bad[i] > 0}
        self._gradless = {name: (self._gradless[name][0] + 1, self._gradless[name][1])
                          if name in self._gradless else (1, frame.step) for name in missing}
        names = [name for name in frame.layer_names if self._gradless.get(name, (0, 0))[0] >= t.window]
        if names:
            one = len(names) == 1
            start = min(self._gradless[name][1] for name in names)
            self._raise("no_gradient", "no_gradient", "warning", names, start, frame.step,
                        f"{', '.join(names)} {'gets' if one else 'get'} no gradient at all, step after step: "
                        f"{'its output never reaches' if one else 'their outputs never reach'} the loss (a head "
                        "left out of it, a branch whose result is unused or detached), so "
                        f"{'its' if one else 'their'} parameters never train.",
                        {"layers_without_gradient": len(names), "layers_with_gradient": len(reached)},
                        _FIXES["no_gradient"])

    def _check_symmetry(self, frame: StatsFrame) -> None:
        t = self.thresholds
        names = frame.layer_names
        mean = _col(frame, "weight_mean")
        std = _col(frame, "weight_std")
        for i, name in enumerate(names):
            info = self._info.get(name)
            if info is None or info.weight_shape is None or len(info.weight_shape) < 2 \
                    or info.weight_shape[0] < 2 or not info.called or not info.trainable \
                    or any("weight" in frozen for frozen in info.frozen_params):
                continue  # (a frozen layer's equal weights are the user's choice: no update moves them)
            uniform = np.isfinite(std[i]) and std[i] <= t.symmetry_rel_std * abs(mean[i]) + 1e-12
            streak = self._streak(f"symmetry:{name}")
            if streak.see(bool(uniform), frame.step) < t.symmetry_frames or frame.step < 2:
                continue
            known = self._found.get("symmetry")
            if known is not None and name not in known.layers:
                merged = tuple(n for n in names if n in known.layers or n == name)
                self._found["symmetry"] = replace(known, layers=merged, last_step=frame.step,
                                                  step=min(known.step, streak.start))
                continue
            self._raise("symmetry", "symmetry", "error", (name,), streak.start, frame.step,
                        f"Every weight of {name} still has the same value ({_fmt(mean[i])}) after "
                        f"{streak.count} steps: its {info.weight_shape[0]} units compute the same thing and "
                        "receive the same gradient, so they can never become different.",
                        {"weight_mean": float(mean[i]), "weight_std": float(std[i]),
                         "units": float(info.weight_shape[0])}, _FIXES["symmetry"])


def diagnose_frames(layers: Iterable[LayerInfo], frames: Iterable[StatsFrame],
                    thresholds: Thresholds = Thresholds(),
                    validation: Iterable[tuple[int, float]] = ()) -> tuple[Diagnosis, ...]:
    """Run the checks over a sequence of frames at once (e.g. a saved run).

    ``validation``: the run's (step, validation loss) passes, in step order; each is taken after
    the frames up to its step, its training loss from their losses.
    """
    diagnostics = Diagnostics(layers, thresholds)
    passes = iter(validation)
    pending = next(passes, None)
    for frame in frames:
        diagnostics.update(frame)
        while pending is not None and pending[0] <= frame.step:
            diagnostics.update_validation(*pending)
            pending = next(passes, None)
    while pending is not None:
        diagnostics.update_validation(*pending)
        pending = next(passes, None)
    return diagnostics.findings


def _column_nanmedian(values: np.ndarray) -> np.ndarray:
    """Median of each column ignoring NaN; NaN for a column with no number at all.

    Without numpy's "All-NaN slice" warning, and without ``warnings.catch_warnings``, which
    changes process-wide state and is not safe while two trainers run in two threads.
    """
    out = np.full(values.shape[1:], np.nan)
    some = ~np.isnan(values).all(axis=0)
    if some.any():
        out[some] = np.nanmedian(values[:, some], axis=0)
    return out
