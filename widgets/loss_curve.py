"""Training and validation loss over the run, with accuracy below on its own axis.

Series arrive decimated (≤ ~2000 points, each a bucket mean with its min and max); the min..max
band is drawn faintly behind the mean so spikes hidden by averaging stay visible. A raw,
undecimated series is bucketed here before it reaches pyqtgraph, so a million-step run costs the
same as a short one.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from engine.snapshot import SeriesData, ViewData
from widgets.base import StepMarker, View
from widgets.colormaps import hex_colour
from widgets.label_fit import FittedAxis, FittedTitle

__all__ = ["LossCurve", "decimate", "Decimated"]

_NO_DATA = "No loss yet: start training"
_TRAIN = (110, 190, 255)
_VAL = (240, 160, 90)


class Decimated(NamedTuple):
    """A series ready for setData: bucket centres, means, and the min/max of each bucket."""

    steps: np.ndarray
    values: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None


def _bucket(array: np.ndarray, size: int, how: str) -> np.ndarray:
    """Reduce consecutive runs of ``size`` values (the last run may be shorter) by ``how``."""
    full = len(array) // size
    head = array[: full * size].reshape(full, size)
    reduce = {"mean": np.mean, "min": np.min, "max": np.max}[how]
    out = reduce(head, axis=1)
    if len(array) > full * size:
        out = np.append(out, reduce(array[full * size:]))
    return out


def decimate(series: SeriesData, max_points: int = 2000) -> Decimated:
    """``series`` with at most ``max_points`` points, min/max kept per bucket.

    A series already short enough is passed through untouched (no copy).
    """
    steps = np.asarray(series.steps, dtype=np.float64)
    values = np.asarray(series.values, dtype=np.float64)
    n = min(len(steps), len(values))
    steps, values = steps[:n], values[:n]
    lo = None if series.lo is None or len(series.lo) < n else np.asarray(series.lo, dtype=np.float64)[:n]
    hi = None if series.hi is None or len(series.hi) < n else np.asarray(series.hi, dtype=np.float64)[:n]
    if n <= max_points:
        return Decimated(steps, values, lo, hi)
    size = math.ceil(n / max_points)
    return Decimated(
        _bucket(steps, size, "mean"),
        _bucket(values, size, "mean"),
        _bucket(values if lo is None else lo, size, "min"),
        _bucket(values if hi is None else hi, size, "max"),
    )


def _nearest(steps: np.ndarray, x: float) -> int:
    """Index of the step nearest ``x`` in the sorted ``steps``."""
    index = int(np.searchsorted(steps, x))
    if index <= 0:
        return 0
    if index >= len(steps):
        return len(steps) - 1
    return index if steps[index] - x < x - steps[index - 1] else index - 1


def _curve(colour: tuple[int, int, int], name: str | None, width: float = 1.5, alpha: int = 255) -> pg.PlotDataItem:
    return pg.PlotDataItem(pen=pg.mkPen(*colour, alpha, width=width), name=name)


def _decimating_plot(canvas: pg.GraphicsLayoutWidget, row: int) -> pg.PlotItem:
    plot = canvas.addPlot(row=row, col=0, axisItems={"left": FittedAxis("left"), "bottom": FittedAxis("bottom")})
    # Set on the plot, not the curve: PlotItem.addItem overwrites a curve's own downsampling and
    # clip-to-view with the plot's defaults (off).
    plot.setDownsampling(auto=True, mode="peak")
    plot.setClipToView(True)
    # No grid: pyqtgraph's translucent grid lines cost more to paint than all the curves.
    plot.setMenuEnabled(False)
    return plot


def _key(colour: tuple[int, int, int], text: str) -> str:
    """One entry of a title that doubles as the legend: a coloured dash and the series name."""
    return f'<span style="color:{hex_colour(colour)}">━ {text}</span>'


def _legend_variants(shown: list[tuple[tuple[int, int, int], str, str]]) -> tuple[str, ...]:
    """Title variants naming the ``(colour, long name, short name)`` series shown, longest first.

    A legend box inside the plot would sit on the curves; the title row is free.
    """
    if not shown:
        return (" ",)
    return ("&nbsp;&nbsp;&nbsp;".join(_key(colour, long) for colour, long, _ in shown),
            "&nbsp;&nbsp;".join(_key(colour, short) for colour, _, short in shown))


class _Trace:
    """One series: its mean curve and a faint min..max band behind it."""

    def __init__(self, plot: pg.PlotItem, colour: tuple[int, int, int], name: str) -> None:
        # The band is ONE closed polygon (hi forwards, lo backwards) filled by pyqtgraph's
        # 'enclosed' mode: a FillBetweenItem rebuilds its path on each edge's change and cost
        # several ms per frame for 2000 points. It follows log mode like any PlotDataItem.
        self.band = pg.PlotDataItem(pen=None, fillLevel="enclosed", fillBrush=pg.mkBrush(*colour, 50))
        self.mean = _curve(colour, name)
        plot.addItem(self.band)
        plot.addItem(self.mean)
        # The polygon's x runs there and back: clipping and peak-decimating it would tear it.
        # It is already bounded (2 × max_points) by decimate().
        self.band.setDownsampling(ds=1, auto=False)
        self.band.setClipToView(False)
        self.source: SeriesData | None = None
        self.data: Decimated | None = None

    def update(self, series: SeriesData | None, max_points: int) -> None:
        if series is self.source and (series is None or self.data is not None):
            return  # the very same object as last frame
        self.source = series
        if series is None or len(series.steps) == 0:
            self.data = None
            self.mean.setData([], [])
            self.band.setData([], [])
            return
        self.data = decimate(series, max_points)
        steps = self.data.steps
        # A lone point (the first capture, or a run paused at once) is a dot: a line needs two.
        self.mean.setData(steps, self.data.values, connect="finite", symbol="o" if len(steps) == 1 else None,
                          symbolSize=6, symbolPen=None, symbolBrush=self.mean.opts["pen"].color())
        lo, hi = self.data.lo, self.data.hi
        if lo is None or hi is None:
            self.band.setData([], [])
            return
        finite = np.isfinite(lo) & np.isfinite(hi)  # a gap would break the polygon: bridge it
        x = steps[finite]
        self.band.setData(np.concatenate([x, x[::-1]]), np.concatenate([hi[finite], lo[finite][::-1]]))

    def value_near(self, x: float) -> tuple[int, float] | None:
        if self.data is None or not len(self.data.steps):
            return None
        index = _nearest(self.data.steps, x)
        return int(round(self.data.steps[index])), float(self.data.values[index])


class LossCurve(View):
    """Loss (train, val) with its min..max band, and accuracy below; log-y toggle.

    Args:
        parent: Qt parent.
        max_points: most points handed to any one curve; longer series are bucketed here.
    """

    title = "Loss"

    def __init__(self, parent: QtWidgets.QWidget | None = None, max_points: int = 2000) -> None:
        super().__init__(parent)
        self.max_points = max_points

        controls = QtWidgets.QHBoxLayout()
        self.log_checkbox = QtWidgets.QCheckBox("log y", self)
        self.log_checkbox.setToolTip("Logarithmic loss axis")
        self.log_checkbox.toggled.connect(self.set_log_y)
        controls.addStretch(1)
        controls.addWidget(self.log_checkbox)
        self._layout.addLayout(controls)

        self.canvas = pg.GraphicsLayoutWidget()
        self.loss_plot = _decimating_plot(self.canvas, 0)
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.setLabel("bottom", "step")  # shown only while the accuracy plot is not
        self.loss_title = FittedTitle(self.loss_plot)
        self.train = _Trace(self.loss_plot, _TRAIN, "train loss")
        self.val = _Trace(self.loss_plot, _VAL, "val loss")
        # Early stopping would keep the weights of the lowest validation loss: mark that step.
        self.best_line = pg.InfiniteLine(angle=90, movable=False,
                                         pen=pg.mkPen(*_VAL, 160, width=1, style=QtCore.Qt.PenStyle.DashLine),
                                         label="lowest val loss", labelOpts={"position": 0.92, "color": _VAL})
        self.best_line.setVisible(False)
        self.loss_plot.addItem(self.best_line, ignoreBounds=True)
        self.best_step: int | None = None
        self._best_label: str | None = None
        self.loss_plot.getViewBox().sigResized.connect(self._mark_best_validation)  # (its label's length)

        self.acc_plot = _decimating_plot(self.canvas, 1)
        self.acc_plot.setLabel("left", "accuracy")
        self.acc_plot.setLabel("bottom", "step")
        self.acc_plot.setXLink(self.loss_plot)
        self.acc_title = FittedTitle(self.acc_plot)
        self.train_acc = _Trace(self.acc_plot, _TRAIN, "train acc")
        self.val_acc = _Trace(self.acc_plot, _VAL, "val acc")
        for plot in (self.loss_plot, self.acc_plot):
            for side in ("left", "bottom"):
                # Auto SI prefixes re-lay out the axis label's HTML on every range change (~0.1 ms).
                plot.getAxis(side).enableAutoSIPrefix(False)
        self.canvas.ci.layout.setRowStretchFactor(0, 3)
        self.canvas.ci.layout.setRowStretchFactor(1, 1)
        self.viewed = StepMarker(self.loss_plot, self.acc_plot)
        self._framed = False  # the view is set around a lone point (see _frame_a_lone_point)
        self._accuracy_shown = True
        self._show_accuracy(False)  # until a run reports accuracy (a regression never does)

        self.add_content(self.canvas)
        self.finish_layout()
        self.connect_hover(self.loss_plot)
        self.canvas.scene().sigMouseMoved.connect(self._acc_moved)
        self._show_hint(_NO_DATA)

    # --- public ----------------------------------------------------------------------------
    @property
    def log_y(self) -> bool:
        return self.log_checkbox.isChecked()

    def set_log_y(self, enabled: bool) -> None:
        """Logarithmic loss axis (accuracy stays linear)."""
        if self.log_checkbox.isChecked() != enabled:
            self.log_checkbox.setChecked(enabled)  # re-enters through toggled
            return
        if self.loss_plot.getAxis("left").logMode != enabled:
            self.loss_plot.setLogMode(x=False, y=enabled)

    def handed_points(self) -> dict[str, int]:
        """How many points each curve was last given with setData (before pyqtgraph's own thinning)."""
        counts: dict[str, int] = {}
        traces = (("loss", self.train), ("val_loss", self.val),
                  ("train_acc", self.train_acc), ("val_acc", self.val_acc))
        for name, trace in traces:
            for part, curve in (("", trace.mean), ("/band", trace.band)):
                counts[name + part] = 0 if curve.xData is None else len(curve.xData)
        return counts

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        series = data.series
        self.train.update(series.get("loss"), self.max_points)
        self.val.update(series.get("val_loss"), self.max_points)
        self.train_acc.update(series.get("train_acc"), self.max_points)
        self.val_acc.update(series.get("val_acc"), self.max_points)
        self._mark_best_validation()
        self.viewed.show(data.viewed_step)
        if self.train.data is None and self.val.data is None:
            self._show_hint(_NO_DATA)
            return
        self._frame_a_lone_point()
        self._show_accuracy(self.train_acc.data is not None or self.val_acc.data is not None)
        self.loss_title.set(*_legend_variants(
            [(_TRAIN, "train loss", "train")] * (self.train.data is not None)
            + [(_VAL, "val loss", "val")] * (self.val.data is not None)))
        self.acc_title.set(*_legend_variants(
            [(_TRAIN, "train accuracy", "train")] * (self.train_acc.data is not None)
            + [(_VAL, "val accuracy", "val")] * (self.val_acc.data is not None)))
        self._show_content()

    def _frame_a_lone_point(self) -> None:
        """One point has no extent to fit: frame it (±5 steps, ±10 %) so the axes read sensibly;
        from the second point on, the plot fits the data again."""
        lone = self.train.data is not None and len(self.train.data.steps) == 1 \
            and (self.val.data is None or len(self.val.data.steps) <= 1)
        if lone:
            step, value = float(self.train.data.steps[0]), float(self.train.data.values[0])
            if not math.isfinite(value):
                return
            if self.log_y and value > 0:
                low, high = math.log10(value) - 0.5, math.log10(value) + 0.5
            else:
                pad = abs(value) * 0.1 or 1.0
                low, high = value - pad, value + pad
            self.loss_plot.setRange(xRange=(max(0.0, step - 5), step + 5), yRange=(low, high), padding=0.0)
            self._framed = True
        elif self._framed:
            self._framed = False
            self.loss_plot.enableAutoRange()

    def _mark_best_validation(self) -> None:
        """A dashed line at the step of the lowest validation loss, once there are a few passes."""
        data = self.val.data
        best = None
        if data is not None and len(data.values) >= 3 and np.isfinite(data.values).any():
            best = int(round(data.steps[int(np.nanargmin(data.values))]))
        # The label sits beside the line: in a narrow plot the long one wouldn't fit there.
        label = None if best is None else (f"lowest val loss · step {best:,}"
                                           if self.loss_plot.getViewBox().width() >= 260 else f"best val · {best:,}")
        if (best, label) == (self.best_step, self._best_label):
            return
        self.best_step, self._best_label = best, label
        self.best_line.setVisible(best is not None)
        if best is not None:
            self.best_line.setPos(best)
            self.best_line.label.setFormat(label)

    @property
    def accuracy_shown(self) -> bool:
        """Whether the accuracy plot is on screen (only for runs that report accuracy)."""
        return self._accuracy_shown

    def _show_accuracy(self, shown: bool) -> None:
        """Show the accuracy plot under the loss, or give the loss plot all the room.

        With both shown they share the x axis, so only the lower one labels the steps.
        """
        if shown == self._accuracy_shown:
            return
        self._accuracy_shown = shown
        grid = self.canvas.ci.layout
        self.acc_plot.setVisible(shown)
        if shown:
            grid.addItem(self.acc_plot, 1, 0)
            grid.setRowStretchFactor(1, 1)
        else:
            grid.removeItem(self.acc_plot)
            grid.setRowStretchFactor(1, 0)
        bottom = self.loss_plot.getAxis("bottom")
        bottom.setStyle(showValues=not shown)
        bottom.showLabel(not shown)
        grid.invalidate()

    def describe_point(self, x: float, y: float) -> str:
        """Readout for the loss plot: ``"step 1234: loss 0.123"`` (plus the nearest val loss)."""
        if not math.isfinite(x):
            return ""
        parts = []
        train = self.train.value_near(x)
        val = self.val.value_near(x)
        if train is not None:
            parts.append(f"step {train[0]}: loss {train[1]:.3g}")
        if val is not None:
            parts.append(f"val loss {val[1]:.3g} (step {val[0]})" if parts else f"step {val[0]}: val loss {val[1]:.3g}")
        return "  ".join(parts)

    def _acc_moved(self, pos: QtCore.QPointF) -> None:
        if (self._stack.currentWidget() is not self.canvas or not self._accuracy_shown
                or not self.acc_plot.sceneBoundingRect().contains(pos)):
            return
        x = self.acc_plot.getViewBox().mapSceneToView(pos).x()
        parts = []
        for label, trace in (("acc", self.train_acc), ("val acc", self.val_acc)):
            hit = trace.value_near(x)
            if hit is not None:
                parts.append(f"step {hit[0]}: {label} {hit[1]:.3g}")
        self.readout.setText("  ".join(parts) or " ")

