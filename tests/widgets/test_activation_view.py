"""ActivationView: per-layer output histograms, dead/saturated bars, one layer over time."""
from __future__ import annotations

import numpy as np
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
from widgets.activation_view import ActivationView
from widgets.colormaps import SEQUENTIAL_LUT

NAMES = ("fc1", "relu1", "fc2", "tanh")
LAYERS = (
    LayerInfo(0, "fc1", "Linear", "param", 100, (10, 9)),
    LayerInfo(1, "relu1", "ReLU", "activation", 0, None, "relu"),
    LayerInfo(2, "fc2", "Linear", "param", 44, (4, 10)),
    LayerInfo(3, "tanh", "Tanh", "activation", 0, None, "tanh"),
)
BINS = 10
EDGES = np.linspace(-2.0, 2.0, BINS + 1).astype(np.float32)


def make_frame(
    step: int, rng: np.random.Generator, names: tuple[str, ...] = NAMES, ranges: np.ndarray | None = None
) -> StatsFrame:
    counts = rng.random((len(names), BINS)).astype(np.float32)
    counts /= counts.sum(axis=1, keepdims=True)
    values = np.full((len(names), len(STAT_NAMES)), np.nan)
    if names == NAMES:
        values[1, STAT_INDEX["dead_fraction"]] = 0.25
        values[3, STAT_INDEX["saturated_fraction"]] = 0.5
    return StatsFrame(step, 1.0, names, values, counts, EDGES, ranges)


def make_data(frames: tuple[StatsFrame, ...], series=None, selected: str | None = None, stats=None) -> ViewData:
    snapshot = Snapshot(1, 100, "running", "test", "cpu", LAYERS, Metrics(1.0), Hyper(), stats=stats)
    return ViewData(snapshot, frames, series or {}, selected_layer=selected)


@pytest.fixture
def view(qtbot):
    widget = ActivationView()
    qtbot.addWidget(widget)
    widget.resize(800, 640)
    return widget


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    return tuple(make_frame(step, rng) for step in range(0, 200, 10))


def click(qtbot, view: ActivationView, plot, x: float, y: float) -> None:
    """A real mouse click at data coordinates (x, y) of ``plot``."""
    qtbot.wait(10)  # let pending auto-range updates land, as they would between a user's clicks
    scene_point = plot.getViewBox().mapViewToScene(QtCore.QPointF(x, y))
    position = view.canvas.mapFromScene(scene_point)
    qtbot.mouseClick(view.canvas.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=position)


def test_histogram_image_is_layers_by_bins_scaled_per_row(view, frames):
    view.render(make_data(frames))
    frame = frames[-1]
    image = view.hist_image.image
    assert image.shape == (len(NAMES), BINS)
    np.testing.assert_allclose(image, frame.histograms / frame.histograms.max(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(view.hist_image.levels, [0.0, 1.0])
    np.testing.assert_array_equal(view.hist_image.lut, SEQUENTIAL_LUT)
    rect = view.hist_image.mapRectToParent(view.hist_image.boundingRect())
    assert (rect.left(), rect.right(), rect.top(), rect.bottom()) == pytest.approx((-2.0, 2.0, 0.0, len(NAMES)))
    ticks = view.hist_plot.getAxis("left")._tickLevels[0]
    assert [text for _, text in ticks] == list(NAMES)


def test_readout_gives_bin_and_percentage(view, frames):
    view.render(make_data(frames))
    # Row 2 (fc2), bin 3 covers [-0.8, -0.4).
    value = frames[-1].histograms[2, 3] * 100
    assert view.hover_at(-0.6, 2.5) == f"fc2  bin [-0.8, -0.4): {value:.1f} %"
    assert view.hover_at(5.0, 2.5) == ""


def test_rows_with_their_own_ranges_share_one_axis(view):
    rng = np.random.default_rng(3)
    # fc1/fc2 on the default [-2, 2]; relu1 on [0, 2]; tanh on [-1, 1]
    ranges = np.array([[-2, 2], [0, 2], [-2, 2], [-1, 1]], np.float32)
    frame = make_frame(0, rng, ranges=ranges)
    view.render(make_data((frame,)))
    image = view.hist_image.image
    rect = view.hist_image.mapRectToParent(view.hist_image.boundingRect())
    assert (rect.left(), rect.right()) == pytest.approx((-2.0, 2.0))
    columns = image.shape[1]
    centres = -2.0 + (np.arange(columns) + 0.5) * 4.0 / columns
    assert np.isnan(image[1, centres < 0]).all() and np.isfinite(image[1, centres > 0]).all()
    assert np.isnan(image[3, np.abs(centres) > 1]).all() and np.isfinite(image[3, np.abs(centres) < 1]).all()
    # tanh: ten bins over [-1, 1], bin 7 is [0.4, 0.6)
    assert view.hover_at(0.5, 3.5) == f"tanh  bin [0.4, 0.6): {frame.histograms[3, 7] * 100:.1f} %"
    # the history of tanh uses tanh's own range on its y axis
    rect = view.time_image.mapRectToParent(view.time_image.boundingRect())
    assert (rect.top(), rect.bottom()) == pytest.approx((-1.0, 1.0))


def test_dead_and_saturated_bars_skip_nan(view, frames):
    view.render(make_data(frames))
    dead, saturated = view.dead_bars.opts, view.saturated_bars.opts
    assert len(dead["width"]) == 1 and len(saturated["width"]) == 1  # NaN rows are not drawn
    assert dead["width"][0] == pytest.approx(0.25) and 1.0 < dead["y0"][0] < 2.0  # relu1's row
    assert saturated["width"][0] == pytest.approx(0.5) and 3.0 < saturated["y0"][0] < 4.0  # tanh's row


def test_no_activation_modules_is_said_where_the_bars_would_be(view, frames):
    """No layer with a dead or saturated figure: the plot says why instead of standing empty. A
    model whose activations are functions in forward (F.relu) has no activation module; one with
    GELU modules has modules of neither kind."""
    view.render(make_data(frames))
    assert not view.fraction_note.isVisible()  # (bars drawn: no note)
    rng = np.random.default_rng(1)
    linear_only = tuple(make_frame(step, rng, names=("fc1", "fc2")) for step in range(0, 50, 10))
    plain = (LAYERS[0], LAYERS[2])
    snapshot = Snapshot(1, 100, "running", "test", "cpu", plain, Metrics(1.0), Hyper())
    view.render(ViewData(snapshot, linear_only, {}))
    assert len(view.dead_bars.opts["width"]) == 0 and view.fraction_note.isVisible()
    assert view.fraction_note.toPlainText() == "no activation modules"
    assert "applied as a function" in view.fraction_note.toolTip()
    gelu = (LAYERS[0], LayerInfo(1, "gelu", "GELU", "activation", 0, None, "gelu"), LAYERS[2])
    rng = np.random.default_rng(2)
    snapshot = Snapshot(1, 100, "running", "test", "cpu", gelu, Metrics(1.0), Hyper())
    view.render(ViewData(snapshot, tuple(make_frame(s, rng, names=("fc1", "gelu", "fc2")) for s in (60, 70)), {}))
    assert view.fraction_note.isVisible() and view.fraction_note.toPlainText() == "none of ReLU, sigmoid or tanh kind"
    view.render(make_data(frames))
    assert not view.fraction_note.isVisible()


def test_bars_sit_beside_their_histogram_rows(view, frames, qtbot):
    view.render(make_data(frames))
    view.show()
    qtbot.waitExposed(view)
    qtbot.wait(10)
    for row in range(len(NAMES)):
        in_hist = view.hist_plot.getViewBox().mapViewToScene(QtCore.QPointF(0.0, row + 0.5)).y()
        in_bars = view.fraction_plot.getViewBox().mapViewToScene(QtCore.QPointF(0.5, row + 0.5)).y()
        assert in_bars == pytest.approx(in_hist, abs=1.0)


def test_history_of_last_layer_then_selected_layer(view, frames):
    view.render(make_data(frames))
    assert view.focus_layer == "tanh"
    history = view.time_image.image
    assert history.shape == (BINS, len(frames))
    expected = np.stack([f.histograms[3] for f in frames], axis=1)
    np.testing.assert_allclose(history, expected / expected.max(axis=0, keepdims=True), rtol=1e-6)
    view.set_selection("relu1")
    assert view.focus_layer == "relu1"
    expected = np.stack([f.histograms[1] for f in frames], axis=1)
    np.testing.assert_allclose(view.time_image.image, expected / expected.max(axis=0, keepdims=True), rtol=1e-6)


def test_mean_std_band_from_series(view, frames):
    steps = np.arange(0.0, 500.0, 5.0)
    series = {
        "act_mean/fc2": SeriesData(steps, np.sin(steps / 50)),
        "act_std/fc2": SeriesData(steps, np.full(len(steps), 0.5)),
    }
    view.render(make_data(frames, series, selected="fc2"))
    x, y = view.mean_curve.getOriginalDataset()
    np.testing.assert_allclose(y, np.sin(steps / 50))
    band_x, band_y = view.band.getOriginalDataset()  # one closed polygon: mean+std out, mean-std back
    np.testing.assert_allclose(band_x, np.concatenate([steps, steps[::-1]]))
    np.testing.assert_allclose(band_y, np.concatenate([np.sin(steps / 50) + 0.5, (np.sin(steps / 50) - 0.5)[::-1]]))
    view.set_selection("fc1")  # no series for fc1: curves empty, no error
    assert len(view.mean_curve.getOriginalDataset()[0] or []) == 0


def test_click_on_a_row_selects_that_layer(view, frames, qtbot):
    view.render(make_data(frames))
    view.show()
    qtbot.waitExposed(view)
    with qtbot.waitSignal(view.layer_selected, timeout=2000) as blocker:
        click(qtbot, view, view.hist_plot, 0.0, 1.5)
    assert blocker.args == ["relu1"]
    assert view.focus_layer == "relu1"
    with qtbot.waitSignal(view.layer_selected, timeout=2000) as blocker:
        click(qtbot, view, view.fraction_plot, 0.1, 3.5)
    assert blocker.args == ["tanh"]


def test_stats_used_when_no_frames(view):
    frame = make_frame(5, np.random.default_rng(1))
    view.render(make_data((), stats=frame))
    assert view.hint == ""
    assert view.time_image.image.shape == (BINS, 1)


def test_missing_data_and_nan_rows(view, frames):
    view.render(make_data(()))
    assert view.hint.startswith("No activation statistics")
    frame = frames[-1]
    counts = frame.histograms.copy()
    counts[0] = np.nan
    broken = StatsFrame(frame.step + 1, frame.loss, frame.layer_names, frame.values, counts, frame.hist_edges)
    view.render(make_data(frames + (broken,)))
    assert view.hint == ""
    assert np.isnan(view.hist_image.image[0]).all()
    assert view.hover_at(0.0, 0.5).endswith("nan %")


def test_layer_list_changes_with_a_new_run(view, frames):
    view.render(make_data(frames))
    rng = np.random.default_rng(2)
    other = tuple(make_frame(s, rng, ("conv", "act")) for s in range(3))
    view.render(make_data(other))
    assert view.hist_image.image.shape == (2, BINS)
    assert view.focus_layer == "act"
    assert view.time_image.image.shape == (BINS, 3)
    assert view.layer_at_row(1) == "act" and view.layer_at_row(2) is None


def test_grab_is_not_flat(view, frames, qtbot):
    view.render(make_data(frames))
    view.show()
    qtbot.waitExposed(view)
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(-1, 4)
    assert len(np.unique(pixels[:, :3], axis=0)) > 20


# --- narrow and low docks ------------------------------------------------------------------------
MANY = tuple(f"blocks.{b}.{part}" for b in range(3) for part in ("norm1", "attn", "norm2", "ff.0", "ff.1", "ff.2"))


@pytest.mark.parametrize("size", [(300, 300), (420, 430), (900, 640)])
def test_many_layers_in_a_small_dock_keep_readable_labels(shown, qtbot, size):
    view = shown(ActivationView(), *size)
    rng = np.random.default_rng(1)
    frames = tuple(make_frame(step, rng, names=MANY) for step in range(5))
    view.render(make_data(frames))
    qtbot.wait(30)
    # Nothing holds the canvas wider than the dock (a long title used to).
    minimum = view.canvas.ci.effectiveSizeHint(QtCore.Qt.SizeHint.MinimumSize).width()
    assert minimum <= view.canvas.width()
    assert view.fraction_plot.sceneBoundingRect().right() <= view.canvas.width() + 1
    # Row labels: as many as fit, one line apart at least, each naming a distinct layer.
    axis = view.hist_plot.getAxis("left")
    ticks = axis._tickLevels[0]
    assert 1 <= len(ticks) <= len(MANY)
    scale = axis.size().height() / abs(axis.range[1] - axis.range[0])
    line = QtGui.QFontMetrics(axis.style["tickFont"] or QtGui.QFont()).height() * 0.8
    assert all((b[0] - a[0]) * scale >= line for a, b in zip(ticks, ticks[1:]))
    assert len({text for _, text in ticks}) == len(ticks)
    # A narrow dock gives the histograms the room: the fractions plot shrinks with it.
    expected = 150 if size[0] >= 440 else max(48, min(100, 0.34 * size[0]))
    assert view.fraction_plot.width() == pytest.approx(expected, abs=1)
    assert view.hist_plot.getViewBox().width() >= view.fraction_plot.getViewBox().width()
    # No legend box over the bars: the title names the colours.
    assert view.fraction_plot.legend is None
    assert "dead" in view.fraction_title.text


def test_a_very_narrow_dock_still_gives_the_histograms_room(shown, qtbot):
    """200 px (every view shown at once): a fixed 100 px for the fractions left the histograms 8."""
    view = shown(ActivationView(), 200, 420)
    rng = np.random.default_rng(2)
    view.render(make_data(tuple(make_frame(step, rng) for step in range(3))))
    qtbot.wait(30)
    assert view.hist_plot.getViewBox().width() >= 30
    assert len(view.hist_title.text) <= len("histograms")  # a title that fits, not the longest


def test_selecting_attentions_out_proj_says_its_outputs_are_not_observed(view) -> None:
    """MultiheadAttention applies out_proj inside its own forward: the probe never sees its outputs,
    so its plots say that and send the user to the attention layer's output, not stay empty."""
    import torch
    from torch import nn

    from engine.batches import TensorBatches
    from engine.trainer import Trainer

    class Attention(nn.Module):  # an embedding, one self-attention and a head
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(7, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.head = nn.Linear(16, 7)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            return self.head(x + self.attn(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    model = Attention()
    tokens = torch.randint(0, 7, (6, 5))
    trainer = Trainer(model, lambda out, y: torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()),
                      TensorBatches(tokens, tokens))
    try:
        frames = tuple(trainer.step(capture=True).capture.get().frame for _ in range(3))
        layers = trainer.probe.layers
    finally:
        trainer.close()
    uncalled = [info.name for info in layers if not info.called]
    assert uncalled == ["attn.out_proj"] and isinstance(model.attn.out_proj, torch.nn.Linear)
    snapshot = Snapshot(1, 3, "running", "test", "cpu", layers, Metrics(1.0), Hyper(), stats=frames[-1])
    view.render(ViewData(snapshot, frames, {}, selected_layer="attn.out_proj"))
    assert view.focus_layer == "attn.out_proj"
    note = view.focus_note
    assert note.startswith("attn.out_proj runs inside attn's forward") and "not observed" in note
    assert note.endswith("look at attn's output instead.")
    # Said where its history would be drawn (not an empty plot), and in the titles.
    assert view.time_note.isVisible() and view.time_note.toPlainText() == note
    assert view.time_image.image is None and not view.time_plot.getAxis("left").isVisible()
    assert "not observed" in view.time_title.full_text and "not observed" in view.band_title.full_text
    row = frames[-1].layer_names.index("attn.out_proj")
    assert view.hover_at(0.0, row + 0.5) == \
        "attn.out_proj: outputs not observed (it runs inside attn's forward); see attn"
    # The attention layer itself is observed: its plots draw, with no note.
    view.render(ViewData(snapshot, frames, {}, selected_layer="attn"))
    assert view.focus_note == "" and view.time_image.image is not None
    assert not view.time_note.isVisible() and view.time_plot.getAxis("left").isVisible()
    assert "not observed" not in view.time_title.full_text
