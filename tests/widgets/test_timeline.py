"""Timeline: follows the newest step while live, scrubs discrete recorded steps otherwise."""
from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui

from widgets.timeline import Timeline


def make(qtbot) -> Timeline:
    timeline = Timeline()
    qtbot.addWidget(timeline)
    timeline.resize(600, 40)
    return timeline


def test_empty_timeline_says_so(qtbot):
    timeline = make(qtbot)
    assert timeline.current_step() is None
    assert not timeline.slider.isEnabled()
    assert "no steps" in timeline.label.text()


def test_live_range_follows_newest_without_emitting(qtbot):
    timeline = make(qtbot)
    with qtbot.assertNotEmitted(timeline.step_chosen):
        timeline.set_range(1, 4999)
        timeline.set_range(1, 5000)
    assert timeline.is_live()
    assert timeline.current_step() == 5000
    assert timeline.slider.value() == timeline.slider.maximum()
    assert timeline.label.text() == "step 5000 of 5000 (live)"
    assert timeline.live_button.isChecked()


def test_dragging_emits_step_and_leaves_live(qtbot):
    timeline = make(qtbot)
    timeline.set_range(1, 5000)
    with qtbot.waitSignal(timeline.step_chosen) as blocker:
        timeline.slider.setValue(1233)  # what a drag does to the value
    assert blocker.args == [1234]
    assert not timeline.is_live()
    assert not timeline.live_button.isChecked()
    assert timeline.label.text() == "step 1234 of 5000"
    # New steps arrive: the chosen step stays put.
    timeline.set_range(1, 6000)
    assert timeline.current_step() == 1234
    assert timeline.label.text() == "step 1234 of 6000"


def test_keyboard_scrub_emits(qtbot):
    timeline = make(qtbot)
    timeline.set_steps([10, 20, 30])
    with qtbot.waitSignal(timeline.step_chosen) as blocker:
        qtbot.keyClick(timeline.slider, QtCore.Qt.Key.Key_Left)
    assert blocker.args == [20]


def test_discrete_steps_map_slider_positions(qtbot):
    timeline = make(qtbot)
    timeline.set_steps([0, 10, 50, 100, 400])
    assert timeline.slider.maximum() == 4
    assert timeline.current_step() == 400
    with qtbot.waitSignal(timeline.step_chosen) as blocker:
        timeline.choose_step(60)  # nearest recorded step
    assert blocker.args == [50]
    assert timeline.slider.value() == 2
    # Old steps thinned out, new ones appended: the slider keeps the chosen step, not the index.
    timeline.set_steps(np.array([50, 100, 400, 800]))
    assert timeline.current_step() == 50
    assert timeline.slider.value() == 0


def test_live_button_returns_to_newest(qtbot):
    timeline = make(qtbot)
    timeline.set_steps([1, 2, 3, 4])
    timeline.choose_step(2)
    assert not timeline.is_live()
    with qtbot.waitSignal(timeline.live_requested), qtbot.assertNotEmitted(timeline.step_chosen):
        qtbot.mouseClick(timeline.live_button, QtCore.Qt.MouseButton.LeftButton)
    assert timeline.is_live()
    assert timeline.live_button.isChecked()
    assert timeline.current_step() == 4
    timeline.set_steps([1, 2, 3, 4, 5])
    assert timeline.current_step() == 5
    assert timeline.label.text().endswith("(live)")


def test_go_live_emits_even_when_live(qtbot):
    timeline = make(qtbot)
    timeline.set_range(0, 9)
    with qtbot.waitSignal(timeline.live_requested):
        timeline.go_live()
    assert timeline.is_live()


def test_grab_is_not_flat(qtbot):
    timeline = make(qtbot)
    timeline.set_range(1, 100)
    timeline.show()
    qtbot.waitExposed(timeline)
    image = timeline.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint32, image.width() * image.height())
    assert np.unique(pixels).size > 4


def test_end_on_the_focused_slider_goes_live(qtbot):
    # After a click the slider has the focus; End must mean "live" there too, not "the newest
    # recorded step" (which left the views on it while training went on).
    timeline = make(qtbot)
    timeline.set_range(1, 300)
    timeline.slider.setValue(99)
    assert not timeline.is_live()
    with qtbot.waitSignal(timeline.live_requested):
        qtbot.keyClick(timeline.slider, QtCore.Qt.Key.Key_End)
    assert timeline.is_live() and timeline.live_button.isChecked()
    assert timeline.label.text() == "step 300 of 300 (live)"
    qtbot.keyClick(timeline.slider, QtCore.Qt.Key.Key_Home)  # the other keys still move the handle
    assert not timeline.is_live() and timeline.current_step() == 1
