"""A slider over the recorded steps of a run, with a way back to live training."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PySide6 import QtCore, QtWidgets

__all__ = ["Timeline"]


class Timeline(QtWidgets.QWidget):
    """Scrub through recorded steps; follows the newest step while live.

    The slider's positions are indices into the recorded steps. Feed them either as a
    contiguous range with ``set_range(first, last)`` (every step recorded) or as the exact,
    increasing step numbers with ``set_steps(steps)`` (e.g. only captured steps). Updates made
    by the app never emit; only the user's choices do.

    Signals:
        step_chosen(int): the user picked a recorded step (drag, keys, ``choose_step``);
            the timeline leaves live mode.
        live_requested(): the user asked to follow training again (Live button, ``go_live``).
    """

    step_chosen = QtCore.Signal(int)
    live_requested = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._first = 0
        self._count = 0
        # None: contiguous range first..first+count-1; else the explicit recorded steps.
        self._steps: np.ndarray | None = None
        self._live = True
        self._chosen: int | None = None  # the step shown while not live

        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal, self)
        self.slider.setObjectName("timelineSlider")
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.setPageStep(10)
        self.label = QtWidgets.QLabel(self)
        self.label.setObjectName("timelineLabel")
        self.label.setMinimumWidth(self.fontMetrics().horizontalAdvance("step 0000000 of 0000000 (live)"))
        self.live_button = QtWidgets.QPushButton("Live", self)
        self.live_button.setObjectName("liveButton")
        self.live_button.setCheckable(True)
        self.live_button.setChecked(True)
        self.live_button.setToolTip("Follow training again (show the newest step) · End")

        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        layout.addWidget(self.live_button)

        self.slider.valueChanged.connect(self._on_slider_value)
        self.slider.installEventFilter(self)  # End on the focused slider goes live (see eventFilter)
        self.live_button.clicked.connect(lambda _checked=False: self.go_live())
        self._refresh_label()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 - Qt name
        # End means "back to live" everywhere in the window; on the slider, it would only move the
        # handle to the newest *recorded* step and leave the views there while training goes on.
        if watched is self.slider and event.type() == QtCore.QEvent.Type.KeyPress \
                and event.key() == QtCore.Qt.Key.Key_End:
            self.go_live()
            return True
        return super().eventFilter(watched, event)

    # --- fed by the app ----------------------------------------------------------------
    def set_range(self, first_step: int, last_step: int) -> None:
        """Every step from ``first_step`` to ``last_step`` (inclusive) is recorded."""
        self._first = int(first_step)
        self._count = max(0, int(last_step) - int(first_step) + 1)
        self._steps = None
        self._sync_slider()

    def set_steps(self, steps: Sequence[int] | np.ndarray) -> None:
        """The recorded step numbers, increasing; the slider moves over exactly these."""
        array = np.asarray(steps, dtype=np.int64).ravel()
        self._steps = array
        self._count = int(array.size)
        self._first = int(array[0]) if array.size else 0
        self._sync_slider()

    def show_saved(self, step: int) -> None:
        """A saved run's one step: nothing to scrub through (the label says so) until it trains again."""
        self.set_steps([step])
        self.label.setText(f"saved at step {step:,}")
        self.setEnabled(False)

    # --- state -------------------------------------------------------------------------
    def is_live(self) -> bool:
        """True while the timeline follows the newest step."""
        return self._live

    def current_step(self) -> int | None:
        """The step shown: the newest while live, else the chosen one; None when empty."""
        if self._count == 0:
            return None
        return self._step_at(self.slider.value())

    def last_step(self) -> int | None:
        """The newest recorded step, or None when nothing is recorded."""
        return self._step_at(self._count - 1) if self._count else None

    def steps_count(self) -> int:
        """How many steps the slider moves over."""
        return self._count

    # --- user actions (also callable) ----------------------------------------------------
    def go_live(self) -> None:
        """Follow the newest step again and emit ``live_requested``."""
        self._live = True
        self._chosen = None
        self._sync_slider()
        self.live_requested.emit()

    def choose_step(self, step: int) -> None:
        """Show the recorded step nearest to ``step`` as if the user had picked it."""
        if self._count == 0:
            return
        index = self._index_of(int(step))
        if self.slider.value() == index:
            # valueChanged would not fire; still a deliberate choice.
            self._choose_index(index)
        else:
            self.slider.setValue(index)

    # --- internals -----------------------------------------------------------------------
    def _step_at(self, index: int) -> int:
        index = min(max(index, 0), self._count - 1)
        if self._steps is not None:
            return int(self._steps[index])
        return self._first + index

    def _index_of(self, step: int) -> int:
        """Index of the recorded step nearest to ``step``."""
        if self._steps is not None:
            position = int(np.searchsorted(self._steps, step))
            if position >= self._count:
                return self._count - 1
            if position > 0 and step - self._steps[position - 1] <= self._steps[position] - step:
                return position - 1
            return position
        return min(max(step - self._first, 0), self._count - 1)

    def _sync_slider(self) -> None:
        """Move the slider for new data without emitting (the app, not the user, moved)."""
        blocked = self.slider.blockSignals(True)
        try:
            self.slider.setEnabled(self._count > 0)
            self.slider.setRange(0, max(self._count - 1, 0))
            if self._count and not self.slider.isSliderDown():
                # Never yank the handle from under a user who is holding it.
                if self._live or self._chosen is None:
                    self.slider.setValue(self._count - 1)
                else:
                    # Keep the chosen *step* in view although its index shifts when old
                    # records are thinned out.
                    self.slider.setValue(self._index_of(self._chosen))
        finally:
            self.slider.blockSignals(blocked)
        self.live_button.setChecked(self._live)
        self._refresh_label()

    def _on_slider_value(self, index: int) -> None:
        if self._count:
            self._choose_index(index)

    def _choose_index(self, index: int) -> None:
        self._live = False
        self._chosen = self._step_at(index)
        self.live_button.setChecked(False)
        self._refresh_label()
        self.step_chosen.emit(self._chosen)

    def _refresh_label(self) -> None:
        if self._count == 0:
            self.label.setText("no steps recorded yet")
            return
        step = self._step_at(self.slider.value())
        text = f"step {step} of {self._step_at(self._count - 1)}"
        self.label.setText(text + " (live)" if self._live else text)
