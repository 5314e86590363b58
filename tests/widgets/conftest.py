"""Shared set-up of the widget tests."""
from __future__ import annotations

from typing import Callable, TypeVar

import pytest
from PySide6.QtWidgets import QWidget

W = TypeVar("W", bound=QWidget)


@pytest.fixture
def shown(qtbot) -> Callable[..., QWidget]:
    """``shown(widget, width, height)``: the widget at that size (as a dock gives it), on screen,
    closed after the test."""
    def show(widget: W, width: int, height: int) -> W:
        qtbot.addWidget(widget)
        widget.resize(width, height)
        widget.show()
        qtbot.waitExposed(widget)
        return widget
    return show
