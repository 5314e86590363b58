"""FeatureMaps tiles a conv layer's maps and kernels into one image each (and the tiling helper)."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from engine.snapshot import Hyper, LayerInfo, Metrics, Snapshot, TensorViews, ViewData
from widgets.colormaps import DIVERGING_LUT, SEQUENTIAL_LUT
from widgets.feature_maps import FeatureMaps
from widgets.tiling import grid_columns, normalise_each, tile_maps

LAYERS = (
    LayerInfo(0, "conv1", "Conv2d", "param", 16 * 9 + 16, (16, 1, 3, 3)),
    LayerInfo(1, "fc", "Linear", "param", 50, (5, 10)),
)


def make_data(tensors: TensorViews | None) -> ViewData:
    snapshot = Snapshot(1, 10, "running", "test", "cpu", LAYERS, Metrics(1.0), Hyper(), tensors=tensors)
    return ViewData(snapshot)


def conv_tensors(seed: int = 0, channels: int = 10, size: int = 8) -> TensorViews:
    rng = np.random.default_rng(seed)
    maps = rng.random((channels, size, size)).astype(np.float32) * np.arange(1, channels + 1)[:, None, None]
    kernels = rng.normal(size=(16, 3, 3)).astype(np.float32)
    return TensorViews(10, "conv1", 0, feature_maps=maps, kernels=kernels)


@pytest.fixture
def view(qtbot):
    widget = FeatureMaps()
    qtbot.addWidget(widget)
    widget.resize(700, 700)
    return widget


# --- tiling ------------------------------------------------------------------------------
def test_tile_maps_lays_out_rows_with_nan_gutters():
    maps = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    tiles = tile_maps(maps, columns=3)
    assert (tiles.rows, tiles.columns) == (2, 3)
    assert tiles.image.shape == (2 * 2 + 1, 3 * 3 + 2)
    for index in range(5):
        x, y = tiles.origin(index)
        np.testing.assert_array_equal(tiles.image[y : y + 2, x : x + 3], maps[index])
    assert np.isnan(tiles.image[2, :]).all()  # gutter row
    assert np.isnan(tiles.image[:, 3]).all() and np.isnan(tiles.image[:, 7]).all()  # gutter columns
    assert np.isnan(tiles.image[3:, 8:]).all()  # the unused sixth cell
    assert tiles.locate(4 + 1.5, 3 + 0.5) == (4, 1, 0)  # map 4 starts at (4, 3)
    assert tiles.locate(3.5, 0.5) is None  # on a gutter
    assert tiles.locate(8.5, 3.5) is None  # the empty cell
    assert tiles.locate(-1, 0) is None


def test_tiling_defaults_and_edge_cases():
    assert grid_columns(16, 8, 8) == 4
    assert grid_columns(1, 8, 8) == 1
    assert tile_maps(np.ones((4, 4))).image.shape == (4, 4)  # a single 2-D map
    empty = tile_maps(np.zeros((0, 3, 3)))
    assert empty.count == 0 and empty.locate(0, 0) is None
    with pytest.raises(ValueError):
        tile_maps(np.zeros(5))


def test_normalise_each_handles_flat_and_nan_maps():
    maps = np.stack([np.arange(4.0).reshape(2, 2), np.full((2, 2), 7.0), np.full((2, 2), np.nan)])
    maps[0, 0, 0] = np.nan
    out = normalise_each(maps)
    np.testing.assert_allclose(out[0], [[np.nan, 0.0], [0.5, 1.0]])
    np.testing.assert_array_equal(out[1], np.full((2, 2), 0.5))
    assert np.isnan(out[2]).all()


# --- the view ------------------------------------------------------------------------------
def test_feature_maps_tiled_and_normalised_per_map(view):
    tensors = conv_tensors()
    view.render(make_data(tensors))
    assert view.hint == ""
    expected = tile_maps(normalise_each(tensors.feature_maps))
    np.testing.assert_array_equal(view.maps_image.image, expected.image)
    np.testing.assert_array_equal(view.maps_image.levels, [0.0, 1.0])
    np.testing.assert_array_equal(view.maps_image.lut, SEQUENTIAL_LUT)
    assert view.map_tiling.count == 10


def test_shared_range_toggle(view):
    tensors = conv_tensors()
    view.render(make_data(tensors))
    view.shared_checkbox.setChecked(True)
    assert view.shared_range
    np.testing.assert_array_equal(view.maps_image.image, tile_maps(tensors.feature_maps).image)
    maps = tensors.feature_maps
    np.testing.assert_allclose(view.maps_image.levels, [maps.min(), maps.max()], rtol=1e-6)
    view.set_shared_range(False)
    assert not view.shared_checkbox.isChecked()
    np.testing.assert_array_equal(view.maps_image.levels, [0.0, 1.0])


def test_kernels_tiled_with_diverging_symmetric_levels(view):
    tensors = conv_tensors()
    view.render(make_data(tensors))
    np.testing.assert_array_equal(view.kernel_image.image, tile_maps(tensors.kernels).image)
    m = float(np.abs(tensors.kernels).max())
    np.testing.assert_allclose(view.kernel_image.levels, [-m, m], rtol=1e-6)
    np.testing.assert_array_equal(view.kernel_image.lut, DIVERGING_LUT)


def test_readout_gives_channel_position_and_raw_value(view):
    tensors = conv_tensors()
    view.render(make_data(tensors))
    x0, y0 = view.map_tiling.origin(5)
    value = tensors.feature_maps[5, 7, 3]
    assert view.hover_at(x0 + 3.5, y0 + 7.5) == f"channel 5 (x=3, y=7) = {value:.3g}"
    x0, y0 = view.kernel_tiling.origin(2)
    assert view.describe_kernel(x0 + 1.2, y0 + 0.2) == f"kernel 2 (x=1, y=0) = {tensors.kernels[2, 0, 1]:.3g}"
    assert view.hover_at(8.5, 0.5) == ""  # gutter


def test_click_on_a_map_selects_that_channel(view, qtbot):
    view.render(make_data(conv_tensors()))
    view.show()
    qtbot.waitExposed(view)
    qtbot.wait(10)
    x0, y0 = view.map_tiling.origin(6)
    scene_point = view.maps_plot.getViewBox().mapViewToScene(QtCore.QPointF(x0 + 4, y0 + 4))
    with qtbot.waitSignal(view.unit_selected, timeout=2000) as blocker:
        qtbot.mouseClick(
            view.canvas.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=view.canvas.mapFromScene(scene_point)
        )
    assert blocker.args == ["conv1", 6]


def test_hint_when_not_a_conv_layer(view):
    view.render(make_data(TensorViews(10, "fc", 0, weight=np.ones((5, 10), np.float32))))
    assert view.hint.startswith("fc is a Linear.")
    assert "convolutional" in view.hint
    view.render(make_data(None))
    assert "convolutional" in view.hint
    assert view.hover_at(1.0, 1.0) == ""


def test_nan_maps_and_missing_kernels(view):
    maps = np.full((3, 4, 4), np.nan, np.float32)
    maps[1] = 2.0
    view.render(make_data(TensorViews(10, "conv1", 0, feature_maps=maps)))
    assert view.hint == ""
    assert view.kernel_tiling is None
    image = view.maps_image.image
    x0, y0 = view.map_tiling.origin(1)
    assert np.isnan(image[0:4, 0:4]).all() and (image[y0 : y0 + 4, x0 : x0 + 4] == 0.5).all()
    view.set_shared_range(True)  # all-NaN and flat maps with a shared range: no error
    assert view.hover_at(0.5, 0.5) == "channel 0 (x=0, y=0) = nan"


def test_grab_is_not_flat(view, qtbot):
    view.render(make_data(conv_tensors(channels=16, size=12)))
    view.show()
    qtbot.waitExposed(view)
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(-1, 4)
    assert len(np.unique(pixels[:, :3], axis=0)) > 20


def test_maps_of_another_layer_are_named_and_selected_by_their_own_layer(view, qtbot):
    # The focused layer is a linear one; the maps come from the model's first conv layer.
    tensors = conv_tensors()
    tensors = TensorViews(10, "hidden", 0, feature_maps=tensors.feature_maps, kernels=tensors.kernels,
                          feature_layer="conv1")
    view.render(make_data(tensors))
    assert view.hint == ""
    emitted = []
    view.unit_selected.connect(lambda layer, unit: emitted.append((layer, unit)))
    view.show()
    qtbot.waitExposed(view)
    qtbot.wait(10)
    x0, y0 = view.map_tiling.origin(3)
    scene = view.maps_plot.getViewBox().mapViewToScene(QtCore.QPointF(x0 + 1.5, y0 + 1.5))
    qtbot.mouseClick(view.canvas.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=view.canvas.mapFromScene(scene))
    assert emitted == [("conv1", 3)]


def _gaps(line: np.ndarray) -> list[int]:
    """Widths of the dark runs between the first and last bright pixel of a line of RGB pixels."""
    bright = line.astype(np.int64).sum(axis=1) > 300  # (the background sums to 72)
    inside = bright[np.argmax(bright):len(bright) - np.argmax(bright[::-1])]
    edges = np.flatnonzero(np.diff(np.concatenate([[1], inside.astype(np.int8), [1]])))
    return list(edges[1::2] - edges[0::2])


@pytest.mark.parametrize("size", [260, 330, 410, 500])
def test_every_gap_between_maps_is_drawn_alike(shown, qtbot, size):
    """Bright maps drawn smaller than their pixels: the image alone kept some 1-px gutters and
    dropped others, merging maps at random; every gap must read alike."""
    view = shown(FeatureMaps(), size, size)
    view.set_shared_range(True)
    maps = np.ones((16, 28, 28), np.float32)
    maps[:, 0, 0] = 0.0  # (a range to scale by: the maps are its bright end)
    view.render(make_data(TensorViews(10, "conv1", 0, feature_maps=maps)))
    qtbot.wait(20)
    image = view.canvas.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(image.height(), -1)
    pixels = pixels[:, :image.width() * 4].reshape(image.height(), image.width(), 4)[..., 2::-1]
    tiles = view.map_tiling
    assert tiles is not None and (tiles.rows, tiles.columns) == (4, 4)
    height, width = tiles.image.shape

    def on_screen(x: float, y: float) -> tuple[int, int]:
        point = view.canvas.mapFromScene(view.maps_plot.vb.mapViewToScene(QtCore.QPointF(x, y)))
        return int(point.x()), int(point.y())

    (left, top), (right, bottom) = on_screen(0.0, 0.0), on_screen(width, height)
    x, y = on_screen(14.0, 14.0)  # inside the first map
    across, down = _gaps(pixels[y, left:right + 1]), _gaps(pixels[top:bottom + 1, x])
    for gaps in (across, down):  # three gaps each way, none lost, within a pixel of each other
        assert len(gaps) == 3 and min(gaps) >= 2 and max(gaps) - min(gaps) <= 1, gaps


def test_a_model_without_any_conv_layer_is_told_so_not_asked_to_select_one(view):
    layers = (LayerInfo(0, "fc", "Linear", "param", 50, (5, 10)), LayerInfo(1, "act", "ReLU", "activation", 0))
    snapshot = Snapshot(1, 10, "running", "test", "cpu", layers, Metrics(1.0), Hyper(),
                        tensors=TensorViews(10, "fc", 0, weight=np.ones((5, 10), np.float32)))
    view.render(ViewData(snapshot))
    assert view.hint.startswith("This model has no convolutional layer")
    assert "Select" not in view.hint


def test_a_conv_layer_not_measured_yet_is_not_told_to_select_a_conv_layer(view):
    view.selected_layer = "conv1"
    view.render(make_data(None))  # (before the first measured step)
    assert view.hint == "conv1's feature maps appear once a step has been measured"
