"""Training steps/s with the full window open vs. headless, same scenario, one process.

Headless is the same worker thread publishing to a callback that only keeps the newest snapshot
(what the bridge does); windowed is the main window with every view visible and refreshing.
Rounds alternate so machine noise hits both. Target (issue #4): windowed / headless >= 0.8.

Usage: python bench/app_throughput.py [--scenario NAME ...] [--seconds 4] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def headless_rate(scenario: str, seconds: float) -> float:
    from engine.scenarios import build_run
    from engine.snapshot import Snapshot
    from engine.worker import Pause, Play, Worker

    latest: list[Snapshot] = []
    lock = threading.Lock()

    def keep(item) -> None:
        if isinstance(item, Snapshot):
            with lock:
                latest[:] = [item]

    worker = Worker(keep)
    worker.start(lambda: build_run(scenario, device="cpu"))
    try:
        while not latest:
            time.sleep(0.01)
        worker.send(Play())
        time.sleep(1.0)  # warm-up
        start_step, start = latest[0].step, time.perf_counter()
        time.sleep(seconds)
        with lock:
            end_step = latest[0].step
        elapsed = time.perf_counter() - start
        worker.send(Pause())
        return (end_step - start_step) / elapsed
    finally:
        worker.stop(2.0)


def windowed_rate(scenario: str, seconds: float) -> tuple[float, int]:
    from PySide6 import QtCore, QtWidgets

    from app.main_window import MainWindow

    _app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])  # keep it alive
    window = MainWindow(remember_layout=False)
    window.resize(1600, 1000)
    window.show_every_view()
    window.show()
    window.start_engine(scenario=scenario, device="cpu", play=True)

    def spin(duration: float) -> None:
        # A real event loop (as the app runs), not a processEvents() polling loop. (Not
        # app.exec()/quit(): in Qt 6 quit() closes the window, which stops training.)
        loop = QtCore.QEventLoop()
        QtCore.QTimer.singleShot(int(duration * 1000), loop.quit)
        loop.exec()

    try:
        while window.bridge.latest is None:
            spin(0.05)
        spin(1.0)
        start_step, frames0, start = window.bridge.latest.step, window.bridge.frames_emitted, time.perf_counter()
        spin(seconds)
        elapsed = time.perf_counter() - start
        return (window.bridge.latest.step - start_step) / elapsed, window.bridge.frames_emitted - frames0
    finally:
        window.shutdown()
        window.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", nargs="*", default=["spirals-mlp", "shapes-cnn", "reverse-transformer"])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch

    # The app leaves a core to the GUI; give headless the same thread count so only the window differs.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    print(f"{'scenario':<22} {'headless steps/s':>17} {'window steps/s':>15} {'ratio':>6} {'frames/s':>9}")
    for scenario in args.scenario:
        heads, wins, fps = [], [], []
        for _ in range(args.rounds):
            heads.append(headless_rate(scenario, args.seconds))
            rate, frames = windowed_rate(scenario, args.seconds)
            wins.append(rate)
            fps.append(frames / args.seconds)
        head, win = statistics.median(heads), statistics.median(wins)
        print(f"{scenario:<22} {head:>17.1f} {win:>15.1f} {win / head:>6.2f} {statistics.median(fps):>9.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
