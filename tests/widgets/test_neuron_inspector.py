"""The neuron inspector writes out the unit it is given and asks for gradient checks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.neuron import GradientCheck, NeuronTrace, PendingTrace
from engine.snapshot import Hyper, Metrics, Snapshot, ViewData
from widgets.neuron_inspector import NeuronInspector

TRACE = NeuronTrace(layer="layers.0.linear", unit=1, inputs=np.array([1.0, 2.0]), weights=np.array([0.1, 0.3]),
                    bias=0.0, z=0.7, activation="ReLU", output=0.7, delta=-0.5,
                    weight_grads=np.array([-0.5, -1.0]), bias_grad=-0.5)


def data(trace=None, check=None, state: str = "paused") -> ViewData:
    return ViewData(snapshot=Snapshot(run_id=1, step=3, state=state, scenario="s", device="cpu", layers=(),
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


def test_says_which_gradient_is_one_examples_share_and_which_is_the_whole_batchs(qtbot) -> None:
    # example 1 of a batch of 4 whose loss is a mean; the batch's row of dL/dW is the 4 shares added up
    trace = replace(TRACE, example=1, batch_size=4, batch_weight_grads=np.array([-2.0, 0.25]), batch_bias_grad=-1.5,
                    reduction="mean")
    view = NeuronInspector()
    qtbot.addWidget(view)
    view.render(data(trace, GradientCheck("layers.0.linear.weight", (1, 0), -2.0, -2.0000001)))
    assert "example 1 of a batch of 4" in view.heading.text()
    assert view.backward.text().startswith("For example 1 of the batch: δ = ∂L/∂z = -0.5;  its share of ∂L/∂wᵢ is δ·aᵢ")
    assert view.batch.text().startswith("Whole batch (mean over 4 examples): ∂L/∂wᵢ = -2, 0.25 — the shares of all")
    assert "÷ 4" in view.batch.text()
    assert view.check_result.text().startswith("Whole batch (mean over 4 examples), ∂L/∂layers.0.linear.weight[1, 0]")


def test_a_unit_clicked_during_a_phase_by_phase_step_is_promised_for_when_it_ends(qtbot) -> None:
    view = NeuronInspector()
    qtbot.addWidget(view)
    view.render(data(TRACE))
    view.render(data(PendingTrace("head", 1), state="stepping"))
    assert view.hint == "head, unit 1: its computation is written out when this phase-by-phase step ends."
    with qtbot.assertNotEmitted(view.check_requested):
        view.check_button.click()  # (no check of the unit shown before)
    view.render(data(PendingTrace("head", 1), state="paused"))  # the step was finished by Play, then paused
    assert "written out when the next step ends" in view.hint
    view.render(data(TRACE))
    assert not view.hint and "0.1·1 + 0.3·2" in view.forward.text()


def test_a_model_with_active_dropout_gets_one_line_saying_the_draw_differs(qtbot) -> None:
    """The trace of a model training with Dropout(0.5) is one dropout draw, not the step's: a line
    says so. Without dropout (or with p = 0) there is no such line."""
    import torch

    from engine.neuron import trace_unit

    view = NeuronInspector()
    qtbot.addWidget(view)
    view.show()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for p, active in ((0.5, True), (0.0, False), (None, False)):
        torch.manual_seed(0)
        middle = torch.nn.Identity() if p is None else torch.nn.Dropout(p)
        model = torch.nn.Sequential(torch.nn.Linear(3, 6), middle, torch.nn.ReLU(), torch.nn.Linear(6, 2)).train()
        trace = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "3", unit=0)
        view.render(data(trace))
        assert view.dropout_note.isVisible() == active
        if active:
            assert view.dropout_note.text() == trace.dropout_text()
            assert "one dropout draw" in view.dropout_note.text() and "expectation" in view.dropout_note.text()
            assert "The update" not in view.batch.text()
        else:
            assert "The update and the check below use this one." in view.batch.text()
