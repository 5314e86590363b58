"""Leaving the app while a training thread is still inside a long step ends the process at once."""
from __future__ import annotations

import pytest

import app.application as application


def test_a_thread_left_in_a_step_ends_the_process_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(application.os, "_exit", exits.append)
    application.leave_now_if(False, 0)  # every thread stopped: the normal way out
    assert exits == []
    application.leave_now_if(True, 3)  # (finalising with it mid-operation aborts: status 134)
    assert exits == [3]
