"""Text that fits the room a view has: short layer names, titles, and axes whose labels never collide.

Docks are often narrow (a 1280×800 window gives a view about 300 px), and a view must still read
there. Everything here measures text with the font it is drawn in and adapts when the room
changes (a resize), never per frame:

- ``unique_suffixes`` shortens dotted module names to the shortest tail that still tells them
  apart (``layers.0.linear`` → ``0.linear``, ``blocks.1.ff.0`` → ``1.ff.0``).
- ``CategoryAxis`` labels rows or columns by name: the preferred labels when they fit, shorter
  ones when not, elided ones after that, and every k-th label when even those would collide.
- ``FittedAxis`` is a numeric axis whose labelled ticks are spaced so their text never overlaps
  (pyqtgraph always labels its major level, crowded or not); in log mode it labels decades.
- ``FittedTitle`` keeps a plot's title from widening the plot (pyqtgraph pins a title's minimum
  width to its text), choosing the longest of several variants that fits.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

__all__ = [
    "unique_suffixes",
    "short_names",
    "elide",
    "tick_font",
    "fit_axis_to_labels",
    "thin_to_fit",
    "CategoryAxis",
    "FittedAxis",
    "FittedTitle",
]

_GAP = 8  # px between neighbouring numeric labels
_NAME_GAP = 3  # px between neighbouring names (most of a space: names are read one by one)
_TAGS = re.compile(r"<[^>]*>")
_ENTITIES = {"&nbsp;": " ", "&amp;": "&", "&lt;": "<", "&gt;": ">"}


def unique_suffixes(names: Sequence[str]) -> tuple[str, ...]:
    """Each dotted name cut to its shortest tail of whole parts that no other name ends with.

    ``("input", "layers.0.linear", "layers.1.linear", "head")`` →
    ``("input", "0.linear", "1.linear", "head")``. A name that is itself the tail of another
    (``attn`` and ``blocks.0.attn``) keeps the other one's longer tail, so labels stay distinct.
    """
    parts = [str(name).split(".") for name in names]
    out = []
    for i, own in enumerate(parts):
        chosen = ".".join(own)
        for k in range(1, len(own) + 1):
            tail = own[-k:]
            if all(part.isdigit() for part in tail) and k < len(own):
                continue  # "0" alone says nothing: keep the part it indexes ("ff.0")
            if not any(j != i and other[-k:] == tail for j, other in enumerate(parts)):
                chosen = ".".join(tail)
                break
        out.append(chosen)
    return tuple(out)


def short_names(names: Sequence[str], limit: int = 12) -> tuple[str, ...]:
    """Tick labels for module names: the last two dotted parts, or the unique tail when those
    repeat (``blocks.0.ff.0`` and ``blocks.1.ff.0`` → ``0.ff.0``, ``1.ff.0``); cut in the middle
    to ``limit`` characters."""
    names = [str(name) for name in names]
    tails = [".".join(name.split(".")[-2:]) for name in names]
    unique = unique_suffixes(names)
    out = []
    for name, tail, own in zip(names, tails, unique):
        text = tail if tails.count(tail) == 1 and len(own) <= len(tail) else own
        parts = text.split(".")
        if len(text) > limit and len(parts) > 2 and len(parts[0]) + len(parts[-1]) + 1 <= limit:
            text = f"{parts[0]}…{parts[-1]}"  # whole parts read better than cut ones
        elif len(text) > limit:
            head = (limit - 1) // 3
            text = text[:head] + "…" + text[-(limit - 1 - head):]
        out.append(text)
    return tuple(out)


def elide(text: str, width: float, font: QtGui.QFont,
          mode: QtCore.Qt.TextElideMode = QtCore.Qt.TextElideMode.ElideMiddle) -> str:
    """``text`` shortened with "…" to at most ``width`` pixels in ``font`` (unchanged if it fits)."""
    metrics = QtGui.QFontMetrics(font)
    if metrics.horizontalAdvance(text) <= width:
        return text
    return metrics.elidedText(text, mode, max(int(width), 0))


def tick_font(axis: pg.AxisItem) -> QtGui.QFont:
    """The font an axis draws its tick labels in."""
    return axis.style["tickFont"] or QtWidgets.QApplication.font()


def fit_axis_to_labels(axis: pg.AxisItem, labels: list[str]) -> None:
    """Fix a vertical axis's width to its longest label: pyqtgraph grows it only after a paint,
    dropping the labels that do not fit on the first one."""
    metrics = QtGui.QFontMetrics(tick_font(axis))
    widest = max((metrics.horizontalAdvance(text) for text in labels), default=0)
    axis.setWidth(min(180, widest + 14))


def thin_to_fit(centres: Sequence[float], extents: Sequence[float], length: float | None = None,
                gap: float = _GAP) -> list[int]:
    """Indices of a subset of labels, every k-th for the smallest k, that do not overlap.

    ``centres`` are pixel positions along the axis (increasing), ``extents`` the labels' sizes
    along it. With ``length`` given, the labels kept must also lie within [0, length].
    """
    n = len(centres)
    for stride in range(1, max(n, 1) + 1):
        kept = list(range(0, n, stride))
        if _fits([centres[i] for i in kept], [extents[i] for i in kept], length, gap):
            return kept
    return [0] if n else []


def _fits(centres: Sequence[float], extents: Sequence[float], length: float | None, gap: float) -> bool:
    for a in range(len(centres) - 1):
        if centres[a + 1] - centres[a] < (extents[a] + extents[a + 1]) / 2.0 + gap:
            return False
    if length is not None and centres:
        if centres[0] - extents[0] / 2.0 < 0 or centres[-1] + extents[-1] / 2.0 > length:
            return False
    return True


class CategoryAxis(pg.AxisItem):
    """An axis of named positions (layers): every label that fits, as long as fits.

    ``set_categories(positions, labels, names)`` gives the preferred ``labels`` and the full
    ``names`` they stand for. On a resize or a range change the axis picks, in order: the
    preferred labels; the names' unique tails (``unique_suffixes``); those elided to the room
    between neighbours; and, while labels would still collide, only every k-th of them. A
    vertical axis elides its labels to ``max_label_width`` and sizes itself to the widest.
    The ticks drawn are the axis's ``setTicks`` levels, so ``_tickLevels`` reads what is shown.
    """

    def __init__(self, orientation: str, max_label_width: int = 110, **kwargs) -> None:
        # Set before AxisItem.__init__, which already resizes and sets a range.
        self.max_label_width = max_label_width
        self._positions: tuple[float, ...] = ()
        self._labels: tuple[str, ...] = ()
        self._names: tuple[str, ...] = ()
        self._fitted_for: tuple | None = None
        self._width_set: int | None = None
        self._period: int | None = None
        super().__init__(orientation, **kwargs)

    @property
    def horizontal(self) -> bool:
        return self.orientation in ("top", "bottom")

    def set_categories(self, positions: Sequence[float], labels: Sequence[str],
                       names: Sequence[str] | None = None, period: int | None = None) -> None:
        """Label ``positions`` with ``labels`` (``names``: the full names, for shorter fallbacks).

        ``period``: the labels repeat in groups of this many (one group per map of a grid);
        thinning then keeps the same labels in every group.
        """
        self._period = period if period and period > 0 else None
        self._positions = tuple(float(p) for p in positions)
        self._labels = tuple(str(text) for text in labels)
        self._names = tuple(str(n) for n in names) if names is not None else self._labels
        self._fitted_for = None
        self.refit()

    def shown_labels(self) -> list[str]:
        """The labels drawn now, in order."""
        levels = self._tickLevels or [[]]
        return [text for _, text in levels[0]]

    def resizeEvent(self, ev=None) -> None:  # noqa: N802 - Qt name
        super().resizeEvent(ev)
        self.refit()

    def setRange(self, mn: float, mx: float) -> None:  # noqa: N802 - pyqtgraph name
        super().setRange(mn, mx)
        self.refit()

    def refit(self) -> None:
        """Choose the labels for the room the axis has now (cheap when nothing changed)."""
        length = self.size().width() if self.horizontal else self.size().height()
        low, high = sorted(float(v) for v in self.range)
        key = (round(length), round(low, 6), round(high, 6), self._positions, self._labels, self.max_label_width)
        if key == self._fitted_for:
            return
        self._fitted_for = key
        ticks = self._fit(length, low, high) if self._positions else []
        if self._tickLevels != [ticks]:
            self.setTicks([ticks])

    def _fit(self, length: float, low: float, high: float) -> list[tuple[float, str]]:
        font = tick_font(self)
        metrics = QtGui.QFontMetrics(font)
        positions = self._positions
        # A vertical axis is only ever as wide as max_label_width.
        preferred = self._labels
        short = unique_suffixes(self._names) if len(self._names) == len(positions) else preferred
        if not self.horizontal:
            limit = self.max_label_width
            widest = max(metrics.horizontalAdvance(text) for text in preferred)
            labels = preferred if widest <= limit else tuple(
                short_text if metrics.horizontalAdvance(short_text) < metrics.horizontalAdvance(own) else own
                for own, short_text in zip(preferred, short))
            labels = tuple(elide(text, limit, font) for text in labels)
            self._set_width(max(metrics.horizontalAdvance(text) for text in labels))
        if length <= 1 or high <= low:
            # Not laid out yet: no room is known, so show everything.
            return list(zip(positions, labels if not self.horizontal else preferred))
        scale = length / (high - low)
        # In position order, so thinning keeps the first category's label. (Fitting is the same
        # whichever way the view runs: the constraints are symmetric.)
        centres = [(p - low) * scale for p in positions]
        order = sorted(range(len(positions)), key=lambda i: positions[i])
        if not self.horizontal:
            extent = metrics.height() * 0.8  # pyqtgraph packs rows at 80 % of the line height
            ordered = [centres[i] for i in order]
            for stride in range(1, len(order) + 1):
                kept = self._every(stride, len(order))
                if _fits([ordered[i] for i in kept], [extent] * len(kept), None, 1.0):
                    return [(positions[order[i]], labels[order[i]]) for i in kept]
            return [(positions[order[0]], labels[order[0]])]
        ordered = [centres[i] for i in order]
        spacing = min((b - a for a, b in zip(ordered, ordered[1:])), default=length)
        minimum = metrics.horizontalAdvance("abcd…")
        for stride in range(1, len(order) + 1):
            room = stride * spacing - _NAME_GAP
            candidates = [preferred, short]
            if room >= minimum:
                # Cut at the end: a unique tail differs from the others at its start.
                candidates.append(tuple(elide(text, room, font, QtCore.Qt.TextElideMode.ElideRight) for text in short))
            for labels in candidates:
                widths = {i: metrics.horizontalAdvance(labels[order[i]]) for i in range(len(order))}
                # pyqtgraph drops a label that crosses the axis's ends: leave those out up front.
                kept = [i for i in self._every(stride, len(order))
                        if widths[i] / 2.0 <= ordered[i] and ordered[i] + widths[i] / 2.0 <= length]
                texts = [labels[order[i]] for i in kept]
                if len(set(texts)) < len(set(self._labels[order[i]] for i in kept)):
                    continue  # cut so short that two labels read the same: thin out instead
                if kept and _fits([ordered[i] for i in kept], [widths[i] for i in kept], None, _NAME_GAP):
                    return [(positions[order[i]], labels[order[i]]) for i in sorted(kept)]
        return []

    def _every(self, stride: int, count: int) -> list[int]:
        """Every ``stride``-th index, restarting in each group of ``period`` labels."""
        if self._period is None:
            return list(range(0, count, stride))
        return [i for i in range(count) if (i % self._period) % stride == 0]

    def _set_width(self, widest: int) -> None:
        width = min(self.max_label_width, widest) + 14
        if self.label.isVisible():  # the axis name ("query") sits beside the labels
            width += int(self.label.boundingRect().height() * 0.8)
        if width != self._width_set:
            self._width_set = width
            self.setWidth(width)


def _nice_at_least(value: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is ≥ ``value``."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        candidate = mantissa * 10.0 ** exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exponent + 1)


#: An axis title cut to fewer characters than this is shown whole instead.
_LABEL_MIN_CHARS = 4


class FittedAxis(pg.AxisItem):
    """A numeric axis whose labels never overlap, however small the plot.

    Only one level of ticks is labelled; its spacing (1, 2 or 5 × 10^k) is the smallest whose
    labels keep ``_GAP`` px apart (and at least ``min_spacing`` px). A minor level of unlabelled
    ticks sits between. In log mode the labels are whole decades, every k-th when crowded, or
    1-2-5 steps when less than two decades are shown. With ``cells=True`` the axis counts the
    cells of an image (cell i spans [i, i + 1]): whole-number labels sit at the cell centres.
    """

    def __init__(self, orientation: str, min_spacing: float = 0.0, cells: bool = False, **kwargs) -> None:
        self.min_spacing = min_spacing
        self.cells = cells
        super().__init__(orientation, **kwargs)
        self.setStyle(maxTextLevel=0)

    # --- the axis title: cut to the axis's length ----------------------------------------------
    def _updateLabel(self) -> None:  # noqa: N802 - pyqtgraph name
        super()._updateLabel()
        self._fit_label()

    def resizeEvent(self, ev=None) -> None:  # noqa: N802 - pyqtgraph name
        self._fit_label()
        super().resizeEvent(ev)  # (which centres the label as it now is)

    def label_room(self) -> float:
        """Pixels the axis title may take: the axis's length, less a margin."""
        length = self.size().width() if self.orientation in ("top", "bottom") else self.size().height()
        return length - 8.0

    def _fit_label(self) -> None:
        """An axis title longer than its axis ("input channel × kernel position" under a narrow
        heatmap) ends in "…" where it would run past the axis into its neighbour; its tooltip
        holds the whole of it. One that would keep fewer than ``_LABEL_MIN_CHARS`` characters is
        left whole."""
        label = getattr(self, "label", None)
        if label is None or not self.labelText:
            return
        full = self.labelString()
        label.setHtml(full)
        room = self.label_room()
        if room <= 0 or label.boundingRect().width() <= room:
            label.setToolTip("")
            return
        text, low, high = self.labelText, 0, len(self.labelText)  # the longest cut that fits
        while low < high:
            middle = (low + high + 1) // 2
            label.setHtml(full.replace(text, text[:middle].rstrip() + "…", 1))
            if label.boundingRect().width() <= room:
                low = middle
            else:
                high = middle - 1
        if len(text[:low].rstrip()) < _LABEL_MIN_CHARS:  # ("…" alone says nothing: whole, as it was)
            label.setHtml(full)
            label.setToolTip("")
            return
        label.setHtml(full.replace(text, text[:low].rstrip() + "…", 1))
        label.setToolTip(text)

    def _extent(self, strings: Sequence[str]) -> float:
        metrics = QtGui.QFontMetrics(tick_font(self))
        if self.orientation in ("left", "right"):
            return metrics.height() * 0.8
        return float(max((metrics.horizontalAdvance(s) for s in strings), default=0))

    def tickSpacing(self, minVal: float, maxVal: float, size: float):  # noqa: N802 - pyqtgraph name
        if self._tickSpacing is not None:
            return self._tickSpacing
        span = abs(maxVal - minVal)
        if span == 0 or size <= 0 or not math.isfinite(span):
            return super().tickSpacing(minVal, maxVal, size)
        per_pixel = span / size
        # Labelled ticks at least this far apart (px) even when their text is short: a scale
        # reads better with a few round numbers than with many.
        floor = max(self.min_spacing, 28.0 if self.orientation in ("left", "right") else 50.0)
        major = _nice_at_least(floor * per_pixel)
        for _ in range(16):
            if self.cells:
                major = max(1.0, major)
            values = [math.ceil(minVal / major) * major, math.floor(maxVal / major) * major]
            extent = self._extent(self.tickStrings(values, 1.0, major))
            if major / per_pixel >= extent + _GAP:
                break
            major = _nice_at_least(major * 1.01)  # the next of 1, 2, 5 × 10^k
        mantissa = round(major / 10.0 ** math.floor(math.log10(major)))
        minor = major / (4.0 if mantissa == 2 else 5.0)
        if self.cells:
            minor = float(max(1, round(minor)))
            return [(major, 0.5), (minor, 0.5)] if minor < major else [(major, 0.5)]
        return [(major, 0.0), (minor, 0.0)]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph name
        if self.cells and not self.logMode:
            return [str(int(math.floor(v * scale))) for v in values]
        return super().tickStrings(values, scale, spacing)

    def logTickValues(self, minVal, maxVal, size, stdTicks):  # noqa: N802 - pyqtgraph name
        low, high = sorted((minVal, maxVal))
        if size <= 0 or not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            return super().logTickValues(minVal, maxVal, size, stdTicks)
        per_decade = size / (high - low)
        first, last = math.ceil(low), math.floor(high)
        if last > first:
            sample = self.logTickStrings([float(first), float(last)], 1.0, 1.0)
            need = self._extent(sample) + _GAP
            stride = max(1, math.ceil(need / per_decade))
            majors = [float(d) for d in range(first, last + 1) if d % stride == 0]
            minor: list[float] = []
            if stride == 1 and per_decade >= 40:
                for d in range(math.floor(low), math.ceil(high)):
                    minor.extend(v for v in d + np.log10(np.arange(2, 10)) if low < v < high)
            elif stride > 1:
                minor = [float(d) for d in range(first, last + 1) if d % stride]
            return [(float(stride), majors), (None, minor)]
        candidates = sorted(
            d + math.log10(m) for d in range(math.floor(low) - 1, math.ceil(high) + 1) for m in (1, 2, 5)
            if low <= d + math.log10(m) <= high
        )
        if not candidates:
            return super().logTickValues(minVal, maxVal, size, stdTicks)
        extents = [self._extent([text]) for text in self.logTickStrings(candidates, 1.0, 1.0)]
        centres = [(v - low) * per_decade for v in candidates]
        kept = thin_to_fit(centres, extents, None, _GAP)
        return [(None, [candidates[i] for i in kept])]


def _plain(text: str) -> str:
    plain = _TAGS.sub("", text)
    for entity, char in _ENTITIES.items():
        plain = plain.replace(entity, char)
    return plain


class _ShrinkableLabel(pg.LabelItem):
    """A LabelItem that does not insist on its text's width (the title is fitted instead)."""

    def updateMin(self) -> None:  # noqa: N802 - pyqtgraph name
        super().updateMin()
        self.setMinimumWidth(0)
        height = self._sizeHint[QtCore.Qt.SizeHint.MinimumSize][1]
        self._sizeHint[QtCore.Qt.SizeHint.MinimumSize] = (0, height)
        self._sizeHint[QtCore.Qt.SizeHint.PreferredSize] = (0, height)
        self.updateGeometry()


class FittedTitle:
    """A plot title that never widens its plot: the longest of its variants that fits.

    ``set("long title", "shorter", "short")``: variants may be HTML (measured without tags).
    When none fits, the last is elided if it is plain text, or shown as it is.
    """

    def __init__(self, plot: pg.PlotItem, size: str = "9pt", height: int = 22) -> None:
        self.plot = plot
        self.size = size
        self.height = height
        old = plot.titleLabel
        label = _ShrinkableLabel(" ", parent=plot, size=size)
        plot.layout.removeItem(old)
        old.setParentItem(None)
        if old.scene() is not None:
            old.scene().removeItem(old)
        plot.titleLabel = label
        plot.layout.addItem(label, 0, 1)
        self._font = QtGui.QFont(QtWidgets.QApplication.font())
        points = float(size[:-2]) if size.endswith("pt") else self._font.pointSizeF()
        self._font.setPointSizeF(points)
        self._variants: tuple[str, ...] = ()
        self._shown: str | None = None
        self._width = -1
        # The title is centred over the view box (the axes have their own columns).
        plot.getViewBox().sigResized.connect(self._refit)

    @property
    def text(self) -> str:
        """The title shown now."""
        return self._shown or ""

    @property
    def full_text(self) -> str:
        """The longest variant (what the title says when there is room)."""
        return self._variants[0] if self._variants else ""

    def set(self, *variants: str) -> None:
        if variants == self._variants:
            return
        self._variants = variants
        self._width = -1
        self._refit()

    def _refit(self) -> None:
        if not self._variants:
            return
        width = int(self.plot.getViewBox().width()) - 8
        if width == self._width:
            return
        self._width = width
        metrics = QtGui.QFontMetrics(self._font)
        if width <= 0 and not self.plot.getViewBox().isVisible():
            chosen = self._variants[0]  # not laid out yet
        else:
            width = max(width, 1)
            chosen = None
            for variant in self._variants:
                if metrics.horizontalAdvance(_plain(variant)) <= width:
                    chosen = variant
                    break
            if chosen is None:
                last = self._variants[-1]
                chosen = last if _plain(last) != last else elide(last, width, self._font,
                                                                  QtCore.Qt.TextElideMode.ElideRight)
        if chosen != self._shown:
            self._shown = chosen
            self.plot.setTitle(chosen, size=self.size)
            # pyqtgraph reserves 30 px for any title; one line of 9 pt text needs less.
            self.plot.titleLabel.setMaximumHeight(self.height)
            self.plot.layout.setRowFixedHeight(0, self.height)
