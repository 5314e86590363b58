"""`glassbox --smoke-test N`: the full window, N steps at full speed, one step phase by phase.

Prints one JSON line: steps, frames drawn, how late a 10 ms GUI timer fired while training ran
(p99 and max, after the first second; null, with 0 ticks, if training was over by then: ask for
more steps), training steps/s, and any errors. Exit status 1 if an error occurred or the run did
not finish.
"""
from __future__ import annotations

import json
import time

import numpy as np
from PySide6 import QtCore, QtWidgets

from app.main_window import MainWindow

__all__ = ["SmokeTest"]

TICK_MS = 10
WARMUP_S = 1.0


class SmokeTest(QtCore.QObject):
    def __init__(self, window: MainWindow, steps: int, timeout_s: float = 600.0) -> None:
        super().__init__(window)
        self.window = window
        self.steps = steps
        self.timeout_s = timeout_s
        self.started = time.perf_counter()
        self.result: dict | None = None
        self._stage = "waiting"
        self._lateness: list[float] = []
        self._last_tick: float | None = None
        self._play_time = 0.0
        self._train_done = 0.0
        self._phases_seen = 0
        self._frames_at_play = 0
        self._probe = QtCore.QTimer(self)
        self._probe.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self._probe.setInterval(TICK_MS)
        self._probe.timeout.connect(self._tick)

    def start(self) -> None:
        self._probe.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._stage == "training" and self._last_tick is not None and now - self._play_time > WARMUP_S:
            self._lateness.append(max(0.0, now - self._last_tick - TICK_MS / 1000))
        self._last_tick = now
        if now - self.started > self.timeout_s:
            self._finish(f"smoke test timed out in stage {self._stage}")
            return
        bridge = self.window.bridge
        latest = bridge.latest if bridge is not None else None
        if self.window.errors:
            self._finish(None)
            return
        if self._stage == "waiting":
            if latest is not None:
                self._stage = "training"
                self._play_time = time.perf_counter()
                self._frames_at_play = bridge.frames_emitted
                self.window.play()
        elif self._stage == "training":
            if latest is not None and latest.step >= self.steps:
                self._train_done = time.perf_counter()
                self._trained = latest.step
                self.window.pause()
                self._stage = "phases"
                self._phase_sent = False
                self._phase_key = None
        elif self._stage == "phases":
            # One PhaseStep per phase shown: send the next only once the previous one arrived.
            if latest is None or latest.state == "running":
                return
            phase = latest.phase
            key = None if phase is None else (latest.step, phase.index)
            if not self._phase_sent:
                self.window.step_phase()
                self._phase_sent = True
                self._phase_key = key
            elif key is not None and key != self._phase_key:
                self._phase_key = key
                self._phases_seen += 1
                if phase.kind == "update":
                    self._finish(None)
                    return
                self.window.step_phase()

    def _finish(self, problem: str | None) -> None:
        if self.result is not None:
            return
        self._probe.stop()
        late = np.asarray(self._lateness) * 1000
        span = (self._train_done or time.perf_counter()) - self._play_time
        errors = [e.message for e in self.window.errors]
        if problem:
            errors.append(problem)
        bridge = self.window.bridge
        self.result = {
            "steps": int(getattr(self, "_trained", 0)),
            "frames": int(bridge.frames_emitted - self._frames_at_play) if bridge else 0,
            "gui_p99_ms": round(float(np.percentile(late, 99)), 2) if late.size else None,
            "gui_max_ms": round(float(late.max()), 2) if late.size else None,
            "gui_ticks": int(late.size),
            "steps_per_s": round(getattr(self, "_trained", 0) / span, 1) if span > 0 else 0.0,
            "phases": self._phases_seen,
            "errors": errors,
        }
        QtWidgets.QApplication.instance().quit()


def run_smoke_test(window: MainWindow, steps: int) -> int:
    smoke = SmokeTest(window, steps)
    smoke.start()
    QtWidgets.QApplication.instance().exec()
    window.shutdown()
    result = smoke.result or {"steps": 0, "frames": 0, "gui_p99_ms": None, "gui_max_ms": None, "gui_ticks": 0,
                              "steps_per_s": 0.0, "errors": ["the smoke test never finished"]}
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0
