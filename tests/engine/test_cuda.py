"""On a CUDA GPU: a captured step synchronises nowhere; its one host copy is read a step later.

Skipped without CUDA. Run on a GPU machine with `pytest tests/engine/test_cuda.py`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.scenarios import build_run
from engine.snapshot import STAT_INDEX

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("scenario", ["spirals-mlp", "shapes-cnn", "reverse-transformer", "long-range-lstm"])
def test_captured_step_does_not_synchronise(scenario: str) -> None:
    run = build_run(scenario, device="cuda", val_every=0)
    trainer = run.trainer
    trainer.probe.focus_layer = next(info.name for info in trainer.probe.layers if info.params)
    try:
        for _ in range(3):  # warm-up: lazy CUDA init, allocator, first-capture layer order
            result = trainer.step(capture=True, tensors=True)
            result.capture.get()
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
