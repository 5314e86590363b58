"""The lessons gallery: pick an experiment, read what it shows, run its problem and its cure.

Each lesson's runs can be started one after the other (one button each, in the main views) or
two at once side by side (two trainers; the Compare view draws both). The panel only emits
requests; the main window owns the runs.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Mapping

from PySide6 import QtCore, QtWidgets

if TYPE_CHECKING:
    from engine.lessons import Lesson

__all__ = ["LessonPanel"]

class LessonPanel(QtWidgets.QWidget):
    """Lesson picker, explanation, one button per run, and a side-by-side launcher.

    Signals:
        run_requested(str): train this scenario in the main views.
        compare_requested(str, str): train these two scenarios side by side.
        stop_compare_requested(): back to a single run.
    """

    run_requested = QtCore.Signal(str)
    compare_requested = QtCore.Signal(str, str)
    stop_compare_requested = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._lessons: dict[str, "Lesson"] = {}
        self._titles: dict[str, str] = {}
        self._view_titles: dict[str, str] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.picker = QtWidgets.QComboBox(self)
        self.picker.currentIndexChanged.connect(self._picked)
        layout.addWidget(self.picker)
        self.text = QtWidgets.QTextBrowser(self)
        self.text.setOpenLinks(False)
        self.text.setStyleSheet("QTextBrowser { background: #15171c; color: #d6d9e0; border: none; }")
        layout.addWidget(self.text, 1)
        self.run_box = QtWidgets.QGroupBox("One at a time", self)
        self.run_layout = QtWidgets.QVBoxLayout(self.run_box)
        self.run_layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.run_box)
        self.run_buttons: list[QtWidgets.QPushButton] = []

        pair = QtWidgets.QGroupBox("Side by side", self)
        form = QtWidgets.QFormLayout(pair)
        form.setContentsMargins(4, 4, 4, 4)
        self.left = QtWidgets.QComboBox(pair)
        self.right = QtWidgets.QComboBox(pair)
        for combo in (self.left, self.right):
            combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
        form.addRow("Blue", self.left)
        form.addRow("Orange", self.right)
        buttons = QtWidgets.QHBoxLayout()
        self.compare_button = QtWidgets.QPushButton("Run side by side", pair)
        self.compare_button.setToolTip("Train both networks at once; the Compare view shows them together")
        self.compare_button.clicked.connect(
            lambda: self.compare_requested.emit(self.left.currentData(), self.right.currentData()))
        self.stop_button = QtWidgets.QPushButton("Stop comparing", pair)
        self.stop_button.clicked.connect(self.stop_compare_requested.emit)
        self.stop_button.setEnabled(False)
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.stop_button)
        form.addRow(buttons)
        layout.addWidget(pair)

    # --- filled by the app -----------------------------------------------------------------
    def set_lessons(self, lessons: Mapping[str, "Lesson"], scenario_titles: Mapping[str, str],
                    view_titles: Mapping[str, str]) -> None:
        """The lessons, and the titles their scenario names and view keys are shown by."""
        self._lessons = dict(lessons)
        self._titles = dict(scenario_titles)
        self._view_titles = dict(view_titles)
        self.picker.blockSignals(True)
        self.picker.clear()
        for name, lesson in self._lessons.items():
            self.picker.addItem(lesson.title, name)
        self.picker.blockSignals(False)
        self._picked(self.picker.currentIndex())

    def show_lesson(self, name: str) -> None:
        index = self.picker.findData(name)
        if index >= 0:
            self.picker.setCurrentIndex(index)

    def set_comparing(self, comparing: bool) -> None:
        self.stop_button.setEnabled(comparing)

    @property
    def lesson(self) -> "Lesson | None":
        return self._lessons.get(self.picker.currentData())

    # --- internals ---------------------------------------------------------------------------
    def _picked(self, index: int) -> None:
        lesson = self.lesson
        for button in self.run_buttons:
            self.run_layout.removeWidget(button)
            button.hide()  # deleteLater waits for the event loop; hide it now
            button.deleteLater()
        self.run_buttons = []
        if lesson is None:
            self.text.setHtml("")
            return
        paragraphs = "".join(f"<p>{html.escape(p.strip())}</p>" for p in lesson.explanation.split("\n\n"))
        watch = ", ".join(self._view_titles.get(key, key) for key in lesson.watch)
        self.text.setHtml(
            f"<h3>{html.escape(lesson.title)}</h3>{paragraphs}"
            f"<p><b>What to expect.</b> {html.escape(lesson.outcome)}</p>"
            f"<p style='color:#9aa0aa'><b>Watch:</b> {html.escape(watch)} · about {lesson.steps:,} steps</p>")
        # (No "problem"/"cure" labels: in many lessons the runs are alternatives side by side.)
        for name in lesson.runs:
            title = self._titles.get(name, name)
            button = QtWidgets.QPushButton(f"▶ {title}", self.run_box)
            button.setToolTip(f"Train “{title}” in the main views")
            button.setStyleSheet("QPushButton { text-align: left; padding: 3px 6px; }")
            button.clicked.connect(lambda _=False, n=name: self.run_requested.emit(n))
            self.run_layout.addWidget(button)
            self.run_buttons.append(button)
        for combo, default in ((self.left, 0), (self.right, 1)):
            combo.clear()
            for name in lesson.runs:
                combo.addItem(self._titles.get(name, name), name)
            combo.setCurrentIndex(min(default, len(lesson.runs) - 1))
