"""Two runs side by side: their loss curves on one plot and their gradient flow on another.

Fed by two bridges (one per trainer): ``set_side(0 or 1, ViewData)``; each side keeps its newest
frame, and the plots are updated in place. The lessons gallery uses it to put a problem next to
its cure.
"""
from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from engine.snapshot import STAT_INDEX, ViewData
from widgets.base import View
from widgets.colormaps import hex_colour
from widgets.label_fit import FittedAxis

__all__ = ["ComparisonView", "SIDE_COLOURS"]

SIDE_COLOURS = ((110, 190, 255), (245, 160, 80))
#: A loss plot whose positive values span more than this factor switches to a log axis, so a
#: diverging run (loss in the thousands) does not flatten the other run's curve onto zero.
LOG_LOSS_SPAN = 100.0
_WAITING = "Pick a lesson and press “Run side by side” to train two networks at once."


def _fmt(value: float | None, pattern: str = "{:.3g}") -> str:
    return "—" if value is None or not math.isfinite(value) else pattern.format(value)


class ComparisonView(View):
    """Loss of both runs over steps (validation dashed) and their per-layer gradient norms."""

    title = "Compare"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.sides: list[ViewData | None] = [None, None]
        self.names: list[str] = ["", ""]
        header = QtWidgets.QHBoxLayout()
        self.summaries = []
        for colour in SIDE_COLOURS:
            label = QtWidgets.QLabel(" ", self)
            label.setTextFormat(QtCore.Qt.TextFormat.RichText)
            label.setWordWrap(True)
            label.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop | QtCore.Qt.AlignmentFlag.AlignLeft)
            label.setStyleSheet(f"QLabel {{ border-left: 4px solid {hex_colour(colour)}; padding-left: 6px; }}")
            label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
            header.addWidget(label, 1)
            self.summaries.append(label)
        self._layout.addLayout(header)

        self.canvas = pg.GraphicsLayoutWidget()
        self.loss_plot = self.canvas.addPlot(row=0, col=0, axisItems={"left": FittedAxis("left"),
                                                                      "bottom": FittedAxis("bottom")})
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.setDownsampling(auto=True, mode="peak")
        self.loss_plot.setClipToView(True)
        self.grad_plot = self.canvas.addPlot(row=0, col=1, axisItems={"left": FittedAxis("left"),
                                                                      "bottom": FittedAxis("bottom")})
        self.grad_plot.setLabel("left", "gradient norm")
        self.grad_plot.setLabel("bottom", "layer (input → output)")
        self.grad_plot.setLogMode(x=False, y=True)
        for plot in (self.loss_plot, self.grad_plot):
            plot.setMenuEnabled(False)
            for side in ("left", "bottom"):
                plot.getAxis(side).enableAutoSIPrefix(False)
        self.train_curves = []
        self.val_curves = []
        self.grad_curves = []
        self.zero_marks = []  # per side: layers whose gradient is exactly 0 (no point on a log axis)
        for colour in SIDE_COLOURS:
            self.zero_marks.append(self.grad_plot.plot(pen=None, symbol="x", symbolSize=11,
                                                       symbolPen=pg.mkPen(*colour, width=2)))
            self.train_curves.append(self.loss_plot.plot(pen=pg.mkPen(*colour, width=1.5)))
            self.val_curves.append(self.loss_plot.plot(
                pen=pg.mkPen(*colour, width=1.5, style=QtCore.Qt.PenStyle.DashLine)))
            self.grad_curves.append(self.grad_plot.plot(pen=pg.mkPen(*colour, width=2), symbol="o",
                                                        symbolSize=6, symbolBrush=pg.mkBrush(*colour),
                                                        symbolPen=None))
        self.add_content(self.canvas)
        self.finish_layout()
        self.connect_hover(self.loss_plot)
        self._show_hint(_WAITING)

    # --- driven by the app ---------------------------------------------------------------
    def set_names(self, first: str, second: str) -> None:
        """Titles of the two runs (scenario titles)."""
        self.names = [first, second]

    def clear(self) -> None:
        self.sides = [None, None]
        for curve in (*self.train_curves, *self.val_curves, *self.grad_curves, *self.zero_marks):
            curve.setData([], [])
        for label in self.summaries:
            label.setText(" ")
        self._show_hint(_WAITING)

    def set_side(self, index: int, data: ViewData) -> None:
        """The newest frame of run ``index`` (0 or 1); redraws that side."""
        self.sides[index] = data
        self._draw_side(index)
        self._show_content()

    def draw(self, data: ViewData) -> None:
        """``render`` from the window's round-robin: nothing to do, sides arrive by ``set_side``."""

    def gradient_norms(self, index: int) -> np.ndarray:
        """The per-layer gradient norms drawn for side ``index`` (input side first)."""
        curve = self.grad_curves[index]
        return np.array([]) if curve.yData is None else np.asarray(curve.yData)

    # --- drawing ---------------------------------------------------------------------------
    def _draw_side(self, index: int) -> None:
        data = self.sides[index]
        if data is None:
            return
        series = data.series
        for curve, key in ((self.train_curves[index], "loss"), (self.val_curves[index], "val_loss")):
            s = series.get(key)
            if s is None or len(s.steps) == 0:
                curve.setData([], [])
            else:
                curve.setData(np.asarray(s.steps, dtype=float), np.asarray(s.values, dtype=float),
                              connect="finite")
        snapshot = data.snapshot
        stats = snapshot.stats
        if stats is not None:
            grad = stats.values[:, STAT_INDEX["grad_norm"]]
            # Every layer with parameters keeps its place (the two runs' layers line up); a zero
            # gradient, a dead layer, has no point on the log axis: an x on the plot's floor.
            rows = [i for i, layer in enumerate(snapshot.layers) if layer.params > 0 and i < len(grad)]
            norms = grad[rows].astype(float)
            where = np.arange(len(rows), dtype=float)
            positive = np.isfinite(norms) & (norms > 0)
            self.grad_curves[index].setData(where, np.where(positive, norms, np.nan), connect="finite")
            zero = norms == 0
            floor = 10.0 ** (np.floor(np.log10(norms[positive].min())) - 1) if positive.any() else 1e-8
            self.zero_marks[index].setData(where[zero], np.full(int(zero.sum()), floor))
        self.summaries[index].setText(self._summary(index, data))
        self._choose_loss_scale()

    @property
    def loss_log_y(self) -> bool:
        return bool(self.loss_plot.getAxis("left").logMode)

    def _choose_loss_scale(self) -> None:
        values = [np.asarray(c.yData, dtype=float) for c in (*self.train_curves, *self.val_curves)
                  if c.yData is not None and len(c.yData)]
        positive = np.concatenate(values) if values else np.zeros(0)
        positive = positive[np.isfinite(positive) & (positive > 0)]
        wide = bool(positive.size) and bool(positive.max() > LOG_LOSS_SPAN * positive.min())
        if wide != self.loss_log_y:
            self.loss_plot.setLogMode(x=False, y=wide)
            self.loss_plot.setLabel("left", "loss (log)" if wide else "loss")

    def _summary(self, index: int, data: ViewData) -> str:
        snapshot = data.snapshot
        metrics = snapshot.metrics
        name = self.names[index] or snapshot.scenario
        parts = [f"<b style='color:{hex_colour(SIDE_COLOURS[index])}'>{html.escape(name)}</b>",
                 f"step {snapshot.step:,} · loss {_fmt(metrics.train_loss, '{:.4g}')}"]
        if metrics.val_acc is not None:
            parts[-1] += f" · val acc {_fmt(100 * metrics.val_acc, '{:.0f}')} %"
        elif metrics.train_acc is not None:
            parts[-1] += f" · acc {_fmt(100 * metrics.train_acc, '{:.0f}')} %"
        serious = [d for d in snapshot.diagnoses if d.severity in ("error", "warning")]
        if serious:
            codes = ", ".join(dict.fromkeys(d.code.replace("_", " ") for d in serious))
            parts.append(f"<span style='color:#f5b942'>⚠ {html.escape(codes)}</span>")
        else:
            parts.append("<span style='color:#8fd18f'>✓ no problems found</span>")
        return "<br>".join(parts)

    def describe_point(self, x: float, y: float) -> str:
        if not math.isfinite(x):
            return ""
        parts = []
        for index, curve in enumerate(self.train_curves):
            if curve.xData is None or not len(curve.xData):
                continue
            i = int(np.argmin(np.abs(np.asarray(curve.xData) - x)))  # the nearest recorded step
            parts.append(f"{self.names[index] or index + 1}: step {int(curve.xData[i])} loss {curve.yData[i]:.3g}")
        return "   ".join(parts)
