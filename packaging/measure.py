"""Measure the built bundle: its size on disk and launch-to-window time (median of 3).

    python packaging/measure.py [--bundle dist/glassbox] [--runs 3]

The launch time is from just before the process is started to the moment the app reports its main
window shown (GLASSBOX_REPORT_STARTUP=1 makes app/application.py print a timestamp to stderr).
Without a display the app runs offscreen, so this is start-up work, not a window manager's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "glassbox: window shown at "


def executable(bundle: Path) -> Path:
    for name in ("glassbox", "glassbox.exe"):
        if (bundle / name).exists():
            return bundle / name
    raise SystemExit(f"no glassbox executable in {bundle}; run `make package` first")


def bundle_size_mb(bundle: Path) -> float:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def launch_to_window(command: list[str], timeout_s: float = 60.0) -> float:
    env = dict(os.environ, GLASSBOX_REPORT_STARTUP="1")
    if sys.platform.startswith("linux") and not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory() as home:
        env["GLASSBOX_SETTINGS_DIR"] = home  # a first launch: no remembered layout, no writes to the user's
        started = time.time()
        process = subprocess.Popen(command + ["--paused"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert process.stderr is not None
            for line in process.stderr:
                if line.startswith(MARKER):
                    return float(line[len(MARKER):]) - started
                if time.time() - started > timeout_s:
                    break
            raise RuntimeError(f"{command[0]} never reported its window (exit {process.poll()})")
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "glassbox")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    exe = executable(options.bundle)
    print(f"bundle size: {bundle_size_mb(options.bundle):.0f} MB ({options.bundle})")
    times = [launch_to_window([str(exe)]) for _ in range(options.runs)]
    print("launch-to-window runs: " + ", ".join(f"{t:.2f}" for t in times) + " s")
    print(f"launch-to-window median: {statistics.median(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
