"""What every Glassbox view shares: a title, a hover readout and layer/unit selection signals."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from engine.snapshot import ViewData

__all__ = ["View", "StepMarker", "PLOT_BACKGROUND"]

#: Every plot's background (RGB); views that draw gaps or pre-blend colours over it take it from here.
PLOT_BACKGROUND = (21, 23, 28)

pg.setConfigOptions(antialias=False, imageAxisOrder="row-major", background=PLOT_BACKGROUND, foreground="#d6d9e0")


class View(QtWidgets.QWidget):
    """Base of every view: a thin QWidget around pyqtgraph items.

    Subclasses create their pyqtgraph items once in ``__init__`` and only update them in
    ``render`` (``setImage``/``setData``); they know nothing of torch.
    """

    #: Title of the dock that holds the view.
    title: str = "View"
    #: Emitted when the user picks a layer in this view (by name).
    layer_selected = QtCore.Signal(str)
    #: Emitted when the user picks a unit (layer name, unit index).
    unit_selected = QtCore.Signal(str, int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QtWidgets.QVBoxLayout(self)
        self._layout.setContentsMargins(2, 2, 2, 2)
        self._layout.setSpacing(2)
        self.readout = QtWidgets.QLabel(" ", self)
        self.readout.setObjectName("readout")
        self.readout.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        # A long readout must not make the dock wider (a QLabel's minimum width is its text's):
        # it is clipped at the right instead.
        self.readout.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.readout.setMinimumWidth(0)
        self.selected_layer: str | None = None
        self.selected_unit: int | None = None
        self._last: ViewData | None = None

    def finish_layout(self) -> None:
        """Put the readout line under the subclass's content."""
        self._layout.addWidget(self.readout)

    # --- content or a centred hint -------------------------------------------------------
    def add_content(self, content: QtWidgets.QWidget) -> None:
        """Lay out ``content`` with a centred hint label that replaces it while there is
        nothing to draw (see ``_show_hint``/``_show_content``)."""
        self._hint = QtWidgets.QLabel(self)
        self._hint.setObjectName("hint")
        self._hint.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self._hint.setWordWrap(True)
        self._content = content
        self._stack = QtWidgets.QStackedWidget(self)
        self._stack.addWidget(content)
        self._stack.addWidget(self._hint)
        self._layout.addWidget(self._stack, 1)

    @property
    def hint(self) -> str:
        """The centred hint shown instead of the content, or "" when the content is shown."""
        return self._hint.text() if self._stack.currentWidget() is self._hint else ""

    def _show_hint(self, text: str) -> None:
        if self._hint.text() != text:
            self._hint.setText(text)
        if self._stack.currentWidget() is not self._hint:
            self._stack.setCurrentWidget(self._hint)
            self.readout.setText(" ")

    def _show_content(self) -> None:
        if self._stack.currentWidget() is not self._content:
            self._stack.setCurrentWidget(self._content)

    # --- driven by the app -------------------------------------------------------------
    def render(self, data: ViewData) -> None:
        """Draw one frame. Subclasses override ``draw`` and keep this bookkeeping."""
        self._last = data
        self.draw(data)

    def draw(self, data: ViewData) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_selection(self, layer: str | None, unit: int | None = None) -> None:
        """Show a selection made anywhere in the app (does not emit)."""
        self.selected_layer = layer
        self.selected_unit = unit
        if self._last is not None:
            self.draw(self._last)

    # --- hover readout ---------------------------------------------------------------
    def hover_at(self, x: float, y: float) -> str:
        """Readout for the data coordinates (x, y) of the main plot; sets and returns it."""
        text = self.describe_point(x, y)
        self.readout.setText(text or " ")
        return text

    def describe_point(self, x: float, y: float) -> str:
        """Text for the value under (x, y); subclasses override."""
        return ""

    def readout_text(self) -> str:
        return self.readout.text().strip()

    def connect_hover(self, plot_item: pg.PlotItem) -> None:
        """Route mouse moves over ``plot_item`` to ``hover_at`` in its data coordinates."""
        view_box = plot_item.getViewBox()

        def moved(pos: QtCore.QPointF) -> None:
            if plot_item.sceneBoundingRect().contains(pos):
                point = view_box.mapSceneToView(pos)
                self.hover_at(point.x(), point.y())

        plot_item.scene().sigMouseMoved.connect(moved)


class StepMarker:
    """A dotted vertical line at the step on screen, in plots that span the whole run, while an
    earlier step is viewed (the timeline scrubbed back); hidden while the views follow training."""

    def __init__(self, *plots: pg.PlotItem) -> None:
        pen = pg.mkPen(255, 255, 255, 150, width=1, style=QtCore.Qt.PenStyle.DotLine)
        self.lines = []
        for plot in plots:
            line = pg.InfiniteLine(angle=90, movable=False, pen=pen)
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
            self.lines.append(line)
        self.step: int | None = None

    def show(self, step: int | None) -> None:
        if step == self.step:
            return
        self.step = step
        for line in self.lines:
            line.setVisible(step is not None)
            if step is not None:
                line.setPos(step)
