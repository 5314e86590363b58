"""tests/engine must never import Qt: the engine runs on display-less training servers."""
from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def engine_stays_qt_free():
    yield
    leaked = [m for m in ("PySide6", "pyqtgraph", "app", "widgets") if m in sys.modules]
    if leaked and not any(m.startswith("tests.widgets") or m.startswith("tests.app") for m in sys.modules):
        pytest.fail(f"an engine test imported {leaked}")
