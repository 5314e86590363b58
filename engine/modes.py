"""Each module's own mode (training or eval), kept and given back.

``model.train(flag)`` sets every module alike, so a part the user keeps in eval mode on purpose
(a batch norm on its running statistics while fine-tuning) would train in training mode. The
trainer, the displays that run the model in eval mode and the model-file check use these instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["Modes", "modes_of", "training_modes", "restore", "eval_mode"]

Modes = list[tuple[nn.Module, bool]]


def modes_of(model: nn.Module) -> Modes:
    """Every module's mode as it is now."""
    return [(module, module.training) for module in model.modules()]


def training_modes(model: nn.Module) -> Modes:
    """Each module's mode while the model trains: as the model came, when it came in training
    mode (a part in eval mode stays so); every module in training mode otherwise (a model handed
    over in eval mode, as after loading it, is trained in training mode)."""
    return [(module, module.training if model.training else True) for module in model.modules()]


def restore(modes: Modes) -> None:
    """Put each module back in its mode (touching only those that changed: cheaper than
    ``model.train()``, which sets every module)."""
    for module, mode in modes:
        if module.training is not mode:
            module.training = mode


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode, each module's own mode given back after."""
    modes = modes_of(model)
    model.eval()
    try:
        yield
    finally:
        restore(modes)
