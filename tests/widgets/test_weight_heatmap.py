"""WeightHeatmap draws the focused layer's weight, gradient or update as a symmetric heatmap."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from engine.snapshot import Hyper, LayerInfo, Metrics, Snapshot, TensorViews, ViewData
from widgets.colormaps import DIVERGING_LUT, SEQUENTIAL_LUT, finite_levels, symmetric_levels
from widgets.weight_heatmap import WeightHeatmap

LAYERS = (
    LayerInfo(0, "fc1", "Linear", "param", 16 * 8 + 16, (16, 8)),
    LayerInfo(1, "relu", "ReLU", "activation", 0, None, "relu"),
    LayerInfo(2, "head", "Linear", "param", 3 * 16 + 3, (3, 16)),
)


def make_data(
    tensors: TensorViews | None, layers: tuple[LayerInfo, ...] = LAYERS, selected: str | None = None
) -> ViewData:
    snapshot = Snapshot(1, 10, "running", "test", "cpu", layers, Metrics(1.0), Hyper(), tensors=tensors)
    return ViewData(snapshot, selected_layer=selected)


def make_tensors(rng: np.random.Generator, layer: str = "fc1", shape: tuple[int, int] = (16, 8)) -> TensorViews:
    return TensorViews(
        10,
        layer,
        0,
        weight=rng.normal(0, 0.2, shape).astype(np.float32),
        weight_grad=rng.normal(0, 1e-3, shape).astype(np.float32),
        weight_update=None,
    )


@pytest.fixture
def view(qtbot):
    widget = WeightHeatmap()
    qtbot.addWidget(widget)
    widget.resize(640, 480)
    return widget


def test_luts_are_256_entry_uint8_and_diverging_is_white_in_the_middle():
    for lut in (DIVERGING_LUT, SEQUENTIAL_LUT):
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert DIVERGING_LUT[128].min() > 230  # near white at zero
    assert DIVERGING_LUT[0, 2] > DIVERGING_LUT[0, 0]  # blue for negative
    assert DIVERGING_LUT[255, 0] > DIVERGING_LUT[255, 2]  # red for positive
    assert SEQUENTIAL_LUT[255].sum() > SEQUENTIAL_LUT[0].sum()  # dark to bright


def test_symmetric_levels_are_robust():
    assert symmetric_levels(np.array([-0.5, 2.0, np.nan, np.inf])) == (-2.0, 2.0)
    assert symmetric_levels(np.full((3, 3), np.nan)) == (-1.0, 1.0)
    assert symmetric_levels(np.zeros((3, 3))) == (-1.0, 1.0)
    assert symmetric_levels(np.zeros((0,))) == (-1.0, 1.0)
    assert symmetric_levels(None) == (-1.0, 1.0)
    low, high = finite_levels(np.array([3.0, 3.0]))
    assert low < 3.0 < high  # a flat image still gets a non-empty range


def test_draws_the_weight_with_symmetric_levels_and_the_diverging_lut(view):
    rng = np.random.default_rng(0)
    tensors = make_tensors(rng)
    view.render(make_data(tensors))
    assert view.hint == ""
    np.testing.assert_array_equal(view.image.image, tensors.weight)
    m = float(np.abs(tensors.weight).max())
    np.testing.assert_allclose(view.image.levels, [-m, m], rtol=1e-6)
    np.testing.assert_array_equal(view.image.lut, DIVERGING_LUT)
    assert view.range_label.text() == f"±{m:.3g}"
    assert view.plot.getAxis("bottom").labelText == "input unit"
    assert view.plot.getAxis("left").labelText == "output unit"


def test_readout_names_layer_and_indices(view):
    rng = np.random.default_rng(1)
    tensors = make_tensors(rng)
    view.render(make_data(tensors))
    # Pixel (row 3, column 5) covers x in [5, 6), y in [3, 4).
    text = view.hover_at(5.5, 3.5)
    assert text == f"fc1  w[out=3, in=5] = {tensors.weight[3, 5]:.4g}"
    assert view.readout_text() == text
    assert view.hover_at(100.0, 3.0) == ""  # outside the matrix


def test_mode_switch_shows_gradient_and_hint_for_missing_update(view):
    rng = np.random.default_rng(2)
    tensors = make_tensors(rng)
    view.render(make_data(tensors))
    view.set_mode("gradient")
    assert view.mode_combo.currentText() == "gradient"
    np.testing.assert_array_equal(view.image.image, tensors.weight_grad)
    m = float(np.abs(tensors.weight_grad).max())
    np.testing.assert_allclose(view.image.levels, [-m, m], rtol=1e-6)
    assert view.hover_at(1.5, 2.5).startswith("fc1  grad[out=2, in=1] = ")
    view.mode_combo.setCurrentText("last update")  # the combo drives the same switch
    assert view.mode == "last update"
    assert "update" in view.hint
    with pytest.raises(ValueError):
        view.set_mode("bogus")


def test_layer_combo_lists_weight_layers_and_emits_selection(view, qtbot):
    rng = np.random.default_rng(3)
    view.render(make_data(make_tensors(rng)))
    items = [view.layer_combo.itemText(i) for i in range(view.layer_combo.count())]
    assert items == ["fc1", "head"]
    assert view.layer_combo.currentText() == "fc1"
    view.show()
    qtbot.waitExposed(view)
    view.layer_combo.setFocus()
    with qtbot.waitSignal(view.layer_selected, timeout=2000) as blocker:
        qtbot.keyClick(view.layer_combo, QtCore.Qt.Key.Key_Down)  # a user's pick, not a programmatic one
    assert blocker.args == ["head"]


def test_set_selection_moves_the_combo_without_emitting(view, qtbot):
    rng = np.random.default_rng(4)
    view.render(make_data(make_tensors(rng)))
    with qtbot.assertNotEmitted(view.layer_selected):
        view.set_selection("head")
    assert view.layer_combo.currentText() == "head"


def test_new_run_with_other_layers_rebuilds_the_combo(view):
    rng = np.random.default_rng(5)
    view.render(make_data(make_tensors(rng)))
    layers = (LayerInfo(0, "conv", "Conv2d", "param", 10, (2, 1, 2, 2)),)
    tensors = TensorViews(1, "conv", 0, weight=rng.normal(size=(2, 1, 2, 2)).astype(np.float32))
    view.render(make_data(tensors, layers))
    assert [view.layer_combo.itemText(i) for i in range(view.layer_combo.count())] == ["conv"]
    assert view.image.image.shape == (2, 4)  # conv weight drawn as (out, in*kh*kw)


@pytest.mark.parametrize(
    "tensors",
    [None, TensorViews(1, "relu", 0), TensorViews(1, "fc1", 0, weight=np.zeros((0, 3), np.float32))],
    ids=["no-tensors", "no-weight", "empty"],
)
def test_missing_weight_shows_hint(view, tensors):
    view.render(make_data(tensors))
    assert view.hint == "Select a layer with weights"
    assert view.hover_at(1.0, 1.0) == ""


def test_nan_weights(view):
    weight = np.full((4, 4), np.nan, np.float32)
    view.render(make_data(TensorViews(1, "fc1", 0, weight=weight)))
    assert "NaN" in view.hint
    weight[1, 2] = -0.25
    view.render(make_data(TensorViews(2, "fc1", 0, weight=weight.copy())))
    assert view.hint == ""
    np.testing.assert_allclose(view.image.levels, [-0.25, 0.25])
    assert view.hover_at(0.5, 0.5).endswith("= nan")


def test_unchanged_array_is_not_set_again(view):
    rng = np.random.default_rng(6)
    data = make_data(make_tensors(rng))
    view.render(data)
    first = view.image.image
    view.render(data)
    assert view.image.image is first


def test_grab_is_not_flat(view, qtbot):
    rng = np.random.default_rng(7)
    view.render(make_data(make_tensors(rng)))
    view.show()
    qtbot.waitExposed(view)
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(image.height(), -1)
    assert len(np.unique(pixels.reshape(-1, 4)[:, :3], axis=0)) > 20


def test_cell_axes_count_units_at_cell_centres(view, qtbot):
    view.render(make_data(make_tensors(np.random.default_rng(0), shape=(16, 2))))
    view.show()
    qtbot.waitExposed(view)
    bottom = view.plot.getAxis("bottom")
    spacing, values = bottom.tickValues(0.0, 2.0, bottom.size().width())[0]
    assert values == [0.5, 1.5]  # input units 0 and 1, not "0.5, 1.0, 1.5"
    assert bottom.tickStrings(values, 1.0, spacing) == ["0", "1"]
    assert view.hover_at(1.5, 2.5).startswith("fc1  w[out=2, in=1] = ")


def test_narrow_dock_keeps_the_layer_name_readable(shown, qtbot):
    view = shown(WeightHeatmap(), 300, 330)
    layers = (LayerInfo(0, "layers.0.linear", "Linear", "param", 40, (16, 2)),)
    view.render(make_data(make_tensors(np.random.default_rng(0), layer="layers.0.linear", shape=(16, 2)), layers))
    qtbot.wait(20)
    combo = view.layer_combo
    text_width = combo.fontMetrics().horizontalAdvance("layers.0.linear")
    assert combo.width() >= text_width + 16
    minimum = view.canvas.ci.effectiveSizeHint(QtCore.Qt.SizeHint.MinimumSize).width()
    assert minimum <= view.canvas.width()


def test_a_shrunk_matrix_is_titled_with_its_full_shape_and_read_as_block_means(view):
    """A 784-column weight leaves the device averaged to 512 columns: the title says both shapes,
    and a pixel reads as the mean over the block of weights it covers."""
    import torch

    from engine.reduce import shrink_2d

    full = np.random.default_rng(3).normal(0, 0.1, (64, 784)).astype(np.float32)
    shown = shrink_2d(torch.from_numpy(full)).numpy()
    assert shown.shape == (64, 512)
    layers = (LayerInfo(0, "fc1", "Linear", "param", 64 * 784 + 64, (64, 784)),)
    view.render(make_data(TensorViews(10, "fc1", 0, weight=shown), layers=layers))
    assert "64×784, averaged to 64×512" in view.plot_title.text
    for column in (0, 1, 300, 511):
        text = view.hover_at(column + 0.5, 2.5)
        start, end = (column * 784) // 512, -((-(column + 1) * 784) // 512)
        span = f"{start}" if end - start == 1 else f"{start}–{end - 1}"
        assert text == f"fc1  mean of w[out=2, in={span}] = {shown[2, column]:.4g}"
        np.testing.assert_allclose(full[2, start:end].mean(), shown[2, column], rtol=1e-5)
    # Not shrunk: the plain shape and single indices, as before.
    view.render(make_data(make_tensors(np.random.default_rng(4))))
    assert view.plot_title.text.endswith("16×8") and "averaged" not in view.plot_title.text


def test_a_layer_chosen_during_a_phase_by_phase_step_is_not_drawn_with_another_layers_matrix(view):
    rng = np.random.default_rng(5)
    fc1 = make_tensors(rng)
    stepping = Snapshot(1, 10, "stepping", "test", "cpu", LAYERS, Metrics(1.0), Hyper(), tensors=fc1)
    view.render(ViewData(stepping, selected_layer="fc1"))
    assert view.hint == "" and view.layer_combo.currentText() == "fc1"
    view.render(ViewData(stepping, selected_layer="head"))  # fc1's tensors are all there is mid-step
    assert view.layer_combo.currentText() == "head"
    assert view.hint == "head: shown when this phase-by-phase step ends"
    head = make_tensors(rng, layer="head", shape=(3, 16))
    view.render(make_data(head, selected="head"))  # the step ended: head's weights arrive
    assert view.hint == ""
    np.testing.assert_array_equal(view.image.image, head.weight)


def test_axes_name_what_an_embeddings_rows_and_columns_are(view):
    layers = (LayerInfo(0, "embed", "Embedding", "param", 10 * 4, (10, 4)), *LAYERS)
    rng = np.random.default_rng(6)
    view.render(make_data(make_tensors(rng, layer="embed", shape=(10, 4)), layers=layers))
    assert view.plot.getAxis("left").labelText == "token"
    assert view.plot.getAxis("bottom").labelText == "embedding dimension"
    view.render(make_data(make_tensors(rng), layers=layers))  # a Linear again
    assert view.plot.getAxis("left").labelText == "output unit"
    assert view.plot.getAxis("bottom").labelText == "input unit"


@pytest.mark.parametrize("kind, gates, rows", [("LSTM", 4, "gate unit: input, forget, cell, output"),
                                               ("GRU", 3, "gate unit: reset, update, new")])
def test_axes_name_a_recurrent_layers_stacked_gates(view, kind, gates, rows):
    import torch

    module = getattr(torch.nn, kind)(3, 5)
    assert module.weight_ih_l0.shape == (gates * 5, 3)  # (its rows stack the gates, in the label's order)
    layers = (LayerInfo(0, "rnn", kind, "param", 0, tuple(module.weight_ih_l0.shape)), *LAYERS)
    rng = np.random.default_rng(7)
    view.render(make_data(make_tensors(rng, layer="rnn", shape=(gates * 5, 3)), layers=layers))
    assert view.plot.getAxis("left").labelText == rows
    assert view.plot.getAxis("bottom").labelText == "input feature"


def test_a_chosen_layer_not_measured_yet_is_not_told_to_pick_a_layer_with_weights(view):
    view.render(make_data(None, selected="head"))  # (before the first measured step)
    assert view.layer_combo.currentText() == "head"
    assert view.hint == "head: its weights appear once a step has been measured"


def test_a_saved_run_or_recorded_step_never_shows_one_layers_matrix_under_anothers_name(view):
    """A run file, or a step scrubbed back to, holds the matrices of the layer chosen then: choosing
    another says so instead of drawing the first under the new name; going back draws it again."""
    import dataclasses

    from engine.snapshot import SAVED_RUN_ID

    rng = np.random.default_rng(5)
    tensors = make_tensors(rng)
    saved = make_data(tensors)
    saved = dataclasses.replace(saved, snapshot=dataclasses.replace(saved.snapshot, run_id=SAVED_RUN_ID))
    view.render(saved)
    assert not view.hint
    np.testing.assert_array_equal(view.image.image, tensors.weight)
    view.set_selection("head")
    assert view.layer_combo.currentText() == "head"
    assert view.hint == "head: this run file holds the matrices of fc1 only"
    view.set_selection("fc1")
    assert not view.hint
    np.testing.assert_array_equal(view.image.image, tensors.weight)
    scrubbed = dataclasses.replace(make_data(tensors, selected="head"), viewed_step=10)
    view.render(scrubbed)
    assert view.hint == "head: step 10 recorded the matrices of fc1 only (End goes live)"
    view.render(make_data(tensors, selected="head"))  # live: the next measurement brings head's
    assert not view.hint
    np.testing.assert_array_equal(view.image.image, tensors.weight)
