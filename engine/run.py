"""A run: one trainer plus what the views need to know about its data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.trainer import Trainer

if TYPE_CHECKING:
    from engine.diagnostics import Diagnosis
    from engine.views import DataFlow

__all__ = ["Run"]


@dataclass
class Run:
    """Everything the worker needs about one training run.

    Mutable on purpose: it lives on the training thread only; what crosses threads is the
    :class:`~engine.snapshot.Snapshot` built from it.
    """

    name: str
    trainer: Trainer
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # JSON-able, saved in run files
    # (points (N, 2), labels (N,)) of 2-D classification data, for the decision boundary
    boundary_data: tuple[np.ndarray, np.ndarray] | None = None
    n_classes: int = 0
    token_names: tuple[str, ...] | None = None
    # What a user's model and loss warned of on their first batch (``validate_user_model``)
    model_warnings: tuple[str, ...] = ()
    # What checking a user's model on its first batch found (``check_user_model``): findings from
    # before training, such as ``input_scale``
    model_findings: tuple[Diagnosis, ...] = ()
    # Which layer feeds which, traced once by the network view (``engine.views``) on first use
    data_flow: DataFlow | None = field(default=None, repr=False)
