"""Where a phase-by-phase training step stands, and the tensors of that very moment."""
from __future__ import annotations

import html
from typing import Mapping

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from engine.snapshot import PhaseInfo, ViewData
from widgets import colormaps
from widgets.base import View
from widgets.label_fit import FittedAxis, unique_suffixes

__all__ = ["StepInspector", "DIRECTION_TEXT", "DIRECTION_COLOURS", "DIRECTION_ARROWS", "elide_head",
           "phase_row_text", "phase_explanation", "tensor_title", "tensor_shape_text", "next_phase_text",
           "OPTIMIZER_NAMES", "OPTIMIZER_RULES"]

#: What the big badge says for each kind of phase; arrows show which way data flows.
DIRECTION_TEXT: dict[str, str] = {
    "forward": "FORWARD \u2192",
    "backward": "\u2190 BACKWARD",
    "loss": "LOSS",
    "update": "UPDATE",
}
#: One colour per direction, shared by the badge and the highlighted phase in the list.
DIRECTION_COLOURS: dict[str, str] = {
    "forward": "#3fa66a",
    "backward": "#e0663a",
    "loss": "#d8b13a",
    "update": "#5b8fd9",
}
#: How the phase list marks a phase's direction (its words are in the badge and the tooltip).
DIRECTION_ARROWS: dict[str, str] = {"forward": "\u2192", "backward": "\u2190"}
_HINT = "Press Shift+\u2192 to step through one training step phase by phase"
#: What an empty tensor area says, by the phase's kind.
_NO_TENSORS = {
    "": "no tensors captured in this phase",
    "update": "no layer's change to show: the model has no trainable parameter",
}
#: Room (px) a list row's text leaves for the item's margins.
_ROW_MARGIN = 12
_MAX_PANELS = 4
#: The most of the width the phase list takes from the tensors (a narrow dock gave it over half).
LIST_SHARE = 0.4
#: The least room (px) a tensor panel gets: its caption's lines and a plot you can read.
MIN_PANEL = (100, 100)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


#: Each optimizer's name as a reader knows it.
OPTIMIZER_NAMES: dict[str, str] = {"sgd": "SGD", "momentum": "SGD with momentum", "adam": "Adam", "adamw": "AdamW",
                                   "rmsprop": "RMSprop"}
#: How each optimizer turns a gradient g into a change, in a line a student can check against Δw.
OPTIMIZER_RULES: dict[str, str] = {
    "sgd": "w \u2190 w \u2212 lr\u00b7g",
    "momentum": "w \u2190 w \u2212 lr\u00b7v, v a running sum of the gradients",
    "adam": "each weight steps about lr against its gradient g, scaled by running averages of g and g\u00b2",
    "adamw": "Adam's step, with weight decay taken from w directly",
    "rmsprop": "w \u2190 w \u2212 lr\u00b7g / \u221a(running mean of g\u00b2)",
}


def _is_example_key(key: str) -> bool:
    """Whether a phase tensor is one example's slice (the rest are the whole batch's)."""
    return key in ("input", "output") or key.startswith("grad_output")


#: The names of a module's outputs after its first, by type and place: an LSTM returns
#: (output, (h, c)), a GRU or RNN (output, h), MultiheadAttention (output, weights).
_OTHER_OUTPUTS = {
    ("LSTM", "[1][0]"): "h", ("LSTM", "[1][1]"): "c", ("GRU", "[1]"): "h", ("RNN", "[1]"): "h",
    ("MultiheadAttention", "[1]"): "attention weights",
}


def _tensor_label(key: str, module_type: str | None = None) -> str:
    """What a phase tensor is: ``dL/d(output)`` for ``grad_output``, ``dL/d(weight)`` for
    ``grad:weight``; another output of a known module by its name (an LSTM's ``dL/d(h)``)."""
    if key.startswith("grad_output"):
        place = key[len("grad_output"):]
        return f"dL/d({_OTHER_OUTPUTS.get((module_type or '', place), 'output' + place)})"
    if key.startswith("grad:"):
        return f"dL/d({key[5:]})"
    return key


def _tensor_scope(key: str, phase: PhaseInfo) -> str:
    """Whose a phase tensor is: one example's, the whole batch's, before or after the update."""
    if _is_example_key(key):
        return f"example {phase.example}" if phase.example is not None else "one example"
    if key.startswith("grad:") or key == "loss":
        return "whole batch"
    if key.startswith("\u0394"):
        return "this update"
    if phase.kind == "backward":
        return "before the update"
    if phase.kind == "update":
        return "after the update"
    return ""


def tensor_title(key: str, phase: PhaseInfo) -> str:
    """A tensor's caption title: what it is (``dL/d(output)``, ``\u0394weight``) and whose it is
    (one example's, the whole batch's, before or after the update)."""
    scope = _tensor_scope(key, phase)
    label = _tensor_label(key, phase.module_type)
    return f"{label} \u00b7 {scope}" if scope else label


def tensor_shape_text(key: str, drawn: tuple[int, ...], phase: PhaseInfo) -> str:
    """What the drawn matrix's rows and columns are: ``8 features``, ``8 \u00d7 64 (tokens \u00d7
    features)``, ``(8, 1, 3, 3) as 8 \u00d7 9 (filters \u00d7 input channels\u00b7kernel pixels)``; the
    numbers first, so that a narrow caption cut at its end keeps them."""
    if len(drawn) > 2:
        return str(tuple(drawn))
    rows, columns = (1, drawn[0]) if len(drawn) == 1 else (drawn[0], drawn[1]) if len(drawn) == 2 else (0, 0)
    real = phase.shapes.get(key)
    prefix = f"{tuple(real)} as " if real else ""
    names = phase.axes.get(key)
    if names is None:
        return prefix + (f"{columns} values" if rows == 1 else f"{rows} \u00d7 {columns}")
    row_name, column_name = names
    if rows == 1 and not row_name:
        return prefix + f"{columns} {column_name}"
    return prefix + f"{rows} \u00d7 {columns} ({row_name or 'rows'} \u00d7 {column_name})"


def _phase_label(name: str) -> str:
    kind, _, module = name.partition(" ")
    if kind == "loss":
        return "the loss"
    if kind == "update":
        return "the update"
    arrow = DIRECTION_ARROWS.get(kind, "")
    return f"{arrow} {module}".strip()


def next_phase_text(phase: PhaseInfo) -> str:
    """What the next phase is (``"Next: \u2190 head"``), or what follows the last one."""
    following = int(phase.index) + 1
    if following < len(phase.names):
        return f"Next: {_phase_label(phase.names[following])}."
    return "Step done; Shift+\u2192 starts the next."


def _module_words(phase: PhaseInfo) -> str:
    module = phase.module or "this module"
    return f"{module} ({phase.module_type})" if phase.module_type else module


def _previous_backward(phase: PhaseInfo) -> str:
    """Where a backward phase's gradient comes from: the phase before it (the loss, or the module
    autograd reached just before)."""
    index = int(phase.index) - 1
    if 0 <= index < len(phase.names):
        kind, _, module = phase.names[index].partition(" ")
        if kind == "backward" and module:
            return module
    return "the loss"


def phase_explanation(phase: PhaseInfo) -> str:
    """A few short sentences on the phase for a student: which way data flows, through what, for
    which example, whose the panels are, and what comes next."""
    batch = f"{phase.batch_size} examples" if phase.batch_size else "the batch"
    example = f"example {phase.example}" if phase.example is not None else "one example"
    owns = any(key.startswith("grad:") for key in phase.tensors)
    if phase.kind == "forward":
        text = f"All {batch} go through {_module_words(phase)} at once; shown: {example}."
        if phase.input_is_sum:
            text += (" Its input is a sum the model's code makes between modules, as a residual "
                     "connection does: x + sub-layer(x).")
    elif phase.kind == "loss":
        loss = phase.tensors.get("loss")
        value = f" ({_fmt(float(np.asarray(loss).reshape(-1)[0]))})" if loss is not None and np.size(loss) else ""
        text = (f"One number{value} for the whole batch of {batch}: how far the outputs are from the "
                f"targets, usually averaged over the examples. Backward starts here.")
    elif phase.kind == "backward":
        text = (f"dL/d(output) of {example} comes back from {_previous_backward(phase)}. "
                f"{_module_words(phase)} passes dL/d(input) on")
        text += f" and gets dL/dw for its parameters from all {batch}." if owns else \
            "; it has no parameters, nothing to learn."
    elif phase.kind == "update":
        text = _update_explanation(phase)
    else:
        text = ""
    return f"{text} {next_phase_text(phase)}".strip()


def _update_explanation(phase: PhaseInfo) -> str:
    rate = f" (lr {phase.lr:g})" if phase.lr is not None else ""
    optimizer = phase.optimizer or "the optimizer"
    rule = OPTIMIZER_RULES.get(optimizer, "")
    parts = [f"{OPTIMIZER_NAMES.get(optimizer, optimizer)}{rate}: " + (f"{rule}." if rule else
                                                                       "every weight moves against its gradient.")]
    if phase.clip_norm is not None and phase.grad_norm is not None:
        clipped = phase.grad_norm > phase.clip_norm
        parts.append(f"Gradient norm {_fmt(phase.grad_norm)} "
                     + (f"> {phase.clip_norm:g}: clipped to {phase.clip_norm:g} first."
                        if clipped else f"\u2264 clip {phase.clip_norm:g}: not clipped."))
    change = next((c for c in phase.changes if c[0] == phase.module), None)
    if change is not None:
        name, moved, size = change
        relative = f", {_fmt(100.0 * moved / size)} % of \u2016w\u2016" if size > 0 else ""
        parts.append(f"{name} moved \u2016\u0394w\u2016 = {_fmt(moved)}{relative}.")
    return " ".join(parts)


#: Order of a phase's panels: one example's tensors (input before output), then the changes and the
#: gradients of parameters, then the parameters' values (also in the Weights view).
def _panel_rank(key: str) -> int:
    if key == "input":
        return 0
    if key == "output" or key == "loss":
        return 1
    if key.startswith("grad_output"):
        return 2
    if key.startswith("\u0394"):
        return 3
    if key.startswith("grad:"):
        return 4
    return 5


def elide_head(text: str, width: float, metrics: QtGui.QFontMetrics, keep: str | None = None) -> str:
    """``text`` cut from the left to fit ``width`` px, keeping its distinctive tail ``keep``.

    Whole dotted parts go first (``layers.1.linear`` → ``…1.linear``), never into ``keep`` (by
    default the last part, or the last two when that is a bare index: ``ff.0``). When even
    ``keep`` is too wide, it is cut in its middle, so its start (often an index) and end stay.
    """
    if metrics.horizontalAdvance(text) <= width:
        return text
    parts = text.split(".")
    if keep is None or not text.endswith(keep):
        keep = ".".join(parts[-2:]) if len(parts) > 1 and parts[-1].isdigit() else parts[-1]
    for k in range(1, len(parts)):
        tail = ".".join(parts[k:])
        if len(tail) < len(keep):
            break
        candidate = "\u2026" + tail
        if metrics.horizontalAdvance(candidate) <= width:
            return candidate
    return metrics.elidedText(keep, QtCore.Qt.TextElideMode.ElideMiddle, max(int(width), 0))


def _split_phase(name: str) -> tuple[str, str]:
    """``("→ ", "layers.0.linear")`` for ``"forward layers.0.linear"``; ``("", name)`` for a phase
    without a direction (``"loss"``, ``"update"``)."""
    kind, _, module = name.partition(" ")
    arrow = DIRECTION_ARROWS.get(kind)
    return (f"{arrow} ", module) if arrow and module else ("", name)


def phase_row_text(row: int, name: str, width: float, metrics: QtGui.QFontMetrics, keep: str | None = None) -> str:
    """A phase list row: its number, an arrow for its direction and its module, the module cut
    from the left when the row is wider than ``width`` px (``12  ← …1.linear``), down to
    ``keep`` at the least (see ``elide_head``)."""
    arrow, body = _split_phase(name)
    prefix = f"{row + 1:>3}  {arrow}"
    return prefix + elide_head(body, width - metrics.horizontalAdvance(prefix), metrics, keep)


def _display_array(array: np.ndarray) -> tuple[np.ndarray, str]:
    """Reduce a tensor to at most 2-D for drawing; returns it and a note on what was kept.

    Leading axes of length 1 (a batch of one example) are dropped first, so a (1, 32) output is
    drawn as 32 bars rather than a one-row image, and a (1, 1) loss as a number.
    """
    note = ""
    while array.ndim > 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim > 2:
        # The leading indices are batch/channel: show the first slice, say so in the caption.
        leading = array.ndim - 2
        array = array[(0,) * leading]
        note = ", showing [" + ", ".join(["0"] * leading) + "]"
    if array.ndim == 0:
        array = array.reshape(1)
    return array, note


class _TensorPanel(QtWidgets.QWidget):
    """One tensor: a caption, and a heatmap (2-D) or bars (1-D) created once and reused."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        self.caption = QtWidgets.QLabel(" ", self)
        self.caption.setObjectName("tensorCaption")
        # Its lines are cut to the panel's width (``_fit_caption``): they never widen it or wrap.
        self.caption.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.value_label = QtWidgets.QLabel(" ", self)
        self.value_label.setObjectName("tensorValue")
        self.value_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        value_font = self.value_label.font()
        value_font.setPointSizeF(value_font.pointSizeF() * 2.0)
        value_font.setBold(True)
        self.value_label.setFont(value_font)
        self.value_label.setVisible(False)
        # Cell axes: whole indices at the centres of rows, columns and bars.
        self.plot = pg.PlotWidget(self, axisItems={"left": FittedAxis("left", cells=True),
                                                   "bottom": FittedAxis("bottom", cells=True)})
        self.plot.setMinimumSize(80, 60)
        item = self.plot.getPlotItem()
        item.setMenuEnabled(False)
        item.hideButtons()
        item.showGrid(x=False, y=False)
        item.getAxis("bottom").setStyle(tickLength=-3)
        item.getAxis("left").setStyle(tickLength=-3)
        self.image = pg.ImageItem()
        self.image.setLookupTable(colormaps.DIVERGING_LUT)
        self.bars = pg.PlotCurveItem(x=np.zeros(1), y=np.zeros(0), stepMode="center", fillLevel=0.0,
                                     pen=pg.mkPen("#8fb8e8", width=1), brush=pg.mkBrush(143, 184, 232, 120))
        item.addItem(self.image)
        item.addItem(self.bars)
        layout.addWidget(self.caption)
        layout.addWidget(self.value_label, 1)
        layout.addWidget(self.plot, 1)
        self.name: str | None = None
        self.array: np.ndarray | None = None  # what is drawn, at most 2-D
        self._caption_parts = (" ", "", "", "", "")
        self._mode: str = ""

    def show_tensor(self, name: str, tensor: np.ndarray, phase: PhaseInfo | None = None) -> None:
        """Draw ``tensor``; with its ``phase``, the caption says what it is, whose, and what its rows
        and columns are (else its name and shape)."""
        raw = np.asarray(tensor)
        array, note = _display_array(raw)
        array = array.astype(np.float32, copy=False)
        finite = array[np.isfinite(array)]
        shape = tuple(int(n) for n in raw.shape)
        if phase is not None:
            # One example's vector is drawn as one row: its shape is the row's, not (1, n).
            drawn = tuple(int(n) for n in array.shape) if not note else shape
            label, scope, shape_text = _tensor_label(name, phase.module_type), _tensor_scope(name, phase), \
                tensor_shape_text(name, drawn, phase)
        else:
            label, scope, shape_text = name, "", str(shape)
        if finite.size:
            low, mean, high = _fmt(finite.min()), _fmt(finite.mean()), _fmt(finite.max())
            stats = f"min {low}  mean {mean}  max {high}"
            short = f"{low} … {high}"
        else:
            stats = short = "no finite values"
        self._set_caption(label, scope, shape_text + note, stats, short)
        self.name = name
        self.array = array
        view_box = self.plot.getPlotItem().getViewBox()
        if array.size == 0:
            self._set_caption(label, scope, str(shape), "empty", "empty")
            self.image.setVisible(False)
            self.bars.setVisible(False)
            self.array = None
            return
        scalar = array.size == 1
        # One number reads best as a number (a loss): a one-cell heatmap says nothing.
        self.value_label.setVisible(scalar)
        self.plot.setVisible(not scalar)
        if scalar:
            self.value_label.setText(_fmt(float(array.reshape(-1)[0])))
            self._set_caption(label, scope, "one number" if phase is not None else str(shape), "", "")
        if array.ndim == 2:
            low, high = colormaps.symmetric_levels(array)
            self.image.setImage(array, levels=(low, high), autoLevels=False)
            self.image.setRect(QtCore.QRectF(0, 0, array.shape[1], array.shape[0]))
            self.image.setVisible(True)
            self.bars.setVisible(False)
            if self._mode != "image":
                # Matrices read top-down: row 0 at the top.
                view_box.invertY(True)
            self._mode = "image"
            view_box.setRange(xRange=(0, array.shape[1]), yRange=(0, array.shape[0]), padding=0)
        else:
            values = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
            self.bars.setData(np.arange(values.size + 1, dtype=np.float32), values)
            self.bars.setVisible(True)
            self.image.setVisible(False)
            if self._mode != "bars":
                view_box.invertY(False)
            self._mode = "bars"
            low = min(float(values.min()), 0.0)
            high = max(float(values.max()), 0.0)
            if high == low:
                high = low + 1.0
            view_box.setRange(xRange=(0, values.size), yRange=(low, high), padding=0.05)

    def _set_caption(self, label: str, scope: str, shape: str, stats: str, short: str) -> None:
        """Caption: what the tensor is and whose, what its rows and columns are, then its statistics
        (just the range when the panel is narrow); each line cut to the panel's width, the whole
        caption in the tooltip."""
        self._caption_parts = (label, scope, shape, stats, short)
        self.caption.setToolTip("\n".join(part for part in (f"{label} \u00b7 {scope}" if scope else label,
                                                            shape, stats) if part))
        self._fit_caption()

    def _fit_caption(self) -> None:
        label, scope, shape, stats, short = self._caption_parts
        width = self.width() if self.width() > 1 else 100_000
        metrics = self.caption.fontMetrics()
        bold_font = QtGui.QFont(self.caption.font())
        bold_font.setBold(True)
        bold = QtGui.QFontMetrics(bold_font)

        def cut(text: str, room: float, fm: QtGui.QFontMetrics = metrics) -> str:
            return fm.elidedText(text, QtCore.Qt.TextElideMode.ElideRight, max(int(room), 0))

        label_text = cut(label, width, bold)
        first = f"<b>{html.escape(label_text)}</b>"
        room = width - bold.horizontalAdvance(label_text) - metrics.horizontalAdvance(" \u00b7 ")
        if scope and label_text == label and metrics.horizontalAdvance(scope) <= room:
            first += f" \u00b7 {html.escape(scope)}"
        elif scope:  # whose it is matters more than its shape: it leads the next line
            shape = f"{scope} \u00b7 {shape}"
        lines = [first]
        fitted = next((f"{shape} \u00b7 {figures}" for figures in (stats, short) if figures
                       and metrics.horizontalAdvance(f"{shape} \u00b7 {figures}") <= width), None)
        if fitted is not None:
            lines.append(html.escape(fitted))
        else:
            lines.append(html.escape(cut(shape, width)))
            if short:
                lines.append(html.escape(cut(short, width)))
        text = "<br>".join(lines)
        if self.caption.text() != text:
            self.caption.setText(text)

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt name
        super().resizeEvent(event)
        self._fit_caption()

    def describe(self, x: float, y: float) -> str:
        """Readout for data coordinates (x, y) of this panel."""
        if self.array is None or self.name is None:
            return ""
        array = self.array
        if array.ndim == 2:
            row, col = int(np.floor(y)), int(np.floor(x))
            if 0 <= row < array.shape[0] and 0 <= col < array.shape[1]:
                return f"{self.name}[{row}, {col}] = {_fmt(float(array[row, col]))}"
            return ""
        index = int(np.floor(x))
        if 0 <= index < array.size:
            return f"{self.name}[{index}] = {_fmt(float(array[index]))}"
        return ""


class StepInspector(View):
    """The current phase of a step: direction, module, position, all phases, and its tensors.

    ``PhaseInfo.index`` is 0-based (it indexes ``PhaseInfo.names``); the counter shows it
    1-based, "phase 7 of 23". Up to four tensors are drawn, in the order the engine gives.
    """

    title = "Step inspector"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._stack = QtWidgets.QStackedWidget(self)
        self._hint = QtWidgets.QLabel(_HINT, self)
        self._hint.setObjectName("hint")
        self._hint.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self._hint.setWordWrap(True)

        content = QtWidgets.QWidget(self)
        content_layout = QtWidgets.QVBoxLayout(content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        header = QtWidgets.QHBoxLayout()
        self.direction_label = QtWidgets.QLabel(" ", content)
        self.direction_label.setObjectName("phaseDirection")
        font = self.direction_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        self.direction_label.setFont(font)
        self.direction_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.direction_label.setMinimumWidth(
            QtGui.QFontMetrics(font).horizontalAdvance(DIRECTION_TEXT["backward"]) + 24)
        self.module_label = QtWidgets.QLabel(" ", content)
        self.module_label.setObjectName("phaseModule")
        module_font = self.module_label.font()
        module_font.setPointSizeF(module_font.pointSizeF() * 1.2)
        module_font.setBold(True)
        self.module_label.setFont(module_font)
        # Cut from the left to the room it has (``elide_head``), the full name in its tooltip: a
        # long name would otherwise set the whole dock's least width.
        self.module_label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                        QtWidgets.QSizePolicy.Policy.Preferred)
        self.module_label.setMinimumWidth(40)
        self.module_label.installEventFilter(self)
        self._module_text = ""
        self.counter_label = QtWidgets.QLabel(" ", content)
        self.counter_label.setObjectName("phaseCounter")
        self.counter_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        # The badge and the counter share the first row, the module has the whole second one: beside
        # them in a narrow dock it was cut to "li\u2026ar".
        header.addWidget(self.direction_label)
        header.addStretch(1)
        header.addWidget(self.counter_label)
        content_layout.addLayout(header)
        content_layout.addWidget(self.module_label)
        # What the phase does, for whom, and what comes next, in words (the full text in its tooltip).
        self.explanation = QtWidgets.QLabel(" ", content)
        self.explanation.setObjectName("phaseExplanation")
        self.explanation.setWordWrap(True)
        self.explanation.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                       QtWidgets.QSizePolicy.Policy.Preferred)
        self.explanation.setMinimumWidth(40)
        content_layout.addWidget(self.explanation)

        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal, content)
        self._splitter = splitter
        self._split_fitted = False  # the user dragged the handle: the list keeps its width
        self._split_width = -1
        splitter.splitterMoved.connect(lambda *_: setattr(self, "_split_fitted", True))
        self.phase_list = QtWidgets.QListWidget(splitter)
        self.phase_list.setObjectName("phaseList")
        # The list follows the engine; clicking must not suggest the user can jump phases.
        self.phase_list.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.phase_list.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.phase_list.setMinimumWidth(100)
        # Rows are fitted to the list's width here (``phase_row_text``): an arrow for the
        # direction, and a long module name cut from the left, so its distinctive tail stays
        # ("← …1.linear"); a middle cut left "forward…ers.1.linear". Never a sideways scroll bar.
        self.phase_list.setTextElideMode(QtCore.Qt.TextElideMode.ElideLeft)
        self.phase_list.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        tensors = QtWidgets.QWidget(splitter)
        self._tensor_area = tensors
        grid = QtWidgets.QGridLayout(tensors)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(4)
        self._grid = grid
        self.panels: list[_TensorPanel] = []
        for i in range(_MAX_PANELS):
            panel = _TensorPanel(tensors)
            panel.setVisible(False)
            self._connect_panel_hover(panel)
            self.panels.append(panel)
        self.more_label = QtWidgets.QLabel("", tensors)
        # (Cut at the right rather than widen the dock; every name is in its tooltip.)
        self.more_label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.no_tensors = QtWidgets.QLabel(_NO_TENSORS[""], tensors)
        self.no_tensors.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.no_tensors.setWordWrap(True)  # (its one line set the whole dock's least width)
        self._panel_columns = 0
        self._arrange_panels(2)
        tensors.installEventFilter(self)
        splitter.installEventFilter(self)
        splitter.addWidget(self.phase_list)
        splitter.addWidget(tensors)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([180, 600])
        content_layout.addWidget(splitter, 1)

        self._stack.addWidget(content)
        self._stack.addWidget(self._hint)
        self._stack.setCurrentWidget(self._hint)
        self._layout.addWidget(self._stack, 1)
        self.finish_layout()

        self._drawn: PhaseInfo | None = None
        self._drawn_tensors: Mapping[str, np.ndarray] | None = None
        self._drawn_names: tuple[str, ...] | None = None
        # The phase's tensors in the order they are drawn, and how many panels they were placed in.
        self._present: tuple[list[tuple[str, np.ndarray]], PhaseInfo | None] | None = None
        self._placed = 0
        self._rows_fitted: tuple[tuple[str, ...], int] | None = None  # (names, list width) of the row texts
        self._highlighted = -1
        self._kind: str | None = None
        self.phase_list.viewport().installEventFilter(self)

    # --- layout ----------------------------------------------------------------------------
    @property
    def panel_columns(self) -> int:
        """How many tensor panels sit side by side (two, or one in a narrow view)."""
        return self._panel_columns

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 - Qt name
        if watched is self._tensor_area and event.type() == QtCore.QEvent.Type.Resize:
            self._fit_panels()
        elif watched is self.phase_list.viewport() and event.type() == QtCore.QEvent.Type.Resize:
            self._fit_rows()
        elif watched is self.module_label and event.type() == QtCore.QEvent.Type.Resize:
            self._fit_module()
        elif watched is self._splitter and event.type() == QtCore.QEvent.Type.Resize:
            QtCore.QTimer.singleShot(0, self._fit_split)  # (once the splitter has sized its children)
        return super().eventFilter(watched, event)

    def _fit_split(self) -> None:
        """In a narrow dock the phase list gives the tensors room: at most ``LIST_SHARE`` of the
        width (but ``phase_list``'s least), until the user drags the handle."""
        splitter = self._splitter
        total = splitter.width() - splitter.handleWidth()
        if total <= 0 or self._split_fitted or splitter.width() == self._split_width:
            return
        self._split_width = splitter.width()
        sizes = splitter.sizes()
        most = max(int(total * LIST_SHARE), self.phase_list.minimumWidth())
        if sizes and sizes[0] > most:
            splitter.setSizes([most, total - most])

    def _fit_module(self) -> None:
        label = self.module_label
        label.setText(elide_head(self._module_text, label.contentsRect().width(), label.fontMetrics()))

    def _room(self) -> tuple[int, int]:
        """(columns, rows) of panels of at least ``MIN_PANEL`` px the tensor area has room for, 1 or 2 each."""
        area = self._tensor_area
        columns = max(1, min(2, area.width() // MIN_PANEL[0]))
        rows = max(1, min(2, (area.height() - self.more_label.sizeHint().height()) // MIN_PANEL[1]))
        return columns, rows

    def panel_capacity(self) -> int:
        """How many tensor panels the tensor area has room for, one to ``_MAX_PANELS``: in a small
        dock four panels were slivers with their captions cut."""
        columns, rows = self._room()
        return min(_MAX_PANELS, columns * rows)

    def _fit_panels(self) -> None:
        """As many panels as there is room for, in two columns; two or fewer side by side, or one
        above the other where the area is taller than wide (or too narrow for two)."""
        if self._present is not None and self.panel_capacity() != self._placed:
            self._place_panels()
        shown = sum(not panel.isHidden() for panel in self.panels)
        columns, rows = self._room()
        area = self._tensor_area
        stacked = shown <= 2 and rows >= 2 and (columns < 2 or area.height() > area.width())
        self._arrange_panels(1 if stacked or columns < 2 or shown <= 1 else 2)  # (one alone takes the width)

    def _arrange_panels(self, columns: int) -> None:
        """Lay the (existing) tensor panels out in ``columns`` columns."""
        if columns == self._panel_columns:
            return
        self._panel_columns = columns
        grid = self._grid
        for widget in (*self.panels, self.more_label, self.no_tensors):
            grid.removeWidget(widget)
        for i, panel in enumerate(self.panels):
            grid.addWidget(panel, i // columns, i % columns)
        rows = (len(self.panels) + columns - 1) // columns
        grid.addWidget(self.more_label, rows, 0, 1, columns)
        grid.addWidget(self.no_tensors, 0, 0, rows, columns)
        for column in range(2):
            grid.setColumnStretch(column, 1 if column < columns else 0)

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, data: ViewData) -> None:
        phase = data.snapshot.phase
        if phase is None:
            self._show_hint()
            return
        if phase is self._drawn:
            return  # the same moment redrawn at display rate: nothing changed
        self._drawn = phase
        self._stack.setCurrentIndex(0)
        kind = phase.kind if phase.kind in DIRECTION_TEXT else "forward"
        colour = DIRECTION_COLOURS[kind]
        self._kind = phase.kind
        self.direction_label.setText(DIRECTION_TEXT.get(phase.kind, str(phase.kind).upper()))
        self.direction_label.setStyleSheet(
            f"QLabel {{ background: {colour}; color: #101215; border-radius: 4px; padding: 4px 10px; }}")
        self._module_text = phase.module or "\u2014"
        self.module_label.setToolTip(self._module_text)
        self._fit_module()
        total = max(int(phase.total), len(phase.names))
        self.counter_label.setText(f"phase {int(phase.index) + 1} of {total}")
        explanation = phase_explanation(phase)
        # (A word joiner after each "/" keeps "dL/d(input)" whole where the line breaks.)
        self.explanation.setText(explanation.replace("/", "/\u2060"))
        self.explanation.setToolTip(explanation)
        self._update_list(phase, colour)
        if phase.tensors is not self._drawn_tensors:
            self._drawn_tensors = phase.tensors
            self._update_tensors(phase.tensors, phase)

    def _show_hint(self) -> None:
        self._drawn = None
        self._drawn_tensors = None
        self._stack.setCurrentWidget(self._hint)

    def _update_list(self, phase: PhaseInfo, colour: str) -> None:
        names = tuple(phase.names)
        if names != self._drawn_names:
            self._drawn_names = names
            self._highlighted = -1
            while self.phase_list.count() > len(names):
                self.phase_list.takeItem(self.phase_list.count() - 1)
            while self.phase_list.count() < len(names):
                self.phase_list.addItem(QtWidgets.QListWidgetItem())
            for row, name in enumerate(names):
                item = self.phase_list.item(row)
                if item.toolTip() != name:
                    item.setToolTip(name)  # the full name: the row may be cut
                self._plain(item)
            self._fit_rows()
        index = int(phase.index)
        if 0 <= self._highlighted < self.phase_list.count():
            self._plain(self.phase_list.item(self._highlighted))
        self._highlighted = -1
        if 0 <= index < self.phase_list.count():
            item = self.phase_list.item(index)
            item.setBackground(QtGui.QBrush(QtGui.QColor(colour)))
            item.setForeground(QtGui.QBrush(QtGui.QColor("#101215")))
            font = item.font()
            font.setBold(True)
            item.setFont(font)
            self.phase_list.setCurrentRow(index)
            self.phase_list.scrollToItem(item, QtWidgets.QAbstractItemView.ScrollHint.PositionAtCenter)
            self._highlighted = index

    def _fit_rows(self) -> None:
        """Row texts that fit the list's width (again only when the names or the width change)."""
        names = self._drawn_names or ()
        width = self.phase_list.viewport().width()
        if (names, width) == self._rows_fitted:
            return
        self._rows_fitted = (names, width)
        # Measured bold, as the current phase's row is drawn: a row fits whichever it is.
        font = QtGui.QFont(self.phase_list.font())
        font.setBold(True)
        metrics = QtGui.QFontMetrics(font)
        # What tells the modules apart ("0.linear", "1.linear"): cut no further than that.
        modules = [_split_phase(name)[1] for name in names]
        distinct = tuple(dict.fromkeys(modules))
        keep = dict(zip(distinct, unique_suffixes(distinct)))
        for row, (name, module) in enumerate(zip(names[:self.phase_list.count()], modules)):
            item = self.phase_list.item(row)
            text = phase_row_text(row, name, width - _ROW_MARGIN, metrics, keep[module])
            if item.text() != text:
                item.setText(text)

    @staticmethod
    def _plain(item: QtWidgets.QListWidgetItem) -> None:
        item.setData(QtCore.Qt.ItemDataRole.BackgroundRole, None)
        item.setData(QtCore.Qt.ItemDataRole.ForegroundRole, None)
        font = item.font()
        font.setBold(False)
        item.setFont(font)

    def _update_tensors(self, tensors: Mapping[str, np.ndarray], phase: PhaseInfo | None = None) -> None:
        present = [(name, array) for name, array in tensors.items() if array is not None]
        present.sort(key=lambda item: _panel_rank(item[0]))  # (stable: the engine's order within a rank)
        self._present = (present, phase)
        self._place_panels()
        self._fit_panels()

    def _place_panels(self) -> None:
        """Draw the first tensors of the phase in the panels there is room for; name the rest."""
        present, phase = self._present
        self._placed = self.panel_capacity()
        shown, hidden = present[:self._placed], present[self._placed:]
        for panel, (name, array) in zip(self.panels, shown):
            try:
                panel.show_tensor(name, array, phase)
                panel.setVisible(True)
            except (TypeError, ValueError):
                # A tensor that is not numeric (or is empty) must not take the view down.
                panel.setVisible(False)
        for panel in self.panels[len(shown):]:
            panel.setVisible(False)
        names = ", ".join(_tensor_label(name, phase.module_type if phase is not None else None)
                          for name, _ in hidden)
        self.more_label.setText(f"+{len(hidden)} more not shown: {names}" if hidden else "")
        self.more_label.setToolTip(f"Not shown for want of room: {names}" if hidden else "")
        self.more_label.setVisible(bool(hidden))
        self.no_tensors.setText(_NO_TENSORS.get(phase.kind if phase is not None else "", _NO_TENSORS[""]))
        self.no_tensors.setVisible(not shown)

    @property
    def hint(self) -> str:
        """The centred hint shown instead of the view, or "" when the view is shown."""
        return self._hint.text() if self._stack.currentWidget() is self._hint else ""

    # --- state, for the app and tests ------------------------------------------------------
    def highlighted_row(self) -> int:
        """Row of the current phase in the phase list, or -1."""
        return self._highlighted

    def visible_panels(self) -> list[_TensorPanel]:
        """The tensor panels now shown, in order."""
        return [panel for panel in self.panels if not panel.isHidden()]

    # --- hover -------------------------------------------------------------------------------
    def _connect_panel_hover(self, panel: _TensorPanel) -> None:
        plot_item = panel.plot.getPlotItem()
        view_box = plot_item.getViewBox()

        def moved(pos: QtCore.QPointF) -> None:
            if panel.isVisible() and plot_item.sceneBoundingRect().contains(pos):
                point = view_box.mapSceneToView(pos)
                text = panel.describe(point.x(), point.y())
                self.readout.setText(text or " ")

        plot_item.scene().sigMouseMoved.connect(moved)

    def describe_point(self, x: float, y: float) -> str:
        """Readout for (x, y) in the first tensor panel's data coordinates."""
        panels = self.visible_panels()
        return panels[0].describe(x, y) if panels else ""
