"""The selected layer's weight matrix (or its gradient, or its last update) as one heatmap."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from engine.snapshot import SAVED_RUN_ID, ViewData
from widgets.base import View
from widgets.colormaps import DIVERGING_LUT, symmetric_levels
from widgets.label_fit import FittedAxis, FittedTitle

__all__ = ["WeightHeatmap"]

# mode label -> (TensorViews attribute, symbol used in the readout)
MODES: dict[str, tuple[str, str]] = {
    "weight": ("weight", "w"),
    "gradient": ("weight_grad", "grad"),
    "last update": ("weight_update", "Δw"),
}
_MISSING_HINTS: dict[str, str] = {
    "weight": "Select a layer with weights",
    "gradient": "No gradient yet: run a training step",
    "last update": "No update yet: run a training step",
}


def _as_matrix(a: np.ndarray) -> np.ndarray:
    """A 2-D float32 view: a bias becomes one row, a conv weight (out, ...) one row per output."""
    matrix = np.asarray(a, dtype=np.float32)
    if matrix.ndim == 0:
        return matrix.reshape(1, 1)
    if matrix.ndim == 1:
        return matrix[None, :]
    if matrix.ndim > 2:
        return matrix.reshape(matrix.shape[0], -1)
    return matrix


def _full_shape(layers, name: str, shown: tuple[int, ...]) -> tuple[int, int]:
    """The layer's weight as the 2-D matrix it is before any shrinking (rows: output units)."""
    for layer in layers:
        if layer.name == name and layer.weight_shape:
            full = layer.weight_shape
            size = int(np.prod(full))
            rows = full[0] if len(full) > 1 else 1
            wide = (rows, size // rows)
            # Shrinking caps both sides at one length; a shape it can't have made is another
            # tensor's: trust the array then.
            side = max(shown)
            shrunk = all(s == f or (s == side and f > side) for s, f in zip(shown, wide))
            return wide if shrunk else tuple(shown)
    return tuple(shown)


#: What a weight matrix's rows and columns are, by layer type (the default: a Linear's).
_AXES = {
    "Embedding": ("token", "embedding dimension"),
    "EmbeddingBag": ("token", "embedding dimension"),
    "Conv1d": ("output channel", "input channel × kernel position"),
    "Conv2d": ("output channel", "input channel × kernel position"),
    "Conv3d": ("output channel", "input channel × kernel position"),
    # (A recurrent layer's first input weight, weight_ih_l0, stacks its gates' rows; attention's
    # in_proj_weight stacks the query, key and value projections.)
    "RNN": ("hidden unit", "input feature"),
    "LSTM": ("gate unit: input, forget, cell, output", "input feature"),
    "GRU": ("gate unit: reset, update, new", "input feature"),
    "MultiheadAttention": ("query, key, value unit", "input dimension"),
}
_LINEAR_AXES = ("output unit", "input unit")


def _axes(layers, name: str) -> tuple[str, str]:
    """(rows, columns) of the named layer's weight, in words."""
    kind = next((layer.type_name for layer in layers if layer.name == name), "")
    return _AXES.get(kind, _LINEAR_AXES)


def _block(index: int, shown: int, full: int) -> str:
    """Which of ``full`` indices the ``index``-th of ``shown`` averaged cells covers (as adaptive
    average pooling splits them): "7", or "12–13"."""
    if shown == full:
        return str(index)
    start = (index * full) // shown
    end = -((-(index + 1) * full) // shown)  # (ceiling)
    return str(start) if end - start == 1 else f"{start}–{end - 1}"


class WeightHeatmap(View):
    """Heatmap of ``tensors.weight`` / ``weight_grad`` / ``weight_update``, rows = output units.

    Diverging colours with symmetric levels, so white is exactly zero. The layer combo lists the
    layers that own a weight and emits ``layer_selected``; the app then captures that layer.
    """

    title = "Weights"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._mode = "weight"
        self._layer_names: tuple[str, ...] = ()
        # (array drawn, mode, layer): the array itself, not its id, so a freed one cannot alias
        self._shown: tuple[np.ndarray, str, str] | None = None
        self._matrix: np.ndarray | None = None
        self._matrix_layer = ""
        self._full_shape: tuple[int, int] = (0, 0)  # the weight's 2-D shape before any shrinking
        self._levels = (-1.0, 1.0)
        self._data_selection_seen: str | None = None

        controls = QtWidgets.QHBoxLayout()
        self.layer_combo = QtWidgets.QComboBox(self)
        self.layer_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.layer_combo.setToolTip("Layer whose weights are shown")
        self.layer_combo.activated.connect(self._layer_activated)
        self.mode_combo = QtWidgets.QComboBox(self)
        self.mode_combo.addItems(list(MODES))
        self.mode_combo.setToolTip("Weight, its gradient, or the change made by the last update")
        self.mode_combo.currentTextChanged.connect(self.set_mode)
        self.range_label = QtWidgets.QLabel(" ", self)
        controls.addWidget(self.layer_combo)
        controls.addWidget(self.mode_combo)
        controls.addStretch(1)
        controls.addWidget(self.range_label)
        self._layout.addLayout(controls)

        self.canvas = pg.GraphicsLayoutWidget()
        # Cell axes: whole unit numbers at the cells' centres, never "0.5" or "1.5".
        self.plot = self.canvas.addPlot(row=0, col=0, axisItems={
            "left": FittedAxis("left", cells=True), "bottom": FittedAxis("bottom", cells=True)})
        self.plot_title = FittedTitle(self.plot)
        self.plot.setLabel("bottom", "input unit")
        self.plot.setLabel("left", "output unit")
        self.plot.invertY(True)  # row 0 (output unit 0) at the top, as a matrix reads
        self.plot.setMenuEnabled(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(DIVERGING_LUT)
        self.plot.addItem(self.image)

        # Colour bar: a fixed 256-step ramp through the same LUT, stretched over [-m, m].
        self.colour_bar = self.canvas.addPlot(row=0, col=1, axisItems={"right": FittedAxis("right")})
        self.colour_bar.setFixedWidth(58)
        self.colour_bar.hideAxis("bottom")
        self.colour_bar.hideAxis("left")
        self.colour_bar.showAxis("right")
        self.colour_bar.setMouseEnabled(False, False)
        self.colour_bar.setMenuEnabled(False)
        self.colour_bar.hideButtons()
        self._bar_image = pg.ImageItem(np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None], axisOrder="row-major")
        self._bar_image.setLookupTable(DIVERGING_LUT)
        self._bar_image.setLevels((0.0, 1.0))
        self.colour_bar.addItem(self._bar_image)
        self._set_bar_range(self._levels)

        self.add_content(self.canvas)
        self.finish_layout()
        self.connect_hover(self.plot)
        self._show_hint("Select a layer with weights")

    # --- public ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """One of ``'weight'``, ``'gradient'``, ``'last update'``."""
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Show the weight, its gradient or its last update."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {list(MODES)}")
        if mode == self._mode and self.mode_combo.currentText() == mode:
            return
        self._mode = mode
        self._shown = None
        if self.mode_combo.currentText() != mode:
            self.mode_combo.setCurrentText(mode)
        if self._last is not None:
            self.draw(self._last)

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        snapshot = data.snapshot
        self._sync_layers(data)
        tensors = snapshot.tensors
        attribute, _ = MODES[self._mode]
        array = getattr(tensors, attribute, None) if tensors is not None else None
        if array is None or np.size(array) == 0:
            self._matrix = None
            self._shown = None
            wanted = self.layer_combo.currentText()
            if tensors is None and self._mode == "weight" and wanted:  # (a layer is chosen: nothing measured yet)
                self._show_hint(f"{wanted}: its weights appear once a step has been measured")
            else:
                self._show_hint(_MISSING_HINTS[self._mode])
            return
        wanted = self.layer_combo.currentText()
        if snapshot.state == "stepping" and wanted and wanted != tensors.layer:
            # (selected mid-step: its tensors are captured when the step ends; the matrix on hand is
            # another layer's, which the combo would mislabel)
            self._matrix = None
            self._shown = None
            self._show_hint(f"{wanted}: shown when this phase-by-phase step ends")
            return
        if wanted and wanted != tensors.layer and (snapshot.run_id == SAVED_RUN_ID or data.viewed_step is not None):
            # (a run file or a recorded step holds the tensors of the layer chosen then, and no other's)
            self._matrix = None
            self._shown = None
            if snapshot.run_id == SAVED_RUN_ID:
                self._show_hint(f"{wanted}: this run file holds the matrices of {tensors.layer} only")
            else:
                self._show_hint(f"{wanted}: step {data.viewed_step} recorded the matrices of {tensors.layer} "
                                "only (End goes live)")
            return
        shown = self._shown
        if shown is not None and shown[0] is array and shown[1:] == (self._mode, tensors.layer):
            return  # same array as the last frame: nothing to redo at 30 Hz
        matrix = _as_matrix(array)
        if not np.isfinite(matrix).any():
            self._matrix = None
            self._shown = None
            self._show_hint(f"{tensors.layer}: no finite values (all NaN/Inf)")
            return
        levels = symmetric_levels(matrix)
        resized = self._matrix is None or self._matrix.shape != matrix.shape
        self.image.setImage(matrix, levels=levels, autoLevels=False)
        if resized:
            self.plot.setRange(xRange=(0, matrix.shape[1]), yRange=(0, matrix.shape[0]), padding=0.0)
        if levels != self._levels:
            self._set_bar_range(levels)
        self._levels = levels
        self._matrix = matrix
        self._matrix_layer = tensors.layer
        self._shown = (array, self._mode, tensors.layer)
        self._full_shape = _full_shape(data.snapshot.layers, tensors.layer, matrix.shape)
        rows, columns = _axes(data.snapshot.layers, tensors.layer)
        if self.plot.getAxis("left").labelText != rows:
            self.plot.setLabel("left", rows)
        if self.plot.getAxis("bottom").labelText != columns:
            self.plot.setLabel("bottom", columns)
        shape = f"{self._full_shape[0]}×{self._full_shape[1]}"
        if self._full_shape != matrix.shape:  # (shrunk on the device: each pixel averages a block)
            shape += f", averaged to {matrix.shape[0]}×{matrix.shape[1]}"
        self.plot_title.set(f"{tensors.layer}  {self._mode}  {shape}", f"{tensors.layer}  {shape}", shape)
        self.range_label.setText(f"±{levels[1]:.3g}")
        self._show_content()

    def describe_point(self, x: float, y: float) -> str:
        matrix = self._matrix
        if matrix is None or not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            return ""
        column, row = int(x), int(y)
        if row >= matrix.shape[0] or column >= matrix.shape[1]:
            return ""
        symbol = MODES[self._mode][1]
        rows, columns = (_block(row, matrix.shape[0], self._full_shape[0]),
                         _block(column, matrix.shape[1], self._full_shape[1]))
        where = f"out={rows}, in={columns}"
        if self._full_shape != matrix.shape:
            return f"{self._matrix_layer}  mean of {symbol}[{where}] = {matrix[row, column]:.4g}"
        return f"{self._matrix_layer}  {symbol}[{where}] = {matrix[row, column]:.4g}"

    # --- internals -------------------------------------------------------------------------
    def _sync_layers(self, data: ViewData) -> None:
        names = tuple(
            layer.name for layer in data.snapshot.layers if layer.weight_shape is not None and layer.params > 0
        )
        if names != self._layer_names:
            # A new run (or model) brings a new layer list: rebuild the combo once.
            self._layer_names = names
            self.layer_combo.blockSignals(True)
            self.layer_combo.clear()
            self.layer_combo.addItems(list(names))
            self.layer_combo.blockSignals(False)
        if data.selected_layer != self._data_selection_seen:
            self._data_selection_seen = data.selected_layer
            if data.selected_layer is not None:
                self.selected_layer = data.selected_layer
        wanted = self.selected_layer
        if wanted not in names and data.snapshot.tensors is not None:
            wanted = data.snapshot.tensors.layer
        index = names.index(wanted) if wanted in names else -1
        if index != self.layer_combo.currentIndex():
            self.layer_combo.blockSignals(True)
            self.layer_combo.setCurrentIndex(index)
            self.layer_combo.blockSignals(False)

    def _layer_activated(self, index: int) -> None:
        if 0 <= index < len(self._layer_names):
            name = self._layer_names[index]
            self.selected_layer = name
            self.layer_selected.emit(name)

    def _set_bar_range(self, levels: tuple[float, float]) -> None:
        low, high = levels
        self._bar_image.setRect(QtCore.QRectF(0.0, low, 1.0, high - low))
        self.colour_bar.setRange(xRange=(0, 1), yRange=(low, high), padding=0.0)

