"""Starting the desktop app: the window first, then the engine behind a visible status."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

__all__ = ["run_app"]


def run_app(options: argparse.Namespace) -> int:
    if options.smoke_test is not None and "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("Glassbox")
    app.setOrganizationName("Glassbox")
    app.setStyle("Fusion")  # (the same look on every platform, as the screenshots show it)
    try:
        window = open_window(options)
    except ValueError as exc:  # e.g. an unknown scenario or an absent CUDA device
        print(f"glassbox: error: {exc}", file=sys.stderr)
        return 2
    if options.smoke_test is not None:
        from app.smoke import run_smoke_test

        return run_smoke_test(window, options.smoke_test)
    code = app.exec()
    leave_now_if(not window.shutdown(), code)
    return code


def open_window(options: argparse.Namespace):
    """The main window, shown, training (or paused on) what the command line asked for; a run file
    named on it is on screen. ValueError for what can't start (the window is closed then)."""
    from PySide6 import QtWidgets

    from app.main_window import MainWindow

    smoke = options.smoke_test is not None
    window = MainWindow(remember_layout=not smoke)
    if smoke:
        window.show_every_view()
    window.show()
    QtWidgets.QApplication.processEvents()
    if os.environ.get("GLASSBOX_REPORT_STARTUP"):  # packaging/measure.py times launch-to-window by it
        print(f"glassbox: window shown at {time.time():.3f}", file=sys.stderr, flush=True)
    try:
        window.start_engine(scenario=options.scenario, model=options.model, device=options.device,
                            play=not (smoke or options.paused or options.run))
    except ValueError:
        window.shutdown()
        window.close()
        raise
    if options.run:  # (a file that can't be shown says so in the banner; the run behind it waits paused)
        window.open_run(options.run)
    return window


def leave_now_if(thread_left_running: bool, code: int) -> None:
    """End the process at once when a training thread is still inside a step at exit.

    Python would otherwise finalise with that thread in the middle of a torch operation, and the
    C++ runtime aborts ("terminate called without an active exception", exit status 134).
    Nothing is lost: settings are saved when the window closes, and the worker writes no files.
    """
    if not thread_left_running:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
