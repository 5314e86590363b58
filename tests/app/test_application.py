"""Leaving the app while a training thread is still inside a long step ends the process at once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import app.application as application


def test_a_thread_left_in_a_step_ends_the_process_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(application.os, "_exit", exits.append)
    application.leave_now_if(False, 0)  # every thread stopped: the normal way out
    assert exits == []
    application.leave_now_if(True, 3)  # (finalising with it mid-operation aborts: status 134)
    assert exits == [3]


def run_glassbox(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=Path(__file__).resolve().parents[2])


def test_a_mistyped_scenario_is_an_error_not_the_default_scenario() -> None:
    done = run_glassbox("--scenario", "spirals-mpl", "--paused")
    assert done.returncode == 2
    assert "glassbox: error: unknown scenario 'spirals-mpl'; choose from spirals-mlp" in done.stderr


def test_a_run_file_named_on_the_command_line_is_opened(qtbot, tmp_path: Path) -> None:
    """`glassbox RUN.glassbox` (as the desktop entry passes a file) shows the file's run, paused;
    one that can't be read is a line in the banner, and the window stays."""
    from app.main import _gui_parser
    from engine.report import main as report

    saved = tmp_path / "xor.glassbox"
    assert report(["--scenario", "xor-mlp", "--steps", "7", "--save", str(saved)]) == 0
    window = application.open_window(_gui_parser().parse_args([str(saved), "--device", "cpu"]))
    qtbot.addWidget(window)
    try:
        assert window._saved_path == str(saved) and not window._running
        assert window._saved_view.snapshot.step == 7 and window._saved_view.snapshot.scenario == "xor-mlp"
    finally:
        window.shutdown()
    broken = tmp_path / "broken.glassbox"
    broken.write_bytes(saved.read_bytes()[:100])
    window = application.open_window(_gui_parser().parse_args([str(broken), "--device", "cpu"]))
    qtbot.addWidget(window)
    try:
        assert "broken.glassbox: truncated or damaged run file" in window.banner.message.text()
        assert window._saved_run is None
    finally:
        window.shutdown()
