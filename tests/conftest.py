"""Suite-wide settings: headless Qt, and no thread may outlive its test."""
from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Never read or write the user's real settings from tests.
os.environ.setdefault("GLASSBOX_SETTINGS_DIR", tempfile.mkdtemp(prefix="glassbox-test-settings-"))


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Fail a test that leaves a Python thread running (the worker's must always stop)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not extra, f"threads left running: {[t.name for t in extra]}"
