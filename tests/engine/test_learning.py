"""Each built-in model learns its matching data within a bounded number of CPU steps."""
from __future__ import annotations

import pytest
import torch

from engine.scenarios import build_run
from engine.trainer import accuracy


def train_accuracy(scenario: str, steps: int, seed: int = 0, **overrides) -> tuple[float, float]:
    """Train a built-in scenario headless; (train accuracy, validation accuracy) at the end."""
    run = build_run(scenario, device="cpu", seed=seed, capture_every=16, val_every=0, **overrides)
    trainer = run.trainer
    try:
        for _ in range(steps):
            trainer.step()
        x, y = trainer.batches.x, trainer.batches.y
        trainer.model.eval()
        with torch.no_grad(), trainer.probe.suspended():
            train_acc = float(accuracy(trainer.model(x), y))
        val_acc = trainer.validate()[1]
        return train_acc, val_acc
    finally:
        trainer.close()


@pytest.mark.slow
def test_spirals_mlp_reaches_95_percent() -> None:
    train, _ = train_accuracy("spirals-mlp", 1500)
    assert train >= 0.95


# The CNN on shapes, the transformer on reverse and the LSTM against the tanh RNN are the
# lessons gallery's experiments: tests/engine/test_lessons.py checks them through the report.
