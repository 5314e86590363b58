"""`glassbox --smoke-test`'s report: figures only from what it measured."""
from __future__ import annotations

from app.main_window import MainWindow
from app.smoke import SmokeTest


def test_gui_lateness_is_reported_only_when_the_timer_ticked_during_training(qtbot) -> None:
    window = MainWindow(remember_layout=False)
    qtbot.addWidget(window)
    try:
        quick = SmokeTest(window, steps=10)  # training over within the warm-up second: no ticks
        quick._finish(None)
        assert quick.result["gui_ticks"] == 0
        assert quick.result["gui_p99_ms"] is None and quick.result["gui_max_ms"] is None

        timed = SmokeTest(window, steps=10)
        timed._lateness = [i / 1000 for i in range(101)]  # 0 .. 100 ms late
        timed._finish(None)
        assert timed.result["gui_ticks"] == 101
        assert timed.result["gui_p99_ms"] == 99.0 and timed.result["gui_max_ms"] == 100.0
    finally:
        window.shutdown()
