"""One unit written out: z = Σ wᵢaᵢ + b, a = g(z), δ and ∂L/∂w — and a gradient check."""
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
        for label in (self.forward, self.backward):
            label.setWordWrap(True)
            label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QtWidgets.QHBoxLayout()
        self.input_index = QtWidgets.QSpinBox(content)
        self.check_button = QtWidgets.QPushButton("Check gradient of wᵢ", content)
        self.check_button.clicked.connect(self._ask_check)
        row.addWidget(QtWidgets.QLabel("i =", content))
        row.addWidget(self.input_index)
        row.addWidget(self.check_button, 1)
        self.check_result = QtWidgets.QLabel(content)
        self.check_result.setWordWrap(True)
        form.addWidget(self.heading)
        form.addWidget(QtWidgets.QLabel("<b>Forward</b>", content))
        form.addWidget(self.forward)
        form.addWidget(QtWidgets.QLabel("<b>Backward</b>", content))
        form.addWidget(self.backward)
        form.addLayout(row)
        form.addWidget(self.check_result)
        form.addStretch(1)
        self.add_content(content)
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
        self._show_content()
        if trace is not self._trace:
            self._trace = trace
            where = "" if trace.position is None else f", position {trace.position} of the sequence"
            self.heading.setText(f"<b>{trace.layer}</b>, unit {trace.unit} (step {data.snapshot.step}, "
                                 f"example {data.snapshot.tensors.example if data.snapshot.tensors else 0}"
                                 f"{where})")
            self.forward.setText(trace.forward_text())
            self.backward.setText(trace.backward_text())
            self.input_index.setRange(0, max(0, len(trace.inputs) - 1))
        if check is not None:
            self.check_result.setText(
                f"∂L/∂{check.parameter}{list(check.index)}: autograd {check.autograd:.8g}, "
                f"central difference {check.numeric:.8g} (relative difference {check.relative_error:.1e})")
        else:
            self.check_result.setText("")

    def _ask_check(self) -> None:
        if self._trace is not None:
            self.check_requested.emit(self._trace.layer, self._trace.unit, int(self.input_index.value()))
