"""The training loop: phase stepping, live hyperparameters, determinism, located errors."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from engine.batches import LoaderBatches, TensorBatches
from engine.snapshot import Hyper, PhaseInfo
from engine.trainer import StepError, Trainer, TrainerConfig


def make_trainer(seed: int = 0, hyper: Hyper | None = None, dropout: float = 0.2, **config) -> Trainer:
    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(dropout),
                          nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 3, generator=g)
    y = (x[:, 0] > x[:, 1]).long()
    return Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y, seed=seed),
                   hyper=hyper or Hyper(optimizer="adam", lr=0.01, batch_size=16),
                   config=TrainerConfig(seed=seed, **config), val_data=(x[:50], y[:50]))


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()] + \
           [b.detach().clone() for b in trainer.model.buffers()]


def phases_of_a_step(trainer: Trainer) -> list[PhaseInfo]:
    """Every phase of one step, taken one at a time, up to and including its update."""
    phases = [trainer.next_phase()]
    while phases[-1].kind != "update":
        phases.append(trainer.next_phase())
    return phases


def test_phase_by_phase_step_is_bit_identical_to_plain_step() -> None:
    plain, phased = make_trainer(), make_trainer()
    for _ in range(3):
        plain.step()
        phased.step()
    plain.step()
    phases = phases_of_a_step(phased)
    for a, b in zip(params(plain), params(phased)):
        assert torch.equal(a, b)
    # and the streams stay in lockstep afterwards (same batches, same dropout masks)
    plain.step()
    phased.step()
    for a, b in zip(params(plain), params(phased)):
        assert torch.equal(a, b)
    kinds = [p.kind for p in phases]
    modules = ["0", "1", "2", "3", "4", "5", "6"]
    forward = [p.module for p in phases if p.kind == "forward"]
    backward = [p.module for p in phases if p.kind == "backward"]
    assert forward == modules  # each module once going forward, in execution order
    assert backward == modules[::-1]  # once going back, in the order autograd reaches them
    assert kinds == ["forward"] * 7 + ["loss"] + ["backward"] * 7 + ["update"]
    assert all(p.total == len(phases) for p in phases)


def test_phase_tensors_are_that_steps_values() -> None:
    trainer = make_trainer(dropout=0.0)
    trainer.probe.focus_example = 0
    first = trainer.next_phase()
    x, _ = trainer.last_batch
    np.testing.assert_allclose(first.tensors["input"][0], x[0].numpy(), rtol=1e-6)
    w = trainer.model[0].weight.detach()
    b = trainer.model[0].bias.detach()
    np.testing.assert_allclose(first.tensors["output"][0], (x @ w.T + b)[0].numpy(), rtol=1e-5, atol=1e-6)
    phases = [first]
    while phases[-1].kind != "update":
        phases.append(trainer.next_phase())
    last_backward = [p for p in phases if p.kind == "backward"][-1]
    assert last_backward.module == "0"
    # the gradient shown is what autograd computed in that step, before the update
    assert "grad:weight" in last_backward.tensors and last_backward.tensors["grad:weight"].shape == (8, 3)
    loss_phase = next(p for p in phases if p.kind == "loss")
    assert np.isfinite(loss_phase.tensors["loss"]).all()


def test_step_mid_phase_finishes_the_pending_step() -> None:
    a, b = make_trainer(), make_trainer()
    a.step()
    b.next_phase()
    b.next_phase()
    b.step()  # completes the phased step rather than starting another
    assert b.step_count == 1
    for x, y in zip(params(a), params(b)):
        assert torch.equal(x, y)


def test_live_learning_rate_change_applies_at_next_update_without_reset() -> None:
    trainer = make_trainer(hyper=Hyper(optimizer="sgd", lr=0.1, batch_size=16), dropout=0.0)
    trainer.step()
    before = params(trainer)
    trainer.set_hyper(lr=0.0123)
    assert trainer.step_count == 1
    for x, y in zip(before, params(trainer)):
        assert torch.equal(x, y)  # the change itself touches no weight
    w = trainer.model[6].weight.detach().clone()
    trainer.probe.begin_step(False)
    trainer.step()
    grad = trainer.model[6].weight.grad
    np.testing.assert_allclose((w - trainer.model[6].weight.detach()).numpy(), (0.0123 * grad).numpy(),
                               rtol=1e-4, atol=1e-7)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0123


def test_optimizer_switch_keeps_weights_and_clip_norm_applies() -> None:
    trainer = make_trainer(hyper=Hyper(optimizer="sgd", lr=1.0, batch_size=16), dropout=0.0)
    trainer.step()
    before = params(trainer)
    trainer.set_hyper(optimizer="rmsprop", clip_norm=1e-3)
    for x, y in zip(before, params(trainer)):
        assert torch.equal(x, y)
    assert isinstance(trainer.optimizer, torch.optim.RMSprop)
    with pytest.raises(ValueError):
        trainer.set_hyper(lr=-1.0)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "rmsprop"])
def test_every_optimizer_reduces_the_loss(name: str) -> None:
    lr = {"sgd": 0.2, "momentum": 0.05}.get(name, 0.01)
    trainer = make_trainer(hyper=Hyper(optimizer=name, lr=lr, batch_size=64), dropout=0.0)
    first = trainer.validate()[0]
    for _ in range(60):
        trainer.step(capture=False)
    assert trainer.validate()[0] < 0.7 * first


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    runs = []
    for seed in (0, 0, 1):
        trainer = make_trainer(seed=seed)
        for _ in range(5):
            trainer.step()
        runs.append(params(trainer))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_reinitialize_restores_initial_state_for_same_seed() -> None:
    trainer = make_trainer(seed=3)
    trainer.reinitialize()
    start = params(trainer)
    for _ in range(4):
        trainer.step()
    trainer.reinitialize()
    assert trainer.step_count == 0
    assert all(torch.equal(a, b) for a, b in zip(start, params(trainer)))


def test_validation_every_n_steps() -> None:
    trainer = make_trainer(val_every=3)
    for _ in range(3):
        trainer.step()
    loss, acc, step = trainer.last_val
    assert step == 3 and 0 <= acc <= 1 and loss > 0


def test_inspect_leaves_training_untouched() -> None:
    a, b = make_trainer(), make_trainer()
    a.step()
    b.step()
    b.probe.focus_layer = "4"
    capture = b.inspect().get()
    assert capture.tensors.weight.shape == (8, 8)
    a.step()
    b.step()
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 4), Faulty())

    def forward(self, x):
        return self.inner(x)


class Faulty(nn.Module):
    def forward(self, x):
        raise ValueError("bad input to faulty layer\nsecond line")


def test_exception_in_forward_is_located() -> None:
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    trainer = Trainer(Exploding(), nn.functional.cross_entropy, TensorBatches(x, y))
    with pytest.raises(StepError) as info:
        trainer.step()
    err = info.value
    assert err.phase == "forward" and err.module == "inner.1"
    assert err.message == "ValueError during forward in inner.1 at step 1: bad input to faulty layer"
    assert not any(m._forward_hooks for m in trainer.model.modules())  # the captured step left none
    assert not trainer.probe.capturing and trainer.probe.attached


def test_non_scalar_loss_is_explained() -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    trainer = Trainer(nn.Linear(3, 2), lambda out, t: (out - t) ** 2, TensorBatches(x, y))
    with pytest.raises(StepError, match=r"loss returned \(10, 2\), expected a scalar"):
        trainer.step()


def test_loader_batches() -> None:
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = Trainer(nn.Linear(3, 2), nn.functional.cross_entropy, LoaderBatches(loader))
    for _ in range(5):  # crosses the loader's end twice
        trainer.step()
    assert trainer.step_count == 5 and len(trainer.last_batch[0]) in (8, 16)


def adaptive_interval(overhead: float) -> int:
    """The interval that keeps the average cost near 5 %: overhead / interval <= 0.05, at most 64."""
    return min(64, max(1, math.ceil(overhead / 0.05)))


def test_adaptive_capture_interval_and_overhead_published() -> None:
    trainer = make_trainer(capture_every=None)
    for i in range(40):
        trainer.step(capture=(i % 2 == 0))
    assert trainer.overhead is not None and trainer.overhead >= 0
    assert trainer.adaptive and trainer.capture_every == adaptive_interval(trainer.overhead)


def test_the_overhead_is_a_ratio_of_medians_that_a_stalled_step_does_not_move(monkeypatch) -> None:
    """Step times as a clock gives them: bare steps of 1 ms with one of 20 ms (the step waited on
    another thread), captured steps of 3 ms with one of 40 ms. The overhead is 3/1 - 1 = 2."""
    trainer = make_trainer()
    durations = [(False, 0.001)] * 8 + [(False, 0.020)] + [(True, 0.003)] * 8 + [(True, 0.040)]
    clock = iter(t for _, d in durations for t in (0.0, d))
    monkeypatch.setattr("engine.trainer.time.perf_counter", lambda: next(clock))
    for captured, _ in durations:
        trainer.step(capture=captured)
    assert trainer.overhead == pytest.approx(2.0)
    trainer.set_capture_every(None)
    assert trainer.capture_every == adaptive_interval(2.0) == 40


def captured_steps(trainer: Trainer, steps: int) -> list[int]:
    """The steps the trainer chooses to measure among the next ``steps`` (as the worker asks it)."""
    chosen = []
    for _ in range(steps):
        capture = trainer.should_capture()
        trainer.step(capture=capture)
        if capture:
            chosen.append(trainer.step_count)
    return chosen


def test_the_capture_interval_can_be_set_while_training() -> None:
    trainer = make_trainer()  # every step (one in 32 bare, to keep the overhead measured)
    assert captured_steps(trainer, 40) == [s for s in range(1, 41) if s != 32]
    trainer.set_capture_every(16)
    assert not trainer.adaptive
    assert captured_steps(trainer, 40) == [48, 64, 80]
    trainer.set_capture_every(None)  # adaptive: at once from the overhead measured so far
    assert trainer.adaptive and trainer.capture_every == adaptive_interval(trainer.overhead)
    trainer.reinitialize()
    assert trainer.adaptive, "a fresh start keeps the chosen interval"
    trainer.set_capture_every(1)
    assert not trainer.adaptive and trainer.capture_every == 1
    for bad in (0, -3, 2.5, True, "4"):
        with pytest.raises(ValueError, match="capture interval"):
            trainer.set_capture_every(bad)
    assert trainer.capture_every == 1 and not trainer.adaptive


def test_worked_example_gradients_through_trainer_step() -> None:
    """x = 2, w1 = 0.5, w2 = 1.5, y = 3, identity units, L = ½(ŷ − y)²: one SGD step of lr 1."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[1].weight.fill_(1.5)
    trainer = Trainer(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(),
                      TensorBatches(torch.tensor([[2.0]]), torch.tensor([[3.0]])),
                      hyper=Hyper(optimizer="sgd", lr=1.0, batch_size=1))
    trainer.step()
    assert model[0].weight.item() == pytest.approx(0.5 + 4.5)
    assert model[1].weight.item() == pytest.approx(1.5 + 1.5)


class OutOfMemory(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_is_explained_and_the_trainer_survives() -> None:
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    trainer = Trainer(OutOfMemory(), nn.functional.cross_entropy, TensorBatches(x, y))
    with pytest.raises(StepError) as info:
        trainer.step()
    assert info.value.message == \
        "out of memory during forward in OutOfMemory at step 1: try a smaller batch size or model"
    assert trainer.step_count == 0


class FailingOnce(torch.optim.SGD):
    """An optimizer whose next step raises (as CUDA running out of memory mid-update would)."""

    fail = False

    def step(self, closure=None):
        if self.fail:
            self.fail = False
            raise RuntimeError("the update failed")
        return super().step(closure)


def _with_failing_optimizer(trainer: Trainer) -> FailingOnce:
    trainer.optimizer = FailingOnce(trainer.model.parameters(), lr=0.01)
    return trainer.optimizer


def test_a_failed_update_queues_no_loss_for_the_step_that_never_counted() -> None:
    trainer = make_trainer(dropout=0.0)
    trainer.step(capture=False)  # one loss queued, shipped with the next capture
    optimizer = _with_failing_optimizer(trainer)
    optimizer.fail = True
    with pytest.raises(StepError, match="during update at step 2: the update failed"):
        trainer.step(capture=True)
    assert trainer.step_count == 1
    assert not any(m._forward_hooks for m in trainer.model.modules())
    result = trainer.step(capture=True)
    capture = result.capture.get()
    assert result.step == capture.frame.step == 2
    assert len(capture.scalars) == 2  # steps 1 and 2, none for the failed one
    assert np.isfinite(capture.scalars[:, 0]).all()


def test_a_failed_update_of_a_phase_by_phase_step_leaves_no_hooks_or_loss() -> None:
    trainer = make_trainer(dropout=0.0)
    optimizer = _with_failing_optimizer(trainer)
    while trainer.next_phase().kind != "backward":
        pass
    optimizer.fail = True
    with pytest.raises(StepError, match="during update"):
        while True:
            trainer.next_phase()
    assert not trainer.probe.armed and not trainer.probe.capturing
    assert not any(m._forward_hooks for m in trainer.model.modules())
    assert trainer.flush_scalars().shape == (0, 2)
    assert trainer.step(capture=True).capture.get().scalars.shape == (1, 2)


@pytest.mark.parametrize("changes, needle", [
    ({"clip_norm": -1.0}, "clipping"), ({"clip_norm": float("nan")}, "clipping"),
    ({"weight_decay": -0.1}, "weight decay"), ({"momentum": 1.0}, "momentum"),
    ({"lr": 0.0}, "learning rate"), ({"lr": float("inf")}, "learning rate"), ({"batch_size": 0}, "batch size"),
])
def test_hyperparameters_no_optimizer_can_use_are_refused(changes: dict, needle: str) -> None:
    trainer = make_trainer()
    before = trainer.hyper
    with pytest.raises(ValueError, match=needle):
        trainer.set_hyper(**changes)
    assert trainer.hyper == before
    with pytest.raises(ValueError, match=needle):
        make_trainer(hyper=Hyper(**{**dict(optimizer="adam", lr=0.01, batch_size=16), **changes}))


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        logits = self.fc(x)
        return logits, {"features": x}


def test_a_model_returning_a_tuple_trains_without_an_accuracy() -> None:
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    trainer = Trainer(TupleOut(), lambda out, t: nn.functional.cross_entropy(out[0], t),
                      TensorBatches(x, y), config=TrainerConfig(val_every=0))
    capture = trainer.step(capture=True).capture.get()
    assert np.isfinite(capture.scalars[0, 0]) and np.isnan(capture.scalars[0, 1])


def test_a_one_element_loss_counts_as_a_scalar() -> None:
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    model = nn.Linear(3, 1)
    trainer = Trainer(model, lambda out, t: ((out - t) ** 2).mean().reshape(1), TensorBatches(x, y),
                      hyper=Hyper(optimizer="sgd", lr=0.1, batch_size=20))
    with torch.no_grad():
        expected = float(((model(x) - y) ** 2).mean())
    capture = trainer.step(capture=True).capture.get()
    assert capture.scalars[0, 0] == pytest.approx(expected, rel=1e-6)


class Exits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        sys.exit("bye from forward")


def test_sys_exit_in_a_forward_is_a_located_step_error() -> None:
    trainer = Trainer(Exits(), nn.functional.cross_entropy,
                      TensorBatches(torch.randn(10, 3), torch.zeros(10, dtype=torch.long)))
    with pytest.raises(StepError, match="SystemExit during forward in Exits at step 1: bye from forward"):
        trainer.step()
    assert trainer.step_count == 0


def test_a_failing_validation_is_located_and_the_step_kept() -> None:
    trainer = make_trainer(val_every=2)
    trainer.val_data = (torch.randn(5, 4), torch.zeros(5, dtype=torch.long))  # the wrong width
    trainer.step(capture=True)
    with pytest.raises(StepError) as info:
        trainer.step(capture=True)
    assert info.value.phase == "validation" and info.value.step == 2
    assert trainer.step_count == 2
    kept = trainer.last_result
    assert kept.step == 2 and kept.capture.get().frame.step == 2


def test_nan_in_a_later_loader_batch_is_named() -> None:
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    x[37, 1] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = Trainer(nn.Linear(3, 2), nn.functional.cross_entropy, LoaderBatches(loader))
    trainer.step()
    trainer.step()
    with pytest.raises(StepError, match="during data loading at step 3: batch 3 of the data loader: its x holds 1 NaN "
                                        "or Inf values of 24"):
        trainer.step()
    assert trainer.step_count == 2


def test_the_pauses_between_phases_are_not_step_time() -> None:
    import time as clock

    trainer = make_trainer(dropout=0.0)
    for _ in range(4):
        trainer.step(capture=False)
        trainer.step(capture=True)
    overhead = trainer.overhead
    while trainer.next_phase().kind != "update":
        clock.sleep(0.05)  # a user reading each phase
    assert trainer.overhead == overhead  # the phased step left the timing alone


def test_reinitializing_mid_phase_step_drops_its_hooks_and_recording() -> None:
    trainer = make_trainer(dropout=0.0)
    trainer.next_phase()
    assert trainer.probe.armed
    trainer.reinitialize()
    assert not trainer.probe.armed and not trainer.probe.capturing and not trainer.in_phased_step
    assert not any(m._forward_hooks for m in trainer.model.modules())
    assert trainer.flush_scalars().shape == (0, 2)
    trainer.model(torch.randn(4, 3))  # an unrelated forward records nothing
    assert trainer.probe.phase_events() == []


def test_an_in_place_activation_shows_no_input_it_no_longer_has() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y),
                      hyper=Hyper(optimizer="sgd", lr=0.1, batch_size=8))
    phases = phases_of_a_step(trainer)
    relu = next(p for p in phases if p.kind == "forward" and p.module == "1")
    assert "input" not in relu.tensors and (relu.tensors["output"] >= 0).all()
    linear = next(p for p in phases if p.kind == "forward" and p.module == "0")
    assert "input" in linear.tensors


def test_a_focus_changed_between_phases_applies_from_the_next_step() -> None:
    trainer = make_trainer(dropout=0.0)
    trainer.probe.focus_layer = "0"
    trainer.next_phase()
    trainer.probe.focus_layer = "4"  # the user clicks another layer mid-step
    while trainer.next_phase().kind != "update":
        pass
    views = trainer.last_result.capture.get().tensors
    assert views.layer == "0" and views.weight is not None and views.weight.shape == (8, 3)
    views = trainer.step(capture=True, tensors=True).capture.get().tensors
    assert views.layer == "4" and views.weight.shape == (8, 8)


def test_a_part_the_user_keeps_in_eval_mode_stays_so_while_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():  # running statistics far from any batch's: using them changes every output
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(0.25)
    model[1].eval()  # fine-tuning habit: this batch norm keeps its running statistics
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).long()
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y),
                      hyper=Hyper(optimizer="sgd", lr=0.1, batch_size=64),
                      config=TrainerConfig(val_every=2), val_data=(x, y))
    before = [p.detach().clone() for p in model.parameters()]
    trainer.step()
    # The step's gradient is that of the model with the batch norm on its running statistics.
    reference = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p, q in zip(reference.parameters(), before):
            p.copy_(q)
        reference[1].running_mean.fill_(3.0)
        reference[1].running_var.fill_(0.25)
    reference[1].eval()
    xb, yb = trainer._last_batch
    nn.functional.cross_entropy(reference(xb), yb).backward()
    for p, q, r in zip(model.parameters(), before, reference.parameters()):
        torch.testing.assert_close(p.detach(), q - 0.1 * r.grad, rtol=1e-5, atol=1e-6)
    for _ in range(3):  # validation (every 2 steps) switches to eval mode and back
        trainer.step()
    assert model.training and model[0].training and not model[1].training
    assert torch.all(model[1].running_mean == 3.0), "its running statistics never moved"


def test_a_model_handed_over_in_eval_mode_trains_in_training_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    x = torch.randn(32, 3)
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, (x[:, 0] > 0).long()))
    trainer.step()
    assert all(module.training for module in model.modules())


def test_a_phased_step_says_whose_tensors_it_shows_and_what_the_update_changed() -> None:
    """Each phase names the example it shows of how big a batch; the update phase shows the focused
    layer's Δw (SGD: exactly -lr·dL/dw of an independent autograd pass), its values after, and
    ||Δw|| of every layer, with the optimizer, rate, clip and gradient norm it used."""
    import copy

    hyper = Hyper(optimizer="sgd", lr=0.1, batch_size=16, clip_norm=100.0)
    plain, trainer = make_trainer(hyper=hyper, dropout=0.0), make_trainer(hyper=hyper, dropout=0.0)
    plain.step()
    trainer.step()
    trainer.probe.focus_layer, trainer.probe.focus_example = "4", 3
    reference = copy.deepcopy(trainer.model)
    before = {name: p.detach().clone() for name, p in reference.named_parameters()}
    phases = phases_of_a_step(trainer)
    plain.step()
    for a, b in zip(params(plain), params(trainer)):  # (still bit-identical to a plain step)
        assert torch.equal(a, b)
    x, y = trainer.last_batch
    assert all(p.example == 3 and p.batch_size == 16 for p in phases)
    first = phases[0]
    assert first.module_type == "Linear"
    np.testing.assert_array_equal(first.tensors["input"][0], x[3].numpy())
    nn.functional.cross_entropy(reference(x), y).backward()
    grads = {name: p.grad for name, p in reference.named_parameters()}
    update = phases[-1]
    assert (update.kind, update.module, update.module_type) == ("update", "4", "Linear")
    assert (update.optimizer, update.lr, update.clip_norm) == ("sgd", 0.1, 100.0)
    total = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
    assert update.grad_norm == pytest.approx(float(total), rel=1e-5)
    np.testing.assert_allclose(update.tensors["\u0394weight"], (-0.1 * grads["4.weight"]).numpy(), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(update.tensors["\u0394bias"][0], (-0.1 * grads["4.bias"]).numpy(), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_array_equal(update.tensors["weight"], trainer.model[4].weight.detach().numpy())
    assert update.axes["\u0394weight"] == ("output units", "input units")
    changes = {name: (moved, size) for name, moved, size in update.changes}
    assert set(changes) == {"0", "1", "4", "6"}  # every module owning parameters
    for name, (moved, size) in changes.items():
        module = trainer.model.get_submodule(name)
        true_moved = math.sqrt(sum(float(((p.detach() - before[f"{name}.{pname}"]) ** 2).sum())
                                   for pname, p in module.named_parameters()))
        true_size = math.sqrt(sum(float((before[f"{name}.{pname}"] ** 2).sum()) for pname, _ in
                                  module.named_parameters()))
        assert moved == pytest.approx(true_moved, rel=1e-5) and size == pytest.approx(true_size, rel=1e-6)


def test_phase_axes_name_what_rows_and_columns_are() -> None:
    """Tokens x features for a sequence, channels x pixels for an image until it is flattened,
    output x input units for a weight, and a conv kernel's real shape."""
    torch.manual_seed(0)
    tokens = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 4))
    x = torch.randint(0, 10, (8, 5))
    trainer = Trainer(tokens, lambda out, y: nn.functional.cross_entropy(out.reshape(-1, 4), y.reshape(-1)),
                      TensorBatches(x, torch.randint(0, 4, (8, 5))), hyper=Hyper(batch_size=8))
    phases = phases_of_a_step(trainer)
    linear = next(p for p in phases if p.kind == "forward" and p.module == "1")
    assert linear.tensors["output"].shape == (5, 4)  # (what the axes below name)
    assert linear.axes["output"] == ("tokens", "features") and linear.axes["input"] == ("tokens", "features")
    embed = next(p for p in phases if p.kind == "backward" and p.module == "0")
    assert embed.axes["grad:weight"] == ("tokens of the vocabulary", "features")

    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    images = torch.randn(8, 1, 6, 6)
    trainer = Trainer(conv, nn.functional.cross_entropy, TensorBatches(images, torch.randint(0, 3, (8,))),
                      hyper=Hyper(batch_size=8))
    phases = phases_of_a_step(trainer)
    by = {(p.kind, p.module): p for p in phases}
    stacked = ("rows of each channel's map, stacked", "pixel columns")
    assert by["forward", "0"].axes["output"] == stacked and by["forward", "0"].axes["input"] == stacked
    assert by["forward", "0"].tensors["output"].shape == (4 * 4, 4)  # (4 channels of 4 × 4 maps)
    batch = trainer._last_batch[0]  # each channel's map is drawn as a picture: its rows stay rows
    np.testing.assert_array_equal(by["forward", "0"].tensors["input"], batch[phases[0].example, 0].numpy())
    assert by["forward", "1"].axes["output"] == stacked
    assert by["forward", "2"].axes["output"] == ("", "features")  # flattened
    assert by["backward", "0"].shapes["grad:weight"] == tuple(conv[0].weight.shape) == (4, 1, 3, 3)
    assert by["backward", "0"].axes["grad:weight"] == ("filters", "input channels\u00b7kernel pixels")
    assert by["backward", "3"].axes["grad:weight"] == ("output units", "input units")


def test_a_forward_phase_whose_input_is_a_residual_sum_says_so_and_shows_that_sum() -> None:
    """A residual connection's x + sublayer(x) is made in forward code, not by a module, so no
    phase of its own shows it: the phase of the module it feeds says its input is such a sum, and
    that input equals the sum computed here on a copy of the model (and only those phases say so)."""
    import copy

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(3, 6)
            self.sub = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
            self.norm = nn.LayerNorm(6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            h = self.inp(x)
            return self.head(self.norm(h + self.sub(h)).mean(dim=1))

    torch.manual_seed(0)
    model = Residual()
    x, y = torch.randn(16, 4, 3), torch.randint(0, 2, (16,))
    twin = copy.deepcopy(model)
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y, shuffle=False),
                      hyper=Hyper(batch_size=16), config=TrainerConfig(val_every=0))
    trainer.probe.focus_example = 5
    forward = []
    while (phase := trainer.next_phase()).kind != "update":
        if phase.kind == "forward":
            forward.append(phase)
    assert {p.module: p.input_is_sum for p in forward} == {
        "inp": False, "sub.0": False, "sub.1": False, "norm": True, "head": False}
    h = twin.inp(x)
    summed = (h + twin.sub(h)).detach()[5]
    shown = next(p for p in forward if p.module == "norm").tensors["input"]
    np.testing.assert_allclose(shown, summed.numpy(), rtol=1e-5, atol=1e-6)


def test_a_module_called_twice_is_marked_a_sum_only_for_the_call_that_takes_one() -> None:
    class SharedDrop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.drop = nn.Dropout(0.0)  # (no parameters: a walk-only module, called twice)

        def forward(self, x):
            h = self.drop(self.a(x))
            return self.head(self.drop(h + self.b(h)))

    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    trainer = Trainer(SharedDrop(), nn.functional.cross_entropy, TensorBatches(x, y), hyper=Hyper(batch_size=8),
                      config=TrainerConfig(val_every=0))
    marks = []
    while (phase := trainer.next_phase()).kind != "update":
        if phase.kind == "forward":
            marks.append((phase.module, phase.input_is_sum))
    assert marks == [("a", False), ("drop", False), ("b", False), ("drop", True), ("head", False)]


def test_validation_of_a_model_whose_output_is_not_batch_first_runs_it_whole() -> None:
    """A (T, N, C) output can't be joined chunk by chunk along its first dimension: the set goes
    through at once, and the loss is the whole set's."""
    from engine.trainer import VAL_CHUNK

    class TimeFirstOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):  # (N, T, 3) -> (T, N, 2)
            return self.fc(x).transpose(0, 1)

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out.mean(0), y)

    torch.manual_seed(0)
    x, y = torch.randn(20, 5, 3), torch.randint(0, 2, (20,))
    xv, yv = torch.randn(VAL_CHUNK + 40, 5, 3), torch.randint(0, 2, (VAL_CHUNK + 40,))
    trainer = Trainer(TimeFirstOut(), loss_fn, TensorBatches(x, y), val_data=(xv, yv),
                      config=TrainerConfig(val_every=0))
    loss, _ = trainer.validate()
    with torch.no_grad():
        expected = float(loss_fn(trainer.model(xv), yv))
    assert loss == pytest.approx(expected, rel=1e-6)
