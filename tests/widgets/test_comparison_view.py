"""ComparisonView: two runs' loss curves and per-layer gradient norms, with a summary for each."""
from __future__ import annotations

import numpy as np
import pytest

from engine.diagnostics import Diagnosis
from engine.snapshot import (
    STAT_INDEX,
    STAT_NAMES,
    Hyper,
    LayerInfo,
    Metrics,
    SeriesData,
    Snapshot,
    StatsFrame,
    ViewData,
)
from widgets.comparison_view import ComparisonView

LAYERS = (
    LayerInfo(0, "fc1", "Linear", "param", 30, (10, 3)),
    LayerInfo(1, "act", "Sigmoid", "activation", 0, None, "sigmoid"),
    LayerInfo(2, "fc2", "Linear", "param", 22, (2, 10)),
)


def side(step: int, grads: tuple[float, float], loss: np.ndarray, val_acc: float | None = None,
         findings: tuple = ()) -> ViewData:
    values = np.full((3, len(STAT_NAMES)), np.nan)
    values[0, STAT_INDEX["grad_norm"]], values[2, STAT_INDEX["grad_norm"]] = grads
    frame = StatsFrame(step, float(loss[-1]), ("fc1", "act", "fc2"), values, np.zeros((3, 4), np.float32),
                       np.linspace(-1, 1, 5))
    snapshot = Snapshot(1, step, "paused", "s", "cpu", LAYERS, Metrics(float(loss[-1]), val_acc=val_acc),
                        Hyper(), stats=frame, diagnoses=findings)
    steps = np.arange(1, len(loss) + 1, dtype=float)
    return ViewData(snapshot, (frame,), {"loss": SeriesData(steps, loss),
                                         "val_loss": SeriesData(steps[::10], loss[::10] + 0.1)})


def test_both_sides_draw_their_own_curves_and_gradients(qtbot) -> None:
    view = ComparisonView()
    qtbot.addWidget(view)
    assert "Run side by side" in view.hint
    view.set_names("10 sigmoid layers", "10 ReLU layers")
    vanishing = Diagnosis(code="vanishing_gradients", severity="warning", layers=("fc1",), step=2,
                          message="m", evidence={}, fixes=())
    view.set_side(0, side(50, (1e-9, 1e-2), np.full(50, 0.69), val_acc=0.42, findings=(vanishing,)))
    view.set_side(1, side(60, (3e-2, 1e-2), np.linspace(0.7, 0.05, 60), val_acc=0.99))
    assert view.hint == ""
    np.testing.assert_allclose(view.gradient_norms(0), [1e-9, 1e-2])
    np.testing.assert_allclose(view.gradient_norms(1), [3e-2, 1e-2])
    assert len(view.train_curves[0].xData) == 50 and len(view.train_curves[1].xData) == 60
    assert view.train_curves[1].yData[-1] == np.float64(0.05)
    assert len(view.val_curves[0].xData) == 5
    left, right = view.summaries[0].text(), view.summaries[1].text()
    assert "10 sigmoid layers" in left and "step 50" in left and "val acc 42 %" in left
    assert "vanishing gradients" in left
    assert "10 ReLU layers" in right and "val acc 99 %" in right and "no problems found" in right
    assert "step 10" in view.hover_at(10.2, 0.5)
    assert not view.loss_log_y  # 0.05 .. 0.8: a linear axis shows both
    view.set_side(0, side(50, (1e-9, 1e-2), np.geomspace(0.7, 9000.0, 50)))  # one run diverges
    assert view.loss_log_y
    view.clear()
    assert "Run side by side" in view.hint and view.gradient_norms(0).size == 0


def test_a_dead_layer_keeps_its_place_and_is_marked_zero(qtbot) -> None:
    # Side 0's first layer has a gradient of exactly 0: its head must stay at the head's place,
    # not slide to the input's, and the zero shows as a mark on the floor.
    view = ComparisonView()
    qtbot.addWidget(view)
    view.set_side(0, side(50, (0.0, 0.76), np.full(50, 0.69)))
    view.set_side(1, side(50, (3e-2, 1e-2), np.full(50, 0.5)))
    np.testing.assert_array_equal(view.grad_curves[0].xData, [0.0, 1.0])
    np.testing.assert_allclose(view.gradient_norms(0), [np.nan, 0.76])
    np.testing.assert_array_equal(view.zero_marks[0].xData, [0.0])
    assert view.zero_marks[0].yData[0] == pytest.approx(0.01)  # a decade under the smallest norm
    assert view.zero_marks[1].xData is None or len(view.zero_marks[1].xData) == 0
