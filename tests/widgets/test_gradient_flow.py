"""GradientFlow: log-scale gradient norms per layer, their history, weight norm and update ratio."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6 import QtCore, QtGui

from engine.snapshot import (
    STAT_INDEX,
    STAT_NAMES,
    Hyper,
    LayerInfo,
    Metrics,
    SeriesData,
    Snapshot,
    StatsFrame,
    ViewData,
)
from widgets.colormaps import SEQUENTIAL_LUT
from widgets.gradient_flow import GradientFlow, abbreviate, align_series, fill_missing_columns

LAYERS = (
    LayerInfo(0, "encoder.fc1", "Linear", "param", 100, (10, 9)),
    LayerInfo(1, "encoder.relu", "ReLU", "activation", 0, None, "relu"),
    LayerInfo(2, "encoder.fc2", "Linear", "param", 44, (4, 10)),
    LayerInfo(3, "norm", "LayerNorm", "param", 8, (4,)),
    LayerInfo(4, "head", "Linear", "param", 15, (3, 4)),
    LayerInfo(5, "unused", "Linear", "param", 0, None),  # no parameters: no gradient
)
PARAM_LAYERS = ("encoder.fc1", "encoder.fc2", "norm", "head")
GRAD = {"encoder.fc1": 1e-1, "encoder.fc2": 3.2e-3, "norm": np.nan, "head": 2e-5}


def make_frame(step: int = 1200) -> StatsFrame:
    names = tuple(layer.name for layer in LAYERS)
    values = np.full((len(names), len(STAT_NAMES)), np.nan)
    for i, name in enumerate(names):
        if name in GRAD:
            values[i, STAT_INDEX["grad_norm"]] = GRAD[name]
            values[i, STAT_INDEX["weight_norm"]] = 1.0 + i
            values[i, STAT_INDEX["update_ratio"]] = 1e-3 * (i + 1)
    return StatsFrame(step, 0.5, names, values, np.zeros((len(names), 4), np.float32), np.linspace(-1, 1, 5))


def make_series(n: int = 300) -> dict[str, SeriesData]:
    steps = np.arange(n, dtype=np.float64) * 10.0
    series = {
        "grad_norm/encoder.fc1": SeriesData(steps, np.full(n, 1e-1)),
        "grad_norm/encoder.fc2": SeriesData(steps, 1e-3 * (1 + steps / steps[-1])),
        "grad_norm/norm": SeriesData(steps, np.full(n, np.nan)),  # all NaN: skipped
        "grad_norm/head": SeriesData(steps, np.full(n, 3.2e-4)),
    }
    return series


def make_data(frame=None, series=None, layers=LAYERS, selected=None) -> ViewData:
    snapshot = Snapshot(1, 1200, "running", "test", "cpu", layers, Metrics(1.0), Hyper(), stats=frame)
    return ViewData(snapshot, (frame,) if frame is not None else (), series or {}, selected_layer=selected)


@pytest.fixture
def view(qtbot):
    widget = GradientFlow()
    qtbot.addWidget(widget)
    widget.resize(800, 600)
    return widget


def click(qtbot, view: GradientFlow, plot, x: float, y: float) -> None:
    qtbot.wait(10)  # let pending auto-range updates land, as they would between a user's clicks
    scene_point = plot.getViewBox().mapViewToScene(QtCore.QPointF(x, y))
    position = view.canvas.mapFromScene(scene_point)
    qtbot.mouseClick(view.canvas.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=position)


def test_bars_are_log10_norms_of_layers_with_parameters(view):
    view.render(make_data(make_frame(), make_series()))
    assert view.layers == PARAM_LAYERS
    opts = view.bars.opts
    # NaN (norm) is not drawn: three bars at x = 0, 1, 3
    np.testing.assert_array_equal(opts["x"], [0.0, 1.0, 3.0])
    tops = np.asarray(opts["height"]) + opts["y0"]
    np.testing.assert_allclose(tops, np.log10([1e-1, 3.2e-3, 2e-5]))
    assert opts["y0"] == np.floor(np.log10(2e-5)) - 1
    assert view.bar_plot.getAxis("left").logMode
    ticks = view.bar_plot.getAxis("bottom")._tickLevels[0]
    assert [text for _, text in ticks] == ["encoder.fc1", "encoder.fc2", "norm", "head"]


def rendered_rgb(image: pg.ImageItem, row: int, column: int) -> tuple[int, int, int]:
    """The colour the image item paints at (row, column) of its data."""
    image.render()
    r, g, b, _ = QtGui.QColor(image.qimage.pixel(column, row)).getRgb()
    return (r, g, b)


def test_a_zero_gradient_reads_as_zero_not_as_a_small_one(view):
    frame = make_frame()
    frame.values[frame.layer_names.index("norm"), STAT_INDEX["grad_norm"]] = 0.0  # a dead layer
    view.render(make_data(frame, make_series()))
    opts = view.bars.opts
    # No bar for it, however short (one would read as a small gradient), but a "0" on the floor.
    np.testing.assert_array_equal(opts["x"], [0.0, 1.0, 3.0])
    assert opts["y0"] == np.floor(np.log10(2e-5)) - 1
    x, y = view.zero_marks.getData()
    np.testing.assert_array_equal(x, [2.0])
    np.testing.assert_array_equal(y, [opts["y0"]])
    assert view.zero_marks.data["brush"][0].color().getRgb()[:3] == (150, 150, 150)
    assert "|g| = 0  " in view.describe_layer(2)
    view.selected_layer = "norm"
    view.render(make_data(frame, make_series()))
    assert view.zero_marks.data["brush"][0].color().getRgb()[:3] == (255, 210, 90)  # selected
    # Over the run: a row of zeros is grey, off the colour ramp, not its darkest colour.
    series = make_series()
    series["grad_norm/norm"] = SeriesData(series["grad_norm/head"].steps, np.zeros(300))
    view.render(make_data(frame, series))
    row = view.heatmap_layers.index("norm")
    assert {rendered_rgb(view.heat_image, row, column) for column in (0, 150, 299)} == {(150, 150, 150)}
    darkest = view.heatmap_layers.index("head")  # the smallest norm measured
    assert rendered_rgb(view.heat_image, darkest, 0) == tuple(SEQUENTIAL_LUT[0][:3])
    assert view.hover_at(1200.0, row + 0.5) == "norm  step 1200: |g| = 0"
    assert "grey: 0" in view.heat_title.full_text


def test_weight_norm_and_update_ratio_per_layer(view):
    view.render(make_data(make_frame()))
    np.testing.assert_allclose(view.weight_norm_log, np.log10([1.0, 3.0, 4.0, 5.0]))
    np.testing.assert_allclose(view.update_ratio_log, np.log10([1e-3, 3e-3, 4e-3, 5e-3]))
    # both drawn by one scatter item: circles for ‖w‖, triangles for the update ratio
    x, y = view.ratio_points.getData()
    np.testing.assert_array_equal(x, [0, 1, 2, 3] * 2)
    np.testing.assert_allclose(y, np.concatenate([view.weight_norm_log, view.update_ratio_log]))
    assert list(view.ratio_points.data["symbol"]) == ["o"] * 4 + ["t"] * 4


def test_heatmap_is_log10_series_and_skips_nan_rows(view):
    series = make_series()
    view.render(make_data(make_frame(), series))
    assert view.heatmap_layers == ("encoder.fc1", "encoder.fc2", "head")
    image = view.heat_image.image
    assert image.shape == (3, 300)
    expected = np.log10(np.vstack([series[f"grad_norm/{n}"].values for n in view.heatmap_layers]))
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    # The smallest and largest norms take the colour ramp's two ends.
    low = np.unravel_index(np.argmin(expected), expected.shape)
    high = np.unravel_index(np.argmax(expected), expected.shape)
    assert rendered_rgb(view.heat_image, *low) == tuple(SEQUENTIAL_LUT[0][:3])
    assert rendered_rgb(view.heat_image, *high) == tuple(SEQUENTIAL_LUT[-1][:3])


def test_a_frozen_layer_keeps_its_heatmap_row_marked_frozen(view):
    """The heatmap's rows match the bars' slots: a frozen layer's row stays, marked "frozen", empty
    (transparent) where it has no norms, and with the norms it had before it was frozen."""
    import dataclasses

    frozen_layers = tuple(dataclasses.replace(info, trainable=info.name != "encoder.fc2") for info in LAYERS)
    series = make_series()
    view.render(make_data(make_frame(), series, layers=frozen_layers))
    assert view.heatmap_layers == ("encoder.fc1", "encoder.fc2", "head")  # "norm": no norms, not frozen
    assert view.heatmap_frozen_rows == (1,)
    frozen_layers = tuple(dataclasses.replace(info, trainable=info.name not in ("encoder.fc2", "norm"))
                          for info in LAYERS)
    view.render(make_data(make_frame(), series, layers=frozen_layers))
    assert view.heatmap_layers == ("encoder.fc1", "encoder.fc2", "norm", "head")
    assert view.heatmap_frozen_rows == (1, 2)
    image = view.heat_image.image
    assert np.isnan(image[2]).all()
    np.testing.assert_allclose(image[[0, 1, 3]], np.log10(np.vstack(
        [series[f"grad_norm/{name}"].values for name in ("encoder.fc1", "encoder.fc2", "head")])), rtol=1e-6)
    view.heat_image.render()
    assert QtGui.QColor.fromRgba(view.heat_image.qimage.pixel(5, 2)).alpha() == 0  # the background shows
    assert "frozen" in view.describe_point(100.0, 2.5) and "|g|" not in view.describe_point(100.0, 2.5)
    assert "|g| = 1.0e-01" in view.describe_point(100.0, 0.5)
    # Unfrozen: "norm" (all NaN) goes.
    view.render(make_data(make_frame(), series, layers=LAYERS))
    assert view.heatmap_layers == ("encoder.fc1", "encoder.fc2", "head") and view.heatmap_frozen_rows == ()


def test_a_partly_frozen_layers_readout_says_what_is_frozen(view):
    import dataclasses

    layers = tuple(dataclasses.replace(info, frozen_params=("weight",)) if info.name == "encoder.fc1" else info
                   for info in LAYERS)
    view.render(make_data(make_frame(), layers=layers))
    assert view.describe_layer(0).startswith("encoder.fc1  step 1200: |g| = 1.0e-01")
    assert "(weight frozen: |g| and the update are the rest's)" in view.describe_layer(0)
    assert "frozen" not in view.describe_layer(1) and view.frozen_layers == ()


def test_heatmap_aligns_series_of_different_lengths(view):
    short = SeriesData(np.array([0.0, 1000.0, 2000.0]), np.array([1e-2, 1e-3, 1e-4]))
    long = SeriesData(np.linspace(0, 2000, 201), np.full(201, 1.0))
    series = {"grad_norm/encoder.fc1": long, "grad_norm/head": short}
    view.render(make_data(None, series))
    image = view.heat_image.image
    assert image.shape == (2, 201)
    middle = np.log10(np.interp(1000, [0, 1000], [1e-2, 1e-3]))
    np.testing.assert_allclose(image[1, [0, 100, 200]], [-2.0, middle, -4.0])
    steps, values = align_series([short, long])
    assert len(steps) == 201 and values.shape == (2, 201)


def test_readout_for_the_heatmap_and_a_bar(view):
    view.render(make_data(make_frame(), make_series()))
    # row 2 = head; step 1200 is column 120
    assert view.hover_at(1200.0, 2.5) == "head  step 1200: |g| = 3.2e-04"
    assert view.hover_at(1200.0, 7.5) == ""
    assert view.describe_layer(1).startswith("encoder.fc2  step 1200: |g| = 3.2e-03")


def test_click_selects_a_layer(view, qtbot):
    view.render(make_data(make_frame(), make_series()))
    view.show()
    qtbot.waitExposed(view)
    with qtbot.waitSignal(view.layer_selected, timeout=2000) as blocker:
        click(qtbot, view, view.heat_plot, 1500.0, 1.5)
    assert blocker.args == ["encoder.fc2"]
    with qtbot.waitSignal(view.layer_selected, timeout=2000) as blocker:
        click(qtbot, view, view.bar_plot, 3.0, -3.0)
    assert blocker.args == ["head"]
    brushes = view.bars.opts["brushes"]
    assert brushes[2] is not brushes[0]  # the selected bar is highlighted


def test_hints_for_missing_data(view):
    view.render(make_data())
    assert view.hint.startswith("No gradients yet")
    only_activations = (LayerInfo(0, "relu", "ReLU", "activation", 0, None, "relu"),)
    view.render(make_data(layers=only_activations))
    assert view.hint == "This model has no layers with parameters"
    view.render(make_data(make_frame()))  # a frame without any series still draws the bars
    assert view.hint == ""
    assert view.heatmap_layers == ()
    assert view.hover_at(0.0, 0.5) == ""


def test_new_run_with_other_layers(view):
    view.render(make_data(make_frame(), make_series()))
    layers = (LayerInfo(0, "conv", "Conv2d", "param", 10, (2, 1, 2, 2)),)
    values = np.full((1, len(STAT_NAMES)), np.nan)
    values[0, STAT_INDEX["grad_norm"]] = 0.5
    frame = StatsFrame(3, 1.0, ("conv",), values, np.zeros((1, 4), np.float32), np.linspace(-1, 1, 5))
    view.render(make_data(frame, {}, layers=layers))
    assert view.layers == ("conv",)
    np.testing.assert_array_equal(view.bars.opts["x"], [0.0])
    assert view.heatmap_layers == ()  # the old run's series are gone
    assert [text for _, text in view.bar_plot.getAxis("bottom")._tickLevels[0]] == ["conv"]


def test_abbreviate_keeps_labels_short():
    assert abbreviate("fc1") == "fc1"
    assert abbreviate("encoder.layers.3.self_attn.out_proj") == "…tn.out_proj"
    assert len(abbreviate("a.very_long_module_name_indeed")) <= 12


def test_grab_is_not_flat(view, qtbot):
    view.render(make_data(make_frame(), make_series()))
    view.show()
    qtbot.waitExposed(view)
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(-1, 4)
    assert len(np.unique(pixels[:, :3], axis=0)) > 20


# --- narrow docks ------------------------------------------------------------------------------
TRANSFORMER = (
    "embed", "blocks.0.norm1", "blocks.0.attn.out_proj", "blocks.0.norm2", "blocks.0.ff.0", "blocks.0.ff.2",
    "blocks.1.norm1", "blocks.1.attn.out_proj", "blocks.1.norm2", "blocks.1.ff.0", "blocks.1.ff.2", "norm", "head",
)


def transformer_data() -> ViewData:
    layers = tuple(LayerInfo(i, name, "Linear", "param", 10, (4, 4)) for i, name in enumerate(TRANSFORMER))
    values = np.full((len(TRANSFORMER), len(STAT_NAMES)), np.nan)
    values[:, STAT_INDEX["grad_norm"]] = np.logspace(-6, -1, len(TRANSFORMER))
    values[:, STAT_INDEX["weight_norm"]] = 3.0
    values[:, STAT_INDEX["update_ratio"]] = 1e-4
    frame = StatsFrame(300, 0.5, TRANSFORMER, values, np.zeros((len(TRANSFORMER), 4), np.float32),
                       np.linspace(-1, 1, 5))
    steps = np.arange(300.0)
    series = {f"grad_norm/{name}": SeriesData(steps, np.full(300, 10.0 ** -(i % 6)))
              for i, name in enumerate(TRANSFORMER)}
    return make_data(frame, series, layers=layers)


def row_label_gaps(axis, length: float) -> list[float]:
    """Pixel distances between consecutive labelled rows of a vertical category axis."""
    positions = [position for position, _ in axis._tickLevels[0]]
    low, high = axis.range
    scale = length / abs(high - low)
    return [abs(b - a) * scale for a, b in zip(positions, positions[1:])]


@pytest.mark.parametrize("size, arrangement", [((900, 600), "side by side"), ((420, 430), "stacked"),
                                               ((300, 330), "bars only")])
def test_layout_adapts_to_the_dock_and_never_overflows(shown, qtbot, size, arrangement):
    view = shown(GradientFlow(), *size)
    view.render(transformer_data())
    qtbot.wait(30)
    assert view.arrangement == arrangement
    assert view.ratio_plot.isVisible() == (arrangement != "bars only")
    # Everything fits the canvas: no title or axis holds the plots wider than the dock.
    minimum = view.canvas.ci.effectiveSizeHint(QtCore.Qt.SizeHint.MinimumSize).width()
    assert minimum <= view.canvas.width()
    assert view.heat_plot.sceneBoundingRect().right() <= view.canvas.width() + 1
    # Heatmap rows: 13 layers get as many labels as have room, never one on another.
    left = view.heat_plot.getAxis("left")
    shown = left.shown_labels()
    assert 1 <= len(shown) <= len(TRANSFORMER)
    line = QtGui.QFontMetrics(left.style["tickFont"] or QtGui.QFont()).height() * 0.8
    assert all(gap >= line for gap in row_label_gaps(left, left.size().height()))
    # The layer names under the bars (or the points under them) do not collide.
    bottom = (view.ratio_plot if arrangement == "stacked" else view.bar_plot).getAxis("bottom")
    assert bottom.shown_labels()
    assert len(set(bottom.shown_labels())) == len(bottom.shown_labels())


def test_missing_steps_do_not_draw_black_columns(view):
    steps = np.arange(10.0)
    gappy = np.full(10, 1e-2)
    gappy[4] = np.nan  # a step the probe did not measure: every layer NaN there
    series = {"grad_norm/encoder.fc1": SeriesData(steps, gappy), "grad_norm/head": SeriesData(steps, gappy * 2)}
    view.render(make_data(make_frame(), series))
    image = view.heat_image.image
    assert np.isfinite(image).all()
    np.testing.assert_allclose(image[:, 4], image[:, 3])
    assert view.hover_at(4.0, 0.5) == "encoder.fc1  step 4: |g| = nan"  # the readout tells the truth


def test_fill_missing_columns_keeps_partial_gaps():
    image = np.array([[1.0, np.nan, np.nan, 4.0], [1.0, np.nan, 3.0, np.nan]])
    filled = fill_missing_columns(image)
    np.testing.assert_array_equal(filled[:, 1], [1.0, 1.0])  # a whole column: the one before
    assert np.isnan(filled[0, 2]) and filled[1, 2] == 3.0  # one layer missing: kept as a gap
    leading = fill_missing_columns(np.array([[np.nan, 2.0]]))
    assert np.isnan(leading[0, 0])


def test_heatmap_follows_a_growing_run_at_a_fixed_point_count(qtbot) -> None:
    """Decimated series keep ~256 points while the run grows: the x range must follow the steps."""
    import numpy as np

    from engine.snapshot import Hyper, LayerInfo, Metrics, SeriesData, Snapshot, ViewData
    from widgets.gradient_flow import GradientFlow

    view = GradientFlow()
    qtbot.addWidget(view)
    view.resize(600, 500)
    layers = (LayerInfo(index=0, name="fc", type_name="Linear", role="param", params=6, weight_shape=(2, 3)),)
    for last in (300, 1000):
        steps = np.linspace(1, last, 256)
        snap = Snapshot(run_id=1, step=last, state="running", scenario="s", device="cpu", layers=layers,
                        metrics=Metrics(train_loss=1.0), hyper=Hyper())
        view.render(ViewData(snapshot=snap, series={"grad_norm/fc": SeriesData(steps, np.full(256, 0.1))}))
    x_range = view.heat_plot.getViewBox().viewRange()[0]
    assert x_range[1] >= 1000


def test_layers_named_by_a_diagnosis_get_their_severity_outline(qtbot) -> None:
    from engine.diagnostics import Diagnosis
    from widgets.findings import SEVERITY_RGB

    view = GradientFlow()
    qtbot.addWidget(view)
    finding = Diagnosis(code="vanishing_gradients", severity="warning", layers=("encoder.fc1",), step=3,
                        message="m", evidence={}, fixes=())
    frame = make_frame()
    snapshot = Snapshot(1, 1200, "running", "test", "cpu", LAYERS, Metrics(1.0), Hyper(), stats=frame,
                        diagnoses=(finding,))
    view.render(ViewData(snapshot, (frame,), {}))
    pens = view.bars.opts["pens"]
    drawn = [name for name in PARAM_LAYERS if np.isfinite(GRAD[name])]  # norm has no gradient
    assert len(pens) == len(drawn)
    flagged = drawn.index("encoder.fc1")
    assert pens[flagged].color().getRgb()[:3] == SEVERITY_RGB["warning"]
    assert all(pen.style() == QtCore.Qt.PenStyle.NoPen for i, pen in enumerate(pens) if i != flagged)
    assert view.describe_layer(0).endswith("⚠ vanishing gradients")
    assert "⚠" not in view.describe_layer(1)
    # The finding gone (a new run): the outline goes too.
    view.render(make_data(frame))
    assert all(pen.style() == QtCore.Qt.PenStyle.NoPen for pen in view.bars.opts["pens"])


def test_a_reinitialized_run_fits_its_own_values_not_the_old_runs(view) -> None:
    """Reinitialize keeps the layers and restarts the steps: nothing of the old run's range stays."""
    frame = make_frame(step=2990)
    view.render(make_data(frame, make_series()))  # steps 0 .. 2990
    assert view.heat_plot.getViewBox().viewRange()[0][1] > 2900
    # The new run's first frame (step 0, paused), before any of its steps is recorded.
    first = StatsFrame(0, 0.7, frame.layer_names, frame.values * 100.0, frame.histograms, frame.hist_edges)
    snapshot = Snapshot(2, 0, "paused", "test", "cpu", LAYERS, Metrics(0.7), Hyper(), stats=first)
    view.render(ViewData(snapshot, (first,), {}))
    assert view.heatmap_layers == ()
    x_range = view.heat_plot.getViewBox().viewRange()[0]
    assert x_range[0] <= 0 <= x_range[1] and x_range[1] - x_range[0] < 5
    assert "…" not in view.heat_title.full_text  # the old run's colour scale is gone too
    # Its first steps: the heatmap fits them, and the bars' axis fits its (larger) norms.
    steps = np.arange(21, dtype=np.float64)
    series = {f"grad_norm/{name}": SeriesData(steps, np.full(21, 10.0)) for name in ("encoder.fc1", "head")}
    snapshot = Snapshot(2, 20, "paused", "test", "cpu", LAYERS, Metrics(0.7), Hyper(), stats=first)
    view.render(ViewData(snapshot, (first,), series))
    x_range = view.heat_plot.getViewBox().viewRange()[0]
    assert x_range == pytest.approx([-0.5, 20.5])
    view.bar_plot.getViewBox().updateAutoRange()
    tops = np.asarray(view.bars.opts["height"]) + view.bars.opts["y0"]
    low, high = view.bar_plot.getViewBox().viewRange()[1]
    assert low <= view.bars.opts["y0"] and high >= tops.max()


def probed_snapshot(model, step: int) -> Snapshot:
    """One captured SGD step of ``model`` through the real probe, as the worker would publish it."""
    import torch

    from engine.probe import Probe

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    probe = Probe(model)
    x = torch.randn(16, 4)
    with probe:
        probe.begin_step(True)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        probe.after_backward()
        probe.before_update()
        optimizer.step()
        probe.after_update()
        frame = probe.finish(step, torch.zeros(1, 2)).get().frame
    return Snapshot(1, step, "running", "test", "cpu", probe.layers, Metrics(float(loss.detach())), Hyper(),
                    stats=frame)


def test_a_frozen_layer_is_marked_frozen_in_its_slot_not_left_empty(view) -> None:
    """A pretrained layer the user froze (requires_grad False on all it owns) has no gradient: its
    slot says "frozen", with no bar and no "0", and its readout says why; unfrozen, its bar returns."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model[2].requires_grad_(False)
    snapshot = probed_snapshot(model, 1)
    modules = dict(model.named_modules())
    frozen = [info.name for info in snapshot.layers
              if info.params > 0 and all(not p.requires_grad for p in modules[info.name].parameters(recurse=False))]
    assert frozen == ["2"]
    view.render(ViewData(snapshot, (snapshot.stats,), {}))
    assert view.layers == ("0", "2", "4")
    assert view.frozen_layers == ("2",)
    x, y = view.frozen_marks.getData()
    np.testing.assert_array_equal(x, [1.0])
    assert y[0] == view.bars.opts["y0"]  # on the bars' floor, where its bar would start
    np.testing.assert_array_equal(view.bars.opts["x"], [0.0, 2.0])  # no bar for it
    assert len(view.zero_marks.getData()[0]) == 0  # and not a "0": it isn't a dead layer
    assert "frozen" in view.describe_layer(1) and "|g|" not in view.describe_layer(1)
    assert "frozen" not in view.describe_layer(0)
    # Selected, its mark is highlighted like a bar.
    view.selected_layer = "2"
    view.render(ViewData(snapshot, (snapshot.stats,), {}))
    assert view.frozen_marks.data["brush"][0].color().getRgb()[:3] == (255, 210, 90)
    # Unfrozen mid-run: the next published snapshot draws its gradient as a bar again.
    model[2].requires_grad_(True)
    snapshot = probed_snapshot(model, 2)
    view.render(ViewData(snapshot, (snapshot.stats,), {}))
    assert view.frozen_layers == ()
    assert len(view.frozen_marks.getData()[0]) == 0
    np.testing.assert_array_equal(view.bars.opts["x"], [0.0, 1.0, 2.0])
