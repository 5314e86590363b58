"""A conv layer's feature maps for one example, and its kernels, each tiled into one image."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from engine.snapshot import ViewData
from widgets.base import PLOT_BACKGROUND, View
from widgets.colormaps import DIVERGING_LUT, SEQUENTIAL_LUT, finite_levels, symmetric_levels
from widgets.label_fit import FittedTitle
from widgets.tiling import Tiling, gutter_lines, normalise_each, tile_maps

__all__ = ["FeatureMaps"]

_NOT_CONV = "Select a convolutional layer to see its feature maps"


def _as_stack(a: np.ndarray | None) -> np.ndarray | None:
    """(n, h, w) float32, or None when there is nothing drawable."""
    if a is None:
        return None
    stack = np.asarray(a, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    elif stack.ndim > 3:
        stack = stack.reshape(-1, *stack.shape[-2:])  # e.g. (out, in, kh, kw) kernels: one tile each
    if stack.ndim != 3 or stack.size == 0:
        return None
    return stack


def _image_plot(graphics: pg.GraphicsLayoutWidget, row: int, lut: np.ndarray) -> tuple[pg.PlotItem, pg.ImageItem]:
    plot = graphics.addPlot(row=row, col=0)
    plot.invertY(True)  # maps read like images: y down
    plot.setAspectLocked(True)
    plot.hideAxis("left")
    plot.hideAxis("bottom")
    plot.setMenuEnabled(False)
    image = pg.ImageItem(axisOrder="row-major")
    image.setLookupTable(lut)
    plot.addItem(image)
    return plot, image


class FeatureMaps(View):
    """Feature maps ``(C, H, W)`` tiled in a grid (sequential colours) and kernels below (diverging).

    Each map is scaled to its own range by default, so quiet channels stay visible; the
    "shared range" toggle puts all maps on one scale to compare their strength. Clicking a map
    emits ``unit_selected(layer, channel)``.
    """

    title = "Feature maps"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._shared = False
        self._maps: np.ndarray | None = None
        self._kernels: np.ndarray | None = None
        self._map_tiles: Tiling | None = None
        self._kernel_tiles: Tiling | None = None
        self._layer = ""
        self._sources: tuple[object, bool, str | None] | None = None

        controls = QtWidgets.QHBoxLayout()
        self.shared_checkbox = QtWidgets.QCheckBox("shared range", self)
        self.shared_checkbox.setToolTip("One colour scale for all maps instead of one per map")
        self.shared_checkbox.toggled.connect(self.set_shared_range)
        controls.addStretch(1)
        controls.addWidget(self.shared_checkbox)
        self._layout.addLayout(controls)

        self.canvas = pg.GraphicsLayoutWidget()
        self.maps_plot, self.maps_image = _image_plot(self.canvas, 0, SEQUENTIAL_LUT)
        self.kernel_plot, self.kernel_image = _image_plot(self.canvas, 1, DIVERGING_LUT)
        self._titles = {id(self.maps_plot): FittedTitle(self.maps_plot),
                        id(self.kernel_plot): FittedTitle(self.kernel_plot)}
        # The gaps between tiles, drawn alike at any size: the image alone, drawn smaller than its
        # pixels, keeps some of its 1-px gutters and drops others (widgets.tiling).
        gutter_pen = pg.mkPen(*PLOT_BACKGROUND, width=2)
        self._gutters = {id(plot): pg.PlotCurveItem(pen=gutter_pen, connect="pairs")
                         for plot in (self.maps_plot, self.kernel_plot)}
        for plot in (self.maps_plot, self.kernel_plot):
            plot.addItem(self._gutters[id(plot)])
        self.canvas.ci.layout.setRowStretchFactor(0, 3)
        self.canvas.ci.layout.setRowStretchFactor(1, 2)

        self.add_content(self.canvas)
        self.finish_layout()
        scene = self.canvas.scene()
        scene.sigMouseMoved.connect(self._mouse_moved)
        scene.sigMouseClicked.connect(self._mouse_clicked)
        self._show_hint(_NOT_CONV)

    # --- public ----------------------------------------------------------------------------
    @property
    def shared_range(self) -> bool:
        return self._shared

    def set_shared_range(self, shared: bool) -> None:
        """One colour scale for all maps (True) or each map scaled to its own range (False)."""
        if self.shared_checkbox.isChecked() != shared:
            self.shared_checkbox.setChecked(shared)  # re-enters through toggled
            return
        if shared != self._shared:
            self._shared = shared
            self._sources = None
            if self._last is not None:
                self.draw(self._last)

    @property
    def map_tiling(self) -> Tiling | None:
        """Geometry of the tiled feature-map image (None when none is shown)."""
        return self._map_tiles

    @property
    def kernel_tiling(self) -> Tiling | None:
        return self._kernel_tiles

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        tensors = data.snapshot.tensors
        raw_maps = tensors.feature_maps if tensors is not None else None
        raw_kernels = tensors.kernels if tensors is not None else None
        selected = data.selected_layer or self.selected_layer
        if self._sources is not None and tensors is self._sources[0] and self._sources[1:] == (self._shared, selected):
            return  # the same capture as the last frame
        self._sources = (tensors, self._shared, selected)
        maps, kernels = _as_stack(raw_maps), _as_stack(raw_kernels)
        if maps is None and kernels is None:
            self._maps = self._kernels = None
            self._map_tiles = self._kernel_tiles = None
            self._show_hint(self._not_conv_text(data))
            return
        # The maps come from the focused layer if it is a conv layer, else from the first one.
        self._layer = (tensors.feature_layer or tensors.layer) if tensors is not None else ""
        self._maps, self._kernels = maps, kernels
        self._map_tiles = self._draw_tiles(
            self.maps_plot, self.maps_image, maps, self._map_tiles, finite_levels, "feature maps"
        )
        self._kernel_tiles = self._draw_tiles(
            self.kernel_plot, self.kernel_image, kernels, self._kernel_tiles, symmetric_levels, "kernels"
        )
        self._show_content()

    def _draw_tiles(
        self,
        plot: pg.PlotItem,
        image: pg.ImageItem,
        stack: np.ndarray | None,
        previous: Tiling | None,
        levels_of,
        label: str,
    ) -> Tiling | None:
        title = self._titles[id(plot)]
        if stack is None:
            image.clear()
            self._gutters[id(plot)].setData([], [])
            title.set(f"no {label} for {self._layer}", f"no {label}")
            return None
        if image is self.maps_image and not self._shared:
            tiles = tile_maps(normalise_each(stack))
            levels = (0.0, 1.0)
        else:
            tiles = tile_maps(stack)
            levels = levels_of(stack)
        image.setImage(tiles.image, levels=levels, autoLevels=False)
        if previous is None or previous.image.shape != tiles.image.shape or previous.columns != tiles.columns:
            self._gutters[id(plot)].setData(*gutter_lines(tiles), connect="pairs")
            plot.setRange(xRange=(0, tiles.image.shape[1]), yRange=(0, tiles.image.shape[0]), padding=0.02)
        count, h, w = stack.shape
        per_map = image is self.maps_image and not self._shared
        scale = "own range each" if per_map else f"{levels[0]:.3g} … {levels[1]:.3g}"
        shape = f"{count} × {h}×{w}"
        title.set(f"{self._layer} {label}: {shape}  ({scale})", f"{self._layer} {label}: {shape}",
                  f"{label}: {shape}", label)
        return tiles

    def _not_conv_text(self, data: ViewData) -> str:
        layers = data.snapshot.layers
        if layers and not any(layer.type_name.startswith("Conv") for layer in layers):
            return "This model has no convolutional layer: feature maps are what a convolution's filters make"
        tensors = data.snapshot.tensors
        name = tensors.layer if tensors is not None else data.selected_layer or self.selected_layer
        for layer in data.snapshot.layers:
            if layer.name == name and layer.type_name.startswith("Conv"):  # (its maps just aren't here yet)
                return f"{name}'s feature maps appear once a step has been measured"
            if layer.name == name:
                article = "an" if layer.type_name[:1].lower() in "aeiou" else "a"
                return f"{name} is {article} {layer.type_name}. " + _NOT_CONV
        return _NOT_CONV

    # --- readout and clicks ------------------------------------------------------------------
    def describe_point(self, x: float, y: float) -> str:
        """Readout for the feature maps: ``"channel 5 (x=3, y=7) = 0.42"`` (the raw value)."""
        return self._describe(self._map_tiles, self._maps, "channel", x, y)

    def describe_kernel(self, x: float, y: float) -> str:
        """Readout for the kernel image: ``"kernel 3 (x=1, y=2) = -0.05"``."""
        return self._describe(self._kernel_tiles, self._kernels, "kernel", x, y)

    @staticmethod
    def _describe(tiles: Tiling | None, stack: np.ndarray | None, label: str, x: float, y: float) -> str:
        if tiles is None or stack is None or not (math.isfinite(x) and math.isfinite(y)):
            return ""
        hit = tiles.locate(x, y)
        if hit is None:
            return ""
        index, column, row = hit
        return f"{label} {index} (x={column}, y={row}) = {stack[index, row, column]:.3g}"

    def _mouse_moved(self, pos: QtCore.QPointF) -> None:
        if self._stack.currentWidget() is not self.canvas:
            return
        if self.maps_plot.sceneBoundingRect().contains(pos):
            point = self.maps_plot.getViewBox().mapSceneToView(pos)
            self.hover_at(point.x(), point.y())
        elif self.kernel_plot.sceneBoundingRect().contains(pos):
            point = self.kernel_plot.getViewBox().mapSceneToView(pos)
            self.readout.setText(self.describe_kernel(point.x(), point.y()) or " ")

    def _mouse_clicked(self, event) -> None:  # pyqtgraph MouseClickEvent
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self._map_tiles is None:
            return
        if self.maps_plot.sceneBoundingRect().contains(event.scenePos()):
            point = self.maps_plot.getViewBox().mapSceneToView(event.scenePos())
            hit = self._map_tiles.locate(point.x(), point.y())
            if hit is not None:
                self.selected_unit = hit[0]
                self.unit_selected.emit(self._layer, hit[0])

