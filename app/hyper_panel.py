"""Hyperparameters that change live, and model choices that rebuild a built-in model."""
from __future__ import annotations

import math
from typing import Any

from PySide6 import QtCore, QtWidgets

__all__ = ["HyperPanel", "LogSlider"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "identity")
INITS = ("default", "zeros", "constant", "normal", "xavier", "he")


class LogSlider(QtWidgets.QWidget):
    """A slider over a log scale with the value written beside it."""

    value_changed = QtCore.Signal(float)

    def __init__(self, low: float, high: float, steps: int = 120, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._low, self._high, self._steps = math.log10(low), math.log10(high), steps
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal, self)
        self.slider.setRange(0, steps)
        self.slider.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        self.label = QtWidgets.QLabel(self)
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("0.0003") + 4)  # (the longest .3g)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        self.slider.valueChanged.connect(self._moved)
        self.slider.sliderReleased.connect(lambda: self.value_changed.emit(self.value()))

    def value(self) -> float:
        fraction = self.slider.value() / self._steps
        return float(f"{10 ** (self._low + fraction * (self._high - self._low)):.3g}")

    def set_value(self, value: float) -> None:
        position = (math.log10(max(value, 1e-12)) - self._low) / (self._high - self._low)
        with QtCore.QSignalBlocker(self.slider):
            self.slider.setValue(round(min(max(position, 0.0), 1.0) * self._steps))
        self.label.setText(f"{value:.3g}")

    def _moved(self) -> None:
        self.label.setText(f"{self.value():.3g}")
        if not self.slider.isSliderDown():
            self.value_changed.emit(self.value())


class HyperPanel(QtWidgets.QWidget):
    """Emits ``hyper_changed`` with a dict of live changes, and ``rebuild_requested`` with model
    overrides (the main window asks before rebuilding)."""

    hyper_changed = QtCore.Signal(dict)
    rebuild_requested = QtCore.Signal(dict)
    example_changed = QtCore.Signal(int)
    pause_when_changed = QtCore.Signal(dict)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("HyperPanel")
        self.description = QtWidgets.QLabel(self)
        self.description.setWordWrap(True)
        self.description.setObjectName("description")
        self.lr = LogSlider(1e-5, 100.0, steps=140)  # 20 notches a decade; the lessons use up to 10
        self.optimizer = QtWidgets.QComboBox()
        self.optimizer.addItems(OPTIMIZERS)
        self.batch = QtWidgets.QSpinBox()
        self.batch.setRange(1, 65536)
        self.batch.setKeyboardTracking(False)
        self.decay = QtWidgets.QDoubleSpinBox()
        self.decay.setDecimals(5)
        self.decay.setRange(0.0, 1.0)
        self.decay.setSingleStep(1e-4)
        self.decay.setKeyboardTracking(False)
        self.clip_on = QtWidgets.QCheckBox("clip at")
        self.clip = QtWidgets.QDoubleSpinBox()
        # As many decimals as the smallest value has (a spin box rounds to its decimals, and 0.00
        # is no norm); steps a tenth of the value's decade, so ↓ from 0.05 gives 0.049, not 0.
        self.clip.setDecimals(3)
        self.clip.setRange(1e-3, 1e4)
        self.clip.setStepType(QtWidgets.QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        self.clip.setValue(1.0)
        self.clip.setKeyboardTracking(False)
        clip_row = QtWidgets.QHBoxLayout()
        clip_row.addWidget(self.clip_on)
        clip_row.addWidget(self.clip, 1)
        self.example = QtWidgets.QSpinBox()
        self.example.setRange(0, 4095)
        self.example.setToolTip("Which example of the batch the views follow")

        live = QtWidgets.QGroupBox("Training (applies at the next update)")
        form = QtWidgets.QFormLayout(live)
        form.addRow("learning rate", self.lr)
        form.addRow("optimizer", self.optimizer)
        form.addRow("batch size", self.batch)
        form.addRow("weight decay", self.decay)
        form.addRow("gradient norm", clip_row)
        form.addRow("example shown", self.example)

        self.model_box = QtWidgets.QGroupBox("Model (rebuilds it)")
        model_form = QtWidgets.QFormLayout(self.model_box)
        self.activation = QtWidgets.QComboBox()
        self.activation.addItems(ACTIVATIONS)
        self.init = QtWidgets.QComboBox()
        self.init.addItems(INITS)
        self.init_scale = QtWidgets.QDoubleSpinBox()
        self.init_scale.setRange(0.0, 100.0)
        self.init_scale.setSingleStep(0.1)
        self.width = QtWidgets.QSpinBox()
        self.width.setRange(1, 4096)
        self.depth = QtWidgets.QSpinBox()
        self.depth.setRange(0, 64)
        self.rebuild = QtWidgets.QPushButton("Rebuild model…")
        model_form.addRow("activation", self.activation)
        model_form.addRow("init", self.init)
        model_form.addRow("init scale", self.init_scale)
        model_form.addRow("width", self.width)
        model_form.addRow("depth", self.depth)
        model_form.addRow(self.rebuild)

        pause_box = QtWidgets.QGroupBox("Pause when")
        pause_form = QtWidgets.QVBoxLayout(pause_box)
        self.pause_nonfinite = QtWidgets.QCheckBox("a NaN or Inf appears")
        self.pause_nonfinite.setChecked(True)
        self.pause_error = QtWidgets.QCheckBox("a diagnosis is an error")
        self.pause_norm_on = QtWidgets.QCheckBox("a gradient norm >")
        self.pause_norm = QtWidgets.QDoubleSpinBox()
        self.pause_norm.setDecimals(3)
        self.pause_norm.setRange(1e-3, 1e6)  # (its smallest value shown as it is, not as 0.000)
        self.pause_norm.setStepType(QtWidgets.QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        self.pause_norm.setValue(100.0)
        norm_row = QtWidgets.QHBoxLayout()
        norm_row.addWidget(self.pause_norm_on)
        norm_row.addWidget(self.pause_norm, 1)
        pause_form.addWidget(self.pause_nonfinite)
        pause_form.addWidget(self.pause_error)
        pause_form.addLayout(norm_row)
        for widget in (self.pause_nonfinite, self.pause_error, self.pause_norm_on):
            widget.toggled.connect(self._pause_changed)
        self.pause_norm.valueChanged.connect(self._pause_changed)

        # A number box need not be wide enough for its largest value to be narrow enough for a
        # 1024-pixel screen: its size hint still asks for that room where there is some.
        for box, room in ((self.decay, "0.00000"), (self.clip, "0.000"), (self.pause_norm, "0.000")):
            box.setMinimumWidth(box.fontMetrics().horizontalAdvance(room) + 24)  # (+ its arrows)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.description)
        layout.addWidget(live)
        layout.addWidget(pause_box)
        layout.addWidget(self.model_box)
        layout.addStretch(1)

        self.lr.value_changed.connect(lambda v: self.hyper_changed.emit({"lr": v}))
        self.optimizer.currentTextChanged.connect(lambda v: self.hyper_changed.emit({"optimizer": v}))
        self.batch.valueChanged.connect(lambda v: self.hyper_changed.emit({"batch_size": int(v)}))
        self.decay.valueChanged.connect(lambda v: self.hyper_changed.emit({"weight_decay": float(v)}))
        self.clip_on.toggled.connect(self._clip_changed)
        self.clip.valueChanged.connect(self._clip_changed)
        self.example.valueChanged.connect(self.example_changed)
        self.rebuild.clicked.connect(self._rebuild)

    def pause_conditions(self) -> dict[str, Any]:
        return {"nonfinite": self.pause_nonfinite.isChecked(), "error_diagnosis": self.pause_error.isChecked(),
                "grad_norm_above": float(self.pause_norm.value()) if self.pause_norm_on.isChecked() else None}

    def _pause_changed(self, *_: Any) -> None:
        self.pause_when_changed.emit(self.pause_conditions())

    def _clip_changed(self, *_: Any) -> None:
        self.hyper_changed.emit({"clip_norm": float(self.clip.value()) if self.clip_on.isChecked() else None})

    def _rebuild(self) -> None:
        self.rebuild_requested.emit({
            "activation": self.activation.currentText(), "init": self.init.currentText(),
            "init_scale": float(self.init_scale.value()), "width": int(self.width.value()),
            "depth": int(self.depth.value()),
        })

    def show_hyper(self, hyper: Any) -> None:
        """Reflect the trainer's hyperparameters (without emitting), unless the user is dragging."""
        if not self.lr.slider.isSliderDown():
            self._fill_hyper(hyper)

    def _fill_hyper(self, hyper: Any) -> None:
        blockers = [QtCore.QSignalBlocker(w) for w in (self.optimizer, self.batch, self.decay, self.clip,
                                                        self.clip_on)]
        self.lr.set_value(hyper.lr)
        self.optimizer.setCurrentText(hyper.optimizer)
        self.batch.setValue(hyper.batch_size)
        self.decay.setValue(hyper.weight_decay)
        self.clip_on.setChecked(hyper.clip_norm is not None)
        if hyper.clip_norm is not None:
            self.clip.setValue(hyper.clip_norm)
        del blockers
        # The example shown is one of the batch (a smaller maximum clamps it, and says so).
        self.example.setMaximum(max(0, hyper.batch_size - 1))

    def show_run(self, description: str, model: dict[str, Any] | None, hyper: Any) -> None:
        """Fill the controls from a new run without emitting changes."""
        self.description.setText(description)
        self._fill_hyper(hyper)
        blockers = [QtCore.QSignalBlocker(w) for w in (self.activation, self.init, self.init_scale,
                                                        self.width, self.depth)]
        self.model_box.setVisible(model is not None)
        if model is not None:
            self.activation.setCurrentText(model.get("activation", "relu"))
            self.init.setCurrentText(model.get("init", "default"))
            self.init_scale.setValue(float(model.get("init_scale", 1.0)))
            self.width.setValue(int(model.get("width", 16)))
            self.depth.setValue(int(model.get("depth", 2)))
        del blockers
