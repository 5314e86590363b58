"""The worker thread: commands from another thread, snapshots out, errors survived, clean stop."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from engine.batches import TensorBatches
from engine.run import Run
from engine.snapshot import STAT_NAMES, ErrorEvent, Hyper, Snapshot
from engine.trainer import Trainer, TrainerConfig
from engine.worker import Focus, Pause, PhaseStep, Play, Replace, SetHyper, Step, Worker


class Collector:
    def __init__(self) -> None:
        self.items: list[Snapshot | ErrorEvent] = []
        self.lock = threading.Lock()

    def __call__(self, item) -> None:
        with self.lock:
            self.items.append(item)

    def snapshots(self) -> list[Snapshot]:
        with self.lock:
            return [i for i in self.items if isinstance(i, Snapshot)]

    def errors(self) -> list[ErrorEvent]:
        with self.lock:
            return [i for i in self.items if isinstance(i, ErrorEvent)]

    def wait_for(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for item in reversed(self.items):
                    if predicate(item):
                        return item
            time.sleep(0.01)
        raise AssertionError("condition not reached")


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        raise RuntimeError("kaboom in forward")


def small_run(model: nn.Module | None = None) -> Run:
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(128, 2)
    y = (x[:, 0] > 0).long()
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y),
                      hyper=Hyper(lr=0.01, batch_size=16), config=TrainerConfig(val_every=0))
    return Run(name="test", trainer=trainer, boundary_data=(x.numpy()[:50], y.numpy()[:50]), n_classes=2)


def test_play_pause_step_phase_and_stop_from_another_thread() -> None:
    out = Collector()
    worker = Worker(out)
    worker.start(small_run)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
        worker.send(Play())
        running = out.wait_for(lambda s: isinstance(s, Snapshot) and s.step >= 20 and s.state == "running")
        assert running.stats is not None and running.network is not None
        worker.send(Pause())
        paused = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused" and s.step >= 20)
        time.sleep(0.2)
        held = out.snapshots()[-1].step
        assert held == paused.step  # nothing trains while paused
        worker.send(Step())
        stepped = out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == held + 1)
        assert stepped.boundary is not None and stepped.boundary.prediction.shape == (64, 64)
        worker.send(PhaseStep())
        phased = out.wait_for(lambda s: isinstance(s, Snapshot) and s.phase is not None)
        assert phased.phase.kind == "forward" and phased.state == "stepping" and phased.step == held + 1
        worker.send(SetHyper({"lr": 0.5}))
        assert out.wait_for(lambda s: isinstance(s, Snapshot) and s.hyper.lr == 0.5)
        worker.send(Step())  # finishes the phase-by-phase step
        assert out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == held + 2)
        worker.send(Focus("2"))
        focused = out.wait_for(lambda s: isinstance(s, Snapshot) and s.tensors is not None and s.tensors.layer == "2")
        assert focused.tensors.weight.shape == (2, 8)
        history = worker.current_history()
        assert history is not None and history.latest_step == held + 2
    finally:
        started = time.monotonic()
        assert worker.stop(timeout=1.0)
        assert time.monotonic() - started < 1.0
    assert not worker.alive


def test_exception_in_forward_becomes_error_event_and_worker_goes_on() -> None:
    out = Collector()
    worker = Worker(out)
    worker.start(lambda: small_run(Broken()))
    try:
        worker.send(Play())
        error = out.wait_for(lambda e: isinstance(e, ErrorEvent))
        assert "kaboom in forward" in error.message
        assert error.phase == "forward" and error.module == "Broken"
        assert error.message == "RuntimeError during forward in Broken at step 1: kaboom in forward"
        last = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused")
        assert last.step == 0
        worker.send(Replace(small_run))
        worker.send(Step())
        assert out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 1 and s.run_id > error.run_id)
    finally:
        assert worker.stop(timeout=1.0)


def test_non_finite_loss_pauses_with_a_message() -> None:
    out = Collector()
    worker = Worker(out)

    def exploding() -> Run:
        run = small_run(nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 2)))
        run.trainer.set_hyper(lr=1e30, optimizer="sgd")
        return run

    worker.start(exploding)
    try:
        worker.send(Play())
        error = out.wait_for(lambda e: isinstance(e, ErrorEvent), timeout=20)
        assert "not finite" in error.message
        assert out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused")
    finally:
        assert worker.stop(timeout=1.0)


@pytest.mark.parametrize("speed, low, high", [(20.0, 10, 25), (4.0, 3, 6)])  # (slower than the command wait)
def test_speed_limit(speed: float, low: int, high: int) -> None:
    from engine.worker import SetSpeed
    out = Collector()
    worker = Worker(out)
    worker.start(small_run)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot))
        worker.send(SetSpeed(speed))
        worker.send(Play())
        time.sleep(1.0)
        worker.send(Pause())
        paused = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused" and s.step > 0)
        assert low <= paused.step <= high
    finally:
        assert worker.stop(timeout=1.0)


def test_pause_when_a_gradient_norm_passes_a_threshold() -> None:
    from engine.worker import PauseWhen, SetPauseWhen

    out = Collector()
    worker = Worker(out)
    worker.start(small_run)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot))
        worker.send(SetPauseWhen(PauseWhen(grad_norm_above=1e-12)))
        worker.send(Play())
        event = out.wait_for(lambda e: isinstance(e, ErrorEvent))
        assert event.message.startswith("paused at step 1: the gradient norm of ")
        assert event.phase == "backward" and event.module in ("0", "2")
        paused = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused" and s.step >= 1)
        assert paused.step == 1
    finally:
        assert worker.stop(timeout=1.0)


def test_pause_when_a_non_finite_value_appears() -> None:
    out = Collector()
    worker = Worker(out)

    def poisoned() -> Run:
        run = small_run()
        with torch.no_grad():
            run.trainer.model[2].weight[0, 0] = float("inf")
        return run

    worker.start(poisoned)
    try:
        worker.send(Play())
        event = out.wait_for(lambda e: isinstance(e, ErrorEvent))
        assert "NaN or Inf appeared in 2" in event.message or "not finite" in event.message
    finally:
        assert worker.stop(timeout=1.0)


def test_a_failing_validation_pauses_with_its_step_recorded() -> None:
    def run_with_bad_validation() -> Run:
        run = small_run()
        trainer = run.trainer
        trainer.config = TrainerConfig(val_every=3)
        trainer.val_data = (torch.randn(4, 5), torch.zeros(4, dtype=torch.long))  # the wrong width
        return run

    out = Collector()
    worker = Worker(out)
    worker.start(run_with_bad_validation)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot))
        worker.send(Play())
        error = out.wait_for(lambda e: isinstance(e, ErrorEvent))
        assert error.phase == "validation" and error.step == 3
        paused = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused" and s.step == 3)
        assert paused.stats is not None and paused.stats.step == 3  # the step that validated is kept
        assert worker.current_history().latest_step == 3
    finally:
        assert worker.stop(timeout=1.0)


def test_a_layer_focused_during_a_phase_by_phase_step_is_shown_when_it_ends() -> None:
    out = Collector()
    worker = Worker(out)
    worker.start(small_run)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
        worker.send(Focus("0"))
        worker.send(Step())
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 1 and s.tensors is not None
                     and s.tensors.layer == "0")
        worker.send(PhaseStep())
        worker.send(PhaseStep())
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.phase is not None and s.phase.index == 1)
        worker.send(Focus("2"))  # mid-step: nothing to inspect yet
        worker.send(Step())  # finishes the phase-by-phase step
        done = out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 2 and s.phase is None
                            and s.tensors is not None and s.tensors.layer == "2")
        assert done.tensors.weight.shape == (2, 8)
    finally:
        assert worker.stop(timeout=1.0)


def test_the_findings_published_know_whether_the_run_clips() -> None:
    """A run that diverges while clipping is on is not told to clip; turned off, it is."""
    from engine.diagnostics import _CLIP

    def diverging() -> Run:
        run = small_run()
        run.trainer.set_hyper(optimizer="sgd", lr=1e3, clip_norm=0.5)
        return run

    out = Collector()
    worker = Worker(out)
    worker.start(diverging)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot))
        for _ in range(12):
            worker.send(Step())
        clipped = out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 12)
        advised = [d for d in clipped.diagnoses if any("clip" in fix.lower() for fix in d.fixes)]
        assert advised, [d.code for d in clipped.diagnoses]
        for d in advised:
            assert _CLIP not in d.fixes and any("clip_norm 0.5)" in fix for fix in d.fixes)
        worker.send(SetHyper({"clip_norm": None}))
        unclipped = out.wait_for(lambda s: isinstance(s, Snapshot) and s.hyper.clip_norm is None and s.step == 12)
        assert any(_CLIP in d.fixes for d in unclipped.diagnoses)
    finally:
        assert worker.stop(timeout=1.0)


def test_a_unit_clicked_during_a_phase_by_phase_step_is_written_out_when_the_step_ends() -> None:
    """Mid-step the click is remembered (the step under way is left alone); the update phase that ends
    the step writes the unit out, with the numbers autograd gives on the step's batch."""
    import copy

    import numpy as np

    from engine.neuron import NeuronTrace, PendingTrace
    from engine.worker import TraceUnit

    def phase_step_through(worker: Worker, out: Collector, click: TraceUnit | None) -> Snapshot:
        worker.send(Step())
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 1)
        worker.send(PhaseStep())
        worker.send(PhaseStep())
        first = out.wait_for(lambda s: isinstance(s, Snapshot) and s.phase is not None and s.phase.index == 1)
        if click is not None:
            worker.send(click)
            waiting = out.wait_for(lambda s: isinstance(s, Snapshot) and isinstance(s.neuron, PendingTrace))
            assert waiting.state == "stepping" and (waiting.neuron.layer, waiting.neuron.unit) == ("2", 1)
        for _ in range(first.phase.total - 2):
            worker.send(PhaseStep())
        return out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 2 and s.phase is not None
                            and s.phase.kind == "update")

    finished, models, batches = [], [], []
    for click in (TraceUnit("2", 1), None):  # the same run, with and without the click mid-step
        out = Collector()
        worker = Worker(out)
        worker.start(small_run)
        try:
            out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
            finished.append(phase_step_through(worker, out, click))
        finally:
            assert worker.stop(timeout=1.0)  # (its thread has ended: its model can be read here)
        models.append(worker.run.trainer.model)
        batches.append(worker.run.trainer.last_batch)
    done, model = finished[0], copy.deepcopy(models[0])
    assert isinstance(done.neuron, NeuronTrace) and (done.neuron.layer, done.neuron.unit) == ("2", 1)
    assert finished[1].neuron is None
    for a, b in zip(models[0].parameters(), models[1].parameters()):  # the step itself was not disturbed
        assert torch.equal(a, b)
    x, y = batches[0]
    model.eval()
    model.zero_grad(set_to_none=True)
    hidden = model[1](model[0](x))
    logits = model[2](hidden)
    logits.retain_grad()
    nn.functional.cross_entropy(logits, y).backward()
    trace = done.neuron
    np.testing.assert_allclose(trace.inputs, hidden[0].detach().double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(trace.z, float(logits.detach()[0, 1]), rtol=1e-5)
    np.testing.assert_allclose(trace.weight_grads, (logits.grad[0, 1] * hidden[0]).detach().double().numpy(),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(trace.batch_weight_grads, model[2].weight.grad[1].double().numpy(), rtol=1e-5,
                               atol=1e-9)


def test_a_unit_waiting_for_a_phase_by_phase_step_is_written_out_when_play_ends_it() -> None:
    from engine.neuron import NeuronTrace, PendingTrace
    from engine.worker import TraceUnit

    out = Collector()
    worker = Worker(out)
    worker.start(small_run)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
        worker.send(PhaseStep())
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "stepping")
        worker.send(TraceUnit("2", 1))
        out.wait_for(lambda s: isinstance(s, Snapshot) and isinstance(s.neuron, PendingTrace))
        worker.send(Play())
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step >= 2)
        worker.send(Pause())
        done = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused" and s.step >= 2)
        assert isinstance(done.neuron, NeuronTrace) and (done.neuron.layer, done.neuron.unit) == ("2", 1)
    finally:
        assert worker.stop(timeout=1.0)


def measured_steps(worker: Worker) -> np.ndarray:
    """The steps of the history that hold per-layer statistics (the measured ones)."""
    arrays = worker.current_history().to_arrays()
    first_stat = list(arrays["columns"]).index(f"{STAT_NAMES[0]}/{worker.run.trainer.probe.layer_names[0]}")
    steps, values = arrays["raw_steps"], arrays["raw_values"]
    return steps[np.isfinite(values[:, first_stat])]


def test_the_measuring_interval_applies_to_this_run_and_the_next() -> None:
    from engine.worker import SetMeasuring

    out = Collector()
    worker = Worker(out, publish_hz=0.01)  # (a display refresh also measures: none during this test)
    worker.start(small_run)
    try:
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
        worker.send(SetMeasuring(8))
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.capture_every == 8 and not s.capture_adaptive)
        worker.send(Play())
        time.sleep(1.0)  # (nothing is published while it runs)
        worker.send(Pause())
        paused = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "paused" and s.step >= 80)
        measured = measured_steps(worker)
        assert len(measured) >= 10 and set(measured % 8) == {0}, measured
        assert measured[-1] > paused.step - 8
        worker.send(Replace(small_run))  # a new run keeps the chosen interval
        replaced = out.wait_for(lambda s: isinstance(s, Snapshot) and s.run_id == paused.run_id + 1)
        assert replaced.capture_every == 8
        worker.send(SetMeasuring(None))
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.capture_adaptive)
        worker.send(SetMeasuring("auto"))  # back to the run's own setting: every step
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.capture_every == 1 and not s.capture_adaptive)
        assert worker.run.trainer.config.capture_every == 1
    finally:
        assert worker.stop(timeout=1.0)


def test_findings_before_training_are_published_at_once_and_overfitting_once_validation_climbs(tmp_path) -> None:
    """What checking a user's model found is in the first snapshot; a built-in run's validation
    passes reach the diagnostics as it trains."""
    from engine.scenarios import build_run, build_user_run

    model_file = tmp_path / "pixels.py"
    model_file.write_text("import torch\nfrom torch import nn\n\ndef build():\n    x = torch.rand(64, 3) * 255\n"
                          "    return nn.Linear(3, 2), (x, (x[:, 0] > 128).long()), nn.CrossEntropyLoss()\n")
    out = Collector()
    worker = Worker(out, publish_hz=2.0)  # (few snapshots while it runs, each a cost to the training thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (a small model on a busy 2-core machine: one thread is faster)
    worker.start(lambda: build_user_run(f"{model_file}:build", device="cpu"))
    try:
        first = out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
        assert [(d.code, d.step) for d in first.diagnoses] == [("input_scale", 0)]
        worker.send(Replace(lambda: build_run("overfit-mlp", device="cpu")))
        out.wait_for(lambda s: isinstance(s, Snapshot) and s.run_id == first.run_id + 1)
        worker.send(Play())
        found = out.wait_for(lambda s: isinstance(s, Snapshot) and any(d.code == "overfitting" for d in s.diagnoses),
                             timeout=60.0)
        worker.send(Pause())
        (d,) = [d for d in found.diagnoses if d.code == "overfitting"]
        assert d.evidence["best_step"] < d.step <= found.step
        assert all(d.code != "input_scale" for d in found.diagnoses)  # (that was the other run)
    finally:
        stopped = worker.stop(timeout=1.0)
        torch.set_num_threads(threads)
        assert stopped


def test_the_network_is_drawn_through_a_runs_first_phase_by_phase_step() -> None:
    """Before any step is measured there are no unit values, but the columns are there for the
    phase to be shown on (it said 'no network to show yet' for the whole first step)."""
    out = Collector()
    worker = Worker(out)
    worker.start(small_run)
    try:
        first = out.wait_for(lambda s: isinstance(s, Snapshot) and s.step == 0)
        assert first.network is None  # (nothing has run yet)
        worker.send(PhaseStep())
        stepping = out.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "stepping")
        network = stepping.network
        assert network is not None and network.column_names == ("input", "0", "2")
        assert network.column_sizes == (2, 8, 2)  # (small_run's Linear(2, 8), Tanh, Linear(8, 2))
        assert all(a is None for a in network.activations[1:]) and all(w is None for w in network.weights)
    finally:
        assert worker.stop(timeout=1.0)
