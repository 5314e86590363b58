"""How gradient flows through the network: per-layer gradient norms now and over the run.

Top left, the current frame's gradient norm per layer on a log scale (vanishing or exploding
gradients show as a slope across layers); top right, each layer's weight norm and update ratio;
below, log10 of every layer's gradient norm over the whole run as a layers × steps heatmap.
A frozen layer (``LayerInfo.trainable`` False) has the word "frozen" in its slot instead of a bar.
"""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from engine.snapshot import SeriesData, StatsFrame, ViewData
from widgets.base import StepMarker, View
from widgets.colormaps import SEQUENTIAL_LUT, finite_levels
from widgets.findings import SEVERITY_RGB, flagged_layers
from widgets.label_fit import CategoryAxis, FittedAxis, FittedTitle, fit_axis_to_labels, short_names

__all__ = ["GradientFlow", "abbreviate", "align_series", "fit_axis_to_labels", "fill_missing_columns",
           "SIDE_BY_SIDE_WIDTH", "STACKED_HEIGHT"]

_NO_DATA = "No gradients yet: run a training step"
_NO_PARAMS = "This model has no layers with parameters"
_BAR_BRUSH = pg.mkBrush(110, 190, 255, 210)
#: A gradient norm of exactly 0 has no bar (any bar would read as "small"): a "0" stands on the
#: bars' floor instead, and the heatmap draws it in this grey, which is not on its colour ramp.
_ZERO_RGB = (150, 150, 150)
_ZERO_BRUSH = pg.mkBrush(*_ZERO_RGB)
_ZERO_MARK_PX = 28  # the glyph is half of it tall
#: A frozen layer (requires_grad False on all it owns) has no gradient by the user's choice: no bar,
#: and the word "frozen" on the floor of its slot, so the gap reads neither as unmeasured nor as 0.
_FROZEN_TEXT = "frozen"
_FROZEN_MARK_PX = 46  # the word's width
_FROZEN_RGB = (160, 200, 235)
_FROZEN_BRUSH = pg.mkBrush(*_FROZEN_RGB)
_SELECTED_BRUSH = pg.mkBrush(255, 210, 90, 240)
_SELECTION_PEN = pg.mkPen(255, 255, 255, width=1.5)
#: Outlines of bars whose layer a diagnosis names, by severity (a "0" mark takes the colour itself).
_FLAG_PENS = {severity: pg.mkPen(*rgb, width=2.5) for severity, rgb in SEVERITY_RGB.items()}
_FLAG_BRUSHES = {severity: pg.mkBrush(*rgb) for severity, rgb in SEVERITY_RGB.items()}
#: The heatmap's table: entry 0 is the zero grey, the other 255 the sequential ramp (see
#: ``_heat_levels``, which maps the smallest non-zero norm to entry 1).
HEAT_LUT = np.vstack([np.array([_ZERO_RGB], np.uint8),
                      SEQUENTIAL_LUT[np.round(np.linspace(0, 255, 255)).astype(np.int64), :3]])
HEAT_LUT.setflags(write=False)
_WEIGHT_BRUSH = pg.mkBrush(150, 220, 150)
_RATIO_BRUSH = pg.mkBrush(240, 160, 90)
#: Narrower than this (px), the weight/update plot goes under the gradient bars, not beside them.
SIDE_BY_SIDE_WIDTH = 600
#: Lower than this (px), a narrow view leaves the weight/update plot out.
STACKED_HEIGHT = 380
#: Lower than this (px), the heatmap's "step" axis name goes.
COMPACT_HEIGHT = 420


def abbreviate(name: str, limit: int = 12) -> str:
    """Short tick label: the last two parts of a dotted module name, trimmed from the left."""
    short = ".".join(name.split(".")[-2:])
    return short if len(short) <= limit else "…" + short[-(limit - 1):]


def fill_missing_columns(image: np.ndarray) -> np.ndarray:
    """``image`` (rows, steps) with each all-NaN column replaced by the last complete one before it.

    A step that was not measured (the trainer samples the probe) leaves a whole column NaN; drawn
    as it is, it reads as a black stripe, as if every gradient had vanished at once. A NaN in
    some rows only (one layer's value is missing) is kept.
    """
    if image.ndim != 2 or image.size == 0:
        return image
    missing = np.isnan(image).all(axis=0)
    if not missing.any() or missing.all():
        return image
    source = np.where(missing, 0, np.arange(image.shape[1]))
    np.maximum.accumulate(source, out=source)
    return image[:, source]


def _floor_text_symbol(text: str) -> QtGui.QPainterPath:
    """A short ``text`` ("0", "frozen") as a scatter symbol, standing on the point (on the bars'
    floor).

    pyqtgraph draws a symbol within the unit square centred on its point, so the glyph takes the
    square's upper half; the item's size is twice the glyph's height (or the width of a word).
    """
    font = QtGui.QFont()
    font.setBold(True)
    path = QtGui.QPainterPath()
    path.addText(0.0, 0.0, font, text)
    box = path.boundingRect()
    scale = 0.95 * min(1.0 / box.width(), 0.5 / box.height())
    transform = QtGui.QTransform()
    transform.scale(scale, scale)
    transform.translate(-box.center().x(), -box.bottom())
    return transform.map(path)


def _heat_levels(logs: np.ndarray) -> tuple[float, float]:
    """Levels for ``HEAT_LUT``: the finite logs span entries 1..255; entry 0 (grey, zero) is
    reached only by values below the low level."""
    low, high = finite_levels(logs)
    # 1.5 entries' worth below the minimum: the minimum lands on entry 1 despite rounding.
    return (low - 1.5 * (high - low) / 255.0, high)


def _log10(values: np.ndarray) -> np.ndarray:
    """log10 with zero, negative and non-finite values as NaN (drawn as nothing)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    good = np.isfinite(values) & (values > 0)
    out[good] = np.log10(values[good])
    return out


def align_series(series: list[SeriesData]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the values of ``series`` on one step grid: ``(steps, values (len(series), n))``.

    Series from one History share their steps and are stacked as they are; otherwise each is
    interpolated onto the longest one's steps (NaN outside its own range).
    """
    reference = max(series, key=lambda s: len(s.steps))
    steps = np.asarray(reference.steps, dtype=np.float64)
    rows = []
    for item in series:
        values = np.asarray(item.values, dtype=np.float64)
        own = np.asarray(item.steps, dtype=np.float64)
        if len(own) == len(steps) and np.array_equal(own, steps):
            rows.append(values)
        elif len(own) == 0:
            rows.append(np.full(len(steps), np.nan))
        else:
            rows.append(np.interp(steps, own, values, left=np.nan, right=np.nan))
    return steps, np.vstack(rows)


class GradientFlow(View):
    """Gradient norms per layer (log scale) and their history; click a layer to select it."""

    title = "Gradient flow"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._layers: tuple[str, ...] = ()  # layers with parameters, in model order
        self._frame: StatsFrame | None = None
        self._grad_norms = np.zeros(0)
        self._bars: list[str] = []  # the layer of each bar drawn, in order
        self._zero_layers: list[str] = []  # the layer of each "0" mark drawn (gradient exactly 0)
        self._frozen: frozenset[str] = frozenset()  # layers whose parameters all have requires_grad False
        self._partly_frozen: dict[str, tuple[str, ...]] = {}  # layer -> its frozen parameters, others trained
        self._frozen_layers: list[str] = []  # the layer of each "frozen" mark drawn
        self._run_id: int | None = None
        self._heat_layers: tuple[str, ...] = ()
        self._heat_steps = np.zeros(0)
        self._heat_values: np.ndarray | None = None  # (rows, steps) raw gradient norms
        self._heat_extent = (0.0, 1.0)  # x range the heatmap covers, in steps
        self._heat_sources: tuple[object, ...] = ()
        self._heat_frozen_text: list[pg.TextItem] = []  # one per frozen row shown, reused
        self._drawn_selection: tuple[str | None, tuple[str, ...], tuple[str, ...]] | None = None
        self._data_selection_seen: str | None = None
        self.flagged: dict[str, tuple[str, tuple[str, ...]]] = {}  # layer -> (severity, codes)

        self.canvas = pg.GraphicsLayoutWidget()
        layout = self.canvas.ci
        self.bar_plot = layout.addPlot(row=0, col=0, axisItems={
            "left": FittedAxis("left"), "bottom": CategoryAxis("bottom")})
        self.bar_title = FittedTitle(self.bar_plot)
        self.bar_title.set("gradient norm ‖g‖ per layer", "‖g‖ per layer")
        self.bar_plot.getAxis("left").setLogMode(False, True)  # bars are given in log10 units
        self.bar_plot.setMenuEnabled(False)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.7, y0=0, brush=_BAR_BRUSH, pen=None)
        self.bar_plot.addItem(self.bars)
        self.zero_marks = pg.ScatterPlotItem(size=_ZERO_MARK_PX, symbol=_floor_text_symbol("0"), pen=None,
                                             brush=_ZERO_BRUSH)
        self.bar_plot.addItem(self.zero_marks)
        self.frozen_marks = pg.ScatterPlotItem(size=_FROZEN_MARK_PX, symbol=_floor_text_symbol(_FROZEN_TEXT),
                                               pen=None, brush=_FROZEN_BRUSH)
        self.bar_plot.addItem(self.frozen_marks)

        self.ratio_plot = layout.addPlot(row=0, col=1, axisItems={
            "left": FittedAxis("left"), "bottom": CategoryAxis("bottom")})
        # Coloured title instead of a legend: a legend box would cover the points.
        self.ratio_title = FittedTitle(self.ratio_plot)
        self.ratio_title.set(
            '<span style="color:#96dc96">● weight norm ‖w‖</span>&nbsp;&nbsp;'
            '<span style="color:#f0a05a">▼ update ratio ‖Δw‖/‖w‖</span>',
            '<span style="color:#96dc96">● ‖w‖</span>&nbsp;&nbsp;'
            '<span style="color:#f0a05a">▼ update ratio ‖Δw‖/‖w‖</span>',
            '<span style="color:#96dc96">● ‖w‖</span>&nbsp;&nbsp;'
            '<span style="color:#f0a05a">▼ ‖Δw‖/‖w‖</span>',
        )
        self.ratio_plot.getAxis("left").setLogMode(False, True)
        self.ratio_plot.setXLink(self.bar_plot)
        self.ratio_plot.setMenuEnabled(False)
        # Both statistics in ONE scatter item (per-point symbol and brush): two symbol curves
        # cost twice as much per frame, and lines between layers would suggest a continuum.
        self.ratio_points = pg.ScatterPlotItem(size=7, pen=None)
        self.ratio_plot.addItem(self.ratio_points)
        self.weight_norm_log = np.zeros(0)  # log10 ‖w‖ per layer (NaN: not drawn)
        self.update_ratio_log = np.zeros(0)

        self.heat_plot = layout.addPlot(row=1, col=0, colspan=2, axisItems={
            "left": CategoryAxis("left", max_label_width=96), "bottom": FittedAxis("bottom")})
        self.heat_title = FittedTitle(self.heat_plot)
        self.heat_title.set("log10 ‖g‖ over the run", "log10 ‖g‖")
        self.heat_plot.setLabel("bottom", "step")
        self.heat_plot.invertY(True)
        self.heat_plot.setMenuEnabled(False)
        self.heat_image = pg.ImageItem(axisOrder="row-major")
        self.heat_image.setLookupTable(HEAT_LUT)
        self.heat_plot.addItem(self.heat_image)
        self._heat_box = pg.PlotDataItem(pen=_SELECTION_PEN)
        self.heat_plot.addItem(self._heat_box)
        self.viewed = StepMarker(self.heat_plot)
        for plot in (self.bar_plot, self.ratio_plot, self.heat_plot):
            for side in ("left", "bottom"):
                # Auto SI prefixes re-lay out the axis label's HTML on every range change (~0.1 ms).
                plot.getAxis(side).enableAutoSIPrefix(False)
        self._arrangement = "side by side"
        self._arrange("stacked")

        self.add_content(self.canvas)
        self.finish_layout()
        scene = self.canvas.scene()
        scene.sigMouseMoved.connect(self._mouse_moved)
        scene.sigMouseClicked.connect(self._mouse_clicked)
        self._show_hint(_NO_DATA)

    # --- public ----------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        """Layers with parameters, in the order of the bars (x = index)."""
        return self._layers

    @property
    def frozen_layers(self) -> tuple[str, ...]:
        """Layers marked "frozen" in place of a bar (all their parameters have requires_grad False)."""
        return tuple(self._frozen_layers)

    @property
    def heatmap_layers(self) -> tuple[str, ...]:
        """Rows of the heatmap, top to bottom (layers whose series is all NaN are skipped, except
        frozen ones: their rows stay, marked "frozen")."""
        return self._heat_layers

    @property
    def side_by_side(self) -> bool:
        """Whether the weight/update plot sits beside the bars (wide view) or under them."""
        return self._arrangement == "side by side"

    @property
    def arrangement(self) -> str:
        """"side by side", "stacked" or "bars only" (the weight/update plot left out)."""
        return self._arrangement

    # --- layout ----------------------------------------------------------------------------
    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt name
        super().resizeEvent(event)
        if self.width() >= SIDE_BY_SIDE_WIDTH:
            self._arrange("side by side")
        else:
            self._arrange("stacked" if self.height() >= STACKED_HEIGHT else "bars only")
        # A low view keeps its room for the heatmap: the title says what the x axis is.
        self.heat_plot.getAxis("bottom").showLabel(self.height() >= COMPACT_HEIGHT)

    def _arrange(self, arrangement: str) -> None:
        """Bars and the weight/update plot side by side when wide, stacked when narrow, and the
        weight/update plot left out when the view is also low (the bars' readout still gives
        ‖w‖ and the update ratio).

        Moves the items within the grid (no item is created); done only when the choice changes.
        """
        if arrangement == self._arrangement:
            return
        self._arrangement = arrangement
        grid = self.canvas.ci.layout
        for plot in (self.ratio_plot, self.heat_plot):
            if any(grid.itemAt(i) is plot for i in range(grid.count())):
                grid.removeItem(plot)
        self.ratio_plot.setVisible(arrangement != "bars only")
        if arrangement == "side by side":
            grid.addItem(self.ratio_plot, 0, 1)
            grid.addItem(self.heat_plot, 1, 0, 1, 2)
            rows, columns = (1, 1, 0), (3, 2)
        elif arrangement == "stacked":
            grid.addItem(self.ratio_plot, 1, 0)
            grid.addItem(self.heat_plot, 2, 0)
            rows, columns = (3, 2, 3), (1, 0)
        else:
            grid.addItem(self.heat_plot, 1, 0)
            rows, columns = (1, 1, 0), (1, 0)
        for row, stretch in enumerate(rows):
            grid.setRowStretchFactor(row, stretch)
        for column, stretch in enumerate(columns):
            grid.setColumnStretchFactor(column, stretch)
        # Stacked, the bars and the points share their x axis: name the layers once, below both.
        self.bar_plot.getAxis("bottom").setStyle(showValues=arrangement != "stacked")
        grid.invalidate()

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        layers = tuple(
            layer.name for layer in data.snapshot.layers if layer.role != "activation" and layer.params > 0
        )
        frozen = frozenset(layer.name for layer in data.snapshot.layers if not layer.trainable)
        self._partly_frozen = {layer.name: layer.frozen_params for layer in data.snapshot.layers if layer.frozen_params}
        frame = data.frames[-1] if data.frames else data.snapshot.stats
        if data.selected_layer != self._data_selection_seen:
            self._data_selection_seen = data.selected_layer
            if data.selected_layer is not None:
                self.selected_layer = data.selected_layer
        self.viewed.show(data.viewed_step)
        if not layers:
            self._show_hint(_NO_PARAMS if data.snapshot.layers else _NO_DATA)
            return
        self.flagged = flagged_layers(data.snapshot.diagnoses)
        if data.snapshot.run_id != self._run_id:
            self._new_run(data.snapshot.run_id)
        layers_changed = layers != self._layers
        if layers_changed:
            self._layers = layers
            self._set_layer_ticks(layers)
        frozen_changed = frozen != self._frozen
        self._frozen = frozen
        if frozen_changed:
            self._heat_sources = ()  # (its rows change with the same series)
        if layers_changed or frozen_changed or frame is not self._frame:
            self._draw_frame(frame)
        self._draw_heatmap(data)
        if self._frame is None and self._heat_values is None:
            self._show_hint(_NO_DATA)
            return
        self._draw_selection()
        self._show_content()

    def _new_run(self, run_id: int) -> None:
        """A new run (Reinitialize restarts the steps with the same layers): nothing of the old
        run's ranges is kept; every plot fits the new run's values as they come."""
        self._run_id = run_id
        self._heat_sources = ()
        self._heat_extent = (math.nan, math.nan)
        for plot in (self.bar_plot, self.ratio_plot):
            plot.enableAutoRange(axis="y")

    def _set_layer_ticks(self, layers: tuple[str, ...]) -> None:
        # Every layer named when there is room; the axes shorten and thin their labels when not.
        positions = [float(i) for i in range(len(layers))]
        labels = short_names(layers)
        self.bar_plot.getAxis("bottom").set_categories(positions, labels, layers)
        self.ratio_plot.getAxis("bottom").set_categories(positions, labels, layers)
        self.bar_plot.setXRange(-0.6, len(layers) - 0.4, padding=0.0)

    def _stat_per_layer(self, frame: StatsFrame, name: str) -> np.ndarray:
        column = frame.stat(name)
        rows = {layer: i for i, layer in enumerate(frame.layer_names)}
        return np.array([column[rows[layer]] if layer in rows else np.nan for layer in self._layers], dtype=np.float64)

    def _draw_frame(self, frame: StatsFrame | None) -> None:
        self._frame = frame
        index = np.arange(len(self._layers), dtype=np.float64)
        if frame is None:
            self._grad_norms = np.full(len(self._layers), np.nan)
            self._bars = []
            self._zero_layers = []
            self._frozen_layers = []
            self.bars.setOpts(x=[], height=[], y0=0, brushes=[])
            self.zero_marks.setData(x=[], y=[])
            self.frozen_marks.setData(x=[], y=[])
            self.weight_norm_log = self.update_ratio_log = np.full(len(self._layers), np.nan)
            self.ratio_points.setData(x=[], y=[])
            return
        self._grad_norms = self._stat_per_layer(frame, "grad_norm")
        logs = _log10(self._grad_norms)
        # A frozen layer draws no bar and no "0" whatever its row holds (a frame from before it was
        # frozen, say): the word "frozen" stands in its slot.
        frozen = np.array([name in self._frozen for name in self._layers], dtype=bool)
        positive = np.isfinite(logs) & ~frozen
        # Bars grow up from one decade below the smallest norm so the shortest is still visible.
        # A gradient of exactly zero (a dead layer) gets no bar, however short: it would read as
        # small. A "0" stands on the floor in its place (not a gap, which reads as "not measured").
        floor = math.floor(float(np.min(logs[positive]))) - 1 if positive.any() else -8
        zero = (self._grad_norms == 0) & ~frozen
        self._bars = [name for name, drawn in zip(self._layers, positive) if drawn]
        self._zero_layers = [name for name, z in zip(self._layers, zero) if z]
        self._frozen_layers = [name for name, f in zip(self._layers, frozen) if f]
        self.bars.setOpts(x=index[positive], height=(logs - floor)[positive], y0=floor,
                          brushes=[_BAR_BRUSH] * len(self._bars))
        self.zero_marks.setData(x=index[zero], y=np.full(len(self._zero_layers), float(floor)))
        self.frozen_marks.setData(x=index[frozen], y=np.full(len(self._frozen_layers), float(floor)))
        self.weight_norm_log = _log10(self._stat_per_layer(frame, "weight_norm"))
        self.update_ratio_log = _log10(self._stat_per_layer(frame, "update_ratio"))
        xs, ys, symbols, brushes = [], [], [], []
        for values, symbol, brush in (
            (self.weight_norm_log, "o", _WEIGHT_BRUSH),
            (self.update_ratio_log, "t", _RATIO_BRUSH),
        ):
            good = np.isfinite(values)
            xs.append(index[good])
            ys.append(values[good])
            symbols += [symbol] * int(good.sum())
            brushes += [brush] * int(good.sum())
        self.ratio_points.setData(x=np.concatenate(xs), y=np.concatenate(ys), symbol=symbols, brush=brushes)
        step = f"(step {frame.step})"
        self.bar_title.set(f"gradient norm ‖g‖ per layer  {step}", f"‖g‖ per layer  {step}",
                           "‖g‖ per layer")
        self._drawn_selection = None

    def _draw_heatmap(self, data: ViewData) -> None:
        sources = tuple(data.series.get(f"grad_norm/{name}") for name in self._layers)
        if len(sources) == len(self._heat_sources) and all(a is b for a, b in zip(sources, self._heat_sources)):
            return  # the same series objects as last frame
        self._heat_sources = sources
        present = [(name, s) for name, s in zip(self._layers, sources) if s is not None and len(s.steps) > 0]
        if not present:
            self._clear_heatmap(data.snapshot.step)
            return
        steps, values = align_series([s for _, s in present])
        logs = _log10(values)
        # Exactly zero (a dead layer): grey, off the colour ramp, so it reads neither as a blank
        # nor as the smallest measured norm.
        zero = values == 0
        if np.isfinite(logs).any():
            low, high = finite_levels(logs)
            colours = f"{10 ** low:.0e} … {10 ** high:.0e}" + (", grey: 0" if zero.any() else "")
        else:
            colours = "grey: 0"
        levels = _heat_levels(logs)
        logs[zero] = levels[0] - (levels[1] - levels[0])
        # A row that is all NaN says nothing (a layer without parameters): skip it. A frozen
        # layer's stays, empty but for the word "frozen", so the rows match the bars' slots.
        frozen = np.array([name in self._frozen for name, _ in present], dtype=bool)
        keep = np.isfinite(logs).any(axis=1) | frozen
        if not keep.any():
            self._clear_heatmap(data.snapshot.step)
            return
        names = tuple(name for (name, _), k in zip(present, keep) if k)
        logs, values = logs[keep], values[keep]
        spacing = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 1.0
        spacing = spacing if spacing > 0 else 1.0
        x0 = steps[0] - spacing / 2
        self.heat_image.setImage(fill_missing_columns(logs).astype(np.float32), levels=levels, autoLevels=False)
        self.heat_title.set(f"log10 ‖g‖ over the run  (colour: {colours})", f"‖g‖ over the run  ({colours})",
                            f"‖g‖ {colours}", "log10 ‖g‖")
        self.heat_image.setRect(QtCore.QRectF(x0, 0.0, spacing * len(steps), len(names)))
        extent = (x0, x0 + spacing * len(steps))
        # The run grows while the decimated point count stays put: follow the extent, not the count.
        if names != self._heat_layers or extent != self._heat_extent:
            self.heat_plot.setRange(xRange=extent, yRange=(0, len(names)), padding=0.0)
            self.heat_plot.getAxis("bottom").setStyle(showValues=True)
        if names != self._heat_layers:
            self.heat_plot.getAxis("left").set_categories(
                [i + 0.5 for i in range(len(names))], short_names(names), names)
        self._mark_frozen_rows(names, extent)
        self._heat_layers = names
        self._heat_extent = extent
        self._heat_steps = steps
        self._heat_values = values
        self._drawn_selection = None

    def _mark_frozen_rows(self, names: tuple[str, ...], extent: tuple[float, float]) -> None:
        """The word "frozen" across each frozen layer's (empty) heatmap row, in the run's middle."""
        rows = [row for row, name in enumerate(names) if name in self._frozen]
        while len(self._heat_frozen_text) < len(rows):
            text = pg.TextItem(_FROZEN_TEXT, color=_FROZEN_RGB, anchor=(0.5, 0.5))
            self.heat_plot.addItem(text)
            self._heat_frozen_text.append(text)
        for i, text in enumerate(self._heat_frozen_text):
            text.setVisible(i < len(rows))
            if i < len(rows):
                text.setPos((extent[0] + extent[1]) / 2, rows[i] + 0.5)

    @property
    def heatmap_frozen_rows(self) -> tuple[int, ...]:
        """Rows of the heatmap marked "frozen" (their layers' parameters all have requires_grad off)."""
        return tuple(int(round(text.pos().y() - 0.5)) for text in self._heat_frozen_text if text.isVisible())

    def _clear_heatmap(self, step: int = 0) -> None:
        """No series (yet): an empty heatmap at the run's current step, with nothing left of the
        previous run's range, rows or colour scale."""
        self.heat_image.clear()
        if self._heat_layers:
            self.heat_plot.getAxis("left").set_categories([], [])
        self.heat_plot.setRange(xRange=(step - 0.5, step + 0.5), yRange=(0, 1), padding=0.0)
        self.heat_plot.getAxis("bottom").setStyle(showValues=False)  # no steps to mark yet
        self.heat_title.set("log10 ‖g‖ over the run", "‖g‖ over the run", "log10 ‖g‖")
        self._heat_extent = (math.nan, math.nan)
        self._heat_layers = ()
        self._heat_steps = np.zeros(0)
        self._heat_values = None
        self._heat_box.setData([], [])
        self._mark_frozen_rows((), (0.0, 1.0))

    def _draw_selection(self) -> None:
        selection = self.selected_layer
        key = (selection, self._layers, self._heat_layers, tuple(self.flagged.items()))
        if key == self._drawn_selection:
            return
        self._drawn_selection = key
        if len(self._layers) and self._frame is not None:
            drawn = self._bars
            brushes = [_SELECTED_BRUSH if name == selection else _BAR_BRUSH for name in drawn]
            # A flagged layer's bar gets its severity's outline (the Health panel says why).
            pens = [_FLAG_PENS[self.flagged[name][0]] if name in self.flagged else pg.mkPen(None)
                    for name in drawn]
            if drawn:  # pyqtgraph 0.14 fails on an empty pens list
                self.bars.setOpts(brushes=brushes, pens=pens)
            if self._zero_layers:  # a "0" is coloured like the outline its bar would have had
                self.zero_marks.setBrush([
                    _SELECTED_BRUSH if name == selection
                    else _FLAG_BRUSHES[self.flagged[name][0]] if name in self.flagged else _ZERO_BRUSH
                    for name in self._zero_layers])
            if self._frozen_layers:
                self.frozen_marks.setBrush([_SELECTED_BRUSH if name == selection else _FROZEN_BRUSH
                                            for name in self._frozen_layers])
        if selection in self._heat_layers and len(self._heat_steps):
            row = self._heat_layers.index(selection)
            x0, x1 = self._heat_extent
            self._heat_box.setData([x0, x1, x1, x0, x0], [row, row, row + 1, row + 1, row])
        else:
            self._heat_box.setData([], [])

    # --- readout and clicks ------------------------------------------------------------------
    def describe_point(self, x: float, y: float) -> str:
        """Readout for the heatmap: ``"layer  step 1200: |g| = 3.2e-04"``."""
        values, steps = self._heat_values, self._heat_steps
        if values is None or not len(steps) or not (math.isfinite(x) and math.isfinite(y)):
            return ""
        row = int(math.floor(y))
        if not 0 <= row < len(self._heat_layers):
            return ""
        column = int(np.argmin(np.abs(steps - x)))
        if self._heat_layers[row] in self._frozen:
            return f"{self._heat_layers[row]}: frozen (requires_grad is off for all its parameters), no gradient"
        value = values[row, column]
        shown = f"{value:.2g}" if not math.isfinite(value) else "0" if value == 0 else f"{value:.1e}"
        return f"{self._heat_layers[row]}  step {int(round(steps[column]))}: |g| = {shown}"

    def describe_layer(self, index: int) -> str:
        """Readout for bar ``index``: the layer's gradient norm, weight norm and update ratio."""
        if self._frame is None or not 0 <= index < len(self._layers):
            return ""
        name = self._layers[index]
        weight = self._stat_per_layer(self._frame, "weight_norm")[index]
        ratio = self._stat_per_layer(self._frame, "update_ratio")[index]
        flag = ""
        if name in self.flagged:
            flag = "  ⚠ " + ", ".join(code.replace("_", " ") for code in self.flagged[name][1])
        norm = self._grad_norms[index]
        if name in self._frozen:
            return (f"{name}  step {self._frame.step}: frozen (requires_grad is off for all its parameters), "
                    f"so no gradient and no update  |w| = {weight:.3g}{flag}")
        partly = self._partly_frozen.get(name)
        of = f"  ({', '.join(partly)} frozen: |g| and the update are the rest's)" if partly else ""
        return (
            f"{name}  step {self._frame.step}: |g| = {'0' if norm == 0 else f'{norm:.1e}'}"
            f"  |w| = {weight:.3g}  update ratio = {ratio:.1e}{of}{flag}"
        )

    def _mouse_moved(self, pos: QtCore.QPointF) -> None:
        if self._stack.currentWidget() is not self.canvas:
            return
        if self.heat_plot.sceneBoundingRect().contains(pos):
            point = self.heat_plot.getViewBox().mapSceneToView(pos)
            self.hover_at(point.x(), point.y())
            return
        for plot in (self.bar_plot, self.ratio_plot):
            if plot.isVisible() and plot.sceneBoundingRect().contains(pos):
                index = int(round(plot.getViewBox().mapSceneToView(pos).x()))
                self.readout.setText(self.describe_layer(index) or " ")
                return

    def _mouse_clicked(self, event) -> None:  # pyqtgraph MouseClickEvent
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pos = event.scenePos()
        name = None
        if self.heat_plot.sceneBoundingRect().contains(pos):
            row = int(math.floor(self.heat_plot.getViewBox().mapSceneToView(pos).y()))
            name = self._heat_layers[row] if 0 <= row < len(self._heat_layers) else None
        else:
            for plot in (self.bar_plot, self.ratio_plot):
                if plot.isVisible() and plot.sceneBoundingRect().contains(pos):
                    index = int(round(plot.getViewBox().mapSceneToView(pos).x()))
                    name = self._layers[index] if 0 <= index < len(self._layers) else None
        if name is not None:
            self.selected_layer = name
            self.layer_selected.emit(name)
            self._draw_selection()

