"""Recorded end-of-step reductions: a replay computes what the step's own run would have.

On a CPU, ``record_by_rerunning`` stands in for a CUDA graph with the semantics that matter here:
a replay runs the function *of the step that was recorded*, on the recording's own tensors, into
the same output. A reduction that read anything but its inputs (a tensor of the recorded step
held in a closure) would give that step's figures again, and these tests would see it. The CUDA
graphs themselves are checked in tests/engine/test_cuda.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine.device_stats as device_stats
import engine.probe as probe_module
from engine.probe import Probe, ProbeConfig
from engine.snapshot import STAT_INDEX
from engine.step_graph import GRAPH_MEMORY_SHARE, Recording, StepGraphs, graph_input_max, record_by_rerunning

from .test_probe import CASES, loss_fn


def _sum_and_scale(tensors: list[torch.Tensor]) -> torch.Tensor:
    a, b = tensors
    return torch.cat([a.sum().reshape(1), b * 2])


def test_an_arrangement_is_recorded_the_second_time_and_replayed_on_new_inputs() -> None:
    graphs = StepGraphs(record_by_rerunning)
    owner = object()
    results = []
    for step in range(4):
        inputs = [torch.full((3,), float(step)), torch.arange(2.0) + step]
        out = graphs.run(owner, ("t",), _sum_and_scale, inputs)
        results.append(out.clone())
        np.testing.assert_array_equal(out.numpy(), _sum_and_scale(inputs).numpy())
    assert graphs.recorded == 1 and graphs.replayed == 3  # the first run eager, then one recording
    assert results[0][0] == 0 and results[3][0] == 9


def test_other_shapes_owners_and_templates_are_other_recordings() -> None:
    graphs = StepGraphs(record_by_rerunning)
    owner, other = object(), object()
    calls = [(owner, ("t",), 3), (owner, ("t",), 4), (other, ("t",), 3), (owner, ("u",), 3)]
    for _ in range(2):
        for who, template, size in calls:
            inputs = [torch.ones(size), torch.ones(2)]
            np.testing.assert_array_equal(graphs.run(who, template, _sum_and_scale, inputs).numpy(),
                                          [size, 2.0, 2.0])
    assert graphs.recorded == 4 and graphs.replayed == 4


def test_only_the_newest_recordings_are_kept() -> None:
    graphs = StepGraphs(record_by_rerunning)
    owner = object()
    for _ in range(2):
        for size in range(1, StepGraphs.KEPT + 2):
            graphs.run(owner, (), _sum_and_scale, [torch.ones(size), torch.ones(1)])
    assert len(graphs._kept) == StepGraphs.KEPT
    assert graphs.recorded == StepGraphs.KEPT + 1


def test_a_failed_recording_turns_graphs_off_and_the_step_is_still_computed() -> None:
    def refuse(reduce, inputs) -> Recording:
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    graphs = StepGraphs(refuse)
    inputs = [torch.ones(3), torch.ones(2)]
    for _ in range(3):
        np.testing.assert_array_equal(graphs.run(object, (), _sum_and_scale, inputs).numpy(), [3.0, 2.0, 2.0])
    assert graphs.off_because == "RuntimeError: operation not permitted when stream is capturing"
    assert graphs.recorded == graphs.replayed == 0


def test_a_recording_whose_replay_differs_is_dropped() -> None:
    """The first replay is checked against the eager result: one that doesn't follow its inputs
    (here: a replay that does nothing) turns graphs off, and every step is still right."""
    def inert(reduce, inputs) -> Recording:
        static = [torch.zeros_like(t) for t in inputs]
        return Recording(static, reduce(static), lambda: None, (reduce,))

    graphs = StepGraphs(inert)
    for step in range(3):
        inputs = [torch.full((3,), step + 1.0), torch.ones(2)]
        np.testing.assert_array_equal(graphs.run(object, (), _sum_and_scale, inputs).numpy(),
                                      [3.0 * (step + 1), 2.0, 2.0])
    assert graphs.off_because == "ValueError: a replay differed from the same reductions run eagerly (by up to 6)"
    assert graphs.recorded == 0


def _lockstep_steps(name: str, steps: int, tensors_every: int = 0, examples: tuple[int, ...] = (0,)) \
        -> tuple[list, list, Probe]:
    """The same training, measured with recorded reductions and without: each step's captures
    (the focus example of step k is ``examples[k % len(examples)]``)."""
    make_model, make_x, make_y = CASES[name]
    captures: list[list] = [[], []]
    probes = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        probe = Probe(model, ProbeConfig(host_statistics=False, step_graphs=graphed))
        probe.graphs = StepGraphs(record_by_rerunning)
        probe.focus_layer = probe.layers[0].name
        generator = torch.Generator().manual_seed(1)
        with probe:
            for step in range(steps):
                torch.manual_seed(100 + step)  # the same batch, and dropout, in both runs
                x, y = make_x(), make_y()
                x = x + 0.1 * torch.randn(x.shape, generator=generator) if x.is_floating_point() else x
                probe.focus_example = examples[step % len(examples)]
                probe.begin_step(True, tensors=bool(tensors_every) and step % tensors_every == 0)
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                probe.after_backward()
                probe.before_update()
                optimizer.step()
                probe.after_update()
                captures[graphed].append(probe.finish(step, torch.stack([loss.detach(), loss.detach()])).get())
        probes.append(probe)
    return captures[0], captures[1], probes[1]


def _assert_same(eager, graphed) -> None:
    for a, b in zip(eager, graphed):
        # (A recording's inputs are dense copies: an expanded gradient is summed in another order.)
        np.testing.assert_allclose(b.frame.values, a.frame.values, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(b.frame.histograms, a.frame.histograms)
        np.testing.assert_array_equal(b.scalars, a.scalars)
        assert (a.tensors is None) == (b.tensors is None)
        if a.tensors is not None:
            for field in ("weight", "weight_grad", "weight_update", "activation", "output_grad", "feature_maps",
                          "kernels", "attention"):
                np.testing.assert_array_equal(getattr(b.tensors, field), getattr(a.tensors, field))
        for kind in ("unit_values", "unit_grads", "graph_weights"):
            assert getattr(b, kind).keys() == getattr(a, kind).keys()
            for name, value in getattr(a, kind).items():
                np.testing.assert_array_equal(getattr(b, kind)[name], value)


@pytest.mark.parametrize("name", list(CASES))
def test_replayed_reductions_give_each_steps_own_figures(name: str) -> None:
    eager, graphed, probe = _lockstep_steps(name, steps=5)
    assert probe.graphs.recorded == 1 and probe.graphs.replayed == 4 and probe.graphs.off_because is None
    _assert_same(eager, graphed)
    # Each step's figures are its own (a replay that read the recorded step's tensors would repeat them).
    grads = [c.frame.values[:, STAT_INDEX["grad_norm"]] for c in graphed]
    assert all(not np.array_equal(grads[i], grads[i + 1], equal_nan=True) for i in range(len(grads) - 1))


@pytest.mark.parametrize("name", ["mlp", "transformer", "cnn_large_outputs"])
def test_replays_with_segment_sums_and_steps_with_views_between(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters and outputs summed by segments (as mid-sized models are), and steps that ship
    views alternating with steps that don't: two arrangements, each recorded and replayed."""
    monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
    eager, graphed, probe = _lockstep_steps(name, steps=8, tensors_every=2)
    # Each arrangement runs eagerly once, then is recorded and replayed; the first step's views
    # may be an arrangement of their own (a conv target is picked among layers that have run).
    assert probe.graphs.recorded == 2 and probe.graphs.replayed in (5, 6)
    _assert_same(eager, graphed)


@pytest.mark.parametrize("name", ["mlp", "cnn_large_outputs"])
def test_views_left_to_a_replay_follow_the_focus_example(name: str) -> None:
    """Views of what the probe holds are computed by the replay too; a replay fixes the example it
    was recorded with, so another example is another recording."""
    eager, graphed, probe = _lockstep_steps(name, steps=12, tensors_every=1, examples=(0, 0, 0, 3, 3, 3, 1, 1, 1, 1))
    _assert_same(eager, graphed)
    assert probe.graphs.recorded >= 2 and probe.graphs.replayed >= 4 and probe.graphs.off_because is None


def test_big_models_and_recorded_steps_are_not_graphed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past GRAPH_INPUT_MAX the reductions run as they come; so does a phase-by-phase step."""
    monkeypatch.setattr(probe_module, "GRAPH_INPUT_MAX", 100)
    eager, graphed, probe = _lockstep_steps("mlp", steps=4)
    assert probe.graphs.recorded == probe.graphs.replayed == 0
    _assert_same(eager, graphed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = Probe(model, ProbeConfig(host_statistics=False, step_graphs=True))
    probe.graphs = StepGraphs(record_by_rerunning)
    with probe:
        for _ in range(4):
            probe.begin_step(True, record=True)
            model(torch.randn(5, 3)).sum().backward()
            probe.after_backward()
            probe.finish(1, torch.zeros(2)).get()
    assert probe.graphs.recorded == 0


def test_held_output_gradients_are_not_changed_by_the_rest_of_backward() -> None:
    """The device path holds small output gradients until the step's end: what backward does
    after their hooks (accumulating into a shared input, in-place ops) must not change them."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.a(x))
            return self.b(h) + self.b(h * 2).relu_()  # b's output used twice, an in-place op after

    torch.manual_seed(0)
    model, x = Shared(), torch.randn(6, 4)
    seen: dict[str, list[torch.Tensor]] = {}  # each call's output gradient, copied as its hook ran

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            out.register_hook(lambda grad: seen.setdefault(name, []).append(grad.clone()))
        return hook

    for name, module in model.named_children():
        module.register_forward_hook(keep(name))
    probe = Probe(model, ProbeConfig(host_statistics=False))
    with probe:
        probe.begin_step(True)
        model(x).square().sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(2)).get()
    column = STAT_INDEX["grad_output_norm"]
    for row, name in enumerate(capture.frame.layer_names):
        want = np.sqrt(sum(float(grad.double().square().sum()) for grad in seen[name]))
        np.testing.assert_allclose(capture.frame.values[row, column], want, rtol=1e-6)



def _graph_inputs(probe: Probe) -> int:
    """Values the newest recording's inputs hold."""
    kept = list(probe.graphs._kept.values())[-1]
    return sum(t.numel() for t in kept.recording.inputs)


def test_outputs_over_the_held_limit_are_reduced_in_their_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conv, batch-norm and ReLU outputs of this cnn hold 12 * 8 * 28 * 28 values each: held for
    the graph under the default limit, reduced in their hooks under one just below; the figures are
    the same either way."""
    big = 12 * 8 * 28 * 28
    _, _, holding = _lockstep_steps("cnn_large_outputs", steps=4)
    monkeypatch.setattr(probe_module, "GRAPH_HELD_MAX", big - 1)
    eager, graphed, probe = _lockstep_steps("cnn_large_outputs", steps=4)
    _assert_same(eager, graphed)
    assert probe.graphs.recorded >= 1 and probe.graphs.replayed >= 2 and probe.graphs.off_because is None
    assert _graph_inputs(holding) - _graph_inputs(probe) >= 3 * big


def test_a_graphs_inputs_are_bounded_by_the_gpus_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 1 << 30

    class Properties:
        total_memory = 8 * gib

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    # 1/GRAPH_MEMORY_SHARE of 8 GiB, in float32 values
    assert graph_input_max(cuda, 1 << 40) == 8 * gib // (4 * GRAPH_MEMORY_SHARE)
    assert graph_input_max(cuda, 1000) == 1000
    assert graph_input_max(cpu, 1 << 40) == 1 << 40
