"""The one place that owns the training thread.

Commands arrive through a thread-safe queue; the worker publishes immutable snapshots through a
plain callback and never waits on whoever consumes them. The callback must be cheap (store the
value and return): it runs on the training thread.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

import numpy as np

from engine.diagnostics import Diagnostics
from engine.history import History
from engine.neuron import PendingTrace
from engine.probe import Capture, PendingCapture, input_batch_dim
from engine.run import Run
from engine.snapshot import STAT_NAMES, ErrorEvent, Metrics, PhaseInfo, Snapshot, StatsFrame
from engine.trainer import StepError
from engine.views import boundary_view, network_view

__all__ = [
    "Worker", "Play", "Pause", "Step", "PhaseStep", "SetHyper", "SetSpeed", "SetMeasuring", "Reinitialize",
    "Reseed", "Focus", "Replace", "Stop", "PauseWhen", "SetPauseWhen", "TraceUnit", "CheckGradient",
    "history_columns",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Play:
    pass


@dataclass(frozen=True, slots=True)
class Pause:
    pass


@dataclass(frozen=True, slots=True)
class Step:
    """One optimizer step (finishes a phase-by-phase step if one is under way)."""


@dataclass(frozen=True, slots=True)
class PhaseStep:
    """One phase: forward module by module, loss, backward, update."""


@dataclass(frozen=True, slots=True)
class SetHyper:
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetSpeed:
    steps_per_s: float | None  # None: full speed


@dataclass(frozen=True, slots=True)
class SetMeasuring:
    """How often the probe measures a step, for this run and the ones that replace it."""

    every: int | None | Literal["auto"] = "auto"  # None: adaptive; "auto": each run's own default


@dataclass(frozen=True, slots=True)
class Reinitialize:
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Reseed:
    seed: int


@dataclass(frozen=True, slots=True)
class Focus:
    layer: str | None
    example: int = 0


@dataclass(frozen=True, slots=True)
class Replace:
    """Swap in a new run, built on the training thread by ``factory``."""

    factory: Callable[[], Run]


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class TraceUnit:
    """Write out one Linear unit's forward and backward computation (None: stop)."""

    layer: str | None
    unit: int = 0


@dataclass(frozen=True, slots=True)
class CheckGradient:
    """Compare autograd with a finite difference for weight [unit, input] of a Linear layer."""

    layer: str
    unit: int
    input: int


@dataclass(frozen=True, slots=True)
class PauseWhen:
    """Conditions that stop training at the step they occur, so it can be stepped through."""

    nonfinite: bool = True  # a NaN or Inf in any activation, weight or gradient
    error_diagnosis: bool = False  # a diagnosis of severity 'error'
    grad_norm_above: float | None = None  # any layer's gradient norm above this


@dataclass(frozen=True, slots=True)
class SetPauseWhen:
    conditions: PauseWhen


Command = (Play | Pause | Step | PhaseStep | SetHyper | SetSpeed | SetMeasuring | Reinitialize | Reseed | Focus
           | Replace | Stop | SetPauseWhen | TraceUnit | CheckGradient)


def history_columns(layer_names: tuple[str, ...]) -> list[str]:
    """Column names of a run's history: run-level scalars, then every statistic of every layer."""
    columns = ["loss", "train_acc", "val_loss", "val_acc"]
    columns += [f"{stat}/{name}" for name in layer_names for stat in STAT_NAMES]
    return columns


class Worker:
    """Runs a :class:`Run`'s trainer on a background thread.

    Args:
        publish: called with each :class:`Snapshot` or :class:`ErrorEvent` (on the worker thread).
        publish_hz: most snapshots per second while running (thinning at the source).
        boundary_hz: most decision-boundary refreshes per second (it costs a forward pass).
    """

    def __init__(self, publish: Callable[[Snapshot | ErrorEvent], None], publish_hz: float = 30.0,
                 boundary_hz: float = 4.0) -> None:
        self._publish = publish
        self._commands: queue.Queue[Command] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._publish_interval = 1.0 / publish_hz
        self._boundary_interval = 1.0 / boundary_hz
        self.run: Run | None = None
        self.history: History | None = None
        self._history_lock = threading.Lock()
        self._running = False
        self._speed: float | None = None
        self._measuring: int | None | Literal["auto"] = "auto"
        self._run_id = 0
        self._pending: list[PendingCapture] = []
        self._last_capture: Capture | None = None
        self._last_phase: PhaseInfo | None = None
        self._last_publish = 0.0
        self._last_boundary = 0.0
        self._boundary = None
        self._rate = _Rate()
        self._next_allowed = 0.0
        self._diagnostics: Diagnostics | None = None
        self.pause_when = PauseWhen()
        self._unit: TraceUnit | None = None
        self._neuron = None
        self._gradient_check = None

    # --- control from any thread ---------------------------------------------------------
    def start(self, factory: Callable[[], Run] | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("worker already started")
        if factory is not None:
            self._commands.put(Replace(factory))
        self._thread = threading.Thread(target=self._main, name="glassbox-trainer", daemon=True)
        self._thread.start()

    def send(self, command: Command) -> None:
        self._commands.put(command)

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the loop to stop and wait for it; True when the thread has ended."""
        if self._thread is None:
            return True
        self._commands.put(Stop())
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self._thread = None
        return not alive

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def current_history(self) -> History | None:
        with self._history_lock:
            return self.history

    # --- the loop ------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            while True:
                command = self._next_command()
                if isinstance(command, Stop):
                    break
                if command is not None:
                    self._handle_guarded(command)
                    continue
                # (A wait for the speed limit is cut into short ones, to answer commands: train
                # only once it has run out.)
                if self._running and self.run is not None and time.perf_counter() >= self._next_allowed:
                    self._guarded(self._train_one)
        finally:
            self._close_run()

    def _next_command(self) -> Command | None:
        """A queued command; blocks only while paused or while the speed limit says wait."""
        try:
            if self._running and self.run is not None:
                wait = self._next_allowed - time.perf_counter()
                if wait > 0:
                    return self._commands.get(timeout=min(wait, 0.05))
                return self._commands.get_nowait()
            return self._commands.get(timeout=0.05)
        except queue.Empty:
            return None

    def _handle_guarded(self, command: Command) -> None:
        self._guarded(lambda: self._handle(command))

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except StepError as exc:
            self._fail(exc.message, exc.module, exc.phase, exc.step)
        except ValueError as exc:  # bad input (a model file, data, a setting): its own one line
            log.info("rejected: %s", exc)
            self._fail(_first_line(exc), None, None, self.run.trainer.step_count if self.run else None)
        except Exception as exc:  # the loop must survive anything user code does
            log.exception("worker command failed")
            self._fail(f"{type(exc).__name__}: {_first_line(exc)}", None, None,
                       self.run.trainer.step_count if self.run else None)

    def _fail(self, message: str, module: str | None, phase: str | None, step: int | None) -> None:
        self._running = False
        self._publish(ErrorEvent(message=message, module=module, phase=phase, step=step, run_id=self._run_id))
        try:
            self._publish_snapshot(force=True)
        except Exception:  # never let reporting an error take the loop down
            log.exception("could not publish a snapshot after an error")

    def _handle(self, command: Command) -> None:
        if isinstance(command, Replace):
            self._running = False
            try:
                run = command.factory()
            except Exception as exc:  # bad input: the current run stays as it is; the GUI learns which failed
                if not isinstance(exc, ValueError):
                    log.exception("could not build the run")
                self._fail(_first_line(exc), None, "load", None)
                return
            self._close_run()
            self._run_id += 1
            self.run = run
            self._apply_measuring()
            with self._history_lock:
                self.history = None
            self._diagnostics = self._diagnostics_before_training()
            self._unit = self._neuron = self._gradient_check = None
            self._last_capture = None
            self._last_phase = None
            self._boundary = None
            self._rate = _Rate()
            self._publish_snapshot(force=True)
            return
        if isinstance(command, SetPauseWhen):
            self.pause_when = command.conditions
            return
        if isinstance(command, SetMeasuring):  # (kept for the runs to come, even with none yet)
            self._measuring = command.every
            if self.run is not None:
                self._apply_measuring()
                self._publish_snapshot(force=True)
            return
        if self.run is None:
            return
        trainer = self.run.trainer
        if isinstance(command, Play):
            self._running = True
            self._next_allowed = 0.0
        elif isinstance(command, Pause):
            self._running = False
            if self._focus_is_stale():
                self._refresh_focus()
            else:
                self._publish_snapshot(force=True)
        elif isinstance(command, Step):
            self._running = False
            self._gradient_check = None  # of the weights before this step
            self._train_one(force_publish=True)
            if self._unit is not None:  # the inspected unit, written out again for this step
                self._neuron = self._trace()
                self._publish_snapshot(force=True)
            if self._focus_is_stale():  # (focus changed during a phase-by-phase step this one finished)
                self._refresh_focus()
        elif isinstance(command, PhaseStep):
            self._running = False
            phase = trainer.next_phase()
            self._last_phase = phase
            if phase.kind == "update":
                self._collect(self._take_finished_capture())
                if self._unit is not None:  # the step has ended: the inspected (or waiting) unit, written out
                    self._neuron = self._trace()
            if phase.kind == "update" and self._focus_is_stale():  # (focus changed during the step)
                self._refresh_focus()
            else:
                self._publish_snapshot(force=True)
        elif isinstance(command, SetHyper):
            trainer.set_hyper(**command.changes)
            self._publish_snapshot(force=True)
        elif isinstance(command, TraceUnit):
            self._gradient_check = None  # it was of another unit
            self._unit = command if command.layer is not None else None
            self._neuron = self._trace() if self._unit is not None else None
            self._publish_snapshot(force=True)
        elif isinstance(command, CheckGradient):
            self._gradient_check = self._check(command)
            self._publish_snapshot(force=True)
        elif isinstance(command, SetSpeed):
            self._speed = command.steps_per_s
        elif isinstance(command, Reinitialize):
            self._gradient_check = None
            trainer.reinitialize(command.seed)
            self._restart_history()
        elif isinstance(command, Reseed):
            trainer.reseed(command.seed)
        elif isinstance(command, Focus):
            probe = trainer.probe
            changed = (probe.focus_layer, probe.focus_example) != (command.layer, max(0, command.example))
            probe.focus_layer = command.layer
            probe.focus_example = max(0, command.example)
            if not self._running and (changed or self._focus_is_stale()):
                self._refresh_focus()  # (a unit click sends its layer twice: one re-inspection)

    def _apply_measuring(self) -> None:
        trainer = self.run.trainer
        trainer.set_capture_every(trainer.config.capture_every if self._measuring == "auto" else self._measuring)

    def _diagnostics_before_training(self) -> Diagnostics | None:
        """What is known of a run before its first capture: the warnings its model raised on its
        first batch (shown at once; the first capture starts the diagnostics proper, with them)."""
        if self.run is None or not (self.run.model_warnings or self.run.model_findings):
            return None
        return Diagnostics((), model_warnings=self.run.model_warnings, model_findings=self.run.model_findings)

    def _restart_history(self) -> None:
        self._run_id += 1
        with self._history_lock:
            self.history = None
        self._diagnostics = self._diagnostics_before_training()
        self._last_capture = None
        self._last_phase = None
        self._pending = []
        self._rate = _Rate()
        self._publish_snapshot(force=True)

    def _focus_is_stale(self) -> bool:
        """The views' tensors are of another layer than the one now focused."""
        trainer = self.run.trainer if self.run else None
        capture = self._last_capture
        if trainer is None or trainer.probe.focus_layer is None:
            return False
        return capture is None or capture.tensors is None or capture.tensors.layer != trainer.probe.focus_layer

    def _refresh_focus(self) -> None:
        """While paused, show the newly focused layer's tensors of the current state."""
        pending = self.run.trainer.inspect() if self.run else None
        if pending is not None:
            capture = pending.get()
            previous = self._last_capture
            self._last_capture = capture if previous is None else replace(
                capture, frame=previous.frame, scalars=previous.scalars)
        self._publish_snapshot(force=True)

    def _close_run(self) -> None:
        if self.run is not None:
            self.run.trainer.close()

    # --- training ------------------------------------------------------------------------
    def _train_one(self, force_publish: bool = False) -> None:
        run = self.run
        assert run is not None
        trainer = run.trainer
        now = time.perf_counter()
        want_tensors = force_publish or (now - self._last_publish) >= self._publish_interval
        capture = trainer.should_capture() or want_tensors
        try:
            result = trainer.step(capture=capture, tensors=want_tensors)
        except StepError as exc:
            if exc.phase == "validation" and trainer.last_result is not None \
                    and trainer.last_result.capture is not None:  # the step itself counted: keep it
                self._collect(trainer.last_result.capture)
            raise
        self._last_phase = None
        self._rate.tick()
        if self._speed:
            self._next_allowed = max(now, self._next_allowed) + 1.0 / self._speed
        if result.capture is not None:
            self._pending.append(result.capture)
        self._drain(block=force_publish or trainer.device.type == "cpu")
        if isinstance(self._neuron, PendingTrace):  # (a unit asked for during a phase-by-phase step this ended)
            self._neuron = self._trace()
        if force_publish or want_tensors:
            self._publish_snapshot(force=force_publish)

    def _take_finished_capture(self) -> PendingCapture | None:
        """The capture of the step that the last phase (the update) completed."""
        result = self.run.trainer.last_result if self.run else None
        return result.capture if result else None

    def _collect(self, capture: PendingCapture | None) -> None:
        if capture is not None:
            self._pending.append(capture)
        self._drain(block=True)

    def _drain(self, block: bool) -> None:
        """Move finished captures into the history (on CUDA they finish a step later)."""
        while self._pending and (block or self._pending[0].ready()):
            capture = self._pending.pop(0).get()
            self._append(capture)

    def _append(self, capture: Capture) -> None:
        frame = capture.frame
        history = self.current_history()
        if history is None:
            history = History(history_columns(frame.layer_names))
            with self._history_lock:
                self.history = history
            self._diagnostics = Diagnostics(self.run.trainer.probe.layers, model_warnings=self.run.model_warnings,
                                            model_findings=self.run.model_findings) if self.run else None
        errors_before = self._error_findings()
        if self._diagnostics is not None:
            try:
                self._diagnostics.update(frame)
                passed = self.run.trainer.last_val if self.run else None
                if passed is not None:  # (a pass on an unmeasured step is taken at the next frame; repeats are ignored)
                    self._diagnostics.update_validation(passed[2], passed[0])
            except Exception:  # a diagnostics bug must never stop training
                log.exception("diagnostics failed; turning them off for this run")
                self._diagnostics = None
        scalars = capture.scalars
        k = len(scalars)
        steps = np.arange(frame.step - k + 1, frame.step + 1)
        rows = np.full((k, len(history.columns)), np.nan)
        rows[:, 0] = scalars[:, 0]
        rows[:, 1] = scalars[:, 1]
        last_val = self.run.trainer.last_val if self.run else None
        if last_val is not None and last_val[2] == frame.step:
            rows[-1, 2] = last_val[0]
            rows[-1, 3] = np.nan if last_val[1] is None else last_val[1]
        rows[-1, 4:] = frame.values.reshape(-1)
        history.append_many(steps, rows)
        previous = self._last_capture
        if capture.tensors is None and previous is not None and previous.tensors is not None:
            # A capture without tensors updates the statistics; the views keep the last tensors.
            capture = replace(previous, frame=frame, scalars=capture.scalars)
        # Kept before any pause below publishes, so the paused views show this very step.
        self._last_capture = capture
        bad = ~np.isfinite(scalars[:, 0])
        if bad.any() and self._running:
            first = int(steps[int(np.argmax(bad))])
            self._fail(f"the loss is not finite ({scalars[int(np.argmax(bad)), 0]}) at step {first}; "
                       "training paused — try a lower learning rate or gradient clipping",
                       None, "loss", first)
        elif self._running:
            self._check_pause_conditions(frame, errors_before)

    def _trace(self):
        """The inspected unit written out on the last batch (None when it can't be). During a
        phase-by-phase step, a PendingTrace: it is written out when the step ends, leaving the step
        under way (its gradients, the probe's recording, the random stream) untouched."""
        from engine.neuron import trace_unit

        trainer = self.run.trainer if self.run else None
        if self._unit is None or trainer is None:
            return None
        if trainer.in_phased_step:
            return PendingTrace(self._unit.layer, self._unit.unit)
        if trainer.last_batch is None:
            return None
        x, y = trainer.last_batch
        try:
            with trainer.probe.suspended():
                return trace_unit(trainer.model, trainer.loss_fn, x, y, self._unit.layer, self._unit.unit,
                                  trainer.probe.focus_example, input_batch_dim(x, y))
        except (ValueError, IndexError, KeyError):
            return None  # not a Linear unit: the inspector says what it can show

    def _check(self, command: CheckGradient):
        from engine.neuron import check_gradient

        trainer = self.run.trainer if self.run else None
        if trainer is None or trainer.last_batch is None:
            return None
        x, y = trainer.last_batch
        try:
            with trainer.probe.suspended():
                return check_gradient(trainer.model, trainer.loss_fn, x, y, f"{command.layer}.weight",
                                      (command.unit, command.input))
        except (ValueError, IndexError, KeyError, RuntimeError) as exc:  # a check, not a reason to stop
            log.info("gradient check of %s[%d, %d] not possible: %s", command.layer, command.unit,
                     command.input, exc)
            return None

    def _error_findings(self) -> set[tuple]:
        if self._diagnostics is None:
            return set()
        return {(d.code, d.layers) for d in self._diagnostics.findings if d.severity == "error"}

    def _check_pause_conditions(self, frame: StatsFrame, errors_before: set[tuple]) -> None:
        """Stop at this step when a condition the user asked for holds."""
        when = self.pause_when
        names = frame.layer_names
        if when.nonfinite:
            for columns, where in ((("nan_acts", "inf_acts", "nan_weights", "inf_weights"), "forward"),
                                   (("nan_grads", "inf_grads"), "backward")):
                counts = np.nansum([frame.stat(c) for c in columns], axis=0)
                if (counts > 0).any():
                    layer = names[int(np.argmax(counts > 0))]
                    self._fail(f"paused at step {frame.step}: a NaN or Inf appeared in {layer} "
                               f"({where} pass); step through the next step phase by phase to see it",
                               layer, where, frame.step)
                    return
        if when.error_diagnosis:
            new = [d for d in (self._diagnostics.findings if self._diagnostics else ())
                   if d.severity == "error" and (d.code, d.layers) not in errors_before]
            if new:
                first = new[0]
                self._fail(f"paused at step {frame.step}: {first.code.replace('_', ' ')} — {first.message}",
                           first.layers[0] if first.layers else None, None, frame.step)
                return
        if when.grad_norm_above is not None:
            norms = frame.stat("grad_norm")
            over = np.nan_to_num(norms, nan=-np.inf) > when.grad_norm_above
            if over.any():
                layer = names[int(np.argmax(over))]
                self._fail(f"paused at step {frame.step}: the gradient norm of {layer} is "
                           f"{norms[int(np.argmax(over))]:.3g}, above {when.grad_norm_above:g}",
                           layer, "backward", frame.step)

    # --- publishing ----------------------------------------------------------------------
    def _publish_snapshot(self, force: bool = False) -> None:
        run = self.run
        if run is None:
            return
        now = time.perf_counter()
        trainer = run.trainer
        capture = self._last_capture
        if run.boundary_data is not None and (force or now - self._last_boundary >= self._boundary_interval):
            self._last_boundary = now
            try:
                self._boundary = boundary_view(run, trainer.step_count)
            except Exception:  # a display extra: a model that can't take the grid just shows none
                log.debug("no decision boundary for %s", run.name, exc_info=True)
                self._boundary = None
        loss = float(capture.scalars[-1, 0]) if capture is not None else math.nan
        acc = float(capture.scalars[-1, 1]) if capture is not None else math.nan
        val = trainer.last_val
        metrics = Metrics(train_loss=loss, train_acc=None if math.isnan(acc) else acc,
                          val_loss=val[0] if val else None, val_acc=val[1] if val else None,
                          val_step=val[2] if val else None)
        state = "running" if self._running else ("stepping" if trainer.in_phased_step else "paused")
        if self._diagnostics is not None:  # (its fixes don't tell a run that clips to clip)
            self._diagnostics.clip_norm = trainer.hyper.clip_norm
        snapshot = Snapshot(
            run_id=self._run_id, step=trainer.step_count, state=state, scenario=run.name,
            device=str(trainer.device), layers=trainer.probe.layers, metrics=metrics, hyper=trainer.hyper,
            stats=capture.frame if capture else None, tensors=capture.tensors if capture else None,
            network=network_view(run, capture) if capture or trainer.in_phased_step else None,
            boundary=self._boundary,
            phase=self._last_phase, steps_per_s=self._rate.per_second(),
            probe_overhead=trainer.overhead,
            capture_every=trainer.capture_every, capture_adaptive=trainer.adaptive,
            diagnoses=tuple(self._diagnostics.findings) if self._diagnostics is not None else (),
            neuron=self._neuron, gradient_check=self._gradient_check,
        )
        self._last_publish = now
        self._publish(snapshot)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Rate:
    """Steps per second over the last couple of seconds."""

    def __init__(self) -> None:
        self._times: list[float] = []

    def tick(self) -> None:
        now = time.perf_counter()
        self._times.append(now)
        cutoff = now - 2.0
        while self._times and self._times[0] < cutoff:
            self._times.pop(0)

    def per_second(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
