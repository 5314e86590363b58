"""On a CUDA GPU: a captured step synchronises nowhere; its one host copy is read a step later;
the end-of-step reductions replayed from CUDA graphs compute what they compute eagerly.

Skipped without CUDA. Run on a GPU machine with `pytest tests/engine/test_cuda.py`.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import engine.device_stats as device_stats
import engine.probe as probe_module
from engine.scenarios import build_run
from engine.snapshot import STAT_INDEX
from engine.step_graph import StepGraphs

SCENARIOS = ["spirals-mlp", "shapes-cnn", "reverse-transformer", "long-range-lstm"]

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _parameters_by_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small models' parameters taken as big ones' are: in groups, by rows (``Segments.row_piece``)."""
    monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
    monkeypatch.setattr(device_stats, "ROWS_FROM", 0)
    monkeypatch.setattr(device_stats, "SEGMENT_ROW", 64)
    monkeypatch.setattr(probe_module, "DEVICE_PARAM_GROUP", 4096)


@pytest.mark.parametrize("mode", ["eager", "graphs", "rows"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_captured_step_does_not_synchronise(scenario: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    graphs = mode == "graphs"
    if mode == "rows":
        _parameters_by_rows(monkeypatch)
    run = build_run(scenario, device="cuda", val_every=0)
    trainer = run.trainer
    trainer.probe.config = dataclasses.replace(trainer.probe.config, step_graphs=graphs)
    trainer.probe.focus_layer = next(info.name for info in trainer.probe.layers if info.params)
    try:
        # Warm-up: lazy CUDA init, allocator, first-capture layer order; with graphs, both
        # arrangements below recorded (recording synchronises, once).
        for _ in range(3):
            for tensors in (True, False):
                trainer.step(capture=True, tensors=tensors).capture.get()
        replayed = trainer.probe.graphs.replayed
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            first = trainer.step(capture=True, tensors=True)
            second = trainer.step(capture=True, tensors=False)
            third = trainer.step(capture=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        capture = first.capture.get()  # read a step later, outside the no-sync zone
        frame = capture.frame
        assert np.isfinite(frame.loss)
        grad = frame.values[:, STAT_INDEX["grad_norm"]]
        assert np.isfinite(grad[~np.isnan(grad)]).all() and (grad[~np.isnan(grad)] > 0).any()
        assert capture.tensors is not None and capture.tensors.weight is not None
        assert second.capture.get().frame.step == first.capture.get().frame.step + 1
        assert third.capture is None
        if graphs:
            assert trainer.probe.graphs.off_because is None
            assert trainer.probe.graphs.replayed == replayed + 2
    finally:
        trainer.close()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replayed_reductions_match_eager_ones(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step's reductions run eagerly too, on the same inputs, and the replay must agree."""
    checked: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    run_graphed = StepGraphs.run

    def run_both(self, owner, template, reduce, inputs):
        want = reduce(inputs).clone()
        got = run_graphed(self, owner, template, reduce, inputs)
        checked.append((self.replayed, got.clone(), want))
        return got

    monkeypatch.setattr(StepGraphs, "run", run_both)
    run = build_run(scenario, device="cuda", val_every=0)
    trainer = run.trainer
    trainer.probe.config = dataclasses.replace(trainer.probe.config, step_graphs=True)
    try:
        for step in range(10):
            trainer.step(capture=True, tensors=step % 3 == 0).capture.get()
        graphs = trainer.probe.graphs
        assert graphs.off_because is None and graphs.recorded >= 2 and graphs.replayed >= 5
        for _, got, want in checked:  # (float64 atomic sums may add in another order)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert len({replayed for replayed, _, _ in checked}) >= 5  # replays happened among them
    finally:
        trainer.close()


def test_cuda_statistics_match_cpu() -> None:
    """The same step on both devices gives the same statistics (up to float rounding)."""
    frames = []
    for device in ("cpu", "cuda"):
        run = build_run("spirals-mlp", device=device, val_every=0)
        frames.append(run.trainer.step(capture=True).capture.get().frame)
        run.trainer.close()
    cpu, gpu = frames
    both = ~np.isnan(cpu.values)
    assert (both == ~np.isnan(gpu.values)).all()
    np.testing.assert_allclose(gpu.values[both], cpu.values[both], rtol=1e-3, atol=1e-5)


class _Mixed(torch.nn.Module):
    """Big conv outputs (reduced in their hooks), small ones (batched), ReLU and sigmoid units,
    and over 65,536 parameters (segment sums): every reduction the device path has."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.hidden = torch.nn.Linear(16 * 16, 300)
        self.sigmoid = torch.nn.Sigmoid()
        self.head = torch.nn.Linear(300, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.conv(x))).flatten(1)
        return self.head(self.sigmoid(self.hidden(h)))


@pytest.mark.parametrize("rows", [False, True], ids=["segments", "rows"])
def test_device_path_on_cuda_matches_the_host_path(rows: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same step measured by numpy on the CPU and by the batched reductions on CUDA (and
    with its parameters taken by rows, as a big model's are)."""
    from engine.probe import Probe

    if rows:
        _parameters_by_rows(monkeypatch)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cpu_model = _Mixed()
    with torch.no_grad():
        cpu_model.conv.bias[:4] = -50.0  # four dead channels
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x, y = torch.randn(32, 3, 24, 24), torch.randint(0, 5, (32,))
    frames, views = [], []
    for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        probe = Probe(model)
        probe.focus_layer = "conv"
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with probe:
            for _ in range(2):  # the second capture runs on the order the first one fixed
                probe.begin_step(True, tensors=True)
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
                probe.after_backward()
                probe.before_update()
                optimizer.step()
                probe.after_update()
                capture = probe.finish(1, torch.zeros(1, 2, device=device)).get()
        frames.append(capture.frame)
        views.append(capture.tensors)
    cpu, gpu = frames
    assert cpu.layer_names == gpu.layer_names
    both = ~np.isnan(cpu.values)
    assert (both == ~np.isnan(gpu.values)).all()
    np.testing.assert_allclose(gpu.values[both], cpu.values[both], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gpu.histograms, cpu.histograms, atol=2e-3)  # a value on a bin edge may move
    assert cpu.values[cpu.layer_names.index("relu"), STAT_INDEX["dead_fraction"]] == pytest.approx(4 / 16)
    for field in ("weight", "weight_grad", "activation", "feature_maps", "kernels"):
        np.testing.assert_allclose(getattr(views[1], field), getattr(views[0], field), rtol=1e-4, atol=1e-6)
