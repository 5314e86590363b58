"""Glassbox engine: PyTorch + numpy only. Never imports Qt (tests/engine/test_no_qt.py checks)."""
from __future__ import annotations

__version__ = "0.1.0"
