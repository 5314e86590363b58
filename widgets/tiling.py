"""Tile a stack of small 2-D maps into one image, so a view draws them with ONE ImageItem.

Tiles are separated by 1-px NaN gutters, which ImageItem renders transparent: the maps read as
separate squares without a second item per map. Drawn smaller than its pixels, though, the image
keeps some 1-px gutters and drops others (nearest-neighbour scaling), so a view that may shrink it
also draws ``gutter_lines`` over them with a pen of fixed screen width: one line item for all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Tiling", "grid_columns", "tile_maps", "normalise_each", "gutter_lines"]


@dataclass(frozen=True, slots=True)
class Tiling:
    """A tiled image and the geometry needed to map its pixels back to (map, x, y)."""

    image: np.ndarray  # (rows * (h + gutter) - gutter, columns * (w + gutter) - gutter) float32
    count: int  # number of maps
    height: int  # of one map
    width: int
    columns: int
    rows: int
    gutter: int = 1

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left pixel (x, y) of map ``index`` in the tiled image."""
        row, column = divmod(index, self.columns)
        return (column * (self.width + self.gutter), row * (self.height + self.gutter))

    def locate(self, x: float, y: float) -> tuple[int, int, int] | None:
        """``(index, x, y)`` of the map pixel under image coordinates (x, y); None on a gutter."""
        if not (np.isfinite(x) and np.isfinite(y)) or x < 0 or y < 0:
            return None
        column, inner_x = divmod(int(x), self.width + self.gutter)
        row, inner_y = divmod(int(y), self.height + self.gutter)
        if inner_x >= self.width or inner_y >= self.height or column >= self.columns:
            return None
        index = row * self.columns + column
        if index >= self.count:
            return None
        return (index, inner_x, inner_y)


def gutter_lines(tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of segments along the middle of every gutter between tiles, in image
    coordinates, in pairs (for ``PlotCurveItem(connect="pairs")``)."""
    height, width = tiling.image.shape
    if tiling.count == 0 or tiling.gutter <= 0:
        return np.zeros(0), np.zeros(0)
    half = tiling.gutter / 2.0
    xs: list[float] = []
    ys: list[float] = []
    for column in range(1, tiling.columns):
        x = column * (tiling.width + tiling.gutter) - half
        xs += [x, x]
        ys += [0.0, float(height)]
    for row in range(1, tiling.rows):
        y = row * (tiling.height + tiling.gutter) - half
        xs += [0.0, float(width)]
        ys += [y, y]
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def grid_columns(count: int, height: int, width: int) -> int:
    """Columns that make the whole grid roughly square on screen."""
    if count <= 0:
        return 1
    columns = math.ceil(math.sqrt(count * max(height, 1) / max(width, 1)))
    return int(min(max(columns, 1), count))


def tile_maps(maps: np.ndarray, columns: int | None = None, gutter: int = 1) -> Tiling:
    """Tile ``maps`` (n, h, w) row by row into one float32 image with NaN gutters.

    A 2-D input is treated as a single map. Unused cells of the last row are NaN too.
    """
    stack = np.asarray(maps, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected (n, h, w) maps, got shape {stack.shape}")
    count, height, width = stack.shape
    if count == 0 or height == 0 or width == 0:
        return Tiling(np.full((1, 1), np.nan, np.float32), 0, height, width, 1, 1, gutter)
    if columns is None:
        columns = grid_columns(count, height, width)
    columns = int(min(max(columns, 1), count))
    rows = math.ceil(count / columns)
    # Pad every map with its gutter on the right and bottom, then a reshape and one transpose
    # lay all cells out at once; the last gutter row/column is cut off.
    cells = np.full((rows * columns, height + gutter, width + gutter), np.nan, np.float32)
    cells[:count, :height, :width] = stack
    grid = cells.reshape(rows, columns, height + gutter, width + gutter).transpose(0, 2, 1, 3)
    image = grid.reshape(rows * (height + gutter), columns * (width + gutter))
    image = np.ascontiguousarray(image[: image.shape[0] - gutter, : image.shape[1] - gutter])
    return Tiling(image, count, height, width, columns, rows, gutter)


def normalise_each(maps: np.ndarray) -> np.ndarray:
    """Scale each (h, w) map of ``maps`` to [0, 1] by its own finite min and max.

    Flat maps become 0.5 and all-NaN maps stay NaN, so no map divides by zero.
    """
    stack = np.asarray(maps, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    flat = stack.reshape(len(stack), -1)
    finite = np.isfinite(flat)
    with np.errstate(invalid="ignore"):
        lo = np.where(finite, flat, np.inf).min(axis=1)
        hi = np.where(finite, flat, -np.inf).max(axis=1)
        span = hi - lo
        good = np.isfinite(span) & (span > 0)
        scaled = (flat - np.where(good, lo, 0.0)[:, None]) / np.where(good, span, 1.0)[:, None]
    flat_maps = ~good & np.isfinite(lo)
    scaled[flat_maps] = np.where(finite[flat_maps], 0.5, np.nan)
    scaled[~finite] = np.nan
    return scaled.reshape(stack.shape).astype(np.float32, copy=False)
