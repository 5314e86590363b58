"""One unit written out: z = Σ wᵢaᵢ + b, a = g(z), δ and ∂L/∂w — and a gradient check.

The δ·a written out is one example's share of the gradient; the batch's gradient (what the update
uses, and what the check measures) is all the shares added up. The labels say which is which.
With active dropout the figures are of the recomputation's own dropout draw, not the step's; a line
says so (the engine's ``NeuronTrace.dropout``).
"""
from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from engine.snapshot import ViewData
from widgets.base import View

__all__ = ["NeuronInspector"]

_HINT = "Click a unit of a Linear layer in the Network view to see its computation written out."


class NeuronInspector(View):
    """Shows the inspected unit's forward and backward computation with the step's numbers."""

    title = "Neuron"
    #: (layer, unit, input index): the user asks for a finite-difference check of that weight.
    check_requested = QtCore.Signal(str, int, int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        content = QtWidgets.QWidget(self)
        form = QtWidgets.QVBoxLayout(content)
        self.heading = QtWidgets.QLabel(content)
        self.forward = QtWidgets.QLabel(content)
        self.backward = QtWidgets.QLabel(content)
        self.batch = QtWidgets.QLabel(content)  # the whole batch's gradient, which the check compares
        self.dropout_note = QtWidgets.QLabel(content)  # shown only while the model's dropout is active
        for label in (self.forward, self.backward, self.batch, self.dropout_note):
            label.setWordWrap(True)
            label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QtWidgets.QHBoxLayout()
        self.input_index = QtWidgets.QSpinBox(content)
        self.check_button = QtWidgets.QPushButton("Check the batch's ∂L/∂wᵢ", content)
        self.check_button.setToolTip("Compare autograd's gradient of the whole batch's loss with a central "
                                     "finite difference, for input i of this unit")
        self.check_button.clicked.connect(self._ask_check)
        row.addWidget(QtWidgets.QLabel("i =", content))
        row.addWidget(self.input_index)
        row.addWidget(self.check_button, 1)
        self.check_result = QtWidgets.QLabel(content)
        self.check_result.setWordWrap(True)
        form.addWidget(self.heading)
        form.addWidget(QtWidgets.QLabel("<b>Forward</b>", content))
        form.addWidget(self.forward)
        backward_title = QtWidgets.QLabel("<b>Backward</b> (L is the loss of the whole batch)", content)
        backward_title.setWordWrap(True)  # (one long line would set the dock's least width)
        self.heading.setWordWrap(True)
        form.addWidget(backward_title)
        form.addWidget(self.backward)
        form.addWidget(self.batch)
        form.addWidget(self.dropout_note)
        form.addLayout(row)
        form.addWidget(self.check_result)
        form.addStretch(1)
        # Scrolled: in a short dock the wrapped lines would otherwise be squeezed over each other.
        scroller = QtWidgets.QScrollArea(self)
        scroller.setWidget(content)
        scroller.setWidgetResizable(True)
        scroller.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroller.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.add_content(scroller)
        self.finish_layout()
        self._trace = None
        self._show_hint(_HINT)

    def draw(self, data: ViewData) -> None:
        trace = data.snapshot.neuron
        check = data.snapshot.gradient_check
        if trace is None:
            self._trace = None
            self._show_hint(_HINT)
            return
        if getattr(trace, "pending", False):  # clicked during a phase-by-phase step
            self._trace = None
            when = "when this phase-by-phase step ends" if data.snapshot.state == "stepping" \
                else "when the next step ends"
            self._show_hint(f"{trace.layer}, unit {trace.unit}: its computation is written out {when}.")
            return
        self._show_content()
        if trace is not self._trace:
            self._trace = trace
            where = "" if trace.position is None else f", position {trace.position} of the sequence"
            self.heading.setText(f"<b>{trace.layer}</b>, unit {trace.unit} (step {data.snapshot.step}, "
                                 f"example {trace.example} of a batch of {trace.batch_size}{where})")
            self.forward.setText(trace.forward_text())
            self.backward.setText(trace.backward_text())
            self.batch.setText(trace.batch_text())
            self.batch.setVisible(bool(self.batch.text()))
            self.dropout_note.setText(trace.dropout_text())
            self.dropout_note.setVisible(bool(self.dropout_note.text()))
            self.input_index.setRange(0, max(0, len(trace.inputs) - 1))
        if check is not None:
            self.check_result.setText(
                f"Whole batch ({trace.batch_description()}), ∂L/∂{check.parameter}{list(check.index)}: "
                f"autograd {check.autograd:.8g}, central difference {check.numeric:.8g} "
                f"(relative difference {check.relative_error:.1e})")
        else:
            self.check_result.setText("")

    def _ask_check(self) -> None:
        if self._trace is not None:
            self.check_requested.emit(self._trace.layer, self._trace.unit, int(self.input_index.value()))
