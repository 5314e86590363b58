from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.batches import TensorBatches
from engine.run import Run
from engine.snapshot import Hyper
from engine.trainer import Trainer, TrainerConfig


def tiny_run() -> Run:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(96, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y),
                      hyper=Hyper(lr=0.01, batch_size=16), config=TrainerConfig(val_every=5),
                      val_data=(x[:32], y[:32]))
    return Run(name="tiny", trainer=trainer, boundary_data=(x.numpy(), y.numpy()), n_classes=2)


@pytest.fixture
def run_factory():
    return tiny_run
