"""The neuron inspector writes out the unit it is given and asks for gradient checks."""
from __future__ import annotations

import numpy as np

from engine.neuron import GradientCheck, NeuronTrace
from engine.snapshot import Hyper, Metrics, Snapshot, ViewData
from widgets.neuron_inspector import NeuronInspector

TRACE = NeuronTrace(layer="layers.0.linear", unit=1, inputs=np.array([1.0, 2.0]), weights=np.array([0.1, 0.3]),
                    bias=0.0, z=0.7, activation="ReLU", output=0.7, delta=-0.5,
                    weight_grads=np.array([-0.5, -1.0]), bias_grad=-0.5)


def data(trace=None, check=None) -> ViewData:
    return ViewData(snapshot=Snapshot(run_id=1, step=3, state="paused", scenario="s", device="cpu", layers=(),
                                      metrics=Metrics(train_loss=1.0), hyper=Hyper(), neuron=trace,
                                      gradient_check=check))


def test_hint_until_a_unit_is_chosen(qtbot) -> None:
    view = NeuronInspector()
    qtbot.addWidget(view)
    view.render(data())
    assert "Click a unit" in view.hint


def test_writes_out_the_worked_example_and_asks_for_a_check(qtbot) -> None:
    view = NeuronInspector()
    qtbot.addWidget(view)
    view.render(data(TRACE))
    assert not view.hint
    assert "0.1·1 + 0.3·2 + 0 = 0.7" in view.forward.text() and "ReLU(z) = 0.7" in view.forward.text()
    assert "δ = ∂L/∂z = -0.5" in view.backward.text() and "-0.5·2 = -1" in view.backward.text()
    view.input_index.setValue(1)
    with qtbot.waitSignal(view.check_requested, timeout=1000) as blocker:
        view.check_button.click()
    assert blocker.args == ["layers.0.linear", 1, 1]
    view.render(data(TRACE, GradientCheck("layers.0.linear.weight", (1, 1), -1.0, -1.0000001)))
    assert "relative difference 1.0e-07" in view.check_result.text()
