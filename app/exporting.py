"""Saving what the window shows: PNG of a view, CSV of the run's series, run files."""
from __future__ import annotations

import csv
import io
import logging
import os
from typing import Any, Callable

import numpy as np
from PySide6 import QtWidgets

from engine import saved_frame
from engine.atomic_file import write_atomic
from engine.history import History
from engine.snapshot import SAVED_RUN_ID, Snapshot, ViewData

log = logging.getLogger(__name__)

__all__ = ["save_png", "save_history_csv", "save_run_file", "restore_run_factory"]


def save_png(widget: QtWidgets.QWidget, path: str) -> None:
    """Grab the widget as it is on screen and write it atomically."""
    from PySide6 import QtCore

    dock = widget.parentWidget()
    restore = None
    if isinstance(dock, QtWidgets.QDockWidget) and widget.visibleRegion().isEmpty():
        # A view in a tab behind another (or closed) is neither laid out nor drawn (views are
        # refreshed only while shown; the grab was a stale 100×88 picture): bring it forward, which
        # draws it, and put the dock and the tab in front back as they were afterwards.
        window = dock.parentWidget()
        tabs = window.tabifiedDockWidgets(dock) if isinstance(window, QtWidgets.QMainWindow) else []
        front = next((d for d in tabs if d.isVisible() and not d.widget().visibleRegion().isEmpty()), None)
        restore = (dock.isVisible(), front)
        dock.show()
        dock.raise_()
        QtWidgets.QApplication.processEvents()
    pixmap = widget.grab()
    if restore is not None:
        was_visible, front = restore
        if not was_visible:
            dock.hide()
        if front is not None:
            front.raise_()
    buffer = QtCore.QBuffer()
    buffer.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    if not pixmap.save(buffer, "PNG"):
        raise OSError(f"could not encode {path} as PNG")
    write_atomic(path, bytes(buffer.data()))


def save_history_csv(history: History, path: str) -> None:
    """One row per kept point (full resolution recently, bucket means further back), one column
    per series that holds any value (validation columns are mostly empty: a value every N steps)."""
    names = list(history.columns)
    steps, values = history.matrix(names, max_points=max(1, len(history)))  # every kept point
    kept = [i for i, name in enumerate(names) if name == "loss" or np.isfinite(values[i]).any()]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", *(names[i] for i in kept)])
    table = values[kept].T.tolist()
    for step, row in zip(steps.tolist(), table):
        # A raw point's step is a whole number; a bucket of older steps is named by its centre.
        label = str(int(step)) if float(step).is_integer() else f"{step:.1f}"
        writer.writerow([label, *("" if v != v else f"{v:.7g}" for v in row)])  # (v != v: NaN, no value)
    write_atomic(path, out.getvalue().encode())


def save_run_file(path: str, bridge: Any, snapshot: Snapshot, current: dict[str, Any]) -> None:
    from engine.runfile import save_run

    history = bridge.history
    tensors = {}
    views = snapshot.tensors
    if views is not None:
        for name in ("weight", "weight_grad", "weight_update", "activation", "output_grad",
                     "feature_maps", "kernels", "attention"):
            value = getattr(views, name)
            if value is not None:
                tensors[f"{name}/{views.layer}"] = value
    import dataclasses

    # What the views draw besides the series, so the opened run looks as it did (frames: those up
    # to the saved step).
    frames = tuple(frame for frame in bridge.frames if frame.step <= snapshot.step)
    shown, arrays = saved_frame.encode(snapshot, frames, known=tensors)
    config = {"kind": current.get("kind"), "name": current.get("name"), "model": current.get("model"),
              "scenario": snapshot.scenario, "hyper": _hyper_dict(snapshot), "step": snapshot.step,
              "device": snapshot.device, "tensor_layer": views.layer if views is not None else None,
              "layers": [dataclasses.asdict(layer) for layer in snapshot.layers], "shown": shown}
    save_run(path, config=config, history=history, tensors={**tensors, **arrays}, step=snapshot.step)


def saved_view(path: str) -> ViewData:
    """What a saved run looked like: its series, layers, last statistics and last tensors, as a
    paused frame."""
    return open_saved(path)[0]


def open_saved(path: str) -> tuple[ViewData, History]:
    """A saved run's paused frame (see ``saved_view``) and its history."""
    import dataclasses

    from app.bridge import LAYER_SERIES, RUN_SERIES
    from engine.runfile import load_run
    from engine.snapshot import STAT_NAMES, Hyper, LayerInfo, Metrics, SeriesData, StatsFrame, TensorViews

    loaded = load_run(path)
    config = loaded.config
    layers = tuple(LayerInfo(**{**layer, "weight_shape": tuple(layer["weight_shape"])
                                if layer.get("weight_shape") else None,
                                "frozen_params": tuple(layer.get("frozen_params", ()))})
                   for layer in config.get("layers", []))
    history = loaded.history
    series: dict[str, SeriesData] = {}
    for name in history.columns:
        if name in RUN_SERIES or name.split("/", 1)[0] in LAYER_SERIES:
            data = history.series(name, max_points=2000)
            keep = np.isfinite(data.values)
            if keep.any():
                series[name] = SeriesData(data.steps[keep], data.values[keep])
    layer = config.get("tensor_layer")
    shown = saved_frame.restore(config.get("shown"), loaded.tensors)
    if shown.unreadable:
        log.warning("%s: left out what could not be read: %s", path, "; ".join(shown.unreadable))
    tensors = shown.tensors
    if tensors is None:  # (a file from before the views were saved whole, or a report's)
        fields = {f.name for f in dataclasses.fields(TensorViews)}
        # One layer's tensors are shown: the one the file names (a report saves every layer's weights).
        found = {}
        for name, value in loaded.tensors.items():
            kind, _, owner = name.partition("/")
            if kind in fields and (not layer or not owner or owner == layer):
                found[kind] = value
        tensors = TensorViews(step=int(config.get("step", 0)), layer=layer or "", example=0, **found) \
            if found else None
    hyper = Hyper(**config["hyper"]) if isinstance(config.get("hyper"), dict) else Hyper()
    last_loss = history.last("loss") if "loss" in history.columns else float("nan")
    step = int(config.get("step", history.latest_step or 0))
    names = tuple(info.name for info in layers)
    frames = shown.frames
    if not frames and names and all(f"{stat}/{name}" in history.columns for name in names for stat in STAT_NAMES):
        # The last captured statistics of every layer, from the history (no histograms there).
        values = np.array([[history.last(f"{stat}/{name}") for stat in STAT_NAMES] for name in names])
        frames = (StatsFrame(step=step, loss=last_loss, layer_names=names, values=values,
                             histograms=np.zeros((len(names), 48), np.float32),
                             hist_edges=np.linspace(-4, 4, 49, dtype=np.float32)),)
    snapshot = Snapshot(run_id=SAVED_RUN_ID, step=step, state="paused",
                        scenario=str(config.get("scenario") or config.get("name")),
                        device=str(config.get("device", "cpu")), layers=layers,
                        metrics=shown.metrics or Metrics(train_loss=last_loss), hyper=hyper,
                        stats=frames[-1] if frames else None, tensors=tensors, network=shown.network,
                        boundary=shown.boundary, diagnoses=shown.diagnoses)
    view = ViewData(snapshot=snapshot, frames=frames, series=series, selected_layer=layer)
    return view, history


def _hyper_dict(snapshot: Snapshot) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(snapshot.hyper)


def restore_run_factory(path: str, device: str) -> tuple[Callable, dict[str, Any]]:
    """Rebuild a saved run's configuration; raises RunFileError for a bad file."""
    import functools

    from engine import scenarios
    from engine.runfile import RunFileError, load_run

    loaded = load_run(path)
    config = loaded.config
    if config.get("kind") == "user":
        ref = config.get("name") or config.get("model_ref")
        if not ref or not os.path.exists(ref.rsplit(":", 1)[0]):
            raise RunFileError(f"{path}: its model file {ref} is no longer there")
        return functools.partial(scenarios.build_user_run, ref, device=device, hyper=config.get("hyper")), \
            {"kind": "user", "name": ref, "model": None}
    name = config.get("scenario") or config.get("name")
    if name not in scenarios.SCENARIOS:
        raise RunFileError(f"{path}: unknown scenario {name!r}")
    hyper = config.get("hyper")
    model = config.get("model") if isinstance(config.get("model"), dict) else None
    return functools.partial(scenarios.build_run, name, device=device, hyper=hyper, model=model), \
        {"kind": "scenario", "name": name, "model": model}
