"""Attention weights of the focused layer: one query × key map per head, tiled into one image."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtGui, QtWidgets

from engine.snapshot import ViewData
from widgets.base import View
from widgets.colormaps import SEQUENTIAL_LUT
from widgets.label_fit import CategoryAxis, FittedTitle
from widgets.tiling import Tiling, grid_columns, tile_maps

__all__ = ["AttentionView"]

_NO_ATTENTION = "Select an attention layer to see its attention maps"
#: Above this many tokens the axes show indices instead of token labels (they would overlap).
MAX_LABELLED_TOKENS = 32


def _gutter(queries: int) -> int:
    """Rows of NaN between two rows of maps: room for a head title."""
    return max(1, round(0.12 * queries))


def _short_token(token: str, limit: int = 8) -> str:
    token = token.replace("\n", "⏎")
    return token if len(token) <= limit else token[: limit - 1] + "…"


class AttentionView(View):
    """``tensors.attention`` (heads, T, T): row = query, column = key, values in [0, 1].

    Token labels (``tensors.tokens``) name the axes of every head's map when T ≤ 32.
    """

    title = "Attention"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._attention: np.ndarray | None = None
        self._tokens: tuple[str, ...] | None = None
        self._tiles: Tiling | None = None
        self._source: object | None = None
        self._layout_key: tuple[int, int, int, tuple[str, ...] | None] | None = None
        self._head_titles: list[pg.TextItem] = []
        self.x_ticks: list[tuple[float, str]] = []
        self.y_ticks: list[tuple[float, str]] = []

        self.canvas = pg.GraphicsLayoutWidget()
        # Token axes label every token when there is room, every k-th when the maps are small.
        self.plot = self.canvas.addPlot(row=0, col=0, axisItems={
            "left": CategoryAxis("left", max_label_width=70), "bottom": CategoryAxis("bottom")})
        self.plot_title = FittedTitle(self.plot)
        self.plot.invertY(True)  # query 0 at the top, as a matrix reads
        self.plot.setAspectLocked(True)
        self.plot.setLabel("bottom", "key")
        self.plot.setLabel("left", "query")
        self.plot.setMenuEnabled(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(SEQUENTIAL_LUT)
        self.plot.addItem(self.image)

        self.add_content(self.canvas)
        self.finish_layout()
        self.connect_hover(self.plot)
        self._titles_fit: bool | None = None
        self.plot.getViewBox().sigResized.connect(self._fit_head_titles)
        self.plot.getViewBox().sigRangeChanged.connect(self._fit_head_titles)
        self._show_hint(_NO_ATTENTION)

    # --- public ----------------------------------------------------------------------------
    @property
    def tiling(self) -> Tiling | None:
        """Geometry of the tiled image: head h's map starts at ``tiling.origin(h)``."""
        return self._tiles

    @property
    def head_titles(self) -> list[str]:
        """The titles drawn above the visible heads."""
        return [item.textItem.toPlainText() for item in self._head_titles if item.isVisible()]

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        tensors = data.snapshot.tensors
        attention = tensors.attention if tensors is not None else None
        if attention is self._source and (attention is None) == (self._tiles is None):
            return  # the same capture as the last frame
        self._source = attention
        stack = None if attention is None else np.asarray(attention, dtype=np.float32)
        if stack is not None and stack.ndim == 2:
            stack = stack[None]
        if stack is None or stack.ndim != 3 or stack.size == 0 or stack.shape[1] == 0:
            self._attention = None
            self._tiles = None
            self._show_hint(_NO_ATTENTION)
            return
        heads, queries, keys = stack.shape
        tokens = tensors.tokens if tensors.tokens is not None and len(tensors.tokens) == keys else None
        gutter = _gutter(queries)
        tiles = tile_maps(stack, columns=grid_columns(heads, queries, keys), gutter=gutter)
        self.image.setImage(tiles.image, levels=(0.0, 1.0), autoLevels=False)
        layout_key = (heads, queries, keys, tokens)
        if layout_key != self._layout_key:
            self._layout_key = layout_key
            self._place_labels(tiles, tokens)
            self.plot.setRange(
                xRange=(0, tiles.image.shape[1]), yRange=(-gutter, tiles.image.shape[0]), padding=0.02
            )
        self._attention = stack
        self._tokens = tokens
        self._tiles = tiles
        # The maps come from the focused layer when it is an attention layer, else the first one.
        layer = tensors.attention_layer or tensors.layer
        plural = "s" if heads != 1 else ""
        self.plot_title.set(f"{layer}: {heads} head{plural}, {queries} tokens", f"{layer}: {heads} head{plural}", layer)
        self._show_content()

    def _place_labels(self, tiles: Tiling, tokens: tuple[str, ...] | None) -> None:
        """Token (or index) ticks repeated under every column and beside every row of maps."""
        size = tiles.width
        if tokens is not None and size <= MAX_LABELLED_TOKENS:
            labels = [(k, _short_token(t)) for k, t in enumerate(tokens)]
        else:
            every = max(1, math.ceil(size / 8))
            labels = [(k, str(k)) for k in range(0, size, every)]
        self.x_ticks = [
            (tiles.origin(column)[0] + k + 0.5, text) for column in range(tiles.columns) for k, text in labels
        ]
        self.y_ticks = [
            (tiles.origin(row * tiles.columns)[1] + k + 0.5, text) for row in range(tiles.rows) for k, text in labels
        ]
        # One group of token labels per column (row) of maps: thinned alike in every group.
        self.plot.getAxis("bottom").set_categories(
            [p for p, _ in self.x_ticks], [t for _, t in self.x_ticks], period=len(labels))
        self.plot.getAxis("left").set_categories(
            [p for p, _ in self.y_ticks], [t for _, t in self.y_ticks], period=len(labels))
        while len(self._head_titles) < tiles.count:
            title = pg.TextItem(anchor=(0.0, 1.0), color=(214, 217, 224))
            font = title.textItem.font()
            font.setPointSizeF(8.0)
            title.setFont(font)
            self.plot.addItem(title)
            self._head_titles.append(title)
        for head, item in enumerate(self._head_titles):
            if head < tiles.count:
                x, y = tiles.origin(head)
                item.setText(f"head {head}")
                item.setPos(x, y)
        self._titles_fit = None
        self._fit_head_titles()

    def _fit_head_titles(self) -> None:
        """Show the head titles only while the gutter above each map is tall enough for them
        (they would cover the map above); the readout names the head under the pointer."""
        if self._layout_key is None:
            return
        count, queries = self._layout_key[0], self._layout_key[1]
        gutter = _gutter(queries)
        pixel = self.plot.getViewBox().viewPixelSize()[1]
        height = QtGui.QFontMetrics(self._head_titles[0].textItem.font()).height() if self._head_titles else 0
        # Before the first layout the pixel size is unknown: show them.
        fits = not (np.isfinite(pixel) and pixel > 0) or gutter / pixel >= 0.8 * height or self.width() <= 0
        if fits == self._titles_fit:
            return
        self._titles_fit = fits
        for head, item in enumerate(self._head_titles):
            item.setVisible(fits and head < count)

    # --- readout ----------------------------------------------------------------------------
    def describe_point(self, x: float, y: float) -> str:
        """``"head 2: query 'a' (3) -> key 'c' (5) = 0.81"``."""
        tiles, attention = self._tiles, self._attention
        if tiles is None or attention is None:
            return ""
        hit = tiles.locate(x, y)
        if hit is None:
            return ""
        head, key, query = hit
        value = attention[head, query, key]
        if self._tokens is not None:
            return (
                f"head {head}: query {self._tokens[query]!r} ({query}) -> "
                f"key {self._tokens[key]!r} ({key}) = {value:.2f}"
            )
        return f"head {head}: query {query} -> key {key} = {value:.2f}"

