"""The main window: docks of views, transport controls, hyperparameters, status and errors.

The window is built without touching torch, so it can be on screen before the engine has
loaded; ``start_engine`` then brings in the bridge and the first run.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from PySide6 import QtCore, QtGui, QtWidgets

from app.error_banner import ErrorBanner
from app.hyper_panel import HyperPanel
from app.lesson_panel import LessonPanel
from app.settings import app_settings
from engine.atomic_file import write_atomic
from engine.snapshot import ErrorEvent, Snapshot, ViewData
from widgets.activation_view import ActivationView
from widgets.attention_view import AttentionView
from widgets.base import View
from widgets.comparison_view import ComparisonView
from widgets.decision_boundary import DecisionBoundary
from widgets.feature_maps import FeatureMaps
from widgets.gradient_flow import GradientFlow
from widgets.health_panel import HealthPanel
from widgets.loss_curve import LossCurve
from widgets.network_graph import NetworkGraph
from widgets.neuron_inspector import NeuronInspector
from widgets.step_inspector import StepInspector
from widgets.timeline import Timeline
from widgets.weight_heatmap import WeightHeatmap

__all__ = ["MainWindow", "VIEW_CLASSES"]

log = logging.getLogger(__name__)

#: Every view, keyed by the name its dock is saved under.
VIEW_CLASSES: dict[str, type[View]] = {
    "network": NetworkGraph,
    "boundary": DecisionBoundary,
    "loss": LossCurve,
    "weights": WeightHeatmap,
    "activations": ActivationView,
    "gradients": GradientFlow,
    "features": FeatureMaps,
    "attention": AttentionView,
    "inspector": StepInspector,
    "health": HealthPanel,
    "neuron": NeuronInspector,
}
SPEEDS = (("Full speed", None), ("100 steps/s", 100.0), ("30 steps/s", 30.0), ("10 steps/s", 10.0),
          ("3 steps/s", 3.0), ("1 step/s", 1.0))
#: How often the probe measures a step (Run ▸ Measure): "auto" is each run's own default (every
#: step for small models, adaptive for large ones); None is adaptive (about 5 % average cost).
MEASURING = (("Auto (each model's default)", "auto"), ("Every step", 1), ("Every 4 steps", 4),
             ("Every 16 steps", 16), ("Every 64 steps", 64), ("Adaptive (about 5 % slower)", None))
OPEN_MODEL = "Open model file…"
#: Views refreshed per display frame while training runs (in turn; all of them when paused).
VIEWS_PER_FRAME = 1
LAYOUT_VERSION = 2
#: The Compare view redraws each side at most this often (it shows slow-moving curves).
COMPARE_INTERVAL_S = 0.2


class _InputKeysFirst(QtCore.QObject):
    """Keys that a focused control needs go to it rather than to the window's shortcuts.

    - Arrow, Home/End and Page keys go to a focused slider or spin box (the timeline, the learning
      rate), not to → (step) or End (go live). The filter is installed on those widgets.
    - Space goes to a button, checkbox, list or combo box that was given focus by Tab or
      Shift+Tab, so it can be pressed without a mouse. One focused otherwise (a click, the window
      opening or coming back to the front) leaves Space to play/pause. The filter is installed on
      the window and its docks, which a key's shortcut override event reaches from any focused
      child: that is how a Tab is seen before the focus moves.
    """

    KEYS = {QtCore.Qt.Key.Key_Left, QtCore.Qt.Key.Key_Right, QtCore.Qt.Key.Key_Up, QtCore.Qt.Key.Key_Down,
            QtCore.Qt.Key.Key_Home, QtCore.Qt.Key.Key_End, QtCore.Qt.Key.Key_PageUp, QtCore.Qt.Key.Key_PageDown}
    TAKES_SPACE = (QtWidgets.QAbstractButton, QtWidgets.QComboBox, QtWidgets.QAbstractItemView)

    TABS = {QtCore.Qt.Key.Key_Tab, QtCore.Qt.Key.Key_Backtab}

    def __init__(self, parent: QtCore.QObject) -> None:
        super().__init__(parent)
        self._keyboard_focus: QtWidgets.QWidget | None = None
        self._tabbing = False  # a Tab was pressed and the focus hasn't moved since
        QtWidgets.QApplication.instance().focusChanged.connect(self._focus_changed)

    def _focus_changed(self, _old: QtWidgets.QWidget | None, new: QtWidgets.QWidget | None) -> None:
        by_tab, self._tabbing = self._tabbing, False  # (a Tab a text box kept doesn't count later)
        by_tab = by_tab and QtGui.QGuiApplication.mouseButtons() == QtCore.Qt.MouseButton.NoButton
        self._keyboard_focus = new if by_tab and isinstance(new, self.TAKES_SPACE) else None

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if event.type() != QtCore.QEvent.Type.ShortcutOverride:
            return False
        key = QtCore.Qt.Key(event.key())
        if key in self.TABS:
            self._tabbing = True
            return False
        if event.modifiers() & ~QtCore.Qt.KeyboardModifier.KeypadModifier:
            return False
        if isinstance(watched, (QtWidgets.QAbstractSlider, QtWidgets.QAbstractSpinBox)) and key in self.KEYS:
            event.accept()  # the widget gets the key press; no shortcut fires
            return True
        if key == QtCore.Qt.Key.Key_Space and self._keyboard_focus is not None \
                and QtWidgets.QApplication.focusWidget() is self._keyboard_focus:
            event.accept()
            return True
        return False


class MainWindow(QtWidgets.QMainWindow):
    """Glassbox's window. ``start_engine`` must be called once the window is shown."""

    def __init__(self, remember_layout: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("Glassbox")
        self.setDockOptions(QtWidgets.QMainWindow.DockOption.AnimatedDocks
                            | QtWidgets.QMainWindow.DockOption.AllowNestedDocks
                            | QtWidgets.QMainWindow.DockOption.AllowTabbedDocks)
        self.resize(1500, 940)
        self._remember = remember_layout
        self.bridge: Any = None
        self._scenarios: dict[str, Any] = {}
        self._current: dict[str, Any] = {"kind": "scenario", "name": None, "device": "auto", "model": None}
        self._model_ref: str | None = None  # the model file last asked for (File ▸ Reload reads it again)
        self._requested: dict[str, Any] | None = None  # the run asked for, until it starts or fails
        self._running = False
        self._last_snapshot: Snapshot | None = None
        self.errors: list[ErrorEvent] = []
        self._render_cursor = 0
        self._seen_findings: set = set()
        self._panel_hyper = None
        self._shown_once = False
        self._layout_restored = False
        self._saved_run: tuple[Callable, dict[str, Any]] | None = None  # an opened run file: (factory, description)
        self._saved_history: Any = None  # and its history, for Export
        self._saved_view: ViewData | None = None  # and what it shows, for a view brought forward
        self._saved_path = ""  # and where it is
        self.partner: Any = None  # a second Bridge while two runs train side by side
        self._compare_drawn = [0.0, 0.0]

        self.views: dict[str, View] = {}
        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        for key, cls in VIEW_CLASSES.items():
            view = cls()
            self.views[key] = view
            self.docks[key] = self._dock(key, cls.title, view)
            view.layer_selected.connect(lambda name: self.select(name, None))
            view.unit_selected.connect(lambda name, unit: self.select(name, unit))
        self.hyper_panel = HyperPanel()
        # Scrolled, so its height doesn't set the window's least height (a 768-pixel screen).
        controls = QtWidgets.QScrollArea()
        controls.setWidget(self.hyper_panel)
        controls.setWidgetResizable(True)
        controls.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        controls.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        controls.setMaximumWidth(330)
        controls.setMinimumWidth(self.hyper_panel.minimumSizeHint().width()
                                 + controls.verticalScrollBar().sizeHint().width())
        self.docks["controls"] = self._dock("controls", "Hyperparameters", controls)
        self.lesson_panel = LessonPanel()
        self.lesson_panel.setMaximumWidth(330)
        self.docks["lessons"] = self._dock("lessons", "Lessons", self.lesson_panel)
        self.comparison = ComparisonView()
        self.docks["compare"] = self._dock("compare", ComparisonView.title, self.comparison)
        self._arrange_default()

        self.timeline = Timeline()
        self._build_actions()
        self._build_toolbar()
        # No central widget: the docks share the whole window. The error banner is a toolbar
        # row under the transport controls, shown only while there is something to say.
        self.banner = ErrorBanner(self)
        self.addToolBarBreak(QtCore.Qt.ToolBarArea.TopToolBarArea)
        self.banner_bar = self._toolbar("toolbar-errors", "Errors", QtCore.Qt.ToolBarArea.TopToolBarArea)
        self.banner_bar.addWidget(self.banner)
        self.banner_bar.hide()
        self.banner.visibility_changed.connect(self.banner_bar.setVisible)
        timeline_bar = self._toolbar("toolbar-timeline", "Timeline", QtCore.Qt.ToolBarArea.BottomToolBarArea)
        timeline_bar.addWidget(self.timeline)
        self._build_menus()
        self._build_status()
        self.hyper_panel.setEnabled(False)
        # Filtering the sliders and spin boxes only (an application-wide filter would run Python
        # for every event of the window).
        self._input_keys = _InputKeysFirst(self)
        for kind in (QtWidgets.QAbstractSlider, QtWidgets.QAbstractSpinBox):
            for widget in self.findChildren(kind):
                widget.installEventFilter(self._input_keys)
        for widget in (self, *self.docks.values()):  # (a floated dock is a window of its own)
            widget.installEventFilter(self._input_keys)
        if remember_layout:
            self._restore_layout()

    # --- construction --------------------------------------------------------------------
    def _dock(self, key: str, title: str, widget: QtWidgets.QWidget) -> QtWidgets.QDockWidget:
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(f"dock-{key}")
        dock.setWidget(widget)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetClosable
                         | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        dock.visibilityChanged.connect(lambda visible, k=key: self._dock_shown(k, visible))
        return dock

    def _arrange_default(self) -> None:
        """Controls on the left; graph, boundary and loss on top; matrices and flows below.

        With no central widget the right dock area takes all the room the controls leave.
        """
        self._arrange([["network", "boundary", "loss"], ["weights", "gradients", "activations"]],
                      tabs={"boundary": ["features", "attention"], "activations": ["inspector", "neuron"],
                            "loss": ["health"]})
        self.docks["boundary"].raise_()
        self.docks["activations"].raise_()
        self.docks["loss"].raise_()
        self.docks["controls"].raise_()

    def show_every_view(self) -> None:
        """Every view on screen at once, none behind a tab (the smoke test uses this)."""
        self._arrange([["network", "boundary", "loss", "inspector", "health"],
                       ["weights", "gradients", "activations", "features", "attention", "neuron"]], tabs={})

    def _arrange(self, rows: list[list[str]], tabs: dict[str, list[str]]) -> None:
        area = QtCore.Qt.DockWidgetArea
        d = self.docks
        for dock in d.values():
            dock.setFloating(False)  # (a floated dock would stay a window of its own)
            self.removeDockWidget(dock)
        self.addDockWidget(area.LeftDockWidgetArea, d["controls"])
        self.tabifyDockWidget(d["controls"], d["lessons"])
        self.addDockWidget(area.RightDockWidgetArea, d[rows[0][0]])
        for row_above, row in zip(rows, rows[1:]):
            self.splitDockWidget(d[row_above[0]], d[row[0]], QtCore.Qt.Orientation.Vertical)
        for row in rows:
            for left, right in zip(row, row[1:]):
                self.splitDockWidget(d[left], d[right], QtCore.Qt.Orientation.Horizontal)
        for front, behind in tabs.items():
            for key in behind:
                self.tabifyDockWidget(d[front], d[key])
        if not any("compare" in behind for behind in tabs.values()):
            self.tabifyDockWidget(d[rows[0][-1]], d["compare"])
        for dock in d.values():
            dock.show()
        self._rows = rows
        self._share_space()

    def _share_space(self) -> None:
        """Narrow controls; rows of equal height; the views of a row of equal width."""
        d = self.docks
        rows = getattr(self, "_rows", [])
        self.resizeDocks([d["controls"]], [270], QtCore.Qt.Orientation.Horizontal)
        if rows:
            self.resizeDocks([d[row[0]] for row in rows], [1000] * len(rows), QtCore.Qt.Orientation.Vertical)
            for row in rows:
                self.resizeDocks([d[k] for k in row], [1000] * len(row), QtCore.Qt.Orientation.Horizontal)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            if not self._layout_restored:
                # Sizes only take once the window has its real size.
                QtCore.QTimer.singleShot(0, self._share_space)

    def _action(self, text: str, slot: Callable, shortcut: str | QtGui.QKeySequence | None = None,
                tip: str = "") -> QtGui.QAction:
        action = QtGui.QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QtGui.QKeySequence(shortcut))
            action.setShortcutContext(QtCore.Qt.ShortcutContext.ApplicationShortcut)
        action.setToolTip(f"{tip or text} ({action.shortcut().toString()})" if shortcut else tip or text)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.act_play = self._action("Play", self.toggle_play, "Space", "Run or pause training")
        self.act_play.setIcon(self.style().standardIcon(QtWidgets.QStyle.StandardPixmap.SP_MediaPlay))
        self.act_step = self._action("Step", self.step_once, "Right", "One optimizer step")
        self.act_phase = self._action("Phase", self.step_phase, "Shift+Right",
                                      "One phase: forward module by module, loss, backward, update")
        self.act_reinit = self._action("Reinitialize", self.reinitialize, "Ctrl+R",
                                       "Fresh weights and optimizer state; the step counter restarts")
        self.act_open_model = self._action("Open model file…", self.open_model_file, "Ctrl+O")
        self.act_reload_model = self._action("Reload model file", self.reload_model, "F5",
                                             "Read your model file again, after you edit it, and train it afresh")
        self.act_reload_model.setEnabled(False)
        self.act_open_run = self._action("Open run…", self.open_run, "Ctrl+Shift+O")
        self.act_save_run = self._action("Save run…", self.save_run, "Ctrl+S")
        self.act_export_csv = self._action("Export series as CSV…", self.export_csv, "Ctrl+E")
        self.act_quit = self._action("Quit", self.close, "Ctrl+Q")
        self.act_live = self._action("Back to live", self.timeline.go_live, "End")
        self.act_reset_layout = self._action("Reset layout", self.reset_layout)

    def _toolbar(self, name: str, title: str, area: QtCore.Qt.ToolBarArea) -> QtWidgets.QToolBar:
        bar = QtWidgets.QToolBar(title, self)
        bar.setObjectName(name)
        bar.setMovable(False)
        self.addToolBar(area, bar)
        return bar

    def _build_toolbar(self) -> None:
        bar = self._toolbar("toolbar-transport", "Transport", QtCore.Qt.ToolBarArea.TopToolBarArea)
        bar.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.act_play, self.act_step, self.act_phase, self.act_reinit):
            bar.addAction(action)
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" Speed "))
        self.speed = QtWidgets.QComboBox()
        for label, _ in SPEEDS:
            self.speed.addItem(label)
        self.speed.currentIndexChanged.connect(self._speed_changed)
        bar.addWidget(self.speed)
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" Scenario "))
        self.scenario = QtWidgets.QComboBox()
        self.scenario.setMinimumWidth(260)
        self.scenario.activated.connect(self._scenario_chosen)
        bar.addWidget(self.scenario)
        bar.addWidget(QtWidgets.QLabel(" Device "))
        self.device = QtWidgets.QComboBox()
        self.device.addItem("CPU", "cpu")
        self.device.activated.connect(self._device_chosen)
        bar.addWidget(self.device)
        self.timeline.step_chosen.connect(self._scrub)
        self.timeline.live_requested.connect(lambda: self._scrub(None))
        self.hyper_panel.hyper_changed.connect(self._hyper_changed)
        self.hyper_panel.rebuild_requested.connect(self._rebuild_requested)
        self.hyper_panel.example_changed.connect(lambda e: self.select(  # the selected unit stays selected
            self._selected_layer, self.bridge.selected_unit if self.bridge else None, example=e))
        self.hyper_panel.pause_when_changed.connect(self._pause_when_changed)
        self.views["neuron"].check_requested.connect(self._check_gradient)

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (self.act_open_model, self.act_reload_model, self.act_open_run, self.act_save_run):
            file_menu.addAction(action)
        export = file_menu.addMenu("Export view as PNG")
        for key, view in self.views.items():
            export.addAction(view.title, functools.partial(self.export_png, key))
        file_menu.addAction(self.act_export_csv)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)
        run_menu = menu.addMenu("&Run")
        for action in (self.act_play, self.act_step, self.act_phase, self.act_reinit, self.act_live):
            run_menu.addAction(action)
        run_menu.addSeparator()
        measure_menu = run_menu.addMenu("Measure")
        measure_menu.setToolTipsVisible(True)
        self.measuring = QtGui.QActionGroup(self)
        for index, (label, _) in enumerate(MEASURING):
            action = measure_menu.addAction(label)
            action.setCheckable(True)
            action.setData(index)
            action.setToolTip("Measuring less often trains faster; plots over the run then hold only measured steps")
            self.measuring.addAction(action)
        self.measuring.actions()[0].setChecked(True)
        self.measuring.triggered.connect(lambda _action: self._measuring_changed())
        view_menu = menu.addMenu("&View")
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())
        view_menu.addSeparator()
        view_menu.addAction(self.act_reset_layout)
        self.lessons_menu = menu.addMenu("&Lessons")
        help_menu = menu.addMenu("&Help")
        help_menu.addAction("About Glassbox", self._about)

    def _build_status(self) -> None:
        status = self.statusBar()
        self.status_state = QtWidgets.QLabel("Loading PyTorch…")
        self.status_step = QtWidgets.QLabel("")
        self.status_rate = QtWidgets.QLabel("")
        self.status_device = QtWidgets.QLabel("")
        self.status_overhead = QtWidgets.QLabel("")
        self.status_overhead.setToolTip("How often the probe measures a step, and how much slower it makes training "
                                        "on average (Run ▸ Measure changes how often)")
        status.addWidget(self.status_state, 1)
        for label in (self.status_step, self.status_rate, self.status_device, self.status_overhead):
            label.setMinimumWidth(110)
            status.addPermanentWidget(label)

    # --- engine --------------------------------------------------------------------------
    def start_engine(self, scenario: str | None = None, model: str | None = None, device: str = "auto",
                     play: bool = True) -> None:
        """Import the engine (torch), fill the pickers and start the first run."""
        import torch

        from app.bridge import Bridge
        from engine import scenarios

        # Leave a core to the GUI thread: torch's intra-op threads spin while they wait and would
        # otherwise starve the event loop on small machines.
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

        self._scenarios = scenarios.SCENARIOS
        self._scenario_module = scenarios
        # The general examples, then the lessons' problem/cure runs, then your own model.
        lesson_runs = [name for name in self._scenarios if name not in scenarios.EXAMPLE_NAMES]
        for names in (scenarios.EXAMPLE_NAMES, lesson_runs):
            for name in names:
                self.scenario.addItem(self._scenarios[name].title, name)
            self.scenario.insertSeparator(self.scenario.count())
        self.scenario.addItem(OPEN_MODEL, OPEN_MODEL)
        from engine.lessons import LESSONS

        self.lesson_panel.set_lessons(LESSONS, {name: sc.title for name, sc in self._scenarios.items()},
                                      {key: view.title for key, view in self.views.items()})
        for lesson in LESSONS.values():
            self.lessons_menu.addAction(lesson.title, functools.partial(self.show_lesson, lesson.name))
        self.lesson_panel.run_requested.connect(self.run_scenario)
        self.lesson_panel.compare_requested.connect(self.compare)
        self.lesson_panel.stop_compare_requested.connect(self.stop_compare)
        if torch.cuda.is_available():
            self.device.addItem(f"CUDA ({torch.cuda.get_device_name(0)})", "cuda")
        self._current["device"] = scenarios.resolve_device(device)
        self.device.setCurrentIndex(max(0, self.device.findData(self._current["device"])))
        self.bridge = Bridge(parent=self)
        self.bridge.frame_ready.connect(self._on_frame)
        self.bridge.error.connect(self._on_error)
        self.bridge.run_started.connect(self._on_run_started)
        if scenario is not None and scenario not in self._scenarios:  # (a typo on the command line)
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(self._scenarios)}")
        name = scenario or self._saved("scenario", scenarios.DEFAULT_SCENARIO)
        if name not in self._scenarios:  # (one remembered from another version)
            name = scenarios.DEFAULT_SCENARIO
        if model:
            factory = self._user_factory(model)
        else:
            factory = self._scenario_factory(name)
        self.bridge.start(factory)
        self._speed_changed(self.speed.currentIndex())
        self._measuring_changed()
        self._pause_when_changed(self.hyper_panel.pause_conditions())
        self.hyper_panel.setEnabled(True)
        self.status_state.setText("Ready")
        if play:
            self.play()

    # A factory's description becomes the current run's (what Save, Rebuild and the combo go by)
    # only when its run's first frame arrives: a model file that fails to load changes nothing.
    def _scenario_factory(self, name: str, model: dict | None = None, hyper: dict | None = None,
                          device: str | None = None) -> Callable:
        device = device or self._current["device"]
        self._requested = {"kind": "scenario", "name": name, "model": model, "device": device}
        return functools.partial(self._scenario_module.build_run, name, device=device, model=model, hyper=hyper)

    def _user_factory(self, ref: str, device: str | None = None) -> Callable:
        device = device or self._current["device"]
        self._requested = {"kind": "user", "name": ref, "model": None, "device": device}
        self._model_ref = ref
        file, _, function = ref.rpartition(":")
        self.act_reload_model.setText(f"Reload {Path(file).name}:{function}")
        self.act_reload_model.setEnabled(True)
        return functools.partial(self._scenario_module.build_user_run, ref, device=device)

    def _show_in_scenario_box(self, current: dict[str, Any]) -> None:
        """The scenario box shows ``current``'s scenario or model file; a model file gets an entry
        of its own (choosing it again reloads the file)."""
        if current["kind"] == "user" and self.scenario.findData(current["name"]) < 0:
            file, _, function = current["name"].rpartition(":")
            with QtCore.QSignalBlocker(self.scenario):
                self.scenario.insertItem(self.scenario.findData(OPEN_MODEL),
                                         f"Your model · {Path(file).name}:{function}", current["name"])
        index = self.scenario.findData(current["name"])
        if index >= 0 and index != self.scenario.currentIndex():
            with QtCore.QSignalBlocker(self.scenario):
                self.scenario.setCurrentIndex(index)

    def _show_current_run(self) -> None:
        """The combos show the current run (after a failed load, again)."""
        self._show_in_scenario_box(self._current)
        index = self.device.findData(self._current["device"])
        if index >= 0 and index != self.device.currentIndex():
            with QtCore.QSignalBlocker(self.device):
                self.device.setCurrentIndex(index)

    def _saved(self, key: str, default: Any) -> Any:
        return app_settings().value(key, default) if self._remember else default

    # --- transport -----------------------------------------------------------------------
    def play(self) -> None:
        from engine.worker import Play

        if self.bridge is None:
            return
        self._start_saved_run()
        self.timeline.go_live()  # (and so the views: the timeline asks the bridge)
        self.banner.dismiss()
        self._send_all(Play())
        self._set_running(True)

    def _start_saved_run(self) -> None:
        """Leaving an opened run file: its configuration starts afresh, for what comes next
        (play, a step, a phase, a reinitialisation) to act on the run that was on screen."""
        if self._saved_run is not None:
            (factory, current), self._saved_run = self._saved_run, None
            self._saved_history = self._saved_view = None
            self.timeline.setEnabled(True)
            self.hyper_panel.setEnabled(True)
            self._requested = {**current, "device": self._current["device"]}
            self.bridge.replace_run(factory)

    def pause(self) -> None:
        from engine.worker import Pause

        if self.bridge is not None:
            self._send_all(Pause())
        self._set_running(False)

    def toggle_play(self) -> None:
        self.pause() if self._running else self.play()

    def _set_running(self, running: bool) -> None:
        self._running = running
        # Icons from the style, not glyphs: "⏸" is missing from many fonts.
        icons = QtWidgets.QStyle.StandardPixmap
        self.act_play.setIcon(self.style().standardIcon(icons.SP_MediaPause if running else icons.SP_MediaPlay))
        self.act_play.setText("Pause" if running else "Play")

    def step_once(self) -> None:
        from engine.worker import Step

        if self.bridge is not None:
            self._start_saved_run()
            self.timeline.go_live()  # the step taken is what the views (and the timeline) show next
            self._set_running(False)
            self._send_all(Step())

    def step_phase(self) -> None:
        from engine.worker import Pause, PhaseStep

        if self.bridge is not None:
            self._start_saved_run()
            self.timeline.go_live()
            self._set_running(False)
            if self.partner is not None:
                self.partner.send(Pause())
            self.docks["inspector"].show()
            self.docks["inspector"].raise_()
            self.bridge.send(PhaseStep())

    def reinitialize(self) -> None:
        from engine.worker import Reinitialize

        if self.bridge is not None:
            self._start_saved_run()
            self._send_all(Reinitialize())

    def _speed_changed(self, index: int) -> None:
        from engine.worker import SetSpeed

        if self.bridge is not None:
            self._send_all(SetSpeed(SPEEDS[index][1]))

    def measuring_every(self) -> int | None | str:
        """The chosen capture interval: an int, None (adaptive) or "auto" (each run's default)."""
        return MEASURING[self.measuring.checkedAction().data()][1]

    def set_measuring(self, every: int | None | str) -> None:
        index = next(i for i, (_, value) in enumerate(MEASURING) if value == every)
        self.measuring.actions()[index].setChecked(True)
        self._measuring_changed()

    def _measuring_changed(self) -> None:
        from engine.worker import SetMeasuring

        if self.bridge is not None:
            self._send_all(SetMeasuring(self.measuring_every()))

    def _hyper_changed(self, changes: dict) -> None:
        from engine.worker import SetHyper

        if self.bridge is not None:
            self.bridge.send(SetHyper(changes))

    def _check_gradient(self, layer: str, unit: int, index: int) -> None:
        from engine.worker import CheckGradient

        if self.bridge is not None:
            self.bridge.send(CheckGradient(layer, unit, index))

    def _pause_when_changed(self, conditions: dict) -> None:
        from engine.worker import PauseWhen, SetPauseWhen

        if self.bridge is not None:
            self._send_all(SetPauseWhen(PauseWhen(**conditions)))

    def _send_all(self, command: Any) -> None:
        """Transport and watch settings apply to both runs while two train side by side."""
        self.bridge.send(command)
        if self.partner is not None:
            self.partner.send(command)

    # --- lessons and side-by-side runs ---------------------------------------------------------
    def show_lesson(self, name: str) -> None:
        self.lesson_panel.show_lesson(name)
        self.docks["lessons"].show()
        self.docks["lessons"].raise_()

    def run_scenario(self, name: str) -> None:
        """Train a built-in scenario in the main views (one run), starting at once."""
        if self.bridge is None or name not in self._scenarios:
            return
        self.stop_compare()
        self._replace(self._scenario_factory(name))
        if not self._running:
            self.play()

    def compare(self, first: str, second: str) -> None:
        """Train two scenarios at once: ``first`` in every view, both in the Compare view."""
        from app.bridge import Bridge
        from engine.worker import PauseWhen, Play, SetMeasuring, SetPauseWhen, SetSpeed

        if self.bridge is None or first not in self._scenarios or second not in self._scenarios:
            return
        self.stop_compare()
        self._replace(self._scenario_factory(first))
        partner = Bridge(parent=self)
        partner.frame_ready.connect(self._on_partner_frame)
        partner.error.connect(self._on_partner_error)
        partner.start(functools.partial(self._scenario_module.build_run, second, device=self._current["device"]))
        partner.send(SetSpeed(SPEEDS[self.speed.currentIndex()][1]))
        partner.send(SetMeasuring(self.measuring_every()))
        partner.send(SetPauseWhen(PauseWhen(**self.hyper_panel.pause_conditions())))
        self.partner = partner
        self.comparison.clear()
        self.comparison.set_names(self._scenarios[first].title, self._scenarios[second].title)
        self._compare_drawn = [0.0, 0.0]
        self.lesson_panel.set_comparing(True)
        self.docks["compare"].show()
        self.docks["compare"].raise_()
        if self._running:
            partner.send(Play())
        else:
            self.play()
        self.statusBar().showMessage("Two runs side by side: the blue one fills every view, both fill Compare", 8000)

    def stop_compare(self) -> None:
        """Back to one run: the second trainer stops and its thread ends."""
        if self.partner is None:
            return
        partner, self.partner = self.partner, None
        if not partner.stop(timeout=3.0):
            log.warning("the second training thread did not stop within 3 s")
        partner.deleteLater()
        self.comparison.clear()
        self.lesson_panel.set_comparing(False)

    def _on_partner_frame(self, data: ViewData) -> None:
        self._feed_comparison(1, data)

    def _feed_comparison(self, side: int, data: ViewData) -> None:
        now = time.perf_counter()
        if data.snapshot.state == "running" and now - self._compare_drawn[side] < COMPARE_INTERVAL_S:
            return
        self._compare_drawn[side] = now
        self.comparison.set_side(side, data)

    def _on_partner_error(self, event: ErrorEvent) -> None:
        self.errors.append(event)
        self.banner.show_error(f"Orange run: {event.message}", _where(event))

    def _scenario_chosen(self, index: int) -> None:
        name = self.scenario.itemData(index)
        if name == OPEN_MODEL:
            self.open_model_file()
            return
        if name and name not in self._scenarios:  # a model file opened before
            if name != self._current["name"] or self._saved_run is not None:
                self.open_model(name)
            return
        if name and (name != self._current["name"] or self._current["kind"] != "scenario"
                     or self._saved_run is not None):  # (the box shows an opened file's scenario)
            self.stop_compare()
            self._replace(self._scenario_factory(name))

    def _device_chosen(self, index: int) -> None:
        device = self.device.itemData(index)
        if device == self._current["device"]:
            return
        self.stop_compare()
        if self._current["kind"] == "user":
            self._replace(self._user_factory(self._current["name"], device))
        else:
            self._replace(self._scenario_factory(self._current["name"], self._current["model"], device=device))

    def _replace(self, factory: Callable) -> None:
        self._saved_run = self._saved_history = self._saved_view = None
        self.timeline.setEnabled(True)
        self.hyper_panel.setEnabled(True)
        was_running = self._running
        self.bridge.replace_run(factory)
        self.status_state.setText("Building the run…")
        if was_running:
            self.play()

    def _rebuild_requested(self, overrides: dict) -> None:
        if self._current["kind"] != "scenario":
            return
        answer = QtWidgets.QMessageBox.question(
            self, "Rebuild the model?",
            "Rebuilding the model with these settings starts training again from fresh weights. "
            "Continue?")
        if answer == QtWidgets.QMessageBox.StandardButton.Yes:
            hyper = None
            live = self.bridge.latest if self.bridge is not None else None  # not a scrubbed step's
            if live is not None:
                import dataclasses
                hyper = dataclasses.asdict(live.hyper)
            self._replace(self._scenario_factory(self._current["name"], overrides, hyper))

    def open_model_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open a model file", str(Path.home()),
                                                        "Python files (*.py)")
        if not path:
            self.scenario.setCurrentIndex(max(0, self.scenario.findData(self._current["name"])))
            return
        candidates = _zero_argument_functions(path)
        if candidates is None or len(candidates) == 1:  # (a file that doesn't parse: no question first)
            function = candidates[0] if candidates else "build"
        else:
            function, ok = QtWidgets.QInputDialog.getItem(
                self, "Which function?", "The function that returns (model, data, loss_fn):",
                candidates or ["build"], 0, True)
            if not ok:
                return
        self.open_model(f"{path}:{function}")

    def open_model(self, ref: str) -> None:
        """Train the user's ``file.py:function`` (errors arrive as a one-line banner)."""
        if self.bridge is not None:
            self.stop_compare()
            self._replace(self._user_factory(ref))

    def reload_model(self) -> None:
        """Read the model file last asked for again (the one training, or one that failed to
        load) and train it afresh: the edit, run, look loop of working on your own model."""
        if self._model_ref is not None:
            self.banner.dismiss()  # (a file that fails again says so anew)
            self.open_model(self._model_ref)

    # --- selection and scrubbing ----------------------------------------------------------
    @property
    def _selected_layer(self) -> str | None:
        return self.bridge.selected_layer if self.bridge is not None else None

    def select(self, layer: str | None, unit: int | None, example: int | None = None) -> None:
        """A layer or unit picked in any view is selected in every view."""
        if self.bridge is None:
            return
        from engine.worker import TraceUnit

        self.bridge.select(layer, unit, example if example is not None else self.hyper_panel.example.value())
        self.bridge.send(TraceUnit(layer if unit is not None else None, unit or 0))
        for view in self.views.values():
            view.set_selection(layer, unit)

    def _scrub(self, step: int | None) -> None:
        if self.bridge is not None:
            self.bridge.scrub_to(step)

    # --- frames from the bridge ----------------------------------------------------------
    def _on_run_started(self, run_id: int) -> None:
        self.timeline.set_steps([])
        self.timeline.go_live()

    def _on_frame(self, data: ViewData) -> None:
        if self._saved_run is not None:
            return  # a saved run is on screen until the user plays or picks another run
        snapshot = data.snapshot
        first = self._last_snapshot is None or self._last_snapshot.run_id != snapshot.run_id
        self._last_snapshot = snapshot
        if first:
            self._first_frame_of_run(snapshot)
        elif snapshot.hyper != self._panel_hyper:
            self.hyper_panel.show_hyper(snapshot.hyper)
        self._panel_hyper = snapshot.hyper
        # Painting is the GUI's main cost: each frame refreshes a few views in turn, so a
        # frame stays short (the event loop stays responsive) and each view still updates
        # several times a second. A new run, a phase or a paused state refresh them all.
        visible = [view for view in self.views.values() if view.isVisible()]
        if first or snapshot.state != "running" or not self.bridge.live:
            chosen = visible
        else:
            start = self._render_cursor % max(1, len(visible))
            chosen = (visible[start:] + visible[:start])[:VIEWS_PER_FRAME]
            self._render_cursor += VIEWS_PER_FRAME
        for view in chosen:
            view.render(data)
        if self.partner is not None:
            self._feed_comparison(0, data)
        self._raise_health_on_news(snapshot)
        if self.bridge.live:
            self.timeline.set_steps([s.step for s in self.bridge.snapshots])
        self._show_status(snapshot)

    def _run_description(self, scenario: str, model_changes: dict | None) -> tuple[str, dict | None]:
        """The hyperparameter panel's description of a run, and its built-in model's settings."""
        if scenario not in self._scenarios:
            return f"<b>Your model</b><br>{scenario}", None
        import dataclasses

        sc = self._scenarios[scenario]
        model = dataclasses.asdict(sc.model)
        model.update(model_changes or {})
        return f"<b>{sc.title}</b><br>{sc.description}", model

    def _raise_health_on_news(self, snapshot: Snapshot) -> None:
        """Bring the health panel forward when a new warning or error appears."""
        serious = {(d.code, d.layers) for d in snapshot.diagnoses if d.severity in ("warning", "error")}
        if serious - self._seen_findings:
            if self.partner is None:  # (two runs side by side: Compare, which was asked for, stays in front)
                self.docks["health"].show()
                self.docks["health"].raise_()
            self.views["health"].render(self.bridge.view_data())
            self.statusBar().showMessage("Glassbox found a problem: see the Health panel", 6000)
        self._seen_findings |= serious

    def _first_frame_of_run(self, snapshot: Snapshot) -> None:
        self._seen_findings = set()
        # A request is this run's when the names agree; otherwise it is for a run still to come
        # (asked for before an earlier run's first frame arrived) and waits for it.
        requested = self._requested
        if requested is not None and requested["name"] == snapshot.scenario:
            self._current.update(requested)
            self._requested = None
        self._show_current_run()
        self.hyper_panel.show_run(*self._run_description(snapshot.scenario, self._current.get("model")),
                                  snapshot.hyper)
        kinds = {layer.type_name for layer in snapshot.layers}
        if "MultiheadAttention" in kinds:
            self.docks["attention"].raise_()
        elif "Conv2d" in kinds or "Conv1d" in kinds:
            self.docks["features"].raise_()
        else:  # (its empty note says why, rather than an empty attention or feature map view)
            self.docks["boundary"].raise_()
        default = next((layer.name for layer in snapshot.layers
                        if layer.params and layer.weight_shape and len(layer.weight_shape) >= 2), None)
        if default is not None:
            self.select(default, None)
        self.setWindowTitle(f"Glassbox — {snapshot.scenario}")
        if self._remember and snapshot.scenario in self._scenarios:
            app_settings().setValue("scenario", snapshot.scenario)

    def _show_status(self, snapshot: Snapshot) -> None:
        live = self.bridge.live
        state = {"running": "Training", "paused": "Paused", "stepping": "Stepping through phases"}[snapshot.state]
        if snapshot.phase is not None and snapshot.state != "running":
            state = phase_status_text(snapshot)
        if not live:
            state = "Viewing a recorded step (End: back to live)"
        self.status_state.setText(state)
        loss = snapshot.metrics.train_loss
        self.status_step.setText(f"step {snapshot.step:,}" + (f" · loss {loss:.4g}" if math.isfinite(loss) else ""))
        running = snapshot.state == "running" and live and snapshot.run_id >= 0
        self.status_rate.setText(f"{snapshot.steps_per_s:,.0f} steps/s" if running else "")
        self.status_device.setText(snapshot.device.upper())
        # (A saved run's file doesn't hold what its probe cost.)
        self.status_overhead.setText(measuring_text(snapshot) if snapshot.run_id >= 0 else "")

    def _on_error(self, event: ErrorEvent) -> None:
        self.errors.append(event)
        self.banner.show_error(event.message, _where(event))
        if event.phase == "load":  # the run asked for didn't start; the current one goes on as it was
            failed, self._requested = self._requested, None
            self._show_current_run()
            if self.bridge is None or self.bridge.latest is None:  # (none: the first run asked for failed)
                self._set_running(False)
                if failed is not None:  # (the box shows what failed: choosing it again, or F5, retries)
                    self._show_in_scenario_box(failed)
                retry = "fix the file and press F5, or " if failed is not None and failed["kind"] == "user" else ""
                self.status_state.setText(f"No run: {retry}open a model file or pick a scenario")
        elif self.partner is None:  # (side by side, the other run may still be training)
            self._set_running(False)

    def _dock_shown(self, key: str, visible: bool) -> None:
        """A view brought forward (a tab clicked) is drawn at once: the opened run file's state
        while one is on screen, else the run's."""
        if not visible or key not in self.views:
            return
        if self._saved_run is not None and self._saved_view is not None:
            self.views[key].render(self._saved_view)
        elif self.bridge is not None and self.bridge.latest is not None:
            self.views[key].render(self.bridge.view_data())

    # --- files ---------------------------------------------------------------------------
    def export_png(self, key: str, path: str | None = None) -> str | None:
        if path is None:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export view", f"glassbox-{key}.png",
                                                            "PNG images (*.png)")
        if not path:
            return None
        from app.exporting import save_png

        try:
            save_png(self.views[key], path)
        except OSError as exc:  # a folder that isn't there, a full disk: say so, keep running
            self.banner.show_error(f"Could not export the view: {exc}", path)
            return None
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return path

    def export_csv(self, path: str | None = None) -> str | None:
        history = self._saved_history if self._saved_run is not None else (
            self.bridge.history if self.bridge is not None else None)
        if history is None:
            self.banner.show_error("Nothing to export yet: train at least one step.", "")
            return None
        if path is None:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export series", "glassbox-series.csv",
                                                            "CSV files (*.csv)")
        if not path:
            return None
        from app.exporting import save_history_csv

        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
        try:
            save_history_csv(history, path)
        except OSError as exc:  # a folder that isn't there, a full disk: say so, keep running
            self.banner.show_error(f"Could not export the series: {exc}", path)
            return None
        finally:
            QtWidgets.QApplication.restoreOverrideCursor()
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return path

    def save_run(self, path: str | None = None) -> str | None:
        """Save the live run (its newest state), or a copy of the run file on screen."""
        if self._saved_run is None and (self.bridge is None or self.bridge.history is None
                                        or self._last_snapshot is None):
            self.banner.show_error("Nothing to save yet: train at least one step of a run.", "")
            return None
        if path is None:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save run", "run.glassbox",
                                                            "Glassbox runs (*.glassbox)")
        if not path:
            return None
        from app.exporting import save_run_file

        try:
            if self._saved_run is not None:  # (the opened file, as it is)
                if os.path.abspath(path) != os.path.abspath(self._saved_path):
                    write_atomic(path, Path(self._saved_path).read_bytes())
            else:  # the live run's newest state, even while an earlier step is on screen
                save_run_file(path, self.bridge, self.bridge.latest or self._last_snapshot, self._current)
        except Exception as exc:  # disk full, permissions: say so, keep running
            self.banner.show_error(f"Could not save the run: {exc}", path)
            return None
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return path

    def open_run(self, path: str | None = None) -> bool:
        """Show a saved run (paused); Play then trains its configuration afresh."""
        if path is None:
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open run", "", "Glassbox runs (*.glassbox)")
        if not path:
            return False
        from app.exporting import open_saved, restore_run_factory

        try:
            view, history = open_saved(path)
            factory, current = restore_run_factory(path, self._current["device"])
        except Exception as exc:  # a corrupt or foreign file: one line, nothing lost
            from engine.runfile import RunFileError

            text = " ".join(str(exc).split()) or type(exc).__name__
            if not isinstance(exc, RunFileError):  # (a configuration it can't take: a hand-edited or newer file)
                text = f"{path}: a run file this Glassbox cannot show ({type(exc).__name__}: {text})"
            self.banner.show_error(text, "")
            return False
        self.stop_compare()
        self.pause()
        self._saved_run = (factory, current)
        self._saved_history = history
        self._saved_view = view
        self._saved_path = path
        # The file holds one step's state: nothing to scrub through until its run trains again.
        self.timeline.show_saved(view.snapshot.step)
        # Its settings are shown, read-only: a change now would reach the live run behind it.
        description, model = self._run_description(view.snapshot.scenario, current.get("model"))
        self.hyper_panel.show_run(description, model, view.snapshot.hyper)
        self.hyper_panel.setEnabled(False)
        self._show_in_scenario_box(current)
        for key, widget in self.views.items():
            widget.render(view)
        self._last_snapshot = view.snapshot
        self._show_status(view.snapshot)
        self.status_state.setText(f"Viewing the saved run {Path(path).name} — Play trains its configuration afresh")
        self.setWindowTitle(f"Glassbox — {Path(path).name}")
        return True

    # --- layout --------------------------------------------------------------------------
    def _restore_layout(self) -> None:
        settings = app_settings()
        geometry = settings.value("geometry")
        state = settings.value("window_state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None and int(settings.value("layout_version", 0)) == LAYOUT_VERSION:
            self._layout_restored = self.restoreState(state, LAYOUT_VERSION)
        try:
            speed = int(settings.value("speed", 0))
        except (TypeError, ValueError):  # a settings file edited by hand
            speed = 0
        self.speed.setCurrentIndex(speed if 0 <= speed < self.speed.count() else 0)
        try:
            measuring = int(settings.value("measuring", 0))
        except (TypeError, ValueError):
            measuring = 0
        self.measuring.actions()[measuring if 0 <= measuring < len(MEASURING) else 0].setChecked(True)

    def reset_layout(self) -> None:
        self._arrange_default()
        QtCore.QTimer.singleShot(0, self._share_space)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        if self._remember:
            settings = app_settings()
            settings.setValue("geometry", self.saveGeometry())
            settings.setValue("window_state", self.saveState(LAYOUT_VERSION))
            settings.setValue("layout_version", LAYOUT_VERSION)
            settings.setValue("speed", self.speed.currentIndex())
            settings.setValue("measuring", self.measuring.checkedAction().data())
            settings.sync()
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> bool:
        """Stop the worker cleanly; True when no training thread is left running (one inside a
        long step, of a huge model, may outlast the wait)."""
        self.stop_compare()
        if self.bridge is not None and not self.bridge.stop(timeout=3.0):
            log.warning("the training thread did not stop within 3 s")
            return False
        return True

    def _about(self) -> None:
        QtWidgets.QMessageBox.about(
            self, "About Glassbox",
            "<b>Glassbox</b><br>See inside a neural network while it trains.<br><br>"
            "Space: play/pause · →: one step · Shift+→: one phase · Ctrl+R: reinitialize · F5: reload your model file")


def phase_status_text(snapshot: Snapshot) -> str:
    """The status bar's words for a phase-by-phase step: which step, which phase of how many, and
    where (``Step 4, phase 6 of 9: ← backward through head``); after its update, that it is done."""
    phase = snapshot.phase
    total = max(int(phase.total), len(phase.names))
    if phase.kind == "update" and snapshot.state != "stepping":
        return f"Paused · step {snapshot.step:,} done: its update changed the weights"
    where = {"forward": f"\u2192 forward through {phase.module}", "backward": f"\u2190 backward through {phase.module}",
             "loss": "the loss", "update": "the update"}.get(phase.kind, phase.kind)
    return f"Step {snapshot.step + 1:,}, phase {int(phase.index) + 1} of {total}: {where}"


def measuring_text(snapshot: Snapshot) -> str:
    """The status bar's word on the probe: how often it measures, and what that costs on average
    (a measured step's extra time, spread over the steps of one interval)."""
    every = snapshot.capture_every
    how = "measuring every step" if every <= 1 else f"measuring every {every} steps"
    if snapshot.capture_adaptive:
        how += " (adaptive)"
    if snapshot.probe_overhead is None:  # (until both a measured and a bare step have been timed)
        return how
    return f"{how} · probe +{100 * snapshot.probe_overhead / max(1, every):.0f} %"


def _where(event: ErrorEvent) -> str:
    """Where an error happened, for the banner: "during backward · in layers.1 · step 12"."""
    return " · ".join(p for p in (event.phase and ("while loading" if event.phase == "load" else
                                                   f"during {event.phase}"),
                                  event.module and f"in {event.module}",
                                  event.step and f"step {event.step}") if p)


def _zero_argument_functions(path: str) -> list[str] | None:
    """Top-level functions of a Python file that take no arguments (without running it); None for
    a file that can't be read or parsed."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None  # (loading it says what is wrong, in the banner)
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            if not (a.args or a.posonlyargs or a.kwonlyargs) or len(a.defaults) == len(a.args):
                names.append(node.name)
    return names
