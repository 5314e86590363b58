"""StepInspector: direction, module, position, phase list and the phase's tensors."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from engine.snapshot import Hyper, Metrics, PhaseInfo, Snapshot, ViewData
from widgets.step_inspector import DIRECTION_COLOURS, StepInspector, elide_head

NAMES = tuple(
    [f"forward layers.{i}" for i in range(10)] + ["loss"] + [f"backward layers.{i}" for i in range(9, -1, -1)]
    + ["clip", "update"]
)  # 23 phases


def view_data(phase: PhaseInfo | None) -> ViewData:
    snapshot = Snapshot(run_id=1, step=3, state="stepping", scenario="test", device="cpu", layers=(),
                        metrics=Metrics(train_loss=1.0), hyper=Hyper(), phase=phase)
    return ViewData(snapshot=snapshot)


def phase(index=6, kind="forward", module="layers.6.linear", tensors=None) -> PhaseInfo:
    if tensors is None:
        tensors = {"input": np.arange(8 * 4, dtype=np.float32).reshape(8, 4) - 10.0,
                   "output": np.linspace(-1.0, 2.0, 16)}
    return PhaseInfo(index=index, total=len(NAMES), kind=kind, module=module, tensors=tensors, names=NAMES)


@pytest.fixture
def inspector(shown) -> StepInspector:
    widget = shown(StepInspector(), 900, 500)
    return widget


def test_hint_without_a_phase(inspector):
    inspector.render(view_data(None))
    assert inspector.hint == "Press Shift+\u2192 to step through one training step phase by phase"


def test_forward_phase_labels_and_highlighted_row(inspector):
    inspector.render(view_data(phase(index=6, kind="forward", module="layers.6.linear")))
    assert inspector.hint == ""
    assert inspector.direction_label.text() == "FORWARD \u2192"
    assert DIRECTION_COLOURS["forward"] in inspector.direction_label.styleSheet()
    assert inspector.module_label.text() == "layers.6.linear"
    assert inspector.counter_label.text() == "phase 7 of 23"
    assert inspector.phase_list.count() == 23
    assert inspector.highlighted_row() == 6
    assert inspector.phase_list.currentRow() == 6
    item = inspector.phase_list.item(6)
    assert item.font().bold()
    assert item.background().color().name() == DIRECTION_COLOURS["forward"]
    assert item.text().split() == ["7", "\u2192", "layers.6"]  # the arrow says "forward"
    assert item.toolTip() == "forward layers.6"


def test_backward_phase_moves_the_highlight_and_reuses_items(inspector):
    inspector.render(view_data(phase(index=6)))
    items = [inspector.phase_list.item(row) for row in range(23)]
    inspector.render(view_data(phase(index=14, kind="backward", module="layers.6.linear")))
    assert inspector.direction_label.text() == "\u2190 BACKWARD"
    assert DIRECTION_COLOURS["backward"] in inspector.direction_label.styleSheet()
    assert inspector.counter_label.text() == "phase 15 of 23"
    assert inspector.highlighted_row() == 14
    assert not inspector.phase_list.item(6).font().bold()
    assert inspector.phase_list.item(6).background().style() == QtGui.QBrush().style()
    assert [inspector.phase_list.item(row) for row in range(23)] == items
    inspector.render(view_data(phase(index=10, kind="loss", module=None)))
    assert inspector.direction_label.text() == "LOSS"
    assert inspector.module_label.text() == "\u2014"
    inspector.render(view_data(phase(index=22, kind="update", module=None)))
    assert inspector.direction_label.text() == "UPDATE"


def test_tensor_captions_show_shape_and_statistics(inspector):
    weight_grad = np.array([[-3.0, 0.5], [1.0, 5.0]], dtype=np.float32)
    tensors = {"grad_output": np.full((4, 16), 0.25), "grad:weight": weight_grad, "grad:bias": np.array([-1.0, 2.0])}
    inspector.render(view_data(phase(index=14, kind="backward", tensors=tensors)))
    panels = inspector.visible_panels()
    assert [panel.name for panel in panels] == ["grad_output", "grad:weight", "grad:bias"]
    caption = panels[1].caption.text()
    assert "grad:weight" in caption and "(2, 2)" in caption
    assert "min -3" in caption and "mean 0.875" in caption and "max 5" in caption
    # 2-D: a heatmap with levels symmetric about zero; 1-D: bars.
    assert panels[1].image.isVisible() and not panels[1].bars.isVisible()
    assert panels[1].image.getLevels() == pytest.approx((-5.0, 5.0))
    assert panels[1].image.image.shape == (2, 2)
    assert panels[2].bars.isVisible() and not panels[2].image.isVisible()
    assert list(panels[2].bars.getData()[1]) == [-1.0, 2.0]
    assert panels[1].describe(1.5, 1.5) == "grad:weight[1, 1] = 5"
    assert not inspector.no_tensors.isVisible()


def test_many_and_odd_tensors(inspector):
    tensors = {f"t{i}": np.ones((2, 3, 4, 5)) * i for i in range(6)}
    tensors["t0"] = np.array(1.5)  # a scalar, e.g. the loss
    inspector.render(view_data(phase(tensors=tensors)))
    panels = inspector.visible_panels()
    assert len(panels) == 4
    assert "(2, 3, 4, 5), showing [0, 0]" in panels[1].caption.text()
    assert panels[1].image.image.shape == (4, 5)
    assert "()" in panels[0].caption.text()
    assert inspector.more_label.text() == "+2 more tensor(s) not shown"
    inspector.render(view_data(phase(tensors={"bad": np.full(3, np.nan)})))
    assert "no finite values" in inspector.visible_panels()[0].caption.text()
    inspector.render(view_data(phase(tensors={"empty": np.zeros((0, 3)), "text": np.array(["a", "b"])})))
    assert "empty" in inspector.visible_panels()[0].caption.text()
    assert len(inspector.visible_panels()) == 1  # the non-numeric tensor is skipped, not fatal
    inspector.render(view_data(phase(tensors={})))
    assert inspector.visible_panels() == []
    assert inspector.no_tensors.isVisible()


def test_grab_is_not_flat(inspector):
    inspector.render(view_data(phase(index=14, kind="backward")))
    image = inspector.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint32, image.width() * image.height())
    assert np.unique(pixels).size > 50


def test_one_example_tensors_read_as_bars_and_a_loss_as_a_number(inspector):
    tensors = {"output": np.linspace(-1.0, 1.0, 32).reshape(1, 32), "loss": np.array([[0.0421]])}
    inspector.render(view_data(phase(index=10, kind="loss", module=None, tensors=tensors)))
    output, loss = inspector.visible_panels()
    assert output.bars.isVisible() and not output.image.isVisible()  # not a one-row heatmap
    assert len(output.bars.getData()[1]) == 32
    assert "(1, 32)" in output.caption.text()  # the caption keeps the real shape
    assert loss.value_label.isVisible() and not loss.plot.isVisible()
    assert loss.value_label.text() == "0.0421"
    assert "(1, 1)" in loss.caption.text()


def test_panels_stack_in_a_narrow_dock_and_the_list_never_scrolls_sideways(shown, qtbot):
    view = shown(StepInspector(), 330, 300)
    view.render(view_data(phase()))
    qtbot.wait(20)
    assert view.panel_columns == 1  # two tensors, one above the other
    assert view.phase_list.horizontalScrollBarPolicy() == QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert view.phase_list.item(6).toolTip() == NAMES[6]  # the full name when the row is elided
    four = {f"t{i}": np.ones((3, 4)) for i in range(4)}
    view.render(view_data(phase(index=7, tensors=four)))
    qtbot.wait(20)
    assert view.panel_columns == 2  # four in one column would leave each a sliver
    caption = view.panels[0].caption
    assert "1 … 1" in caption.text() and "mean" not in caption.text()  # just the range: it fits
    assert caption.toolTip() == "min 1  mean 1  max 1"
    view.resize(900, 500)
    view.render(view_data(phase(index=8)))
    qtbot.wait(20)
    assert view.panel_columns == 2


MLP_NAMES = ("forward flatten", "forward layers.0.linear", "forward layers.0.act", "forward layers.1.linear",
             "forward layers.1.act", "forward layers.2.linear", "forward layers.2.act", "forward head", "loss",
             "backward head", "backward layers.2.act", "backward layers.2.linear", "backward layers.1.act",
             "backward layers.1.linear", "backward layers.0.act", "backward layers.0.linear", "update")


@pytest.mark.parametrize("list_width", [120, 165, 260])
def test_layer_names_in_the_phase_list_stay_told_apart(shown, qtbot, list_width):
    """The rows of a narrow list (a 1366-px window leaves it about 165 px) keep what tells layers
    apart and fit without Qt cutting them again (its middle cut made "forward…ers.1.linear")."""
    view = shown(StepInspector(), 600, 300)
    view.phase_list.parentWidget().setSizes([list_width, 600 - list_width])  # the splitter
    info = PhaseInfo(index=3, total=len(MLP_NAMES), kind="forward", module="layers.1.linear", names=MLP_NAMES)
    view.render(view_data(info))
    qtbot.wait(20)
    assert abs(view.phase_list.width() - list_width) < 10
    bold = QtGui.QFont(view.phase_list.font())
    bold.setBold(True)
    metrics = QtGui.QFontMetrics(bold)
    room = view.phase_list.viewport().width()
    texts = [view.phase_list.item(row).text() for row in range(len(MLP_NAMES))]
    for row, (text, name) in enumerate(zip(texts, MLP_NAMES)):
        assert metrics.horizontalAdvance(text) < room, text  # drawn as it is, not elided by the list
        assert view.phase_list.item(row).toolTip() == name  # the full name
        kind, _, module = name.partition(" ")
        if module.startswith("layers."):
            shown_module = text.split(None, 2)[2]
            assert re.search(rf"(?<![0-9]){module.split('.')[1]}\.", shown_module), text  # which layer
            if list_width >= 165:
                assert text.endswith(module.split(".", 1)[1])  # "1.linear" whole
    forward, backward = texts[:8], texts[9:16]
    for rows in (forward, backward):  # every layer its own label, in either direction
        assert len({text.split(None, 1)[1] for text in rows}) == len(rows)
    if list_width >= 165:
        assert texts[3].split() == ["4", "\u2192", "layers.1.linear"]
        assert texts[13].split() == ["14", "\u2190", "layers.1.linear"]


def test_elide_head_cuts_whole_parts_from_the_left():
    metrics = QtGui.QFontMetrics(QtGui.QFont())
    full = "blocks.0.attn.out_proj"
    assert elide_head(full, 1000, metrics) == full
    assert elide_head(full, metrics.horizontalAdvance("\u2026attn.out_proj"), metrics) == "\u2026attn.out_proj"
    # Never shorter than the part that tells it from the others: it is cut in its middle instead.
    kept = elide_head(full, metrics.horizontalAdvance("0.attn.out"), metrics, keep="0.attn.out_proj")
    assert kept.startswith("0.") and kept.endswith("proj") and "\u2026" in kept
    assert elide_head("layers.1.linear", metrics.horizontalAdvance("\u20261.linear") + 2, metrics,
                      keep="1.linear") == "\u20261.linear"
    assert elide_head("blocks.1.ff.0", metrics.horizontalAdvance("\u2026ff.0"), metrics) == "\u2026ff.0"


def test_a_long_module_name_is_cut_from_the_left_and_does_not_widen_the_dock(shown, qtbot):
    widget = shown(StepInspector(), 900, 400)
    widget.render(view_data(phase(index=6, module="layers.6.linear")))
    least = widget.minimumSizeHint().width()
    long_name = "encoder.stages.3.blocks.11.attention.output_projection"
    widget.render(view_data(phase(index=7, module=long_name)))
    assert widget.minimumSizeHint().width() <= least  # (it grew with the name's length before)
    assert widget.module_label.text() == long_name and widget.module_label.toolTip() == long_name
    widget.resize(520, 400)
    qtbot.waitUntil(lambda: widget.module_label.text() != long_name)
    shown_text = widget.module_label.text()
    assert shown_text.startswith("\u2026") and long_name.endswith(shown_text[1:])
    metrics = widget.module_label.fontMetrics()
    assert metrics.horizontalAdvance(shown_text) <= widget.module_label.contentsRect().width()
    widget.resize(900, 400)
    qtbot.waitUntil(lambda: widget.module_label.text() == long_name)
