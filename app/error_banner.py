"""A non-modal error line at the top of the window: the message, where it happened, dismiss."""
from __future__ import annotations

from PySide6 import QtCore, QtWidgets

__all__ = ["ErrorBanner"]


class ErrorBanner(QtWidgets.QFrame):
    """Shows the newest error; training has paused, the rest of the app stays usable."""

    visibility_changed = QtCore.Signal(bool)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ErrorBanner")
        self.setStyleSheet("#ErrorBanner { background: #5a1f24; border: 1px solid #c04a52; border-radius: 4px; }"
                           "#ErrorBanner QLabel { color: #ffe3e3; }")
        self.message = QtWidgets.QLabel(self)
        # One line, as every message is (a wrapping label in a toolbar asks for several lines'
        # height); a message too long for the window is clipped, and whole in the tooltip.
        self.message.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.message.setMinimumWidth(0)
        self.message.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.where = QtWidgets.QLabel(self)
        close = QtWidgets.QPushButton("Dismiss", self)
        close.clicked.connect(self.dismiss)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        icon = QtWidgets.QLabel("⚠", self)
        layout.addWidget(icon)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.where)
        layout.addWidget(close)
        self.shown = False

    def show_error(self, message: str, where: str = "") -> None:
        self.message.setText(message)
        self.message.setToolTip(message)
        self.where.setText(where)
        self.shown = True
        self.visibility_changed.emit(True)

    def dismiss(self) -> None:
        self.shown = False
        self.visibility_changed.emit(False)
