"""DecisionBoundary: prediction image, data points, hidden-unit miniatures, readout, selection."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from engine.snapshot import BoundaryView, Hyper, Metrics, Snapshot, ViewData
from widgets.decision_boundary import CLASS_COLOURS, DecisionBoundary

EXTENT = (-2.0, 2.0, -1.5, 1.5)


def boundary(n_classes=2, units=6, height=30, width=40, n_points=50, seed=0, **overrides) -> BoundaryView:
    rng = np.random.default_rng(seed)
    xs = np.linspace(EXTENT[0], EXTENT[1], width)
    ys = np.linspace(EXTENT[2], EXTENT[3], height)
    grid_x, grid_y = np.meshgrid(xs, ys)
    if n_classes == 2:
        prediction = 1.0 / (1.0 + np.exp(-3.0 * grid_x))
    else:
        prediction = (np.arange(height * width).reshape(height, width) % n_classes).astype(np.float64)
    points = rng.uniform((EXTENT[0], EXTENT[2]), (EXTENT[1], EXTENT[3]), size=(n_points, 2))
    labels = np.arange(n_points) % n_classes
    hidden = np.stack([np.tanh(grid_x * k - grid_y) for k in range(units)]) if units else None
    parts = dict(step=1, extent=EXTENT, prediction=prediction, n_classes=n_classes, points=points,
                 labels=labels, hidden=hidden, hidden_layer="layers.0.linear" if units else None)
    parts.update(overrides)
    return BoundaryView(**parts)


def view_data(b: BoundaryView | None) -> ViewData:
    snapshot = Snapshot(run_id=1, step=1, state="running", scenario="test", device="cpu", layers=(),
                        metrics=Metrics(train_loss=1.0), hyper=Hyper(), boundary=b)
    return ViewData(snapshot=snapshot)


@pytest.fixture
def view(shown) -> DecisionBoundary:
    return shown(DecisionBoundary(), 600, 600)


def test_binary_prediction_image_levels_and_extent(view):
    b = boundary()
    view.render(view_data(b))
    assert view.image.image.shape == (30, 40)
    assert view.image.getLevels() == pytest.approx((0.0, 1.0))
    assert view.image.lut.shape == (256, 3)
    rect = view.image.mapRectToParent(view.image.boundingRect())
    assert (rect.left(), rect.right(), rect.top(), rect.bottom()) == pytest.approx(EXTENT)
    # Low p is blue, high p red.
    lut = view.image.lut
    assert lut[0][2] > lut[0][0] and lut[255][0] > lut[255][2]


def test_points_coloured_by_label(view):
    b = boundary(n_points=50)
    view.render(view_data(b))
    x, y = view.points.getData()
    assert len(x) == 50
    np.testing.assert_allclose(x, b.points[:, 0])
    brushes = view.points.data["brush"]
    assert brushes[0].color().getRgb()[:3] == CLASS_COLOURS[0]
    assert brushes[1].color().getRgb()[:3] == CLASS_COLOURS[1]
    assert view.points.opts["pen"].color().lightness() < 40  # a dark outline


def test_multiclass_uses_the_categorical_palette(view):
    b = boundary(n_classes=4, n_points=8)
    view.render(view_data(b))
    assert view.image.image.dtype == np.uint8
    np.testing.assert_array_equal(view.image.image, b.prediction.astype(np.uint8))
    assert view.image.getLevels() == pytest.approx((0, 255))
    lut = view.image.lut
    assert len({tuple(lut[k]) for k in range(4)}) == 4
    # Regions are muted versions of the point colours: same hue order, darker.
    for k in range(4):
        assert sum(int(v) for v in lut[k]) < sum(CLASS_COLOURS[k])
    assert [b.color().getRgb()[:3] for b in view.points.data["brush"][:4]] == list(CLASS_COLOURS[:4])
    assert view.hover_at(EXTENT[0] + 0.01, EXTENT[2] + 0.01) == f"x={EXTENT[0] + 0.01:.2f}, y=-1.49: class 0"


def test_readout_for_a_known_point(view):
    prediction = np.zeros((30, 40))
    # x=0.31 -> column int((0.31 + 2) / 4 * 40) = 23; y=-1.20 -> row int(0.3 / 3 * 30) = 3
    prediction[3, 23] = 0.83
    view.render(view_data(boundary(prediction=prediction)))
    assert view.hover_at(0.31, -1.20) == "x=0.31, y=-1.20: p(class 1) = 0.83"
    assert view.readout_text() == "x=0.31, y=-1.20: p(class 1) = 0.83"
    assert view.hover_at(5.0, 0.0) == ""


def test_miniatures_one_per_hidden_unit(view):
    view.render(view_data(boundary(units=6)))
    assert view.miniature_count() == 6
    assert view.miniatures.image.ndim == 2
    assert view.miniatures.lut.shape == (256, 3)
    low, high = view.miniatures.getLevels()
    assert low == pytest.approx(-high)
    assert "layers.0.linear" in view.hidden_title.text()
    assert view.mini_widget.isVisible()
    view.render(view_data(boundary(units=0)))
    assert view.miniature_count() == 0
    assert not view.mini_widget.isVisible()


def test_clicking_a_miniature_selects_its_unit(view, qtbot):
    view.render(view_data(boundary(units=6)))
    x, y = view.miniature_origin(4)
    with qtbot.waitSignal(view.unit_selected) as blocker:
        view.click_miniature_at(x, y)
    assert blocker.args == ["layers.0.linear", 4]
    assert view.selected_unit == 4
    ring_x, ring_y = view.mini_ring.getData()
    assert min(ring_x) < x < max(ring_x) and min(ring_y) < y < max(ring_y)
    assert view.describe_miniature(x, y).startswith("layers.0.linear unit 4 at x=")
    with qtbot.assertNotEmitted(view.unit_selected):
        assert view.click_miniature_at(-5.0, -5.0) is None


def test_mouse_click_on_a_miniature(view, qtbot):
    view.render(view_data(boundary(units=6)))
    qtbot.wait(10)
    x, y = view.miniature_origin(2)
    pixel = view.mini_widget.mapFromScene(view.mini_box.mapViewToScene(QtCore.QPointF(x, y)))
    with qtbot.waitSignal(view.unit_selected) as blocker:
        qtbot.mouseClick(view.mini_widget.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pixel)
    assert blocker.args == ["layers.0.linear", 2]


def test_missing_or_odd_data_shows_a_hint(view):
    view.render(view_data(None))
    assert view.hint
    view.render(view_data(boundary(prediction=np.zeros(5))))
    assert view.hint
    nan_prediction = np.full((30, 40), np.nan)
    view.render(view_data(boundary(prediction=nan_prediction, labels=np.zeros(3))))
    assert view.hint == ""
    assert len(view.points.getData()[0]) == 0  # labels do not match points: none drawn
    assert view.hover_at(0.0, 0.0) == "x=0.00, y=0.00: no prediction"


def test_grab_is_not_flat(view):
    view.render(view_data(boundary()))
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint32, image.width() * image.height())
    assert np.unique(pixels).size > 50


def test_miniature_caption_wraps_rather_than_widening_the_dock(view, qtbot):
    view.render(view_data(boundary(units=16)))
    assert view.hidden_title.wordWrap()
    assert "16 units" in view.hidden_title.text()
    # A long caption (or readout) must not hold the dock wider than a narrow window gives it.
    assert view.minimumSizeHint().width() < 300
    view.readout.setText("x" * 400)
    assert view.minimumSizeHint().width() < 300


def test_the_title_says_which_step_the_prediction_is_of(view):
    # (The boundary is made every few steps: a recorded step shows the last one made before it.)
    view.render(view_data(boundary(step=1234)))
    assert view.plot.titleLabel.text == "prediction at step 1,234"
    view.render(view_data(boundary(step=1240)))
    assert view.plot.titleLabel.text == "prediction at step 1,240"


def _dark_runs(row: np.ndarray) -> list[int]:
    """Widths of the dark runs between the first and last bright pixel of a row of RGB pixels."""
    bright = row.astype(np.int64).sum(axis=1) > 600
    inside = bright[np.argmax(bright):len(bright) - np.argmax(bright[::-1])]
    edges = np.flatnonzero(np.diff(np.concatenate([[1], inside.astype(np.int8), [1]])))
    return list(edges[1::2] - edges[0::2])


@pytest.mark.parametrize("width", [300, 380, 460, 540, 620])
def test_every_gap_between_miniatures_is_drawn_alike(shown, qtbot, width):
    """Dead units (all zero: pale tiles) show how the gaps read: the miniature image drawn smaller
    than its pixels used to keep some 1-px gutters and drop others, merging tiles at random."""
    view = shown(DecisionBoundary(), width, 600)
    grid = 64  # the engine's resolution (engine.views.GRID)
    view.render(view_data(boundary(units=16, height=grid, width=grid, hidden=np.zeros((16, grid, grid)))))
    qtbot.wait(20)
    image = view.mini_widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(image.height(), -1)
    pixels = pixels[:, :image.width() * 4].reshape(image.height(), image.width(), 4)[..., 2::-1]
    first_row = view.mini_box.mapViewToScene(QtCore.QPointF(0.0, grid / 2.0))
    y = int(view.mini_widget.mapFromScene(first_row).y())
    runs = _dark_runs(pixels[y])
    assert len(runs) == 7 and len(set(runs)) == 1, runs  # seven gaps, all the same width
    first_column = view.mini_box.mapViewToScene(QtCore.QPointF(grid / 2.0, 0.0))
    x = int(view.mini_widget.mapFromScene(first_column).x())
    assert len(_dark_runs(pixels[:, x])) == 1  # and the one between the two rows
