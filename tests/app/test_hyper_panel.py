"""The settings panel's number boxes keep what they are given: no norm rounds to 0."""
from __future__ import annotations

import pytest

from app.hyper_panel import HyperPanel


@pytest.fixture
def panel(qtbot) -> HyperPanel:
    widget = HyperPanel()
    qtbot.addWidget(widget)
    return widget


@pytest.mark.parametrize("box", ["clip", "pause_norm"])
def test_a_small_norm_is_kept_and_a_step_down_stays_positive(panel: HyperPanel, box: str) -> None:
    spin = getattr(panel, box)
    spin.setValue(0.005)
    assert spin.value() == pytest.approx(0.005)
    spin.setValue(0.05)
    spin.stepDown()
    assert 0.0 < spin.value() < 0.05
    assert float(spin.text().replace(",", ".")) == pytest.approx(spin.value())
    spin.setValue(0.0)  # below the range: its least value, shown as it is
    assert spin.value() == pytest.approx(spin.minimum()) and spin.minimum() > 0
    assert float(spin.text().replace(",", ".")) > 0


@pytest.mark.parametrize("lr", [1e-5, 1e-3, 0.1, 10.0, 100.0])
def test_the_learning_rate_slider_holds_every_lessons_rate(panel: HyperPanel, lr: float) -> None:
    # (the "learning rate too large" lesson trains with SGD at 10: the slider topped out at 3)
    panel.lr.set_value(lr)
    assert panel.lr.value() == pytest.approx(lr)
    assert panel.lr.label.text() == f"{lr:.3g}"
