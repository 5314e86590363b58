"""StepInspector: direction, module, position, phase list and the phase's tensors."""
from __future__ import annotations

import re
from dataclasses import replace

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
    # What it is and whose (a parameter's gradient is the whole batch's), and its shape.
    assert "dL/d(weight)" in caption and "whole batch" in caption and "2 \u00d7 2" in caption
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
    assert "one number" in panels[0].caption.text()
    assert inspector.more_label.text() == "+2 more not shown: t4, t5"  # named, not just counted
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
    # One example's 32 values, not a (1, 32) matrix (the engine's display layout).
    assert "32 values" in output.caption.text() and "(1, 32)" not in output.caption.text()
    assert loss.value_label.isVisible() and not loss.plot.isVisible()
    assert loss.value_label.text() == "0.0421"
    assert "one number" in loss.caption.text() and "whole batch" in loss.caption.text()


def test_panels_stack_in_a_narrow_dock_and_the_list_never_scrolls_sideways(shown, qtbot):
    view = shown(StepInspector(), 330, 700)
    view.render(view_data(phase()))
    qtbot.wait(20)
    assert view.panel_columns == 1  # two tensors, one above the other
    view.resize(420, 300)
    qtbot.waitUntil(lambda: view.panel_columns == 2)  # a low dock: side by side, each tall enough to read
    assert len(view.visible_panels()) == 2
    view.resize(330, 700)
    qtbot.wait(20)
    assert view.phase_list.horizontalScrollBarPolicy() == QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert view.phase_list.item(6).toolTip() == NAMES[6]  # the full name when the row is elided
    four = {f"t{i}": np.ones((3, 4)) for i in range(4)}
    view.render(view_data(phase(index=7, tensors=four)))
    qtbot.wait(20)
    # Four in one column would leave each a sliver: the two there is room for, the others named.
    assert view.panel_columns == 1 and len(view.visible_panels()) == 2
    assert view.more_label.text() == "+2 more not shown: t2, t3"
    view.resize(250, 700)
    qtbot.waitUntil(lambda: view.panels[0].width() < 150)
    caption = view.panels[0].caption
    assert "1 … 1" in caption.text() and "mean" not in caption.text()  # just the range: it fits
    assert caption.toolTip().splitlines()[-1] == "min 1  mean 1  max 1"  # the whole caption
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
    info = PhaseInfo(index=3, total=len(MLP_NAMES), kind="forward", module="layers.1.linear", names=MLP_NAMES)
    view.render(view_data(info))
    qtbot.wait(20)
    view.phase_list.parentWidget().setSizes([list_width, 600 - list_width])  # the splitter, as dragged
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
    if list_width >= 260:  # (at 165 the list's vertical scroll bar leaves too little room)
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
    widget.resize(300, 400)  # (the module has a row of its own: only a narrow dock cuts it)
    qtbot.waitUntil(lambda: widget.module_label.text() != long_name)
    shown_text = widget.module_label.text()
    assert shown_text.startswith("\u2026") and long_name.endswith(shown_text[1:])
    metrics = widget.module_label.fontMetrics()
    assert metrics.horizontalAdvance(shown_text) <= widget.module_label.contentsRect().width()
    widget.resize(900, 400)
    qtbot.waitUntil(lambda: widget.module_label.text() == long_name)


# --- words for a student: which example, which way, what the shapes mean, what comes next ------------
XOR_NAMES = ("forward flatten", "forward layers.0.linear", "forward layers.0.act", "forward head", "loss",
             "backward head", "backward layers.0.act", "backward layers.0.linear", "update")


def xor_phase(index: int, **fields) -> PhaseInfo:
    kind, _, module = XOR_NAMES[index].partition(" ")
    defaults = dict(index=index, total=len(XOR_NAMES), kind=kind, module=module or None, names=XOR_NAMES,
                    example=5, batch_size=32)
    return PhaseInfo(**{**defaults, **fields})


def test_the_explanation_says_which_example_which_way_and_what_comes_next(shown):
    view = shown(StepInspector(), 345, 300)
    view.render(view_data(xor_phase(2, module_type="Tanh", tensors={"input": np.ones((1, 8)),
                                                                     "output": np.ones((1, 8))})))
    text = view.explanation.toolTip()
    assert "All 32 examples" in text and "layers.0.act (Tanh)" in text and "example 5" in text
    assert text.endswith("Next: \u2192 head.")
    view.render(view_data(xor_phase(4, tensors={"loss": np.array([[0.9628]])})))
    text = view.explanation.toolTip()
    assert "0.963" in text and "whole batch of 32 examples" in text and text.endswith("Next: \u2190 head.")
    view.render(view_data(xor_phase(6, module_type="Tanh", tensors={"grad_output": np.ones((1, 8))})))
    text = view.explanation.toolTip()
    assert "dL/d(output) of example 5 comes back from head" in text  # the phase before it
    assert "no parameters" in text and text.endswith("Next: \u2190 layers.0.linear.")
    view.render(view_data(xor_phase(7, module_type="Linear", tensors={"grad_output": np.ones((1, 8)),
                                                                       "grad:weight": np.ones((8, 2))})))
    text = view.explanation.toolTip()
    assert "from layers.0.act" in text and "dL/dw" in text and "all 32 examples" in text
    assert text.endswith("Next: the update.")
    assert "residual" not in text
    view.render(view_data(xor_phase(2, module_type="LayerNorm", input_is_sum=True,
                                    tensors={"input": np.ones((1, 8)), "output": np.ones((1, 8))})))
    assert "Its input is a sum the model's code makes between modules, as a residual connection does: " \
        "x + sub-layer(x)." in view.explanation.toolTip()


def test_the_update_says_optimizer_rate_clipping_and_the_size_of_the_change(shown):
    view = shown(StepInspector(), 345, 300)
    delta = np.full((8, 2), -0.03, np.float32)
    changes = (("layers.0.linear", 0.104907, 1.92264), ("head", 0.112603, 0.978898))
    info = xor_phase(8, module="layers.0.linear", module_type="Linear", optimizer="sgd", lr=0.03, clip_norm=1.0,
                     grad_norm=2.5, changes=changes, tensors={"\u0394weight": delta, "weight": np.ones((8, 2))},
                     axes={"\u0394weight": ("output units", "input units"), "weight": ("output units", "input units")})
    view.render(view_data(info))
    text = view.explanation.toolTip()
    assert "SGD (lr 0.03): w \u2190 w \u2212 lr\u00b7g" in text
    assert "Gradient norm 2.5 > 1: clipped to 1 first." in text
    # ||Δw|| and its share of ||w||, of the layer whose change is drawn (not the other one's)
    assert f"\u2016\u0394w\u2016 = 0.105, {100 * 0.104907 / 1.92264:.3g} % of \u2016w\u2016" in text
    assert "0.113" not in text
    assert view.module_label.toolTip() == "layers.0.linear"
    first = view.visible_panels()[0]
    assert first.name == "\u0394weight" and np.array_equal(first.array, delta)
    assert "this update" in first.caption.toolTip() and "8 \u00d7 2 (output units \u00d7 input units)" in \
        first.caption.toolTip()
    view.render(view_data(replace(info, grad_norm=0.5, optimizer="adam")))
    text = view.explanation.toolTip()
    assert "0.5 \u2264 clip 1: not clipped." in text and text.startswith("Adam (lr 0.03)")


def test_captions_say_whose_a_tensor_is_and_what_its_rows_and_columns_are(shown):
    view = shown(StepInspector(), 900, 500)
    tensors = {"grad_output": np.ones((8, 64)), "weight": np.ones((4, 9)), "grad:weight": np.ones((4, 9)),
               "grad:bias": np.ones((1, 4)), "bias": np.ones((1, 4))}
    axes = {"grad_output": ("tokens", "features"), "grad:weight": ("filters", "input channels\u00b7kernel pixels"),
            "weight": ("filters", "input channels\u00b7kernel pixels"), "grad:bias": ("", "filters")}
    info = PhaseInfo(index=14, total=len(NAMES), kind="backward", module="conv", names=NAMES, tensors=tensors,
                     example=3, batch_size=16, axes=axes, shapes={"grad:weight": (4, 1, 3, 3), "weight": (4, 1, 3, 3)})
    view.render(view_data(info))
    panels = view.visible_panels()
    # The example's gradient first, then the parameters' gradients, then their values; the rest named.
    assert [panel.name for panel in panels] == ["grad_output", "grad:weight", "grad:bias", "weight"]
    assert view.more_label.text() == "+1 more not shown: bias"
    tips = [panel.caption.toolTip().splitlines() for panel in panels]
    assert tips[0][:2] == ["dL/d(output) \u00b7 example 3", "8 \u00d7 64 (tokens \u00d7 features)"]
    assert tips[1][:2] == ["dL/d(weight) \u00b7 whole batch",
                           "(4, 1, 3, 3) as 4 \u00d7 9 (filters \u00d7 input channels\u00b7kernel pixels)"]
    assert tips[2][:2] == ["dL/d(bias) \u00b7 whole batch", "4 filters"]
    assert tips[3][0] == "weight \u00b7 before the update"


def test_a_recurrent_or_attention_modules_other_outputs_are_named(shown):
    """An LSTM returns (output, (h, c)): the gradients reaching h and c are dL/d(h) and dL/d(c),
    not dL/d(output[1][0]); a GRU's h and attention's weights likewise."""
    from widgets.step_inspector import tensor_title

    lstm = PhaseInfo(index=14, total=len(NAMES), kind="backward", module="rnn", names=NAMES, module_type="LSTM",
                     example=2, tensors={"grad_output": np.ones((4, 5)), "grad_output[1][0]": np.ones((2, 5)),
                                         "grad_output[1][1]": np.ones((2, 5))})
    assert [tensor_title(key, lstm) for key in lstm.tensors] == [
        "dL/d(output) \u00b7 example 2", "dL/d(h) \u00b7 example 2", "dL/d(c) \u00b7 example 2"]
    assert tensor_title("grad_output[1]", replace(lstm, module_type="GRU")) == "dL/d(h) \u00b7 example 2"
    assert tensor_title("grad_output[1]", replace(lstm, module_type="MultiheadAttention")) \
        == "dL/d(attention weights) \u00b7 example 2"
    assert tensor_title("grad_output[1]", replace(lstm, module_type="Mine")) == "dL/d(output[1]) \u00b7 example 2"
    view = shown(StepInspector(), 900, 500)
    view.render(view_data(lstm))
    assert [panel.caption.toolTip().splitlines()[0] for panel in view.visible_panels()] == [
        "dL/d(output) \u00b7 example 2", "dL/d(h) \u00b7 example 2", "dL/d(c) \u00b7 example 2"]


def test_the_module_has_a_row_of_its_own_in_a_narrow_dock(shown, qtbot):
    """At 1366 x 768 the dock is about 345 px wide: beside the badge and the counter, the module's
    name was cut to "li…ar"."""
    view = shown(StepInspector(), 345, 300)
    view.render(view_data(xor_phase(1, module_type="Linear")))
    qtbot.wait(20)
    assert view.module_label.text() == "layers.0.linear"


@pytest.mark.parametrize("size", [(345, 300), (250, 300), (900, 500)])
def test_no_caption_is_cut_short_of_its_lines(shown, qtbot, size):
    """Only as many panels as there is room for, and every caption line whole in height (four panels
    in a small dock left captions cut in half); what is left out is named."""
    view = shown(StepInspector(), *size)
    tensors = {"grad_output": np.ones((1, 2)), "grad:weight": np.ones((2, 8)), "weight": np.ones((2, 8)),
               "grad:bias": np.ones((1, 2)), "bias": np.ones((1, 2))}
    view.render(view_data(xor_phase(5, module_type="Linear", tensors=tensors)))

    def settled() -> bool:  # (a caption refitted to a new width is laid out on the next pass)
        return all(panel.caption.height() >= panel.caption.sizeHint().height() for panel in view.visible_panels())

    qtbot.wait(50)
    qtbot.waitUntil(settled, timeout=2000)
    panels = view.visible_panels()
    assert panels and panels[0].name == "grad_output"
    # The panels ask for no more height than the dock has (four asked 322 px of a 300-px dock), and
    # each lies whole inside the tensor area, its caption as tall as its lines.
    assert view.minimumSizeHint().height() <= view.height()
    area = view._tensor_area
    for panel in panels:
        caption = panel.caption
        assert caption.height() >= caption.sizeHint().height(), (panel.name, caption.text())
        assert panel.geometry().bottom() < area.height() and panel.geometry().right() < area.width()
        assert panel.plot.height() >= panel.plot.minimumHeight()
    hidden = len(tensors) - len(panels)
    assert view.more_label.isVisible() == bool(hidden)
    if size == (900, 500):
        assert len(panels) == 4
    if size == (345, 300):  # (the dock at 1366 x 768) the phase list leaves room for the two that matter
        assert [panel.name for panel in panels] == ["grad_output", "grad:weight"]
        assert view.phase_list.width() <= 0.45 * view.width()


def test_a_lone_panel_takes_the_whole_width(shown, qtbot):
    """The loss, alone, had the left half of a two-column grid and its caption cut to "whole batch · …"."""
    view = shown(StepInspector(), 345, 300)
    view.render(view_data(xor_phase(4, tensors={"loss": np.array([[2.17]])})))
    area = view._tensor_area
    qtbot.wait(150)  # (laid out, and out again once the splitter has given the list its share)
    assert view.visible_panels()[0].width() >= 0.9 * area.width()
    caption = view.visible_panels()[0].caption.text()
    assert "whole batch" in caption and "one number" in caption and "\u2026" not in caption
