"""The main window end to end, offscreen, on every built-in scenario."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from app.main_window import MainWindow, measuring_text
from engine.scenarios import SCENARIOS
from engine.snapshot import Hyper, Metrics, Snapshot


def grab_not_blank(widget) -> bool:
    image = widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    width, height = image.width(), image.height()
    if width < 10 or height < 10:
        return False
    data = np.frombuffer(image.constBits(), np.uint8, count=image.sizeInBytes()).reshape(height, -1)[:, :width * 4]
    return len(np.unique(data.reshape(-1, 4)[::7], axis=0)) > 8


@pytest.fixture
def window(qtbot):
    win = MainWindow(remember_layout=False)
    qtbot.addWidget(win)
    win.show_every_view()
    win.show()
    yield win
    win.shutdown()


def wait_step(qtbot, win: MainWindow, step: int, timeout: int = 60000) -> None:
    qtbot.waitUntil(lambda: win.bridge.latest is not None and win.bridge.latest.step >= step, timeout=timeout)


# Views that have nothing to show for a scenario say so with a hint (checked separately).
EXPECTED_HINTS = {
    "features": lambda name: not name.startswith("shapes-cnn"),
    "attention": lambda name: "transformer" not in name,
    "boundary": lambda name: SCENARIOS[name].data.name not in ("spirals", "xor", "circles", "moons", "blobs"),
    "inspector": lambda name: True,
    "neuron": lambda name: True,  # until a unit is clicked
}


#: Lessons whose point is a blow-up: "pause when a value is NaN/Inf" (on by default) stops them.
STOPS_ON_NAN = {"init-he-double"}


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in STOPS_ON_NAN])
def test_every_scenario_trains_and_every_view_draws(qtbot, window: MainWindow, scenario: str) -> None:
    window.start_engine(scenario=scenario, device="cpu", play=True)
    wait_step(qtbot, window, 6)
    window.pause()
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused", timeout=10000)
    qtbot.wait(400)  # a frame or two after the pause, and the series refresh
    window.bridge.tick()
    assert not window.errors, window.errors
    for key, view in window.views.items():
        assert view.isVisible(), key
        hinted = EXPECTED_HINTS.get(key, lambda name: False)(scenario)
        if hinted:
            assert view.hint, f"{key} should explain why it is empty for {scenario}"
        else:
            assert not getattr(view, "hint", ""), f"{key} shows hint {view.hint!r} for {scenario}"
            assert grab_not_blank(view), f"{key} is blank for {scenario}"


def test_phase_stepping_shows_modules_in_the_inspector(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.step_phase()
    qtbot.waitUntil(lambda: window.bridge.latest.phase is not None, timeout=10000)
    inspector = window.views["inspector"]
    qtbot.waitUntil(lambda: not inspector.hint, timeout=5000)
    phase = window.bridge.latest.phase
    assert phase.kind == "forward" and phase.module == "flatten"
    assert "forward layers.0.linear" in phase.names and "backward layers.0.linear" in phase.names
    assert inspector.module_label.toolTip() == "flatten"  # (its text is cut to the room it has)
    for _ in range(phase.total - 1):
        window.step_phase()
    qtbot.waitUntil(lambda: window.bridge.latest.phase.kind == "update", timeout=10000)
    assert window.bridge.latest.step == 1


def test_selection_propagates_to_every_view(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="spirals-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.step_once()
    wait_step(qtbot, window, 1)
    window.views["gradients"].layer_selected.emit("layers.1.linear")
    assert all(v.selected_layer == "layers.1.linear" for v in window.views.values())
    qtbot.waitUntil(lambda: window.bridge.latest.tensors is not None
                    and window.bridge.latest.tensors.layer == "layers.1.linear", timeout=10000)
    assert window.bridge.latest.tensors.weight.shape == (32, 32)


def test_live_hyperparameter_change_reaches_the_trainer(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.hyper_panel.optimizer.setCurrentText("sgd")
    window.hyper_panel.lr.set_value(0.2)
    window.hyper_panel.lr.value_changed.emit(0.2)
    qtbot.waitUntil(lambda: window.bridge.latest.hyper.optimizer == "sgd"
                    and window.bridge.latest.hyper.lr == 0.2, timeout=10000)


def test_bad_model_file_shows_one_line_and_app_survives(qtbot, window: MainWindow, tmp_path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def build(:\n")
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.open_model(f"{bad}:build")
    qtbot.waitUntil(lambda: bool(window.errors), timeout=20000)
    message = window.errors[-1].message
    assert "broken.py" in message and "syntax" in message.lower() and "\n" not in message
    assert window.banner.shown and window.banner_bar.isVisible() and "broken.py" in window.banner.message.text()
    assert window.banner_bar.height() <= 3 * window.banner.message.fontMetrics().height()  # one line's bar
    window.step_once()  # the previous run is still there and still trains
    wait_step(qtbot, window, 1)
    assert window.bridge.latest.scenario == "xor-mlp"
    # ...and is still the current run: what Save, Rebuild and the scenario box go by
    assert window._current["kind"] == "scenario" and window._current["name"] == "xor-mlp"
    assert window.scenario.currentData() == "xor-mlp"


def test_a_model_file_that_does_not_parse_is_reported_without_a_question_first(qtbot, window: MainWindow,
                                                                                 tmp_path, monkeypatch) -> None:

    bad = tmp_path / "broken.py"
    bad.write_text("def build(:\n")
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(bad), "")))

    def no_question(*args, **kwargs):
        raise AssertionError("asked which function of a file that does not parse")
    monkeypatch.setattr(QtWidgets.QInputDialog, "getItem", staticmethod(no_question))
    window.open_model_file()
    qtbot.waitUntil(lambda: bool(window.errors), timeout=20000)
    assert "broken.py" in window.errors[-1].message and "syntax" in window.errors[-1].message.lower()


def test_the_window_fits_a_small_screen(window: MainWindow) -> None:
    # (The hyperparameter panel scrolls rather than setting the window's least height.)
    hint = window.minimumSizeHint()
    assert hint.height() <= 640 and hint.width() <= 1280, hint  # (a 1366 x 768 laptop)


def test_a_failed_load_while_training_keeps_the_run_training_and_the_button_right(qtbot, window: MainWindow,
                                                                                   tmp_path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def build(:\n")
    window.start_engine(scenario="xor-mlp", device="cpu", play=True)
    wait_step(qtbot, window, 3)
    window.open_model(f"{bad}:build")
    qtbot.waitUntil(lambda: bool(window.errors), timeout=20000)
    assert "while loading" in window.banner.message.text() or window.errors[-1].phase == "load"
    reached = window.bridge.latest.step
    wait_step(qtbot, window, reached + 5)  # the old run trains on...
    assert window._running and window.act_play.text() == "Pause"  # ...and the button says so
    window.toggle_play()  # one press pauses
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused", timeout=10000)


def test_arrow_keys_move_a_focused_slider_instead_of_stepping(qtbot, window: MainWindow) -> None:

    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.activateWindow()
    slider = window.hyper_panel.findChild(QtWidgets.QSlider)
    slider.setFocus()
    before = slider.value()
    qtbot.keyClick(slider, QtCore.Qt.Key.Key_Right)
    qtbot.wait(300)
    window.bridge.tick()
    assert slider.value() != before
    assert window.bridge.latest.step == 0  # no training step was taken
    window.setFocus()
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Right)  # elsewhere, → still steps
    wait_step(qtbot, window, 1, timeout=20000)


def test_space_presses_a_checkbox_reached_by_tab_and_plays_after_a_click(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.activateWindow()
    box = window.hyper_panel.pause_error
    before = box.isChecked()
    window.hyper_panel.rebuild.setFocus()
    for _ in range(60):  # reached from the keyboard: Tab until it has the focus
        if box.hasFocus():
            break
        qtbot.keyClick(QtWidgets.QApplication.focusWidget(), QtCore.Qt.Key.Key_Tab)
    assert box.hasFocus()
    qtbot.keyClick(box, QtCore.Qt.Key.Key_Space)
    assert box.isChecked() != before and not window._running  # pressed it; training did not start
    window.hyper_panel.rebuild.setFocus()
    qtbot.mouseClick(box, QtCore.Qt.MouseButton.LeftButton)  # clicked: focused by the mouse
    assert box.isChecked() == before and box.hasFocus()
    qtbot.keyClick(box, QtCore.Qt.Key.Key_Space)
    assert box.isChecked() == before and window._running  # Space played
    window.pause()


def test_space_plays_when_the_window_opens_with_a_combo_box_focused(qtbot, window: MainWindow) -> None:
    """The focus a window gives its first control when it opens (or comes back to the front) isn't
    the user's Tab: Space still plays. (It opened the Network view's colour combo box.)"""
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.activateWindow()
    combo = window.views["network"].findChild(QtWidgets.QComboBox)
    combo.setFocus(QtCore.Qt.FocusReason.ActiveWindowFocusReason)
    assert combo.hasFocus()
    qtbot.keyClick(combo, QtCore.Qt.Key.Key_Space)
    assert window._running and not combo.view().isVisible()
    window.pause()


def test_exports_and_run_file_round_trip(qtbot, window: MainWindow, tmp_path) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=True)
    wait_step(qtbot, window, 20)
    window.pause()
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused", timeout=10000)
    png = window.export_png("loss", str(tmp_path / "loss.png"))
    assert QtGui.QImage(png).width() > 50
    assert window.export_csv(str(tmp_path / "series.csv")) == str(tmp_path / "series.csv")
    lines = (tmp_path / "series.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss") and len(lines) > 10
    # The step a pause lands on may have run bare (one in 32 does, to keep the overhead measured):
    # one more Step is always measured, so the saved statistics are of the saved step.
    paused_at = window.bridge.latest.step
    window.step_once()
    qtbot.waitUntil(lambda: window.bridge.latest.step == paused_at + 1 and window.bridge.latest.stats is not None
                    and window.bridge.latest.stats.step == paused_at + 1, timeout=10000)
    saved = window.bridge.latest
    saved_step, saved_frames = saved.step, [f for f in window.bridge.frames if f.step <= saved.step]
    run_path = window.save_run(str(tmp_path / "run.glassbox"))
    window.run_scenario("spirals-mlp")  # something else on screen
    qtbot.waitUntil(lambda: window.bridge.latest.scenario == "spirals-mlp", timeout=20000)
    assert run_path and window.open_run(run_path)
    loss_view = window.views["loss"]
    assert not loss_view.hint  # the saved loss curve is on screen
    # ...and what the other views drew: the network, the boundary, the histograms over time.
    opened = window._last_snapshot
    assert not window.views["network"].hint and not window.views["boundary"].hint
    assert opened.network.column_sizes == saved.network.column_sizes
    for mine, theirs in zip(opened.network.weights + opened.network.activations,
                            saved.network.weights + saved.network.activations):
        assert (mine is None and theirs is None) or np.array_equal(mine, theirs)
    assert np.array_equal(opened.boundary.prediction, saved.boundary.prediction)
    assert np.array_equal(opened.stats.histograms, saved_frames[-1].histograms)
    from app.exporting import open_saved

    assert [f.step for f in open_saved(run_path)[0].frames] == [f.step for f in saved_frames]
    assert "XOR" in window.hyper_panel.description.text()  # the saved run's, not spirals'
    # Save while it is on screen: a copy of the file.
    assert window.save_run(str(tmp_path / "copy.glassbox"))
    assert (tmp_path / "copy.glassbox").read_bytes() == (tmp_path / "run.glassbox").read_bytes()
    assert window._last_snapshot.step == saved_step and window._last_snapshot.run_id == -1
    assert "Viewing the saved run" in window.status_state.text()
    assert not window.timeline.isEnabled() and window.timeline.last_step() == saved_step
    assert window.timeline.label.text() == f"saved at step {saved_step:,}"  # (not "(live)")
    assert not window.hyper_panel.isEnabled() and window.scenario.currentData() == "xor-mlp"
    # The saved statistics are on screen too, and Export writes the saved run's series.
    saved_stats = window._last_snapshot.stats
    assert saved_stats is not None and saved_stats.step == saved_step
    assert np.isfinite(saved_stats.stat("weight_norm")).any()
    assert not window.views["activations"].hint and not window.views["gradients"].hint
    csv_path = window.export_csv(str(tmp_path / "saved.csv"))
    assert int((tmp_path / "saved.csv").read_text().splitlines()[-1].split(",")[0]) == saved_step
    assert csv_path
    window.play()  # trains the saved configuration afresh
    assert window.timeline.isEnabled() and window.hyper_panel.isEnabled()
    qtbot.waitUntil(lambda: window.bridge.latest.run_id > 1 and window.bridge.latest.step >= 3, timeout=20000)
    window.pause()
    (tmp_path / "bad.glassbox").write_bytes(b"not a zip at all")
    assert not window.open_run(str(tmp_path / "bad.glassbox"))
    assert "bad.glassbox" in window.banner.message.text()


def test_the_measure_menu_sets_how_often_the_probe_measures(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    assert window.status_overhead.text() == "measuring every step"  # (nothing timed yet: no figure)
    labels = [action.text() for action in window.measuring.actions()]
    window.measuring.actions()[labels.index("Every 16 steps")].trigger()
    qtbot.waitUntil(lambda: window.bridge.latest.capture_every == 16, timeout=10000)
    assert window.status_overhead.text().startswith("measuring every 16 steps")
    window.run_scenario("moons-mlp")  # the choice holds for the next run
    qtbot.waitUntil(lambda: window.bridge.latest.scenario == "moons-mlp" and window.bridge.latest.step > 0,
                    timeout=20000)
    assert window.bridge.latest.capture_every == 16
    window.measuring.actions()[labels.index("Adaptive (about 5 % slower)")].trigger()
    qtbot.waitUntil(lambda: window.bridge.latest.capture_adaptive, timeout=10000)
    assert "(adaptive)" in window.status_overhead.text()


def test_the_status_bar_spreads_the_probe_cost_over_the_interval() -> None:
    base = dict(run_id=1, step=5, state="running", scenario="s", device="cpu", layers=(),
                metrics=Metrics(train_loss=0.1), hyper=Hyper())
    assert measuring_text(Snapshot(**base, probe_overhead=0.6)) == "measuring every step · probe +60 %"
    assert measuring_text(Snapshot(**base)) == "measuring every step"  # (not yet timed: no figure, not "+0 %")
    assert measuring_text(Snapshot(**base, probe_overhead=0.6, capture_every=12, capture_adaptive=True)) \
        == "measuring every 12 steps (adaptive) · probe +5 %"


def test_layout_and_scenario_remembered(qtbot, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GLASSBOX_SETTINGS_DIR", str(tmp_path))
    first = MainWindow(remember_layout=True)
    qtbot.addWidget(first)
    first.show()
    first.start_engine(scenario="moons-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: first.bridge.latest is not None, timeout=20000)
    qtbot.waitUntil(lambda: first.windowTitle().endswith("moons-mlp"), timeout=5000)
    first.docks["attention"].hide()
    first.set_measuring(64)
    first.close()
    second = MainWindow(remember_layout=True)
    qtbot.addWidget(second)
    second.show()
    try:
        assert not second.docks["attention"].isVisible()
        assert second.measuring_every() == 64
        second.start_engine(device="cpu", play=False)
        qtbot.waitUntil(lambda: second.bridge.latest is not None, timeout=20000)
        assert second.bridge.latest.scenario == "moons-mlp"
    finally:
        second.shutdown()


def test_a_broken_run_shows_up_in_the_health_panel(qtbot, window: MainWindow) -> None:
    from engine.worker import SetHyper

    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.bridge.send(SetHyper({"optimizer": "sgd", "lr": 100.0}))
    window.play()
    qtbot.waitUntil(lambda: any(d.severity in ("warning", "error") for d in window.bridge.latest.diagnoses),
                    timeout=30000)
    window.pause()
    qtbot.wait(200)
    health = window.views["health"]
    codes = {d.code for d in window.bridge.latest.diagnoses}
    assert window.hyper_panel.optimizer.currentText() == "sgd"  # the panel shows what the trainer uses
    assert window.hyper_panel.lr.label.text() == "100"  # beyond the slider's range, still shown
    assert codes & {"diverging_loss", "learning_rate", "nan_inf", "exploding_gradients"}
    qtbot.waitUntil(lambda: "from step" in health.browser.toPlainText(), timeout=5000)


def test_pause_when_a_gradient_norm_exceeds_the_threshold(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.hyper_panel.pause_norm.setValue(0.001)
    window.hyper_panel.pause_norm_on.setChecked(True)
    window.play()
    qtbot.waitUntil(lambda: bool(window.errors), timeout=20000)
    assert "gradient norm" in window.errors[-1].message and window.banner.shown
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused", timeout=5000)
    assert window.act_play.text() == "Play"


def test_neuron_inspector_writes_out_a_unit_and_checks_its_gradient(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.step_once()
    qtbot.waitUntil(lambda: window.bridge.latest.step >= 1, timeout=10000)
    window.views["network"].unit_selected.emit("layers.0.linear", 3)
    qtbot.waitUntil(lambda: window.bridge.latest.neuron is not None, timeout=10000)
    trace = window.bridge.latest.neuron
    assert trace.layer == "layers.0.linear" and trace.unit == 3 and trace.activation == "Tanh"
    neuron = window.views["neuron"]
    window.bridge.tick()
    neuron.render(window.bridge.view_data())
    assert "z = Σ wᵢaᵢ + b" in neuron.forward.text() and "δ = ∂L/∂z" in neuron.backward.text()
    neuron.input_index.setValue(1)
    neuron.check_button.click()
    qtbot.waitUntil(lambda: window.bridge.latest.gradient_check is not None, timeout=10000)
    check = window.bridge.latest.gradient_check
    assert check.parameter == "layers.0.linear.weight" and check.index == (3, 1)
    assert check.relative_error < 1e-4


def test_an_idle_window_does_not_keep_repainting(qtbot, window: MainWindow) -> None:
    """A layout feedback loop (e.g. an aspect-locked plot whose tick labels resize its axis)
    once repainted the window hundreds of times a second and starved training."""
    window.start_engine(scenario="spirals-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.step_once()
    qtbot.wait(1500)
    counts = {"layout": 0}

    class Counter(QtCore.QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() == QtCore.QEvent.Type.LayoutRequest:
                counts["layout"] += 1
            return False

    counter = Counter()
    app = QtCore.QCoreApplication.instance()
    app.installEventFilter(counter)
    try:
        qtbot.wait(1000)
    finally:
        app.removeEventFilter(counter)
    assert counts["layout"] < 30, counts


@pytest.mark.parametrize("scenario", sorted(STOPS_ON_NAN))
def test_a_blow_up_lesson_pauses_at_the_nan_and_says_where(qtbot, window: MainWindow, scenario: str) -> None:
    window.start_engine(scenario=scenario, device="cpu", play=True)
    qtbot.waitUntil(lambda: bool(window.errors), timeout=60000)
    qtbot.waitUntil(lambda: window.bridge.latest is not None and window.bridge.latest.state == "paused",
                    timeout=10000)
    assert window.bridge.latest.step <= 3
    assert "not finite" in window.errors[0].message and window.errors[0].step == window.bridge.latest.step
    assert window.banner_bar.isVisible()
    window.bridge.tick()
    qtbot.wait(200)
    codes = {d.code for d in window.bridge.latest.diagnoses}
    assert "exploding_gradients" in codes or "nan_inf" in codes
    assert "⚠" in window.views["health"].browser.toPlainText() or window.views["health"].findings


def test_your_model_gets_its_own_entry_in_the_scenario_box(qtbot, window: MainWindow, tmp_path) -> None:
    good = tmp_path / "good.py"
    good.write_text("import torch\nfrom torch import nn\n\ndef build():\n    x = torch.randn(64, 3)\n"
                    "    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), "
                    "(x, (x[:, 0] > 0).long()), nn.functional.cross_entropy\n")
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    ref = f"{good}:build"
    window.open_model(ref)
    qtbot.waitUntil(lambda: window._current["kind"] == "user" and window.bridge.latest.run_id > 1, timeout=20000)
    qtbot.waitUntil(lambda: window.scenario.currentData() == ref, timeout=5000)
    assert window.scenario.currentText() == "Your model · good.py:build"
    window.run_scenario("xor-mlp")
    qtbot.waitUntil(lambda: window._current["kind"] == "scenario", timeout=20000)
    run_id = window.bridge.latest.run_id
    window.scenario.activated.emit(window.scenario.findData(ref))  # chosen again: loaded again
    qtbot.waitUntil(lambda: window._current["kind"] == "user" and window.bridge.latest.run_id > run_id,
                    timeout=20000)
    assert window.scenario.findText("Your model · good.py:build") >= 0 and not window.errors


def test_reinitialize_refits_the_gradient_flow_to_the_new_run(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=True)
    wait_step(qtbot, window, 60)
    window.pause()
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused", timeout=10000)
    flow = window.views["gradients"]
    qtbot.waitUntil(lambda: flow.heat_plot.getViewBox().viewRange()[0][1] >= 60, timeout=5000)
    run = window.bridge.latest.run_id
    window.reinitialize()
    qtbot.waitUntil(lambda: window.bridge.latest.run_id != run, timeout=10000)
    # Paused at step 0 of the new run: nothing of the old run's 60 steps is left on the axis.
    qtbot.waitUntil(lambda: flow.heat_plot.getViewBox().viewRange()[0][1] < 5, timeout=5000)
    assert flow.heatmap_layers == ()
    window.step_once()
    wait_step(qtbot, window, 1)
    qtbot.waitUntil(lambda: flow.heatmap_layers != (), timeout=5000)
    low, high = flow.heat_plot.getViewBox().viewRange()[0]
    assert low < 1 < high < 5


def test_a_warning_from_your_model_is_in_health_before_training(qtbot, window: MainWindow, tmp_path) -> None:
    broadcast = tmp_path / "broadcast.py"  # (N, 1) outputs against (N,) targets: MSELoss broadcasts
    broadcast.write_text("import torch\nfrom torch import nn\n\ndef build():\n    x = torch.randn(64, 3)\n"
                         "    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), "
                         "(x, x[:, 0]), nn.MSELoss()\n")
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.open_model(f"{broadcast}:build")
    qtbot.waitUntil(lambda: window._current["kind"] == "user" and window.bridge.latest.run_id > 1, timeout=20000)
    health = window.views["health"]
    qtbot.waitUntil(lambda: any(d.code == "model_warning" for d in window.bridge.latest.diagnoses), timeout=5000)
    assert window.bridge.latest.step == 0 and not window.errors
    health.render(window.bridge.view_data())  # (drawn now, whether its tab is in front or not)
    text = health.browser.toPlainText()
    assert "WARNING model warning · before training" in text
    assert "that is different to the input size" in text and "reshape the target" in text


@pytest.mark.parametrize("resume", ["play", "step_once", "step_phase"])
def test_play_or_a_step_after_scrubbing_brings_the_timeline_live(qtbot, window: MainWindow, resume: str) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=True)
    wait_step(qtbot, window, 40)
    window.pause()
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused", timeout=10000)
    qtbot.waitUntil(lambda: window.timeline.last_step() is not None and window.timeline.last_step() >= 40, timeout=5000)
    window.timeline.choose_step(10)
    assert not window.timeline.is_live()
    getattr(window, resume)()
    assert window.timeline.is_live()
    window.pause()


def test_a_run_asked_for_before_the_first_runs_first_frame_is_still_the_current_one(qtbot, window: MainWindow) -> None:
    # A lesson's run button pressed right after launch: the launch run's first frame arrives
    # after the request, and must not swallow it (the scenario box went blank, Rebuild failed).
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None and window._current["name"] == "xor-mlp", timeout=20000)
    late = window.bridge.latest  # the launch run's first frame, as if it came after the click
    window.run_scenario("circles-mlp")
    window._first_frame_of_run(late)
    qtbot.waitUntil(lambda: window.bridge.latest.scenario == "circles-mlp", timeout=20000)
    qtbot.waitUntil(lambda: window._current["name"] == "circles-mlp", timeout=5000)
    assert window.scenario.currentData() == "circles-mlp"
    assert window._requested is None and not window.errors


def test_reset_layout_docks_floated_views_again(qtbot, window: MainWindow) -> None:
    dock = window.docks["weights"]
    dock.setFloating(True)
    window.docks["health"].hide()
    assert dock.isFloating()
    window.reset_layout()
    area = QtCore.Qt.DockWidgetArea.RightDockWidgetArea
    assert not dock.isFloating() and window.dockWidgetArea(dock) == area
    assert not window.docks["health"].isHidden()  # (a hidden view comes back too)
    assert not any(d.isFloating() for d in window.docks.values())


def test_at_1024_by_700_the_views_of_a_row_share_its_width(qtbot) -> None:
    """No view's least width (a long unwrapped line in a tab behind it) squeezes its row's others:
    the gradient flow was left ~100 pixels beside the activations' tab stack."""
    win = MainWindow(remember_layout=False)
    qtbot.addWidget(win)
    win.resize(1024, 700)
    win.show()
    qtbot.waitExposed(win)
    win.reset_layout()
    try:
        for row in win._rows:
            qtbot.waitUntil(lambda row=row: min(win.docks[k].width() for k in row) > 150, timeout=3000)
            widths = [win.docks[k].width() for k in row]
            assert min(widths) >= 0.8 * max(widths), dict(zip(row, widths))
        # The controls leave the views most of the window: their number boxes needn't fit their
        # largest values to be this narrow (at 316 pixels they took almost a third).
        assert win.docks["controls"].width() <= 0.28 * 1024, win.docks["controls"].width()
    finally:
        win.shutdown()


def test_a_phase_by_phase_walk_shows_the_true_tensors_and_follows_the_layer(qtbot) -> None:
    """At 1366 x 768, in the default layout: step once, then walk a step phase by phase. Every
    tensor drawn is what plain autograd gives on a copy of the model for the same batch (the focus
    example's slice, or the batch's parameter gradients), the update shows the real Δw of Adam's
    step, the status bar says where the step is, and the Network view bands the layer at work."""
    import copy

    from app.main_window import phase_status_text
    from engine.trainer import make_optimizer

    win = MainWindow(remember_layout=False)
    qtbot.addWidget(win)
    win.resize(1366, 768)
    win.show()
    qtbot.waitExposed(win)
    try:
        win.start_engine(scenario="xor-mlp", device="cpu", play=False)
        qtbot.waitUntil(lambda: win.bridge.latest is not None, timeout=20000)
        win.step_once()
        wait_step(qtbot, win, 1)
        trainer = win.bridge.worker.run.trainer
        model = copy.deepcopy(trainer.model)
        optimizer = make_optimizer(list(model.parameters()), trainer.hyper)
        optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))
        inspector, network = win.views["inspector"], win.views["network"]
        seen: dict[tuple[str, str | None], dict] = {}
        index = -1
        while True:
            win.step_phase()
            qtbot.waitUntil(lambda: win.bridge.latest.phase is not None and win.bridge.latest.phase.index > index,
                            timeout=10000)
            qtbot.waitUntil(lambda: inspector._drawn is win.bridge.latest.phase, timeout=5000)
            phase = win.bridge.latest.phase
            index = phase.index
            seen[phase.kind, phase.module] = {panel.name: panel.array.copy() for panel in inspector.visible_panels()
                                              if panel.array is not None}
            seen[phase.kind, phase.module]["_band"] = network.phase_columns
            seen[phase.kind, phase.module]["_status"] = win.status_state.text()
            assert win.status_state.text() == phase_status_text(win.bridge.latest)
            if phase.kind == "update":
                break
        x, y = trainer.last_batch
        example = phase.example
        outputs, grads = {}, {}

        def keep(name):
            def hook(module, args, out):
                outputs[name] = (args[0].detach(), out.detach())
                out.register_hook(lambda g: grads.__setitem__(name, g.detach()))
            return hook

        for name in ("layers.0.linear", "layers.0.act", "head"):
            model.get_submodule(name).register_forward_hook(keep(name))
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        loss = trainer.loss_fn(model(x), y)
        loss.backward()
        weight_grad = model.get_submodule("layers.0.linear").weight.grad.clone()
        optimizer.step()
        for name in ("layers.0.linear", "layers.0.act", "head"):
            shown = seen["forward", name]
            np.testing.assert_allclose(shown["input"], outputs[name][0][example].numpy(), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(shown["output"], outputs[name][1][example].numpy(), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(seen["backward", name]["grad_output"], grads[name][example].numpy(),
                                       rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(seen["backward", "layers.0.linear"]["grad:weight"], weight_grad.numpy(),
                                   rtol=1e-5, atol=1e-9)
        assert seen["loss", None]["loss"].item() == pytest.approx(float(loss.detach()), rel=1e-6)
        update = seen["update", phase.module]
        assert phase.module == "layers.0.linear"  # the layer selected in the Network view
        true_delta = model.get_submodule("layers.0.linear").weight.detach() - before["layers.0.linear.weight"]
        np.testing.assert_allclose(update["\u0394weight"], true_delta.numpy(), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(update["\u0394weight"], (trainer.model.get_submodule("layers.0.linear").weight
                                                           .detach() - before["layers.0.linear.weight"]).numpy(),
                                   rtol=1e-6, atol=1e-9)
        assert "lr 0.03" in inspector.explanation.toolTip()
        # The Network view's band follows the phase: a module's own column, or the column before it.
        bands = {key: value["_band"] for key, value in seen.items()}
        assert bands["forward", "flatten"] == ("input",)
        assert bands["forward", "layers.0.linear"] == bands["forward", "layers.0.act"] == ("layers.0.linear",)
        assert bands["forward", "head"] == bands["loss", None] == bands["backward", "head"] == ("head",)
        assert bands["backward", "layers.0.act"] == ("layers.0.linear",)
        assert bands["update", "layers.0.linear"] == ("layers.0.linear", "head")
        assert seen["backward", "head"]["_status"] == "Step 2, phase 6 of 9: \u2190 backward through head"
        assert not network.phase_band.path().isEmpty()
        win.step_once()
        wait_step(qtbot, win, 3)
        qtbot.waitUntil(lambda: network.phase_columns == (), timeout=5000)  # no band once it trains on
        assert network.phase_band.path().isEmpty()
    finally:
        win.shutdown()


def test_an_opened_run_file_stays_on_screen_names_its_model_and_a_failed_export_says_so(qtbot, tmp_path) -> None:
    """A run of your own model, saved, then opened over a live scenario run: the scenario box
    names your model, a view brought forward from behind a tab draws the file's state (it drew
    the live run's), and an export into a missing folder says so in the banner."""
    model = tmp_path / "two_d.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
                     "    x = torch.randn(128, 2)\n    y = (x[:, 0] * x[:, 1] > 0).long()\n"
                     "    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)), (x, y), "
                     "nn.CrossEntropyLoss()\n")
    win = MainWindow(remember_layout=False)  # the default layout: Health is a tab behind Loss
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    try:
        win.start_engine(model=f"{model}:build", device="cpu", play=True)
        wait_step(qtbot, win, 5)
        win.pause()
        qtbot.waitUntil(lambda: win.bridge.latest.state == "paused", timeout=10000)
        run_path = win.save_run(str(tmp_path / "mine.glassbox"))
        win.run_scenario("spirals-mlp")
        qtbot.waitUntil(lambda: win.bridge.latest.scenario == "spirals-mlp" and win.bridge.latest.step >= 3,
                        timeout=20000)
        assert run_path and win.open_run(run_path)
        assert win.scenario.currentText() == "Your model · two_d.py:build"
        assert win.scenario.currentData().endswith("two_d.py:build")
        win.docks["loss"].raise_()
        qtbot.waitUntil(lambda: win.views["health"].visibleRegion().isEmpty(), timeout=3000)
        win.docks["health"].raise_()
        qtbot.waitUntil(lambda: not win.views["health"].visibleRegion().isEmpty(), timeout=3000)
        assert win.views["health"]._last.snapshot.run_id == -1  # the file's, not spirals'
        missing = tmp_path / "no such folder"
        assert win.export_csv(str(missing / "series.csv")) is None
        assert "Could not export the series" in win.banner.message.text()
        assert win.export_png("loss", str(missing / "loss.png")) is None
        assert "Could not export the view" in win.banner.message.text()
    finally:
        win.shutdown()


def test_a_first_run_that_fails_to_load_leaves_play_not_pause(qtbot, tmp_path) -> None:
    """Launched on a model file whose validation data doesn't fit, no run exists: the banner says
    why, and the toolbar offers Play (it said Pause, as if something trained)."""
    model = tmp_path / "bad_val.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef build():\n    x = torch.randn(64, 2)\n"
                     "    return (nn.Linear(2, 2), (x, (x[:, 0] > 0).long()), nn.CrossEntropyLoss(),\n"
                     "            (torch.randn(10, 3), torch.zeros(10, dtype=torch.long)))\n")
    win = MainWindow(remember_layout=False)
    qtbot.addWidget(win)
    win.show()
    try:
        win.start_engine(model=f"{model}:build", device="cpu", play=True)
        qtbot.waitUntil(lambda: "validation data" in win.banner.message.text(), timeout=20000)
        assert win.act_play.text() == "Play" and not win._running
        assert win.status_state.text() == "No run: fix the file and press F5, or open a model file or pick a scenario"
        assert win.scenario.currentText() == "Your model · bad_val.py:build"  # (it showed a scenario not running)
        win.run_scenario("xor-mlp")  # and a scenario picked then trains when asked
        win.play()
        wait_step(qtbot, win, 3)
        assert win.act_play.text() == "Pause"
    finally:
        win.shutdown()


def test_reload_reads_an_edited_model_file_again(qtbot, tmp_path) -> None:
    """The edit, run, look loop: a file that failed to load, fixed and reloaded (F5), trains; edited
    again (a wider layer), reloaded, trains the new model."""
    model = tmp_path / "mine.py"

    def write(hidden: int, broken: bool = False) -> None:
        model.write_text("import torch\nfrom torch import nn\n\ndef build():\n    x = torch.randn(64, 2)\n"
                         f"    model = nn.Sequential(nn.Linear({3 if broken else 2}, {hidden}), nn.ReLU(), "
                         f"nn.Linear({hidden}, 2))\n"
                         "    return model, (x, (x[:, 0] > 0).long()), nn.CrossEntropyLoss()\n")

    write(8, broken=True)
    win = MainWindow(remember_layout=False)
    qtbot.addWidget(win)
    win.show()
    try:
        assert not win.act_reload_model.isEnabled()
        win.start_engine(model=f"{model}:build", device="cpu", play=True)
        qtbot.waitUntil(lambda: "shape" in win.banner.message.text() or "size" in win.banner.message.text(),
                        timeout=20000)
        assert win.act_reload_model.isEnabled() and win.act_reload_model.text() == "Reload mine.py:build"
        assert win.act_reload_model.shortcut().toString() == "F5"
        write(8)
        win.act_reload_model.trigger()
        win.play()
        wait_step(qtbot, win, 2)
        assert [layer.weight_shape for layer in win.bridge.latest.layers if layer.params][0] == (8, 2)
        write(16)
        win.act_reload_model.trigger()
        qtbot.waitUntil(lambda: win.bridge.latest is not None and any(
            layer.weight_shape == (16, 2) for layer in win.bridge.latest.layers), timeout=20000)
        assert not win.banner.isVisible()
    finally:
        win.shutdown()
