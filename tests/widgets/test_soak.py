"""Soak test: hundreds of ImageItem.setImage + render calls must not kill the interpreter.

PySide6 6.12.0 with pyqtgraph 0.14.0 on Python 3.11 aborts with "Fatal Python error: bool_dealloc"
after a few hundred ``setImage(float32, levels=..., lut=...)`` + ``render()`` calls: every
``Signal.emit()`` there drops one reference to ``True`` (ImageItem.setImage emits sigImageChanged),
and on Python < 3.12, where ``True`` is not immortal, its count reaches zero. pyproject pins
PySide6-Essentials 6.9.2, which does not leak. The loop runs in a subprocess so that an abort is a
failed test with the child's stderr, not a dead pytest.

Run by hand against another environment (the repository root must be importable)::

    PYTHONPATH=. /path/to/other/python tests/widgets/test_soak.py [iterations]

or let this test drive another interpreter: ``GLASSBOX_SOAK_PYTHON=/path/to/python pytest ...``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["soak"]

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 1500


def soak(iterations: int = ITERATIONS) -> None:
    """The loop itself; prints progress, and "ok" only after a clean run."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pyqtgraph as pg
    import PySide6
    from PySide6 import QtWidgets

    from engine.snapshot import Hyper, LayerInfo, Metrics, Snapshot, TensorViews, ViewData
    from widgets.colormaps import DIVERGING_LUT, symmetric_levels
    from widgets.weight_heatmap import WeightHeatmap

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    print(
        f"python {sys.version.split()[0]}  PySide6 {PySide6.__version__}  pyqtgraph {pg.__version__}"
        f"  refcount(True) at start {sys.getrefcount(True)}",
        flush=True,
    )
    rng = np.random.default_rng(0)

    # 1. The known hazard verbatim: a bare ImageItem, fresh data, explicit levels, 256-entry LUT.
    item = pg.ImageItem(axisOrder="row-major")
    item.setImage(np.zeros((256, 256), np.float32), levels=(-1.0, 1.0), lut=DIVERGING_LUT, autoLevels=False)
    before = sys.getrefcount(True)
    for i in range(iterations):
        frame = rng.standard_normal((256, 256), dtype=np.float32)
        item.setImage(frame, levels=symmetric_levels(frame), lut=DIVERGING_LUT, autoLevels=False)
        item.render()
        if i % 250 == 0:
            print(f"image item {i}  refcount(True) {sys.getrefcount(True)}", flush=True)
    # The abort only comes once the count hits zero, which depends on how many references the
    # process happened to hold; a steady fall is the leak itself, whatever the starting count.
    # (From Python 3.12 True is immortal: its count never moves and the leak is harmless.)
    fall = before - sys.getrefcount(True)
    if fall > iterations // 2:
        raise SystemExit(f"refcount(True) fell by {fall} over {iterations} setImage calls: a C extension "
                         "drops a bool reference per call (PySide6 6.12.0 Signal.emit); check the pin")

    # 2. The same through a real view, painted by Qt as the app would paint it (fewer rounds:
    #    a paint costs ~10x a bare render).
    layers = (LayerInfo(0, "fc", "Linear", "param", 256 * 256, (256, 256)),)
    view = WeightHeatmap()
    view.resize(500, 400)
    view.show()
    for i in range(max(iterations // 3, 1)):
        weight = rng.standard_normal((256, 256), dtype=np.float32)
        snapshot = Snapshot(1, i, "running", "soak", "cpu", layers, Metrics(1.0), Hyper(),
                            tensors=TensorViews(i, "fc", 0, weight=weight))
        view.render(ViewData(snapshot))
        app.processEvents()
        if i % 50 == 0:
            view.grab()
        if i % 100 == 0:
            print(f"view {i}  refcount(True) {sys.getrefcount(True)}", flush=True)
    view.close()
    del view, item
    app.processEvents()
    print(f"refcount(True) at end {sys.getrefcount(True)}", flush=True)
    print("ok", flush=True)


def test_image_soak_survives_in_a_subprocess(record_property):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    result = subprocess.run(
        [os.environ.get("GLASSBOX_SOAK_PYTHON") or sys.executable, str(Path(__file__).resolve()), str(ITERATIONS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    record_property("soak_seconds", round(time.perf_counter() - started, 1))
    lines = result.stdout.strip().splitlines()
    report = f"exit code {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
    # Both checks matter: 6.12.0 can finish the loop, print "ok", and still abort at exit.
    assert result.returncode == 0, report
    assert lines and lines[-1] == "ok", report


if __name__ == "__main__":
    soak(int(sys.argv[1]) if len(sys.argv) > 1 else ITERATIONS)
