"""The training loop: one optimizer step at a time, or one phase at a time.

A phase-by-phase step runs the very same forward, loss and backward as an ordinary step, with the
probe recording each module's tensors as autograd produces them; the phases are then handed out
one by one and the optimizer update is applied only when the last phase is reached. Parameters
end bit-identical to an uninterrupted step, and every tensor shown is that step's own.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.batches import BatchSource
from engine.modes import restore, training_modes
from engine.phase_details import AxisReader, parameter_owners, update_fields
from engine.probe import PendingCapture, Probe, ProbeConfig, input_batch_dim
from engine.snapshot import Hyper, PhaseInfo

__all__ = [
    "TrainerConfig", "Trainer", "StepResult", "StepError", "loss_for_task", "accuracy",
    "make_optimizer", "check_hyper", "OPTIMIZERS",
]

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
#: When every step is captured, one step in this many runs bare to keep the overhead measured.
BARE_SAMPLE_EVERY = 32
#: An adaptive capture interval keeps the probe's average cost near this fraction of a bare step,
#: measuring at least every ``ADAPTIVE_MAX_EVERY`` steps.
ADAPTIVE_COST = 0.05
ADAPTIVE_MAX_EVERY = 64
#: The probe's overhead compares the medians of the last this many bare and captured step times:
#: a step that waited on another thread (the GUI holding the interpreter, say) is an outlier a
#: median ignores, where a mean of a few bare samples would take it for the bare step's cost.
TIMING_WINDOW = 9
#: Validation runs the model on this many examples at a time.
VAL_CHUNK = 256
#: What a batch norm meeting a batch of one example in training mode needs, after torch's words for it.
BATCH_OF_ONE_HINT = ("a batch of one example can't be normalised in training mode: use batches of two or more "
                     "(pass drop_last=True to a DataLoader whose last batch holds one, or a batch size that "
                     "divides the data)")
_BATCH_OF_ONE_ERROR = "Expected more than 1 value per channel when training"


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    """Fixed settings of one trainer."""

    seed: int = 0
    device: str = "cpu"
    val_every: int = 50  # steps between validation passes (0 = never)
    capture_every: int | None = 1  # None: adaptive, keeping the probe's overhead near 5 %
    val_max_examples: int = 2048
    probe: ProbeConfig = field(default_factory=ProbeConfig)


class StepError(RuntimeError):
    """An exception raised inside the model, the loss or the update, located for the user."""

    def __init__(self, message: str, module: str | None, phase: str, step: int) -> None:
        super().__init__(message)
        self.message = message
        self.module = module
        self.phase = phase
        self.step = step


@dataclass(frozen=True, slots=True)
class StepResult:
    step: int
    capture: PendingCapture | None
    seconds: float


def loss_for_task(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of a built-in task: cross-entropy per example or per token, MSE for regression."""
    if task == "regression":
        return F.mse_loss
    if task == "tokens":
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy


def accuracy(out: Any, y: torch.Tensor) -> torch.Tensor | None:
    """Fraction of arg-max predictions equal to integer targets; None when that makes no sense
    (a model returning a tuple or a dict, or targets that aren't class labels)."""
    if not isinstance(out, torch.Tensor) or not isinstance(y, torch.Tensor):
        return None
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8) and out.dim() == y.dim() + 1 \
            and out.shape[:-1] == y.shape and out.shape[-1] > 1:
        return (out.detach().argmax(-1) == y).float().mean()
    return None


def check_hyper(hyper: Hyper) -> None:
    """Raise a one-line ValueError for a hyperparameter no optimizer can use."""
    def positive(value: float) -> bool:
        return value > 0 and math.isfinite(value)
    if not positive(hyper.lr):
        raise ValueError(f"learning rate must be a positive number, got {hyper.lr}")
    if hyper.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {hyper.batch_size}")
    if not (hyper.weight_decay >= 0 and math.isfinite(hyper.weight_decay)):
        raise ValueError(f"weight decay must be zero or a positive number, got {hyper.weight_decay}")
    if not 0 <= hyper.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {hyper.momentum}")
    if hyper.clip_norm is not None and not positive(hyper.clip_norm):
        raise ValueError(f"the gradient clipping norm must be a positive number, got {hyper.clip_norm}")
    if hyper.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {hyper.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizer(params: list[torch.nn.Parameter], hyper: Hyper) -> torch.optim.Optimizer:
    name = hyper.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@dataclass
class _PhasedStep:
    """A step whose forward/backward ran with recording and whose update is still pending."""

    phases: list[PhaseInfo]
    cursor: int = 0
    started: float = 0.0
    scalars_before: int = 0  # losses queued before this step (a failed update drops its own)
    focus_layer: str | None = None  # the focused layer as the step began: the update shows its change


class Trainer:
    """Owns model, data, loss and optimizer; steps on the caller's thread.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(output, target) -> scalar tensor``.
        batches: the training batch source.
        hyper: hyperparameters that may change live (``set_hyper``).
        config: fixed settings (seed, device, capture interval, validation).
        val_data: optional held-out ``(x, y)``.
        reinit: re-initialises the model's weights (default: ``reset_parameters`` everywhere).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: BatchSource, *,
                 hyper: Hyper | None = None, config: TrainerConfig | None = None,
                 val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 reinit: Callable[[nn.Module], None] | None = None) -> None:
        self.config = config or TrainerConfig()
        self.hyper = hyper or Hyper()
        check_hyper(self.hyper)
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self._modes = training_modes(self.model)
        self.loss_fn = loss_fn
        self.batches = batches
        self.batches.to(self.device)
        self.val_data = None if val_data is None else tuple(t[: self.config.val_max_examples].to(self.device)
                                                            for t in val_data)
        self._reinit = reinit or _reset_all_parameters
        self.seed = self.config.seed
        self._cpu_rng = _seeded_state(self.seed)
        self.step_count = 0
        self.probe = Probe(self.model, self.config.probe).attach()
        self.optimizer = make_optimizer(list(self.model.parameters()), self.hyper)
        self._pending_scalars: list[torch.Tensor] = []
        self._phased: _PhasedStep | None = None
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.capture_every = self.config.capture_every or 1
        self.adaptive = self.config.capture_every is None  # capture_every follows the measured overhead
        self._times_bare: collections.deque[float] = collections.deque(maxlen=TIMING_WINDOW)
        self._times_captured: collections.deque[float] = collections.deque(maxlen=TIMING_WINDOW)
        self.last_val: tuple[float, float | None, int] | None = None  # (loss, acc, step)
        self.last_result: StepResult | None = None

    # --- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Remove every hook. Safe to call twice."""
        self.probe.detach()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _train_mode(self) -> None:
        """Put every module back in its training mode (after validation, or anything else that
        switched it)."""
        restore(self._modes)

    # --- hyperparameters -----------------------------------------------------------------
    def set_hyper(self, **changes: Any) -> Hyper:
        """Change hyperparameters; they take effect at the next update, the model is untouched."""
        new = replace(self.hyper, **changes)
        check_hyper(new)
        if new.optimizer != self.hyper.optimizer:
            self.optimizer = make_optimizer(list(self.model.parameters()), new)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = new.lr
                group["weight_decay"] = new.weight_decay
                if "momentum" in group and new.optimizer == "momentum":
                    group["momentum"] = new.momentum
        self.hyper = new
        return new

    # --- steps ---------------------------------------------------------------------------
    def should_capture(self) -> bool:
        """Whether the coming step is measured. Capturing every step, one step in
        ``BARE_SAMPLE_EVERY`` still runs bare so the probe's overhead stays measured."""
        upcoming = self.step_count + 1
        if self.capture_every <= 1:
            return upcoming % BARE_SAMPLE_EVERY != 0
        return upcoming % self.capture_every == 0

    def step(self, capture: bool | None = None, tensors: bool = False) -> StepResult:
        """One optimizer step (finishing a phase-by-phase step first if one is pending)."""
        if self._phased is not None:
            return self._finish_phased()
        capture = self.should_capture() if capture is None else capture
        started = time.perf_counter()
        with self._rng_scope(), self._probe_step():
            x, y = self._next_batch()
            self.probe.begin_step(capture, tensors=tensors, targets=y)
            self._forward_backward(x, y)
            self._update()
        return self._end_step(started, capture)

    def next_phase(self) -> PhaseInfo:
        """Advance one phase: forward module by module, loss, backward in autograd's order, update."""
        if self._phased is None:
            self._phased = self._begin_phased()
        phased = self._phased
        phase = phased.phases[phased.cursor]
        phased.cursor += 1
        if phase.kind == "update":
            shown = self._update_shown(phased)
            owners = parameter_owners(self.model)
            before = [[p.detach().clone() for p in params] for _, params in owners]
            grads = [p.grad for _, params in owners for p in params if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float())
                                                                    for g in grads]))) if grads else None
            hyper = self.hyper  # (the update uses the hyperparameters of this moment)
            self._finish_phased()
            phase = replace(phase, **update_fields(self.model, owners, before, shown),
                            optimizer=hyper.optimizer, lr=hyper.lr, clip_norm=hyper.clip_norm, grad_norm=grad_norm)
        return phase

    def _update_shown(self, phased: _PhasedStep) -> str | None:
        """The layer whose change the update phase shows: the focused one if it owns parameters,
        else the first one that does in the forward pass."""
        owning = {name for name, _ in parameter_owners(self.model)}
        forward = [p.module for p in phased.phases if p.kind == "forward"]
        candidates = [phased.focus_layer] + forward + sorted(owning)
        return next((name for name in candidates if name in owning), None)

    @property
    def in_phased_step(self) -> bool:
        return self._phased is not None

    def _begin_phased(self) -> _PhasedStep:
        started = time.perf_counter()
        queued = len(self._pending_scalars)
        with self._rng_scope(), self._probe_step():
            x, y = self._next_batch()
            self.probe.begin_step(True, tensors=True, record=True, targets=y)
            focus_layer, focus_example = self.probe.focus_layer, self.probe.focus_example  # (as the step began)
            loss = self._forward_backward(x, y)
        records = self.probe.phase_events()
        forward = [r for r in records if r.kind == "forward"]
        backward = [r for r in records if r.kind == "backward"]
        loss_tensors = {"loss": np.array([[float(loss.detach())]], np.float32)}
        items: list[tuple[str, str | None, dict]] = [("forward", r.module, r.tensors) for r in forward]
        items.append(("loss", None, loss_tensors))
        items += [("backward", r.module, r.tensors) for r in backward]
        items.append(("update", None, {}))
        names = tuple(f"{kind} {module}" if module else kind for kind, module, _ in items)
        batch_dim = input_batch_dim(x, y)
        batch = int(x.shape[batch_dim]) if isinstance(x, torch.Tensor) and x.dim() >= 1 else None
        example = min(focus_example, batch - 1) if batch else None
        reader = AxisReader(self.model, x, forward, batch_dim)
        summed = [r.input_is_sum for r in forward] + [False] * (len(items) - len(forward))
        phases = [PhaseInfo(index=i, total=len(items), kind=kind, module=module, tensors=tensors, names=names,
                            example=example, batch_size=batch, module_type=reader.type_of(module),
                            axes=reader.axes(kind, module, tensors), shapes=reader.shapes(module, tensors),
                            input_is_sum=summed[i])
                  for i, (kind, module, tensors) in enumerate(items)]
        return _PhasedStep(phases=phases, started=started, scalars_before=queued, focus_layer=focus_layer)

    def _finish_phased(self) -> StepResult:
        phased, self._phased = self._phased, None
        assert phased is not None
        with self._rng_scope(), self._probe_step(phased.scalars_before):
            self._update()
        # (Not timed: the pauses between phases are the user's, not the step's.)
        return self._end_step(phased.started, True, timed=False)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self._located("data loading"):  # (a user's loader may fail at any batch)
            x, y = self.batches.next(self.hyper.batch_size)
        self._last_batch = (x, y)
        return x, y

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        with self._located("forward"):
            out = self.model(x)
        with self._located("loss"):
            loss = self.loss_fn(out, y)
            if isinstance(loss, torch.Tensor) and loss.dim() and loss.numel() == 1:
                loss = loss.reshape(())  # a one-element loss, as the model-file check accepts
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"the loss returned {shape}, expected a scalar tensor")
        with self._located("backward"):
            loss.backward()
        acc = accuracy(out, y)
        nan = torch.full((), float("nan"), device=loss.device)
        self._pending_scalars.append(torch.stack([loss.detach().float(), nan if acc is None else acc]))
        self.probe.after_backward()
        return loss

    def _update(self) -> None:
        with self._located("update"):
            if self.hyper.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hyper.clip_norm)
            self.probe.before_update()
            self.optimizer.step()
            self.probe.after_update()

    def _end_step(self, started: float, captured: bool, timed: bool = True) -> StepResult:
        self.step_count += 1
        capture = None
        if captured:
            scalars = torch.stack(self._pending_scalars)
            self._pending_scalars = []
            capture = self.probe.finish(self.step_count, scalars)
        seconds = time.perf_counter() - started
        if timed:
            self._note_timing(seconds, captured)
        self.last_result = StepResult(self.step_count, capture, seconds)
        if self.config.val_every and self.step_count % self.config.val_every == 0:
            with self._located("validation", self.step_count):
                self.validate()
        return self.last_result

    def inspect(self) -> PendingCapture | None:
        """Measure the current state (e.g. a newly focused layer while paused) without training.

        Re-runs forward and backward on the last batch with the probe capturing tensors, then
        restores everything a forward may touch (random stream, normalisation buffers), so the
        next real step is exactly what it would have been. Not available mid phase-step.
        """
        if self._last_batch is None or self._phased is not None:
            return None
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        saved_rng = self._cpu_rng.clone()
        pending = list(self._pending_scalars)
        try:
            with self._rng_scope(), self._probe_step():
                self.probe.begin_step(True, tensors=True, targets=self._last_batch[1])
                self._forward_backward(*self._last_batch)
            scalars = torch.stack(self._pending_scalars[len(pending):])
            return self.probe.finish(self.step_count, scalars)
        finally:
            self._pending_scalars = pending
            self._cpu_rng = saved_rng
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])
            self.optimizer.zero_grad(set_to_none=True)

    def flush_scalars(self) -> np.ndarray:
        """(k, 2) losses and accuracies of the steps not yet shipped with a capture (syncs)."""
        if not self._pending_scalars:
            return np.zeros((0, 2))
        host = torch.stack(self._pending_scalars).detach().cpu().double().numpy()
        self._pending_scalars = []
        return host

    # --- overhead ------------------------------------------------------------------------
    def _note_timing(self, seconds: float, captured: bool) -> None:
        (self._times_captured if captured else self._times_bare).append(seconds)
        if self.adaptive:
            self._adapt_interval()

    def _adapt_interval(self) -> None:
        # Capture often enough to see, rarely enough that the probe costs ~5 % on average.
        if self.overhead is not None:
            self.capture_every = int(min(ADAPTIVE_MAX_EVERY, max(1, math.ceil(self.overhead / ADAPTIVE_COST))))

    def set_capture_every(self, every: int | None) -> None:
        """Measure every ``every`` steps from the next step on; None: adaptively, keeping the
        probe's average cost near ``ADAPTIVE_COST`` (every step until the cost is measured)."""
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"the capture interval must be a whole number of steps >= 1, not {every!r}")
        self.adaptive = every is None
        self.capture_every = every or 1
        if self.adaptive:
            self._adapt_interval()

    @property
    def overhead(self) -> float | None:
        """Measured extra time of a captured step relative to a bare one (0.1 = 10 %): the ratio
        of the medians of the last ``TIMING_WINDOW`` step times of each kind."""
        if not self._times_bare or not self._times_captured:
            return None
        bare = statistics.median(self._times_bare)
        if bare <= 0:
            return None
        return max(0.0, statistics.median(self._times_captured) / bare - 1.0)

    # --- validation ----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> tuple[float, float | None] | None:
        """Loss and accuracy on the held-out set (the probe does not capture it)."""
        if self.val_data is None:
            return None
        x, y = self.val_data
        self.model.eval()
        try:
            with self.probe.suspended():
                out = self._forward_in_chunks(x)
            loss = float(self.loss_fn(out, y))
            acc = accuracy(out, y)
        finally:
            self._train_mode()
        result = (loss, None if acc is None else float(acc))
        self.last_val = (result[0], result[1], self.step_count)
        return result

    def _forward_in_chunks(self, x: torch.Tensor) -> Any:
        """The model's output on ``x``, run ``VAL_CHUNK`` examples at a time (a big model's forward
        on thousands of examples at once can run out of memory) and joined, so the loss is taken
        on the whole set at once, whatever its reduction; in one piece when the output is not one
        tensor with the examples along its first dimension."""
        first = self.model(x[:VAL_CHUNK])
        if len(x) <= VAL_CHUNK:
            return first
        if not isinstance(first, torch.Tensor) or first.dim() == 0 or first.shape[0] != VAL_CHUNK:
            return self.model(x)
        return torch.cat([first] + [self.model(x[i:i + VAL_CHUNK]) for i in range(VAL_CHUNK, len(x), VAL_CHUNK)])

    # --- reinitialise --------------------------------------------------------------------
    def reinitialize(self, seed: int | None = None) -> None:
        """Fresh weights, optimizer state and data order; the step counter restarts."""
        if seed is not None:
            self.seed = seed
        self._phased = None  # a phase-by-phase step under way is dropped, hooks and all
        self.probe.abandon_step()
        self._cpu_rng = _seeded_state(self.seed)
        with self._rng_scope():
            self._reinit(self.model)
        self.model.to(self.device)
        self.batches.reseed(self.seed)
        self.optimizer = make_optimizer(list(self.model.parameters()), self.hyper)
        self.step_count = 0
        self._pending_scalars = []
        self.last_val = None

    def reseed(self, seed: int) -> None:
        """New data order and dropout stream from ``seed``, keeping the weights."""
        self.seed = seed
        self._cpu_rng = _seeded_state(seed)
        self.batches.reseed(seed)

    # --- helpers -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _rng_scope(self) -> Iterator[None]:
        """Run with this trainer's own CPU random stream (dropout, init), leaving the global one."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self._cpu_rng)
        try:
            yield
        finally:
            self._cpu_rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    @contextlib.contextmanager
    def _probe_step(self, scalars_before: int | None = None) -> Iterator[None]:
        """A step interrupted by an exception leaves no hooks on the model, nothing half-captured
        and no loss queued for a step that never counted."""
        queued = len(self._pending_scalars) if scalars_before is None else scalars_before
        try:
            yield
        except BaseException:
            self.probe.abandon_step()
            del self._pending_scalars[queued:]
            raise

    @contextlib.contextmanager
    def _located(self, phase: str, step: int | None = None) -> Iterator[None]:
        """Turn an exception from user code into a one-line StepError naming the phase and the
        innermost module. ``SystemExit`` from user code counts too (a stray ``sys.exit()`` in a
        forward must not end the app or the report); ``KeyboardInterrupt`` does not."""
        try:
            yield
        except StepError:
            raise
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # user code can raise anything: locate it, never crash the loop
            module = _innermost_module(exc.__traceback__, self.model)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            where = f" in {_module_label(module, self.model)}" if module else ""
            step = self.step_count + 1 if step is None else step
            message = f"{type(exc).__name__} during {phase}{where} at step {step}: {first_line}"
            if isinstance(exc, ValueError) and first_line.startswith(_BATCH_OF_ONE_ERROR):
                message += f": {BATCH_OF_ONE_HINT}"
            if _is_out_of_memory(exc):
                message = f"out of memory during {phase}{where} at step {step}: try a smaller batch size or model"
            raise StepError(message, module, phase, step) from exc

    @property
    def last_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._last_batch


def _seeded_state(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return generator.get_state()


def _reset_all_parameters(model: nn.Module) -> None:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text or "cannot allocate memory" in text  # (the CPU allocator's words)


def _module_label(name: str, model: nn.Module) -> str:
    """``name`` of a module of ``model`` as an error names it: with its type when it is one of
    torch's own layers ("1 (BatchNorm1d)": an index in a Sequential, and torch's message, say
    nothing of the layer), as it is otherwise (the model's own class name, a class of the user's)."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return name
    kind = type(module)
    return f"{name} ({kind.__name__})" if kind.__module__.startswith("torch.") and name != kind.__name__ else name


def _innermost_module(tb: Any, model: nn.Module) -> str | None:
    """Name of the deepest module of ``model`` whose forward is on the traceback."""
    names = {id(m): name for name, m in model.named_modules()}
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = names[id(owner)] or type(owner).__name__
        tb = tb.tb_next
    return found

