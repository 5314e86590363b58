"""The model's prediction over the 2-D input plane, the data on it, and each hidden unit's view."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from engine.snapshot import BoundaryView, ViewData
from widgets import colormaps
from widgets.base import PLOT_BACKGROUND, View
from widgets.tiling import Tiling, gutter_lines, tile_maps

__all__ = ["DecisionBoundary", "CLASS_COLOURS"]

#: Class colours for points and (muted) regions when there are more than two classes.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (66, 146, 235),  # blue
    (240, 96, 64),  # red
    (80, 190, 110),  # green
    (245, 190, 60),  # yellow
    (170, 110, 220),  # purple
    (60, 200, 200),  # cyan
    (235, 120, 185),  # pink
    (170, 140, 100),  # brown
    (160, 165, 175),  # grey
    (200, 220, 90),  # lime
)
_REGION_STRENGTH = 0.55  # how much of a class colour its region shows, over the background
_SELECTED = QtGui.QColor(255, 213, 79)
_OUTLINE = pg.mkPen(12, 13, 16, width=1.2)


def _blend(colour: tuple[int, int, int], strength: float) -> tuple[int, int, int]:
    r, g, b = (round(c * strength + bg * (1.0 - strength)) for c, bg in zip(colour, PLOT_BACKGROUND))
    return (r, g, b)


def _binary_lut() -> np.ndarray:
    """The diverging map, muted toward the background so saturated points stand out on it."""
    lut = colormaps.DIVERGING_LUT[:, :3].astype(np.float64)
    strength = 0.75
    muted = lut * strength + np.asarray(PLOT_BACKGROUND, np.float64) * (1.0 - strength)
    return np.round(muted).astype(np.uint8)


def _class_lut() -> np.ndarray:
    """256 entries: entry k is class k's muted colour (the palette repeats past ten classes)."""
    return np.array([_blend(CLASS_COLOURS[k % len(CLASS_COLOURS)], _REGION_STRENGTH) for k in range(256)],
                    dtype=np.uint8)


class DecisionBoundary(View):
    """Prediction over the input plane with the data points, and one miniature per hidden unit.

    ``prediction`` row 0 lies at ``y0`` and column 0 at ``x0`` (a meshgrid over the extent).
    Two classes: p(class 1) on a blue/red map with levels (0, 1). More: the predicted class
    index on a categorical palette. Points are coloured by label. Miniatures show
    ``boundary.hidden`` tiled into one image on a diverging map shared by all units, so a dead
    unit reads as pale; clicking one emits ``layer_selected(hidden_layer)`` then
    ``unit_selected(hidden_layer, index)``.
    """

    title = "Decision boundary"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._stack = QtWidgets.QStackedWidget(self)
        self._hint = QtWidgets.QLabel("The decision boundary appears for models with a 2-D input", self)
        self._hint.setObjectName("hint")
        self._hint.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self._hint.setWordWrap(True)

        content = QtWidgets.QWidget(self)
        content_layout = QtWidgets.QVBoxLayout(content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        content_layout.setSpacing(2)
        self.plot_widget = pg.PlotWidget(content)
        self.plot = self.plot_widget.getPlotItem()
        self._title = ""
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.view_box = self.plot.getViewBox()
        self.view_box.setAspectLocked(True)
        # With the aspect locked, a tick label that changes the axis width changes the view's
        # range, which changes the tick labels again: a layout loop that repaints the window
        # hundreds of times a second. A fixed axis size breaks the loop.
        self.plot.getAxis("left").setWidth(36)
        self.plot.getAxis("bottom").setHeight(24)
        self.image = pg.ImageItem()
        self.image.setZValue(-10)
        self.plot.addItem(self.image)
        self.points = pg.ScatterPlotItem(size=7, pen=_OUTLINE, brush=pg.mkBrush(CLASS_COLOURS[0]))
        self.plot.addItem(self.points)
        content_layout.addWidget(self.plot_widget, 3)

        self.hidden_title = QtWidgets.QLabel(" ", content)
        self.hidden_title.setObjectName("miniatureTitle")
        # Wraps in a narrow dock instead of holding the dock at the width of its text.
        self.hidden_title.setWordWrap(True)
        content_layout.addWidget(self.hidden_title)
        self.mini_widget = pg.PlotWidget(content)
        self.mini_plot = self.mini_widget.getPlotItem()
        self.mini_plot.hideAxis("left")
        self.mini_plot.hideAxis("bottom")
        self.mini_plot.setMenuEnabled(False)
        self.mini_plot.hideButtons()
        self.mini_box = self.mini_plot.getViewBox()
        self.mini_box.setAspectLocked(True)
        self.mini_box.invertY(True)  # tiles read left to right, top to bottom
        self.mini_box.setMouseEnabled(x=False, y=False)
        self.mini_box.enableAutoRange(enable=False)
        self.miniatures = pg.ImageItem()
        self.miniatures.setLookupTable(colormaps.DIVERGING_LUT)
        self.mini_plot.addItem(self.miniatures)
        # The gaps between miniatures, drawn alike at any size: the image alone, drawn smaller than
        # its pixels, keeps some of its 1-px gutters and drops others (tiles merged at random).
        self.mini_gutters = pg.PlotCurveItem(pen=pg.mkPen(*PLOT_BACKGROUND, width=2), connect="pairs")
        self.mini_plot.addItem(self.mini_gutters)
        self.mini_ring = pg.PlotCurveItem(pen=pg.mkPen(_SELECTED, width=2))
        self.mini_plot.addItem(self.mini_ring)
        self.mini_widget.setMinimumHeight(60)
        content_layout.addWidget(self.mini_widget, 1)

        self._stack.addWidget(content)
        self._stack.addWidget(self._hint)
        self._stack.setCurrentWidget(self._hint)
        self._layout.addWidget(self._stack, 1)
        self.finish_layout()

        self._binary_lut = _binary_lut()
        self._class_lut = _class_lut()
        self._class_brushes = [pg.mkBrush(*colour) for colour in CLASS_COLOURS]
        self._boundary: BoundaryView | None = None
        self._drawn_key: tuple | None = None
        self._lut_kind: str | None = None
        self._extent: tuple[float, float, float, float] | None = None
        self._points_drawn: tuple[np.ndarray, np.ndarray, int] | None = None
        self._tiling: Tiling | None = None
        self._hidden_shape: tuple[int, ...] | None = None
        self._hidden_layer: str | None = None

        self.connect_hover(self.plot)
        self._connect_miniature_mouse()

    @property
    def hint(self) -> str:
        """The centred hint shown instead of the view, or "" when the view is shown."""
        return self._hint.text() if self._stack.currentWidget() is self._hint else ""

    # --- public ------------------------------------------------------------------------------
    def miniature_count(self) -> int:
        """How many hidden units are drawn as miniatures."""
        return self._tiling.count if self._tiling is not None and self.mini_widget.isVisibleTo(self) else 0

    def miniature_origin(self, index: int) -> tuple[float, float] | None:
        """Centre of miniature ``index`` in the miniature plot's coordinates."""
        tiling = self._tiling
        if tiling is None or not 0 <= index < tiling.count:
            return None
        x, y = tiling.origin(index)
        return (x + tiling.width / 2.0, y + tiling.height / 2.0)

    def select_hidden_unit(self, index: int) -> None:
        """Select hidden unit ``index`` as a click on its miniature would, emitting the signals."""
        layer = self._hidden_layer
        if layer is None or self._tiling is None or not 0 <= index < self._tiling.count:
            return
        self.selected_layer = layer
        self.selected_unit = int(index)
        self._draw_ring()
        self.layer_selected.emit(layer)
        self.unit_selected.emit(layer, int(index))

    def click_miniature_at(self, x: float, y: float) -> int | None:
        """Handle a click at (x, y) of the miniature plot: select the unit there, if any."""
        located = self._tiling.locate(x, y) if self._tiling is not None else None
        if located is None:
            return None
        self.select_hidden_unit(located[0])
        return located[0]

    def describe_point(self, x: float, y: float) -> str:
        boundary = self._boundary
        if boundary is None:
            return ""
        prediction = np.asarray(boundary.prediction)
        x0, x1, y0, y1 = boundary.extent
        height, width = prediction.shape
        if not (x1 > x0 and y1 > y0) or not (x0 <= x <= x1 and y0 <= y <= y1):
            return ""
        col = min(int((x - x0) / (x1 - x0) * width), width - 1)
        row = min(int((y - y0) / (y1 - y0) * height), height - 1)
        value = float(prediction[row, col])
        where = f"x={x:.2f}, y={y:.2f}"
        if not np.isfinite(value):
            return f"{where}: no prediction"
        if boundary.n_classes <= 2:
            return f"{where}: p(class 1) = {value:.2f}"
        return f"{where}: class {int(round(value))}"

    def describe_miniature(self, x: float, y: float) -> str:
        """Readout for (x, y) of the miniature plot: unit, plane position and response."""
        boundary = self._boundary
        located = self._tiling.locate(x, y) if self._tiling is not None else None
        if located is None or boundary is None or boundary.hidden is None:
            return ""
        index, inner_x, inner_y = located
        hidden = np.asarray(boundary.hidden)
        _, height, width = hidden.shape
        row = height - 1 - inner_y  # tiles are drawn flipped so y grows upward in each
        x0, x1, y0, y1 = boundary.extent
        px = x0 + (inner_x + 0.5) / width * (x1 - x0)
        py = y0 + (row + 0.5) / height * (y1 - y0)
        return (f"{self._hidden_layer} unit {index} at x={px:.2f}, y={py:.2f}: "
                f"{float(hidden[index, row, inner_x]):.3g}")

    # --- drawing -------------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        boundary = data.snapshot.boundary
        if boundary is None:
            self._show_hint("The decision boundary appears for models with a 2-D input")
            return
        key = (id(boundary), self.selected_layer, self.selected_unit)
        if boundary is self._boundary and key == self._drawn_key:
            return
        prediction = np.asarray(boundary.prediction)
        x0, x1, y0, y1 = (float(v) for v in boundary.extent)
        if prediction.ndim != 2 or prediction.size == 0 or not (x1 > x0 and y1 > y0):
            self._show_hint("No prediction over the plane yet")
            return
        self._boundary = boundary
        self._stack.setCurrentIndex(0)
        # (Made every few steps, so a recorded step shows the one made last before it: says which.)
        title = f"prediction at step {boundary.step:,}"
        if title != self._title:
            self._title = title
            self.plot.setTitle(title, size="9pt", color="#c8ccd4")
        self._draw_prediction(boundary, prediction, (x0, x1, y0, y1))
        self._draw_points(boundary)
        self._draw_hidden(boundary)
        self._draw_ring()
        self._drawn_key = key

    def _show_hint(self, text: str) -> None:
        self._hint.setText(text)
        self._stack.setCurrentWidget(self._hint)
        self._boundary = None
        self._drawn_key = None

    def _draw_prediction(self, boundary: BoundaryView, prediction: np.ndarray,
                         extent: tuple[float, float, float, float]) -> None:
        if boundary.n_classes <= 2:
            if self._lut_kind != "binary":
                self.image.setLookupTable(self._binary_lut)
                self._lut_kind = "binary"
            self.image.setImage(prediction.astype(np.float32, copy=False), levels=(0.0, 1.0), autoLevels=False)
        else:
            if self._lut_kind != "classes":
                self.image.setLookupTable(self._class_lut)
                self._lut_kind = "classes"
            # uint8 class indices with levels (0, 255) index the LUT exactly.
            classes = np.clip(np.nan_to_num(prediction, nan=0.0), 0, 255)
            self.image.setImage(np.round(classes).astype(np.uint8), levels=(0, 255), autoLevels=False)
        if extent != self._extent:
            self._extent = extent
            x0, x1, y0, y1 = extent
            self.image.setRect(QtCore.QRectF(x0, y0, x1 - x0, y1 - y0))
            self.view_box.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0.02)

    def _draw_points(self, boundary: BoundaryView) -> None:
        points = np.asarray(boundary.points, dtype=np.float64)
        labels = np.asarray(boundary.labels)
        if points.ndim != 2 or points.shape[1] < 2 or labels.shape[:1] != points.shape[:1]:
            points, labels = np.zeros((0, 2)), np.zeros(0)
        drawn = self._points_drawn
        if drawn is not None and drawn[2] == boundary.n_classes and np.array_equal(drawn[0], points) \
                and np.array_equal(drawn[1], labels):
            return  # the data rarely changes: skip rebuilding the brushes
        self._points_drawn = (points.copy(), labels.copy(), boundary.n_classes)
        classes = np.nan_to_num(labels.astype(np.float64), nan=0.0).astype(np.int64) % len(CLASS_COLOURS)
        brushes = [self._class_brushes[k] for k in classes]
        self.points.setData(x=points[:, 0], y=points[:, 1], brush=brushes)

    def _draw_hidden(self, boundary: BoundaryView) -> None:
        hidden = None if boundary.hidden is None else np.asarray(boundary.hidden, dtype=np.float32)
        if hidden is None or hidden.ndim != 3 or hidden.shape[0] == 0:
            self._tiling = None
            self._hidden_layer = None
            self.mini_gutters.setData([], [])
            self.hidden_title.setVisible(False)
            self.mini_widget.setVisible(False)
            return
        self._hidden_layer = boundary.hidden_layer or "hidden layer"
        self.hidden_title.setVisible(True)
        self.mini_widget.setVisible(True)
        # Flip rows: row 0 of each map is y0, which belongs at the bottom of its tile.
        tiling = tile_maps(hidden[:, ::-1, :], columns=self._columns_for(hidden.shape))
        self._tiling = tiling
        self.miniatures.setImage(tiling.image, levels=colormaps.symmetric_levels(hidden), autoLevels=False)
        if hidden.shape != self._hidden_shape:
            self._hidden_shape = hidden.shape
            height, width = tiling.image.shape
            self.miniatures.setRect(QtCore.QRectF(0, 0, width, height))
            self.mini_gutters.setData(*gutter_lines(tiling), connect="pairs")
            self.mini_box.setRange(xRange=(0, width), yRange=(0, height), padding=0.02)
        shown, total = hidden.shape[0], max(boundary.hidden_units, hidden.shape[0])
        which = f"each of its {shown} units" if shown == total else f"its first {shown} of {total} units"
        title = f"{self._hidden_layer}: {which} over the plane (click one to select it)"
        if self.hidden_title.text() != title:
            self.hidden_title.setText(title)

    @staticmethod
    def _columns_for(shape: tuple[int, ...]) -> int:
        """A wide strip: the miniatures sit under a plot that is wider than it is tall."""
        count = shape[0]
        return int(min(count, max(8, int(np.ceil(np.sqrt(count * 4.0))))))

    def _draw_ring(self) -> None:
        tiling = self._tiling
        if (tiling is None or self.selected_layer != self._hidden_layer or self.selected_unit is None
                or not 0 <= self.selected_unit < tiling.count):
            self.mini_ring.setData([], [])
            return
        x, y = tiling.origin(self.selected_unit)
        x0, y0, x1, y1 = x - 0.5, y - 0.5, x + tiling.width + 0.5, y + tiling.height + 0.5
        self.mini_ring.setData([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])

    def _connect_miniature_mouse(self) -> None:
        scene = self.mini_plot.scene()

        def moved(pos: QtCore.QPointF) -> None:
            if self.mini_widget.isVisible() and self.mini_plot.sceneBoundingRect().contains(pos):
                point = self.mini_box.mapSceneToView(pos)
                self.readout.setText(self.describe_miniature(point.x(), point.y()) or " ")

        def clicked(event) -> None:
            if event.button() != QtCore.Qt.MouseButton.LeftButton or not self.mini_widget.isVisible():
                return
            if self.mini_plot.sceneBoundingRect().contains(event.scenePos()):
                point = self.mini_box.mapSceneToView(event.scenePos())
                self.click_miniature_at(point.x(), point.y())

        scene.sigMouseMoved.connect(moved)
        scene.sigMouseClicked.connect(clicked)
