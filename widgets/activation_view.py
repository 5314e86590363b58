"""Activation statistics: every layer's output histogram, and one layer's history.

Four plots in one canvas: layers × bins histograms of the current frame (main plot), dead and
saturated fractions per layer beside it, the focused layer's histogram over the recent frames,
and its mean ± std over the whole run.

A layer never called as a module (MultiheadAttention's ``out_proj``, whose weights the attention
reads inside its own forward) has no outputs to measure: selected, its plots say so and name the
layer whose output shows its work.
"""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from engine.snapshot import LayerInfo, SeriesData, StatsFrame, ViewData
from widgets.base import StepMarker, View
from widgets.colormaps import SEQUENTIAL_LUT
from widgets.label_fit import CategoryAxis, FittedAxis, FittedTitle, short_names

__all__ = ["ActivationView", "row_edges", "resample_rows", "NARROW_WIDTH", "COMPACT_HEIGHT"]

#: Narrower than this (px), the dead/saturated plot shrinks so the histograms keep their room.
NARROW_WIDTH = 440
def _fraction_width(view_width: int) -> int:
    """The dead/saturated bars' width: 150 px when the view is wide, else a share of it (in a
    narrow dock a fixed 100 px left the histograms themselves a few pixels)."""
    return 150 if view_width >= NARROW_WIDTH else int(max(48, min(100, 0.34 * view_width)))
#: Lower than this (px), the axis names under the plots go: the titles say what the axes are.
COMPACT_HEIGHT = 420

_NO_DATA = "No activation statistics yet: run a training step"
_DEAD_BRUSH = pg.mkBrush(214, 96, 77, 220)
_SATURATED_BRUSH = pg.mkBrush(240, 180, 60, 220)
_MEAN_PEN = pg.mkPen(110, 190, 255, width=1.5)
_BAND_BRUSH = pg.mkBrush(110, 190, 255, 60)
_SELECTION_PEN = pg.mkPen(255, 255, 255, width=1.5)
_MAX_BAND_POINTS = 2000  # so the band polygon gets at most 4000 points


def _normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its own peak, so narrow and wide distributions are both visible."""
    if counts.size == 0:
        return counts.astype(np.float32)
    peak = np.where(np.isfinite(counts), counts, -np.inf).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = counts / np.where(np.isfinite(peak) & (peak > 0), peak, 1.0)
    return scaled.astype(np.float32, copy=False)


def row_edges(frame: StatsFrame) -> np.ndarray:
    """(layers, bins + 1) bin edges: each row's own ``hist_ranges`` entry, else ``hist_edges``."""
    layers, bins = frame.histograms.shape
    default = np.asarray(frame.hist_edges, dtype=np.float64)
    if len(default) != bins + 1 or not np.isfinite(default).all() or default[-1] <= default[0]:
        default = np.arange(bins + 1, dtype=np.float64)  # bins by index: still readable
    edges = np.repeat(default[None, :], layers, axis=0)
    ranges = frame.hist_ranges
    if ranges is not None and np.shape(ranges) == (layers, 2):
        ranges = np.asarray(ranges, dtype=np.float64)
        good = np.isfinite(ranges).all(axis=1) & (ranges[:, 1] > ranges[:, 0])
        ramp = np.linspace(0.0, 1.0, bins + 1)
        edges[good] = ranges[good, :1] + (ranges[good, 1:] - ranges[good, :1]) * ramp
    return edges


def resample_rows(image: np.ndarray, edges: np.ndarray, max_columns: int = 512) -> tuple[np.ndarray, float, float]:
    """Put rows with different bin ranges on one shared x axis: ``(image, low, high)``.

    Rows that all share their edges are returned as they are. Otherwise every row is sampled
    (piecewise constant) at the centres of a finer common grid over the union of the ranges,
    NaN (transparent) outside its own range, so a sigmoid's [0, 1] sits where 0..1 is on the axis.
    """
    low, high = float(edges[:, 0].min()), float(edges[:, -1].max())
    if (edges == edges[0]).all():
        return image, low, high
    bins = image.shape[1]
    spans = edges[:, -1] - edges[:, 0]
    columns = int(np.clip(math.ceil(bins * (high - low) / spans.min()), bins, max_columns))
    centres = low + (np.arange(columns) + 0.5) * (high - low) / columns
    index = np.floor((centres[None, :] - edges[:, :1]) / spans[:, None] * bins).astype(np.int64)
    inside = (index >= 0) & (index < bins)
    out = np.take_along_axis(image, np.clip(index, 0, bins - 1), axis=1).astype(np.float32)
    out[~inside] = np.nan
    return out, low, high


def unobserved_layers(layers: tuple[LayerInfo, ...]) -> dict[str, str | None]:
    """Layers whose outputs the probe never sees (``called`` False), each with the nearest
    enclosing layer that is called (its forward applies them: ``attn`` for ``attn.out_proj``), or
    None when no measured layer encloses it."""
    called = {info.name for info in layers if info.called}
    found: dict[str, str | None] = {}
    for info in layers:
        if info.called:
            continue
        parts = info.name.split(".")
        found[info.name] = next((".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)
                                 if ".".join(parts[:end]) in called), None)
    return found


#: The dead/saturated plot's note (and its tooltip) when no layer has either figure, by whether the
#: model has activation modules at all.
_NO_FRACTIONS = {
    False: ("no activation modules",
            "No activation modules: an activation applied as a function in forward (F.relu, torch.tanh) isn't "
            "seen, so dead and saturated units can't be counted. Modules (nn.ReLU, nn.Tanh…) can be."),
    True: ("none of ReLU, sigmoid or tanh kind",
           "Dead units are counted for the ReLU family and saturated ones for sigmoid and tanh; this model's "
           "activation modules (GELU, Softmax…) are of neither kind."),
}


def unobserved_note(layer: str, parent: str | None, short: bool = False) -> str:
    """What an unobserved layer's plots say instead of drawing it (``short``: for the readout)."""
    if parent is None:
        if short:
            return f"{layer}: outputs not observed (never called as a module)"
        return f"{layer} is never called as a module in forward, so its outputs are not observed."
    if short:
        return f"{layer}: outputs not observed (it runs inside {parent}'s forward); see {parent}"
    return (f"{layer} runs inside {parent}'s forward, not as a module of its own, so its outputs are not "
            f"observed: look at {parent}'s output instead.")


def _series(data: ViewData, key: str) -> SeriesData | None:
    series = data.series.get(key)
    if series is None or len(series.steps) == 0:
        return None
    return series


class ActivationView(View):
    """Output histograms of every layer, and the selected (or last) layer over time.

    Clicking a histogram row or a fraction bar selects that layer (``layer_selected``).
    """

    title = "Activations"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._frame: StatsFrame | None = None
        self._names: tuple[str, ...] = ()
        self._edges: np.ndarray | None = None  # (layers, bins + 1): each row's own bin edges
        self._extent = (0.0, 1.0)  # x range of the histogram image: the union of all rows' ranges
        self._focus: str | None = None
        self._time_key: tuple[StatsFrame | None, int, str] | None = None
        self._time_steps: np.ndarray = np.zeros(0)
        self._time_counts: np.ndarray | None = None  # (bins, frames) raw fractions
        self._time_edges = np.zeros(0)
        self._band_series: tuple[SeriesData | None, SeriesData | None] = (None, None)
        self._band_layer: str | None = None
        self._data_selection_seen: str | None = None
        self._unobserved: dict[str, str | None] = {}  # uncalled layer -> the layer that applies it

        self.canvas = pg.GraphicsLayoutWidget()
        layout = self.canvas.ci
        self.hist_plot = layout.addPlot(row=0, col=0, axisItems={
            "left": CategoryAxis("left", max_label_width=100), "bottom": FittedAxis("bottom")})
        self.hist_title = FittedTitle(self.hist_plot)
        self.hist_title.set("output histogram per layer", "histogram per layer", "histograms")
        self.hist_plot.setLabel("bottom", "activation")
        self.hist_plot.invertY(True)  # first layer at the top, as in the model
        self.hist_plot.setMenuEnabled(False)
        self.hist_image = pg.ImageItem(axisOrder="row-major")
        self.hist_image.setLookupTable(SEQUENTIAL_LUT)
        self.hist_plot.addItem(self.hist_image)
        self._selection_box = pg.PlotDataItem(pen=_SELECTION_PEN)
        self.hist_plot.addItem(self._selection_box)

        self.fraction_plot = layout.addPlot(row=0, col=1, axisItems={"bottom": FittedAxis("bottom")})
        # Coloured title instead of a legend: a legend box would cover the bars.
        self.fraction_title = FittedTitle(self.fraction_plot)
        self.fraction_title.set(
            '<span style="color:#d6604d">■ dead</span>&nbsp;<span style="color:#f0b43c">■ saturated</span>',
            '<span style="color:#d6604d">■ dead</span>&nbsp;<span style="color:#f0b43c">■ sat.</span>',
            '<span style="color:#d6604d">■</span>&nbsp;<span style="color:#f0b43c">■</span>',
        )
        self._fraction: int | None = None
        self._compact: bool | None = None
        self.fraction_plot.setFixedWidth(_fraction_width(NARROW_WIDTH))
        self.fraction_plot.setYLink(self.hist_plot)
        self.fraction_plot.invertY(True)  # a y link shares the range, not the direction
        self.fraction_plot.hideAxis("left")
        self.fraction_plot.setXRange(0.0, 1.0, padding=0.1)  # room for the "0" and "1" labels
        self.fraction_plot.setMouseEnabled(False, False)
        self.fraction_plot.setMenuEnabled(False)
        self.fraction_plot.hideButtons()
        # One BarGraphItem per statistic, not one per layer.
        self.dead_bars = pg.BarGraphItem(x0=[], y0=[], width=[], height=[], brush=_DEAD_BRUSH, pen=None)
        self.saturated_bars = pg.BarGraphItem(x0=[], y0=[], width=[], height=[], brush=_SATURATED_BRUSH, pen=None)
        self.fraction_plot.addItem(self.dead_bars)
        self.fraction_plot.addItem(self.saturated_bars)
        # Said where the bars would be when no layer has them: the model's activations are applied
        # as functions in its forward (F.relu), which no hook sees.
        self.fraction_note = pg.TextItem("", color="#d6d9e0", anchor=(0.5, 0.5))
        self.fraction_note.setVisible(False)
        self._activation_modules = False
        self.fraction_plot.addItem(self.fraction_note, ignoreBounds=True)

        self.time_plot = layout.addPlot(row=1, col=0, colspan=2, axisItems={
            "left": FittedAxis("left"), "bottom": FittedAxis("bottom")})
        self.time_title = FittedTitle(self.time_plot)
        self.time_plot.setLabel("bottom", "step")
        self.time_plot.setLabel("left", "activation")
        self.time_plot.setMenuEnabled(False)
        self.time_image = pg.ImageItem(axisOrder="row-major")
        self.time_image.setLookupTable(SEQUENTIAL_LUT)
        self.time_plot.addItem(self.time_image)
        # Said in the plot's body, where its history would be, for a layer whose outputs are not
        # observed (hidden otherwise); wrapped to the plot's width.
        self.time_note = pg.TextItem("", color="#d6d9e0", anchor=(0.5, 0.5))
        self.time_note.setVisible(False)
        self.time_plot.addItem(self.time_note, ignoreBounds=True)
        self.time_plot.getViewBox().sigResized.connect(self._fit_time_note)

        self.band_plot = layout.addPlot(row=2, col=0, colspan=2, axisItems={
            "left": FittedAxis("left"), "bottom": FittedAxis("bottom")})
        self.band_title = FittedTitle(self.band_plot)
        self.band_plot.setLabel("bottom", "step")
        self.band_plot.setLabel("left", "mean ± std")
        self.band_plot.setMenuEnabled(False)
        # On the plot, not the curve: PlotItem.addItem overwrites a curve's own settings.
        self.band_plot.setDownsampling(auto=True, mode="peak")
        self.band_plot.setClipToView(True)
        # The band is ONE closed polygon (mean + std forwards, mean - std back) in pyqtgraph's
        # 'enclosed' fill mode: a FillBetweenItem rebuilds its path on each edge's change and cost
        # ~4 ms per frame. Its x runs there and back, so it must not be clipped or decimated.
        self.band = pg.PlotDataItem(pen=None, fillLevel="enclosed", fillBrush=_BAND_BRUSH)
        self.mean_curve = pg.PlotDataItem(pen=_MEAN_PEN)
        self.band_plot.addItem(self.band)
        self.band_plot.addItem(self.mean_curve)
        self.band.setDownsampling(ds=1, auto=False)
        self.band.setClipToView(False)
        self.viewed = StepMarker(self.band_plot)
        for plot in (self.hist_plot, self.fraction_plot, self.time_plot, self.band_plot):
            for side in ("left", "bottom"):
                # Auto SI prefixes re-lay out the axis label's HTML on every range change (~0.1 ms).
                plot.getAxis(side).enableAutoSIPrefix(False)
        layout.layout.setRowStretchFactor(0, 3)
        layout.layout.setRowStretchFactor(1, 2)
        layout.layout.setRowStretchFactor(2, 2)

        self.add_content(self.canvas)
        self.finish_layout()
        scene = self.canvas.scene()
        scene.sigMouseMoved.connect(self._mouse_moved)
        scene.sigMouseClicked.connect(self._mouse_clicked)
        self._show_hint(_NO_DATA)

    # --- public ----------------------------------------------------------------------------
    @property
    def focus_layer(self) -> str | None:
        """The layer whose history is drawn: the selection if present, else the last layer."""
        return self._focus

    @property
    def focus_note(self) -> str:
        """The line that replaces the focused layer's plots when its outputs are not observed, else ""."""
        if self._focus not in self._unobserved:
            return ""
        return unobserved_note(self._focus, self._unobserved[self._focus])

    def layer_at_row(self, row: int) -> str | None:
        """Name of histogram row ``row`` (0 = top), or None."""
        return self._names[row] if 0 <= row < len(self._names) else None

    # --- layout ----------------------------------------------------------------------------
    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt name
        super().resizeEvent(event)
        fraction = _fraction_width(self.width())
        if fraction != self._fraction:
            self._fraction = fraction
            self.fraction_plot.setFixedWidth(fraction)
        compact = self.height() < COMPACT_HEIGHT
        if compact != self._compact:
            self._compact = compact
            for plot, side, text in ((self.hist_plot, "bottom", "activation"), (self.time_plot, "bottom", "step"),
                                     (self.band_plot, "bottom", "step")):
                plot.getAxis(side).showLabel(not compact)

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        frame = data.frames[-1] if data.frames else data.snapshot.stats
        if frame is None or frame.histograms.ndim != 2 or frame.histograms.size == 0 or not frame.layer_names:
            self._frame = None
            self._show_hint(_NO_DATA)
            return
        if data.selected_layer != self._data_selection_seen:
            self._data_selection_seen = data.selected_layer
            if data.selected_layer is not None:
                self.selected_layer = data.selected_layer
        self.viewed.show(data.viewed_step)
        self._unobserved = unobserved_layers(data.snapshot.layers)
        self._activation_modules = any(layer.role == "activation" for layer in data.snapshot.layers)
        if frame is not self._frame:
            self._draw_frame(frame)
        focus = self.selected_layer if self.selected_layer in self._names else self._names[-1]
        if focus != self._focus:
            self._focus = focus
            self._draw_selection_box()
        self._draw_history(data, focus)
        self._draw_band(data, focus)
        self._show_content()

    def _draw_frame(self, frame: StatsFrame) -> None:
        counts = np.asarray(frame.histograms, dtype=np.float32)
        edges = row_edges(frame)
        image, low, high = resample_rows(_normalise_rows(counts), edges)
        n_layers = counts.shape[0]
        self.hist_image.setImage(image, levels=(0.0, 1.0), autoLevels=False)
        self.hist_image.setRect(QtCore.QRectF(low, 0.0, high - low, n_layers))
        names = tuple(frame.layer_names[:n_layers])
        if names != self._names or (low, high) != self._extent:
            self.hist_plot.setRange(xRange=(low, high), yRange=(0, n_layers), padding=0.0)
            # Every layer named when the rows are tall enough; every k-th one when not.
            self.hist_plot.getAxis("left").set_categories(
                [i + 0.5 for i in range(len(names))], short_names(names, limit=14), names)
            self._focus = None  # forces the selection box to be redrawn for the new rows
        self._names = names
        self._edges = edges
        self._extent = (low, high)
        self._frame = frame

        rows = np.arange(n_layers, dtype=np.float64)
        dead = np.asarray(frame.stat("dead_fraction"), dtype=np.float64)[:n_layers]
        saturated = np.asarray(frame.stat("saturated_fraction"), dtype=np.float64)[:n_layers]
        shown = np.isfinite(dead)  # NaN: the statistic does not apply, so no bar at all
        self.dead_bars.setOpts(
            x0=np.zeros(shown.sum()), y0=rows[shown] + 0.1, width=np.clip(dead[shown], 0, 1), height=0.38
        )
        shown = np.isfinite(saturated)
        self.saturated_bars.setOpts(
            x0=np.zeros(shown.sum()), y0=rows[shown] + 0.52, width=np.clip(saturated[shown], 0, 1), height=0.38
        )
        none = not (np.isfinite(dead).any() or shown.any())
        self.fraction_note.setVisible(none)
        if none:  # (why no layer has a bar: no activation module, or none of a kind these apply to)
            short, why = _NO_FRACTIONS[self._activation_modules]
            self.fraction_note.setText(short)
            self.fraction_note.setToolTip(why)
            self.fraction_note.setPos(0.5, n_layers / 2)
            self.fraction_note.setTextWidth(max(60.0, 0.95 * self.fraction_plot.getViewBox().width()))

    def _draw_selection_box(self) -> None:
        if self._focus is None or self._edges is None:
            self._selection_box.setData([], [])
            return
        row = self._names.index(self._focus)
        x0, x1 = self._extent
        self._selection_box.setData([x0, x1, x1, x0, x0], [row, row, row + 1, row + 1, row])

    def _draw_history(self, data: ViewData, layer: str) -> None:
        frames = data.frames or ((self._frame,) if self._frame is not None else ())
        key = (frames[-1] if frames else None, len(frames), layer)
        if self._time_key is not None and key[0] is self._time_key[0] and key[1:] == self._time_key[1:]:
            return
        self._time_key = key
        if layer in self._unobserved:  # its row is empty: say why instead of drawing it
            self.time_title.set(f"{layer}: outputs not observed", layer)
            self._time_counts = None
            self._time_steps = np.zeros(0)
            self.time_image.clear()
            self._show_time_note(unobserved_note(layer, self._unobserved[layer]))
            return
        self._show_time_note("")
        bins = 0 if self._frame is None else self._frame.histograms.shape[1]
        columns: list[np.ndarray] = []
        steps: list[int] = []
        names: tuple[str, ...] | None = None
        row: int | None = None
        for frame in frames:
            if frame.layer_names is not names and frame.layer_names != names:
                # Consecutive frames share their layer list: look the row up once per list.
                names = frame.layer_names
                row = names.index(layer) if layer in names else None
            # Frames from an older layout (another run, another bin count) cannot share the image.
            if row is not None and frame.histograms.ndim == 2 and frame.histograms.shape[1] == bins:
                columns.append(frame.histograms[row])
                steps.append(frame.step)
        self.time_title.set(f"{layer}: histogram over the last {len(columns)} captured steps",
                            f"{layer}: last {len(columns)} captured steps", f"{layer}: recent steps", layer)
        if not columns or self._edges is None or layer not in self._names:
            self._time_counts = None
            self._time_steps = np.zeros(0)
            self.time_image.clear()
            return
        counts = np.stack(columns, axis=1).astype(np.float32)  # (bins, frames)
        step_array = np.asarray(steps, dtype=np.float64)
        spacing = (step_array[-1] - step_array[0]) / (len(step_array) - 1) if len(step_array) > 1 else 1.0
        spacing = spacing if spacing > 0 else 1.0
        per_column = _normalise_rows(counts.T).T
        self.time_image.setImage(per_column, levels=(0.0, 1.0), autoLevels=False)
        x0 = step_array[0] - spacing / 2
        edges = self._edges[self._names.index(layer)]
        y0, y1 = float(edges[0]), float(edges[-1])
        self.time_image.setRect(QtCore.QRectF(x0, y0, spacing * len(step_array), y1 - y0))
        self.time_plot.setRange(xRange=(x0, x0 + spacing * len(step_array)), yRange=(y0, y1), padding=0.0)
        self._time_counts = counts
        self._time_edges = edges
        self._time_steps = step_array

    def _show_time_note(self, text: str) -> None:
        """The note in the history plot's body, its axes hidden (an empty axis reads as no data);
        "" puts the axes back."""
        if text == self.time_note.toPlainText() and self.time_note.isVisible() == bool(text):
            return
        self.time_note.setText(text)
        self.time_note.setVisible(bool(text))
        for side in ("left", "bottom"):
            if text:
                self.time_plot.hideAxis(side)
            else:
                self.time_plot.showAxis(side)
        if text:
            self.time_plot.setRange(xRange=(0.0, 1.0), yRange=(0.0, 1.0), padding=0.0)
            self.time_note.setPos(0.5, 0.5)
            self._fit_time_note()

    def _fit_time_note(self) -> None:
        if self.time_note.isVisible():
            self.time_note.setTextWidth(max(120.0, 0.9 * self.time_plot.getViewBox().width()))

    def _draw_band(self, data: ViewData, layer: str) -> None:
        if layer in self._unobserved:
            if layer != self._band_layer or any(series is not None for series in self._band_series):
                self._band_layer = layer
                self._band_series = (None, None)
                self.mean_curve.setData([], [])
                self.band.setData([], [])
                self.band_title.set(f"{layer}: no mean ± std, its outputs are not observed",
                                    f"{layer}: not observed", layer)
            return
        mean = _series(data, f"act_mean/{layer}")
        std = _series(data, f"act_std/{layer}")
        # Identity, not equality: SeriesData holds arrays, and an unchanged object needs no redraw.
        if layer == self._band_layer and mean is self._band_series[0] and std is self._band_series[1]:
            return
        self._band_layer = layer
        self._band_series = (mean, std)
        if mean is None:
            self.mean_curve.setData([], [])
            self.band.setData([], [])
            self.band_title.set(f"{layer}: no mean/std series yet", f"{layer}: no series yet", layer)
            return
        steps = np.asarray(mean.steps, dtype=np.float64)
        values = np.asarray(mean.values, dtype=np.float64)
        if std is None:
            spread = np.zeros_like(values)
        elif len(std.steps) == len(steps):
            spread = np.asarray(std.values, dtype=np.float64)
        else:
            # Series from one History share steps; anything else is aligned by interpolation.
            spread = np.interp(steps, np.asarray(std.steps, float), np.asarray(std.values, float))
        if len(steps) > _MAX_BAND_POINTS:
            # Run-long series arrive decimated; a raw one is strided (mean and std are smooth).
            stride = math.ceil(len(steps) / _MAX_BAND_POINTS)
            steps, values, spread = steps[::stride], values[::stride], spread[::stride]
        self.mean_curve.setData(steps, values, connect="finite")
        finite = np.isfinite(values) & np.isfinite(spread)  # a NaN would tear the polygon
        x = steps[finite]
        self.band.setData(
            np.concatenate([x, x[::-1]]),
            np.concatenate([(values + spread)[finite], (values - spread)[finite][::-1]]),
        )
        self.band_title.set(f"{layer}: mean ± std over the run", f"{layer}: mean ± std", layer)

    # --- readout and clicks ------------------------------------------------------------------
    def describe_point(self, x: float, y: float) -> str:
        """Readout for the histogram plot: ``"layer  bin [a, b): 12.3 %"``."""
        frame = self._frame
        if frame is None or self._edges is None or not (math.isfinite(x) and math.isfinite(y)):
            return ""
        row = int(math.floor(y))
        if not 0 <= row < len(self._names):
            return ""
        if self._names[row] in self._unobserved:
            return unobserved_note(self._names[row], self._unobserved[self._names[row]], short=True)
        edges = self._edges[row]
        column = int(np.searchsorted(edges, x, side="right")) - 1
        if not 0 <= column < len(edges) - 1:
            return ""
        value = float(frame.histograms[row, column]) * 100.0
        return f"{self._names[row]}  bin [{edges[column]:.3g}, {edges[column + 1]:.3g}): {value:.1f} %"

    def _describe_fraction(self, y: float) -> str:
        if self._frame is None or not math.isfinite(y):
            return ""
        row = int(math.floor(y))
        if not 0 <= row < len(self._names):
            return ""
        dead = float(self._frame.stat("dead_fraction")[row])
        saturated = float(self._frame.stat("saturated_fraction")[row])
        pairs = (("dead", dead), ("saturated", saturated))
        parts = [f"{label} {value * 100:.1f} %" for label, value in pairs if math.isfinite(value)]
        return f"{self._names[row]}  " + ("  ".join(parts) if parts else "no dead/saturated statistic")

    def _describe_history(self, x: float, y: float) -> str:
        counts, steps, edges = self._time_counts, self._time_steps, self._time_edges
        if counts is None or not len(steps) or not (math.isfinite(x) and math.isfinite(y)):
            return ""
        column = int(np.argmin(np.abs(steps - x)))
        row = int(np.searchsorted(edges, y, side="right")) - 1
        if not 0 <= row < counts.shape[0]:
            return ""
        return (
            f"{self._focus}  step {int(steps[column])}  bin [{edges[row]:.3g}, {edges[row + 1]:.3g}): "
            f"{counts[row, column] * 100:.1f} %"
        )

    def _describe_band(self, x: float) -> str:
        mean, std = self._band_series
        if mean is None or not math.isfinite(x):
            return ""
        index = int(np.argmin(np.abs(np.asarray(mean.steps) - x)))
        text = f"{self._focus}  step {int(mean.steps[index])}: mean {float(mean.values[index]):.4g}"
        if std is not None and len(std.values) == len(mean.values):
            text += f" ± {float(std.values[index]):.3g}"
        return text

    def _mouse_moved(self, pos: QtCore.QPointF) -> None:
        if self._stack.currentWidget() is not self.canvas:
            return
        for plot in (self.hist_plot, self.fraction_plot, self.time_plot, self.band_plot):
            if plot.sceneBoundingRect().contains(pos):
                point = plot.getViewBox().mapSceneToView(pos)
                if plot is self.hist_plot:
                    self.hover_at(point.x(), point.y())
                    return
                if plot is self.fraction_plot:
                    text = self._describe_fraction(point.y())
                elif plot is self.time_plot:
                    text = self._describe_history(point.x(), point.y())
                else:
                    text = self._describe_band(point.x())
                self.readout.setText(text or " ")
                return

    def _mouse_clicked(self, event) -> None:  # pyqtgraph MouseClickEvent
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self._frame is None:
            return
        for plot in (self.hist_plot, self.fraction_plot):
            if plot.sceneBoundingRect().contains(event.scenePos()):
                row = int(math.floor(plot.getViewBox().mapSceneToView(event.scenePos()).y()))
                name = self.layer_at_row(row)
                if name is not None:
                    self.selected_layer = name
                    self.layer_selected.emit(name)
                    if self._last is not None:
                        self.draw(self._last)
                return

