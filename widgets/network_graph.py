"""The network as columns of units joined by their weights, coloured by what flows through them."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from engine.snapshot import NetworkView, PhaseInfo, ViewData
from widgets import colormaps
from widgets.base import PLOT_BACKGROUND, View
from widgets.findings import SEVERITY_RGB, flagged_layers
from widgets.label_fit import elide, unique_suffixes
from widgets.step_inspector import DIRECTION_COLOURS

__all__ = ["NetworkGraph", "COLLAPSE_ABOVE", "EDGE_LEVELS", "column_label_layout", "phase_columns"]

#: A column with more units than this is drawn as one labelled block, its edges as one band.
COLLAPSE_ABOVE = 64
#: Magnitude buckets per sign: all edges are drawn by 2 * EDGE_LEVELS curve items.
EDGE_LEVELS = 4

_MODES = ("activation", "gradient")
_SYMBOL = {"activation": "a", "gradient": "g"}
_NO_DATA = QtGui.QColor(90, 94, 102)
_SELECTED = QtGui.QColor(255, 213, 79)
_LABEL = QtGui.QColor(214, 217, 224)
_BLOCK_WIDTH = 0.3  # in column spacings
_UNIT_HIT_X = 0.15  # how far from a column's centre a click still counts, in column spacings


_THICK_EDGES_UP_TO = 2000  # more edges than this are all drawn 1 px wide (see _edge_pen)
# At most this many edges are drawn: beyond it, each pair of columns shows its strongest weights
# only (a deep stack of wide layers would otherwise paint 200k lines on every refresh).
EDGE_BUDGET = 20_000


def _edge_pen(sign: int, level: int, thick: bool) -> QtGui.QPen:
    """Pen of one edge bucket: paler, darker and thinner for weak weights.

    Colours are blended with the background here rather than drawn translucent, and wide
    pens are kept for small graphs: Qt's raster engine strokes wide translucent lines about
    50x slower than 1 px opaque ones (4000 edges: 350 ms against 6 ms a frame).
    """
    strength = (level + 1) / EDGE_LEVELS
    colour = colormaps.lut_colour(colormaps.DIVERGING_LUT, 0.5 + sign * 0.5 * (0.35 + 0.65 * strength))
    alpha = 0.25 + 0.75 * strength ** 1.5
    r, g, b = (round(c * alpha + bg * (1.0 - alpha)) for c, bg in zip(colour, PLOT_BACKGROUND))
    width = 1.0 + 2.5 * strength ** 2 if thick else (2.0 if level == EDGE_LEVELS - 1 else 1.0)
    return pg.mkPen(r, g, b, width=width)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


_LABEL_GAP = 6  # px between two column labels on one line
_MARGIN_PX = 6  # px kept free above the tallest column and below the labels


def column_label_layout(names: tuple[str, ...], spacing: float, width_of,
                        elide_to=None) -> tuple[tuple[str, ...], int, tuple[bool, ...]]:
    """Column labels that fit columns ``spacing`` px apart: ``(texts, lines, shown)``.

    Tried in order: full names on one line; their unique tails (``layers.0.linear`` →
    ``0.linear``) on one line; the tails staggered over two lines; those elided to the room
    two columns give (``elide_to(text, px)``); and every k-th label only when even that is too
    tight. ``width_of(text)`` measures a label in px. Labels at either end may lean inwards
    (they are drawn aligned to the view's edge), so they only need to fit inside the view.
    """
    n = len(names)
    if n == 0:
        return (), 1, ()
    short = unique_suffixes(names)
    total = spacing * n

    def fits(texts: tuple[str, ...], lines: int, shown: tuple[bool, ...]) -> bool:
        last_end = [-math.inf] * lines
        count = 0
        for i, (text, visible) in enumerate(zip(texts, shown)):
            if not visible:
                continue
            width = width_of(text)
            if width > total:
                return False
            start = min(max((i + 0.5) * spacing - width / 2.0, 0.0), total - width)
            line = count % lines
            count += 1
            if start < last_end[line] + _LABEL_GAP:
                return False
            last_end[line] = start + width
        return True

    every = (True,) * n
    for texts, lines in ((names, 1), (short, 1), (short, 2)):
        if fits(texts, lines, every):
            return texts, lines, every
    lines = 2 if n > 1 else 1
    for stride in range(1, n + 1):
        shown = tuple(i % stride == 0 for i in range(n))
        room = lines * stride * spacing - _LABEL_GAP
        texts = short if elide_to is None else tuple(elide_to(text, room) for text in short)
        shown_texts = [text for text, visible in zip(texts, shown) if visible]
        distinct = len(set(shown_texts)) == len({name for name, visible in zip(names, shown) if visible})
        if distinct and fits(texts, lines, shown):
            return texts, lines, shown
    return short, lines, (True,) + (False,) * (n - 1)


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity: it holds arrays
class _Layout:
    """Geometry of one network shape; rebuilt only when the shape changes (a new run)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    collapsed: tuple[bool, ...]
    spacing: float  # vertical distance between units of a column
    height: float  # of the tallest column / the blocks
    unit_column: np.ndarray  # (n_spots,) column index of each spot
    unit_index: np.ndarray  # (n_spots,) unit index of each spot within its column
    unit_x: np.ndarray
    unit_y: np.ndarray
    offsets: tuple[int, ...]  # first spot of each column (meaningless for collapsed ones)

    def unit_y_of(self, size: int, index: int) -> float:
        return ((size - 1) / 2.0 - index) * self.spacing


def _make_layout(names: tuple[str, ...], sizes: tuple[int, ...]) -> _Layout:
    collapsed = tuple(size > COLLAPSE_ABOVE for size in sizes)
    small = [size for size, big in zip(sizes, collapsed) if not big]
    tallest = max(small, default=1)
    # Same spacing in every column so columns read as a classic diagram; capped so two or
    # three units do not stretch over the whole view.
    spacing = min(1.0 / (tallest - 1), 0.25) if tallest > 1 else 0.25
    height = max((tallest - 1) * spacing, 1.0 if any(collapsed) else 0.25)
    columns, indices, xs, ys, offsets = [], [], [], [], []
    count = 0
    for column, (size, big) in enumerate(zip(sizes, collapsed)):
        offsets.append(count)
        if big or size <= 0:
            continue
        index = np.arange(size)
        columns.append(np.full(size, column))
        indices.append(index)
        xs.append(np.full(size, float(column)))
        ys.append(((size - 1) / 2.0 - index) * spacing)
        count += size

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return _Layout(names, sizes, collapsed, spacing, height, joined(columns, np.int64),
                   joined(indices, np.int64), joined(xs, np.float64), joined(ys, np.float64),
                   tuple(offsets))


class NetworkGraph(View):
    """Columns of units (input, then every layer with parameters) and the weights between them.

    Edges are drawn for pairs of columns of at most ``COLLAPSE_ABOVE`` units each, coloured
    blue (negative) to red (positive) and thickened by |weight| relative to the largest weight
    of that matrix (layers differ in scale; per-matrix scaling keeps each one readable); a weight
    of exactly zero draws no edge. Larger
    columns become a block showing its values as a strip, joined to its neighbours by a band.
    Two neighbouring columns are joined only when the left one feeds the right one
    (``NetworkView.connected``); the links the columns can't show (a second head fed by the trunk,
    a skip connection) are named by a one-line note above the graph (``NetworkView.note``).

    Units are coloured by activation or by gradient (``set_mode``), on a diverging scale
    symmetric about zero per column. Clicking a unit emits ``layer_selected(name)`` then
    ``unit_selected(name, index)``; clicking a block emits ``layer_selected(name)``.
    """

    title = "Network"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._mode = "activation"
        controls = QtWidgets.QHBoxLayout()
        controls.setContentsMargins(2, 0, 2, 0)
        controls.addWidget(QtWidgets.QLabel("Colour units by", self))
        self.mode_combo = QtWidgets.QComboBox(self)
        self.mode_combo.addItems(["Activation", "Gradient"])
        self.mode_combo.setToolTip("Colour each unit by its activation or by dL/d(unit)")
        self.mode_combo.currentIndexChanged.connect(lambda index: self.set_mode(_MODES[index]))
        controls.addWidget(self.mode_combo)
        controls.addStretch(1)
        self._layout.addLayout(controls)
        # One line naming the links the columns don't draw (a second head's, a skip's); clipped at
        # the right rather than widening the dock, whole in its tooltip.
        self.note = QtWidgets.QLabel("", self)
        self.note.setObjectName("note")
        self.note.setStyleSheet("QLabel#note { color: #e0c068; }")
        self.note.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.note.setMinimumWidth(0)
        self.note.setVisible(False)
        self._layout.addWidget(self.note)

        self._stack = QtWidgets.QStackedWidget(self)
        self.plot_widget = pg.PlotWidget(self)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.view_box = self.plot.getViewBox()
        # A fixed diagram: panning would only lose it; the layout fits it to the view instead.
        self.view_box.setMouseEnabled(x=False, y=False)
        self.view_box.enableAutoRange(enable=False)
        self._hint = QtWidgets.QLabel("No network to show yet", self)
        self._hint.setObjectName("hint")
        self._hint.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self._stack.addWidget(self.plot_widget)
        self._stack.addWidget(self._hint)
        self._stack.setCurrentWidget(self._hint)
        self._layout.addWidget(self._stack, 1)
        self.finish_layout()

        lut = colormaps.DIVERGING_LUT
        self._brush_table = np.empty(257, dtype=object)
        for i in range(256):
            self._brush_table[i] = pg.mkBrush(*(int(c) for c in lut[i][:3]))
        self._brush_table[256] = pg.mkBrush(_NO_DATA)

        # Bands: every pair of columns whose edges are not drawn one by one (one item for all).
        self.bands = QtWidgets.QGraphicsPathItem()
        self.bands.setPen(pg.mkPen(None))
        self.bands.setBrush(pg.mkBrush(120, 140, 190, 60))
        self.bands.setZValue(-20)
        self.plot.addItem(self.bands)
        # Edges: one curve per (sign, magnitude bucket), strong ones on top.
        self.edge_items: list[pg.PlotCurveItem] = []
        for sign in (-1, 1):
            for level in range(EDGE_LEVELS):
                item = pg.PlotCurveItem(connect="pairs", pen=_edge_pen(sign, level, thick=True),
                                        skipFiniteCheck=True, segmentedLineMode="on")
                item.setZValue(-15 + level)
                self.plot.addItem(item)
                self.edge_items.append(item)
        self._thick_edges = True
        self.block_fill = QtWidgets.QGraphicsPathItem()
        self.block_fill.setPen(pg.mkPen(None))
        self.block_fill.setBrush(pg.mkBrush(62, 66, 76))
        self.block_fill.setZValue(-8)
        self.plot.addItem(self.block_fill)
        self.block_outline = QtWidgets.QGraphicsPathItem()
        self.block_outline.setPen(pg.mkPen(170, 178, 192, width=1))
        self.block_outline.setBrush(pg.mkBrush(None))
        self.block_outline.setZValue(-6)
        self.plot.addItem(self.block_outline)
        self.units = pg.ScatterPlotItem(pen=pg.mkPen(140, 146, 158, width=1), brush=self._brush_table[256], size=10)
        self.units.setZValue(0)
        self.plot.addItem(self.units)
        self.ring = pg.ScatterPlotItem(pen=pg.mkPen(_SELECTED, width=2.5), brush=pg.mkBrush(None), size=18)
        self.ring.setZValue(1)
        self.plot.addItem(self.ring)
        # Pools that only grow: a new run with more columns adds items, never per frame.
        self.block_images: list[pg.ImageItem] = []
        self.block_labels: list[pg.TextItem] = []
        self.column_labels: list[pg.TextItem] = []
        self._label_anchor: list[tuple[float, float]] = []
        self._labels_fitted: tuple | None = None
        self._label_line = 0.05  # data units per line of label text
        self._label_top = 0.0  # y of the first line of labels

        # Columns whose layer a diagnosis names: a tinted band behind them, one item per severity.
        self.flag_bands: dict[str, QtWidgets.QGraphicsPathItem] = {}
        for severity in ("warning", "error"):
            band = QtWidgets.QGraphicsPathItem()
            band.setPen(pg.mkPen(*SEVERITY_RGB[severity], 200, width=1.5, style=QtCore.Qt.PenStyle.DashLine,
                                 cosmetic=True))
            band.setBrush(pg.mkBrush(*SEVERITY_RGB[severity], 45))
            band.setZValue(-25)
            self.plot.addItem(band)
            self.flag_bands[severity] = band
        self.flagged_columns: dict[str, tuple[str, tuple[str, ...]]] = {}  # column -> (severity, codes)
        self._flags_drawn: tuple | None = None
        # Where a phase-by-phase step is: a band round the column(s) of its module, in the colour of
        # its direction (the step inspector's).
        self.phase_band = QtWidgets.QGraphicsPathItem()
        self.phase_band.setZValue(-24)
        self.plot.addItem(self.phase_band)
        self.phase_columns: tuple[str, ...] = ()
        self._phase_drawn: tuple | None = None

        self._geometry: _Layout | None = None
        self._edge_pairs: set[int] = set()  # column pairs whose edges are drawn one by one
        self._edge_x0 = self._edge_y0 = self._edge_x1 = self._edge_y1 = np.zeros(0)
        self._unit_size = 10.0
        self._drawn_key: tuple | None = None
        self._selection_drawn: tuple | None = None
        self._bands_drawn: tuple | None = None
        self._edge_counts = [0] * len(self.edge_items)
        self._network: NetworkView | None = None
        self.view_box.sigResized.connect(self._on_resized)
        self.plot.scene().sigMouseClicked.connect(self._on_scene_clicked)
        self.connect_hover(self.plot)

    @property
    def hint(self) -> str:
        """The centred hint shown instead of the view, or "" when the view is shown."""
        return self._hint.text() if self._stack.currentWidget() is self._hint else ""

    # --- public ------------------------------------------------------------------------------
    def mode(self) -> str:
        """"activation" or "gradient": what the units' colours show."""
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Colour units by ``"activation"`` or ``"gradient"``."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self._mode = mode
        blocked = self.mode_combo.blockSignals(True)
        self.mode_combo.setCurrentIndex(_MODES.index(mode))
        self.mode_combo.blockSignals(blocked)
        if self._last is not None:
            self.draw(self._last)

    def select_unit(self, column: str, index: int | None = None) -> None:
        """Select a unit (or a whole column) as a click would, emitting the signals."""
        self.selected_layer = column
        self.selected_unit = index
        if self._last is not None:
            self.draw(self._last)
        self.layer_selected.emit(column)
        if index is not None:
            self.unit_selected.emit(column, int(index))

    def unit_position(self, column: str, index: int) -> tuple[float, float] | None:
        """Data coordinates of a unit's centre (or its row in a block), None if not drawn."""
        geometry = self._geometry
        if geometry is None or column not in geometry.names:
            return None
        col = geometry.names.index(column)
        size = geometry.sizes[col]
        if not 0 <= index < size:
            return None
        if geometry.collapsed[col]:
            return (float(col), geometry.height / 2.0 - (index + 0.5) * geometry.height / size)
        return (float(col), geometry.unit_y_of(size, index))

    def hit(self, x: float, y: float) -> tuple[str, int | None] | None:
        """(column name, unit index or None for a block without values) under (x, y)."""
        geometry = self._geometry
        network = self._network
        if geometry is None or network is None or not (np.isfinite(x) and np.isfinite(y)):
            return None
        col = int(round(x))
        if not 0 <= col < len(geometry.sizes):
            return None
        size = geometry.sizes[col]
        name = geometry.names[col]
        if y < self._label_top and abs(x - col) <= 0.5:
            return (name, None)  # its label, below the columns: the whole layer
        if geometry.collapsed[col]:
            half = geometry.height / 2.0
            if abs(x - col) > _BLOCK_WIDTH / 2 or abs(y) > half:
                return None
            if self._column_values(network, col) is None:
                return (name, None)
            return (name, min(int((half - y) / geometry.height * size), size - 1))
        if abs(x - col) > _UNIT_HIT_X or size <= 0:
            return None
        index = int(round((size - 1) / 2.0 - y / geometry.spacing))
        if not 0 <= index < size or abs(y - geometry.unit_y_of(size, index)) > geometry.spacing / 2 + 1e-9:
            return None
        return (name, index)

    def click_at(self, x: float, y: float) -> tuple[str, int | None] | None:
        """Handle a click at data coordinates (x, y): select what is there and emit."""
        target = self.hit(x, y)
        if target is not None:
            self.select_unit(*target)
        return target

    def describe_point(self, x: float, y: float) -> str:
        target = self.hit(x, y)
        network = self._network
        if target is None or network is None or self._geometry is None:
            return ""
        name, index = target
        col = self._geometry.names.index(name)
        if name in self.flagged_columns:
            codes = ", ".join(code.replace("_", " ") for code in self.flagged_columns[name][1])
            if index is None:
                return f"{name}: {self._geometry.sizes[col]} units  ⚠ {codes} (see Health)"
        if index is None and not self._geometry.collapsed[col]:
            return f"{name}: {self._geometry.sizes[col]} units"
        if index is None:
            return f"{name}: {self._geometry.sizes[col]} units (collapsed)"
        values = self._column_values(network, col)
        symbol = _SYMBOL[self._mode]
        if values is None:
            return f"{name} unit {index}: {self._mode} not captured"
        return f"{name} unit {index}: {symbol} = {_fmt(float(values[index]))}"

    # --- drawing -------------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        network = data.snapshot.network
        if network is None or not network.column_sizes:
            self._show_hint("No network to show yet")
            return
        if len(network.column_names) != len(network.column_sizes):
            self._show_hint("Network description is inconsistent")
            return
        flagged = flagged_layers(data.snapshot.diagnoses)
        phase = data.snapshot.phase if data.snapshot.state != "running" else None
        key = (id(network), self._mode, self.selected_layer, self.selected_unit, tuple(flagged.items()), id(phase))
        if network is self._network and key == self._drawn_key:
            return  # redrawn at display rate with nothing new
        self._network = network
        self._stack.setCurrentWidget(self.plot_widget)
        self._set_note(_with_phase_note(network, phase))
        names = tuple(str(n) for n in network.column_names)
        sizes = tuple(int(s) for s in network.column_sizes)
        if self._geometry is None or self._geometry.names != names or self._geometry.sizes != sizes:
            self._rebuild(names, sizes)
        self._draw_units(network)
        self._draw_edges(network)
        self._draw_blocks(network)
        self._draw_flags(flagged)
        self._draw_phase(phase)
        self._draw_selection()
        self._drawn_key = key

    def _set_note(self, text: str) -> None:
        text = " ".join(str(text or "").split())
        if text != self.note.text():
            self.note.setText(text)
            self.note.setToolTip(text)
        self.note.setVisible(bool(text))

    def _show_hint(self, text: str) -> None:
        self._set_note("")
        self._hint.setText(text)
        self._stack.setCurrentWidget(self._hint)
        self._network = None
        self._drawn_key = None

    def _column_values(self, network: NetworkView, col: int) -> np.ndarray | None:
        """The column's activations or gradients as a flat float array, or None if unusable."""
        source = network.activations if self._mode == "activation" else network.gradients
        if col >= len(source) or source[col] is None:
            return None
        values = np.asarray(source[col], dtype=np.float64).ravel()
        return values if values.size == network.column_sizes[col] else None

    def _column_weights(self, network: NetworkView, pair: int) -> np.ndarray | None:
        if pair >= len(network.weights) or network.weights[pair] is None:
            return None
        weights = np.asarray(network.weights[pair], dtype=np.float64)
        expected = (network.column_sizes[pair + 1], network.column_sizes[pair])
        return weights if weights.shape == expected else None

    def _rebuild(self, names: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        """Lay out a new network shape: positions, block outlines, label pools."""
        geometry = _make_layout(names, sizes)
        self._geometry = geometry
        self._labels_fitted = None
        self._fit_range(lines=1)
        self._unit_size = self._fit_unit_size()
        self.units.setData(x=geometry.unit_x, y=geometry.unit_y, size=self._unit_size,
                           brush=self._brush_table[256])

        # Unit-to-unit edges, in the weight matrices' (out, in) row-major order.
        self._edge_pairs = set()
        starts_x, starts_y, ends_x, ends_y = [], [], [], []
        for pair in range(len(sizes) - 1):
            if geometry.collapsed[pair] or geometry.collapsed[pair + 1] or not sizes[pair] or not sizes[pair + 1]:
                continue
            self._edge_pairs.add(pair)
            y_in = ((sizes[pair] - 1) / 2.0 - np.arange(sizes[pair])) * geometry.spacing
            y_out = ((sizes[pair + 1] - 1) / 2.0 - np.arange(sizes[pair + 1])) * geometry.spacing
            starts_x.append(np.full(sizes[pair + 1] * sizes[pair], float(pair)))
            ends_x.append(np.full(sizes[pair + 1] * sizes[pair], float(pair + 1)))
            starts_y.append(np.tile(y_in, sizes[pair + 1]))
            ends_y.append(np.repeat(y_out, sizes[pair]))
        empty = np.zeros(0)
        thick = sum(x.size for x in starts_x) <= _THICK_EDGES_UP_TO
        if thick != self._thick_edges:
            self._thick_edges = thick
            for i, item in enumerate(self.edge_items):
                sign, level = (-1 if i < EDGE_LEVELS else 1), i % EDGE_LEVELS
                item.setPen(_edge_pen(sign, level, thick))
        self._edge_x0 = np.concatenate(starts_x) if starts_x else empty
        self._edge_y0 = np.concatenate(starts_y) if starts_y else empty
        self._edge_x1 = np.concatenate(ends_x) if ends_x else empty
        self._edge_y1 = np.concatenate(ends_y) if ends_y else empty

        fill = QtGui.QPainterPath()
        for col, big in enumerate(geometry.collapsed):
            if big:
                fill.addRect(self._block_rect(col))
        self.block_fill.setPath(fill)
        self.block_outline.setPath(fill)

        while len(self.column_labels) < len(sizes):
            label = pg.TextItem(anchor=(0.5, 0.0), color=_LABEL)
            label.setZValue(5)
            self.plot.addItem(label)
            self.column_labels.append(label)
            self._label_anchor.append((0.5, 0.0))
        n_blocks = sum(geometry.collapsed)
        while len(self.block_images) < n_blocks:
            image = pg.ImageItem()
            image.setLookupTable(colormaps.DIVERGING_LUT)
            image.setZValue(-7)
            self.plot.addItem(image)
            self.block_images.append(image)
            label = pg.TextItem(anchor=(0.5, 0.5), color=_LABEL, fill=pg.mkBrush(21, 23, 28, 200))
            label.setZValue(6)
            self.plot.addItem(label)
            self.block_labels.append(label)
        block = 0
        for col in range(len(sizes)):
            if geometry.collapsed[col]:
                rect = self._block_rect(col)
                self.block_images[block].setRect(rect)
                self.block_labels[block].setPos(col, 0.0)
                self.block_labels[block].setVisible(True)
                block += 1
        for label in self.column_labels[len(sizes):]:
            label.setVisible(False)
        for image, label in zip(self.block_images[block:], self.block_labels[block:]):
            image.setVisible(False)
            label.setVisible(False)
        self._fit_labels()

    # --- labels that fit the view ---------------------------------------------------------------
    def _label_metrics(self) -> QtGui.QFontMetrics:
        font = self.column_labels[0].textItem.font() if self.column_labels else QtWidgets.QApplication.font()
        return QtGui.QFontMetrics(font)

    def _fit_range(self, lines: int) -> None:
        """Fit the diagram to the view, leaving ``lines`` lines of label text below the columns.

        Computed in pixels so labels and the largest spots fit at any view height.
        """
        geometry = self._geometry
        half = geometry.height / 2.0
        height_px = self.view_box.height()
        line_px = self._label_metrics().height()
        spot_px = 18.0 / 2.0 + 3.0  # largest spot radius and its selection ring
        below_px = spot_px + lines * line_px + _MARGIN_PX
        above_px = spot_px + _MARGIN_PX
        if height_px > below_px + above_px + 20:
            per_px = geometry.height / (height_px - below_px - above_px)
        else:  # not laid out yet (or tiny): proportions that read at a usual size
            per_px = geometry.height / 240.0
        self._label_line = line_px * per_px
        self._label_top = -half - spot_px * per_px
        self.view_box.setRange(xRange=(-0.5, len(geometry.sizes) - 0.5),
                               yRange=(-half - below_px * per_px, half + above_px * per_px), padding=0)

    def _fit_labels(self) -> None:
        """Column labels (and block captions) that fit the columns' on-screen spacing."""
        geometry = self._geometry
        if geometry is None or not self.column_labels:
            return
        names, sizes = geometry.names, geometry.sizes
        width_px = self.view_box.width()
        key = (geometry, round(width_px), round(self.view_box.height()))
        if key == self._labels_fitted:
            return
        self._labels_fitted = key
        metrics = self._label_metrics()
        font = self.column_labels[0].textItem.font()
        spacing = width_px / max(len(sizes), 1) if width_px > 1 else math.inf
        if math.isinf(spacing):
            texts, lines, shown = names, 1, (True,) * len(names)
        else:
            # Cut at the end: a unique tail differs from the others at its start.
            texts, lines, shown = column_label_layout(
                names, spacing, metrics.horizontalAdvance,
                lambda text, room: elide(text, room, font, QtCore.Qt.TextElideMode.ElideRight))
        self._fit_range(lines)
        count = 0
        for col, (text, visible) in enumerate(zip(texts, shown)):
            label = self.column_labels[col]
            if label.toPlainText() != text:
                label.setText(text)
            label.setVisible(visible)
            if not visible:
                continue
            width = metrics.horizontalAdvance(text)
            # Labels at either end lean inwards rather than leave the view.
            if not math.isinf(spacing) and (col + 0.5) * spacing - width / 2.0 < 0:
                anchor, x = (0.0, 0.0), -0.5
            elif not math.isinf(spacing) and (col + 0.5) * spacing + width / 2.0 > spacing * len(sizes):
                anchor, x = (1.0, 0.0), len(sizes) - 0.5
            else:
                anchor, x = (0.5, 0.0), float(col)
            if anchor != self._label_anchor[col]:
                label.setAnchor(anchor)
                self._label_anchor[col] = anchor
            label.setPos(x, self._label_top - (count % lines) * self._label_line)
            count += 1
        block = 0
        short = unique_suffixes(names)
        for col, (name, size) in enumerate(zip(names, sizes)):
            if not geometry.collapsed[col]:
                continue
            options = (f"{name}\n{size} units", f"{short[col]}\n{size} units", f"{size} units", f"{size}")
            room = spacing - 4
            text = next((option for option in options
                         if max(metrics.horizontalAdvance(line) for line in option.split("\n")) <= room),
                        options[-1])
            if self.block_labels[block].toPlainText() != text:
                self.block_labels[block].setText(text)
            block += 1

    def _block_rect(self, col: int) -> QtCore.QRectF:
        height = self._geometry.height if self._geometry is not None else 1.0
        return QtCore.QRectF(col - _BLOCK_WIDTH / 2, -height / 2, _BLOCK_WIDTH, height)

    def _fit_unit_size(self) -> float:
        """Spot diameter in pixels: most of the on-screen unit spacing, within [5, 18]."""
        geometry = self._geometry
        if geometry is None:
            return 10.0
        pixel = self.view_box.viewPixelSize()[1]
        if not np.isfinite(pixel) or pixel <= 0:
            return 10.0
        return float(np.clip(0.72 * geometry.spacing / pixel, 5.0, 18.0))

    def _on_resized(self) -> None:
        self._fit_labels()
        size = self._fit_unit_size()
        if self._geometry is not None and abs(size - self._unit_size) > 0.5:
            self._unit_size = size
            self.units.setSize(size)
            self._selection_drawn = None
            self._draw_selection()

    def _brushes_for(self, values: np.ndarray) -> np.ndarray:
        low, high = colormaps.symmetric_levels(values)
        finite = np.isfinite(values)
        index = np.full(values.shape, 256, dtype=np.int64)
        scaled = (np.where(finite, values, 0.0) - low) / (high - low) * 255.0
        index[finite] = np.clip(np.round(scaled[finite]), 0, 255).astype(np.int64)
        return self._brush_table[index]

    def _draw_units(self, network: NetworkView) -> None:
        geometry = self._geometry
        brushes = np.empty(geometry.unit_x.size, dtype=object)
        for col, (size, big) in enumerate(zip(geometry.sizes, geometry.collapsed)):
            if big or size <= 0:
                continue
            start = geometry.offsets[col]
            values = self._column_values(network, col)
            if values is None:
                brushes[start:start + size] = self._brush_table[256]
            else:
                brushes[start:start + size] = self._brushes_for(values)
        if brushes.size:
            self.units.setBrush(brushes)

    def _draw_edges(self, network: NetworkView) -> None:
        geometry = self._geometry
        codes = []
        band_pairs = []
        total = sum(geometry.sizes[p] * geometry.sizes[p + 1] for p in self._edge_pairs if _linked(network, p))
        for pair in range(len(geometry.sizes) - 1):
            if not _linked(network, pair):  # column pair doesn't feed pair + 1: no edges, no band
                if pair in self._edge_pairs:
                    codes.append(np.full(geometry.sizes[pair] * geometry.sizes[pair + 1], -1))
                continue
            weights = self._column_weights(network, pair) if pair in self._edge_pairs else None
            if pair not in self._edge_pairs or weights is None:
                band_pairs.append(pair)
                if pair in self._edge_pairs:
                    # Unknown weights between small columns: keep the shape, hide the edges.
                    codes.append(np.full(geometry.sizes[pair] * geometry.sizes[pair + 1], -1))
                continue
            flat = weights.ravel()
            finite = np.isfinite(flat)
            magnitude = np.abs(np.where(finite, flat, 0.0))
            largest = magnitude.max() if magnitude.size else 0.0
            level = np.minimum((magnitude / largest * EDGE_LEVELS).astype(np.int64), EDGE_LEVELS - 1) \
                if largest > 0 else np.zeros(flat.size, np.int64)
            code = np.where(flat < 0, level, EDGE_LEVELS + level)
            # A weight of exactly zero (an all-zero initialisation) connects nothing: no edge,
            # rather than the faintest red one, which would read as a small positive weight.
            shown = finite & (flat != 0)
            if total > EDGE_BUDGET:  # this pair's share of the budget, its strongest edges
                quota = max(1, EDGE_BUDGET * flat.size // total)
                if quota < flat.size:
                    shown = finite & (magnitude >= np.partition(magnitude, flat.size - quota)[flat.size - quota])
            codes.append(np.where(shown, code, -1))
        code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
        for bucket, item in enumerate(self.edge_items):
            mask = code == bucket
            count = int(mask.sum())
            if count == 0 and self._edge_counts[bucket] == 0:
                continue
            self._edge_counts[bucket] = count
            xs = np.empty(2 * count)
            ys = np.empty(2 * count)
            xs[0::2] = self._edge_x0[mask]
            xs[1::2] = self._edge_x1[mask]
            ys[0::2] = self._edge_y0[mask]
            ys[1::2] = self._edge_y1[mask]
            item.setData(xs, ys, connect="pairs")
        if (geometry, tuple(band_pairs)) == self._bands_drawn:
            return
        self._bands_drawn = (geometry, tuple(band_pairs))
        path = QtGui.QPainterPath()
        for pair in band_pairs:
            left, right = self._column_extent(pair), self._column_extent(pair + 1)
            x0 = pair + (_BLOCK_WIDTH / 2 if geometry.collapsed[pair] else 0.0)
            x1 = pair + 1 - (_BLOCK_WIDTH / 2 if geometry.collapsed[pair + 1] else 0.0)
            # Pinched in the middle so it reads as a bundle of edges, not another block.
            middle = (x0 + x1) / 2.0
            path.moveTo(x0, left)
            path.cubicTo(middle, 0.45 * left, middle, 0.45 * right, x1, right)
            path.lineTo(x1, -right)
            path.cubicTo(middle, -0.45 * right, middle, -0.45 * left, x0, -left)
            path.closeSubpath()
        self.bands.setPath(path)

    def _column_extent(self, col: int) -> float:
        """Half the height a column takes (a block's, or from its first to its last unit)."""
        geometry = self._geometry
        if geometry.collapsed[col]:
            return geometry.height / 2.0
        return max((geometry.sizes[col] - 1) / 2.0 * geometry.spacing, geometry.spacing * 0.2)

    def _draw_blocks(self, network: NetworkView) -> None:
        geometry = self._geometry
        block = 0
        for col, big in enumerate(geometry.collapsed):
            if not big:
                continue
            image = self.block_images[block]
            block += 1
            values = self._column_values(network, col)
            if values is None:
                image.setVisible(False)
                continue
            # One column of pixels, unit 0 at the top like the small columns.
            image.setImage(values[::-1, None].astype(np.float32), levels=colormaps.symmetric_levels(values),
                           autoLevels=False)
            image.setRect(self._block_rect(col))
            image.setVisible(True)

    def _draw_flags(self, flagged: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        """Tint the columns of flagged layers; an activation's finding marks its block's column."""
        geometry = self._geometry
        columns: dict[str, tuple[str, tuple[str, ...]]] = {}
        for layer, (severity, codes) in flagged.items():
            column = _column_for(layer, geometry.names)
            if column is None:
                continue
            if column in columns:
                worse = "error" if "error" in (severity, columns[column][0]) else severity
                codes = tuple(dict.fromkeys(columns[column][1] + codes))
                severity = worse
            columns[column] = (severity, codes)
        state = (geometry, tuple(columns.items()))
        if state == self._flags_drawn:
            return
        self._flags_drawn = state
        self.flagged_columns = columns
        paths = {severity: QtGui.QPainterPath() for severity in self.flag_bands}
        for column, (severity, _) in columns.items():
            col = geometry.names.index(column)
            half = self._column_extent(col) + geometry.spacing * 0.6
            paths[severity].addRoundedRect(QtCore.QRectF(col - 0.3, -half, 0.6, 2 * half), 0.08, 0.08)
        for severity, band in self.flag_bands.items():
            band.setPath(paths[severity])
        self._selection_drawn = None  # label colours follow the flags

    def _draw_phase(self, phase: PhaseInfo | None) -> None:
        """Band the column(s) the phase-by-phase step is at (none when not stepping)."""
        geometry = self._geometry
        columns = phase_columns(phase, geometry.names) if phase is not None else ()
        kind = phase.kind if phase is not None else None
        state = (geometry, columns, kind)
        if state == self._phase_drawn:
            return
        self._phase_drawn = state
        self.phase_columns = columns
        path = QtGui.QPainterPath()
        for column in columns:
            col = geometry.names.index(column)
            half = self._column_extent(col) + geometry.spacing * 0.8
            path.addRoundedRect(QtCore.QRectF(col - 0.36, -half, 0.72, 2 * half), 0.08, 0.08)
        colour = QtGui.QColor(DIRECTION_COLOURS.get(kind or "", "#5b8fd9"))
        self.phase_band.setPen(pg.mkPen(colour, width=2.5, cosmetic=True))
        self.phase_band.setBrush(pg.mkBrush(colour.red(), colour.green(), colour.blue(), 50))
        self.phase_band.setPath(path)

    def _draw_selection(self) -> None:
        geometry = self._geometry
        state = (geometry, self.selected_layer, self.selected_unit, self._unit_size, self._flags_drawn)
        if state == self._selection_drawn:
            return  # TextItem.setColor and ring.setData are not free at display rate
        self._selection_drawn = state
        for col, label in enumerate(self.column_labels[:len(geometry.names)]):
            name = geometry.names[col]
            if name == self.selected_layer:
                label.setColor(_SELECTED)
            elif name in self.flagged_columns:
                label.setColor(QtGui.QColor(*SEVERITY_RGB[self.flagged_columns[name][0]]))
            else:
                label.setColor(_LABEL)
        position = None
        if self.selected_layer is not None and self.selected_unit is not None:
            position = self.unit_position(self.selected_layer, self.selected_unit)
            if position is not None and geometry.collapsed[geometry.names.index(self.selected_layer)]:
                position = None  # a row of a block: its label is highlighted instead
        if position is None:
            self.ring.setData(x=[], y=[])
        else:
            self.ring.setData(x=[position[0]], y=[position[1]], size=self._unit_size + 8)

    def _on_scene_clicked(self, event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self._stack.currentWidget() is not self.plot_widget:
            return
        if not self.plot.sceneBoundingRect().contains(event.scenePos()):
            return
        point = self.view_box.mapSceneToView(event.scenePos())
        self.click_at(point.x(), point.y())


def _with_phase_note(network: NetworkView, phase: PhaseInfo | None) -> str:
    """The network's note, led during a phase-by-phase step by whose values the units show: the
    last measured step's, since the step being walked through is measured as it ends."""
    valued = any(a is not None for a in network.activations + network.gradients)
    if phase is None or not valued:
        return network.note
    said = f"Units: step {network.step}'s values (this step's come when it ends)."
    return f"{said} {network.note}" if network.note else said


def phase_columns(phase: PhaseInfo, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The columns a phase of a phase-by-phase step is at.

    A forward or backward phase: its module's column, or, for a module without one (an
    activation, a norm, a pooling, a flatten), the column of the nearest module before it in the
    forward pass (whose units it works on; the input for the modules before the first column).
    The loss: the last column, the output it judges. The update: every column of weights.
    """
    if phase.kind == "loss":
        return columns[-1:]
    if phase.kind == "update":
        return tuple(name for name in columns if name != "input")
    module = (phase.module or "").split(" (call ")[0]
    if not module:
        return ()
    if module in columns:
        return (module,)
    forward = [name.partition(" ")[2].split(" (call ")[0] for name in phase.names if name.startswith("forward ")]
    if module not in forward:
        return ()
    for earlier in reversed(forward[:forward.index(module)]):
        if earlier in columns:
            return (earlier,)
    return ("input",) if "input" in columns else ()


def _linked(network: NetworkView, pair: int) -> bool:
    """Whether column ``pair`` feeds column ``pair + 1`` (so they are joined); untraced pairs are."""
    connected = network.connected
    return bool(connected[pair]) if pair < len(connected) else True


def _column_for(layer: str, columns: tuple[str, ...]) -> str | None:
    """The column that draws ``layer``: itself, or the column of the block it belongs to.

    Columns are the layers whose outputs are units (``layers.0.linear``); a finding about that
    block's activation (``layers.0.act``) or norm lands on the same column.
    """
    if layer in columns:
        return layer
    parent = layer.rpartition(".")[0]
    if not parent:
        return None
    return next((column for column in columns if column.rpartition(".")[0] == parent), None)
