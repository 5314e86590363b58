"""Render the main window for each scenario to PNG (offscreen), for looking at and for the README.

Usage: python scripts/screenshots.py [OUT_DIR] [--steps N] [--scenario NAME ...] [--model FILE.py:FUNC ...]
                                    [--compare FIRST SECOND] [--lesson NAME] [--raise DOCK ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="screenshots")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--scenario", nargs="*")
    parser.add_argument("--model", nargs="*", default=[], help="your model files (FILE.py:FUNC), instead of scenarios")
    parser.add_argument("--size", default="1600x1000")
    parser.add_argument("--compare", nargs=2, metavar=("FIRST", "SECOND"),
                        help="train two scenarios side by side (one picture)")
    parser.add_argument("--lesson", help="open this lesson in the Lessons panel")
    parser.add_argument("--raise", dest="docks", nargs="*", default=[], help="docks to bring forward")
    args = parser.parse_args()
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setStyle("Fusion")
    from app.main_window import MainWindow
    from engine.scenarios import SCENARIOS

    os.makedirs(args.out, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    if args.model:
        names = args.model
    else:
        names = [args.compare[0]] if args.compare else args.scenario or list(SCENARIOS)
    for name in names:
        window = MainWindow(remember_layout=False)
        window.resize(width, height)
        window.show()
        if args.model:
            window.start_engine(model=name, device="cpu", play=True)
            name = name.rpartition(":")[2] or os.path.basename(name)
        else:
            window.start_engine(scenario=name, device="cpu", play=True)
        if args.lesson:
            window.show_lesson(args.lesson)
        if args.compare:
            window.compare(*args.compare)
            name = "compare-" + "-vs-".join(args.compare)
        for dock in args.docks:
            window.docks[dock].raise_()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            app.processEvents()
            latest = window.bridge.latest
            if latest is not None and latest.step >= args.steps or window.errors:
                break
            time.sleep(0.005)
        window.pause()
        for dock in args.docks:
            window.docks[dock].raise_()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)
        path = os.path.join(args.out, f"{name}.png")
        window.grab().save(path)
        print(path, "step", window.bridge.latest.step, "errors", [e.message for e in window.errors])
        window.shutdown()
        window.close()
        window.deleteLater()
        app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
