"""label_fit: short layer names, axes whose labels never collide, titles that never widen a plot."""
from __future__ import annotations

import math

import pyqtgraph as pg
import pytest
from PySide6 import QtGui

from widgets.activation_view import ActivationView
from widgets.attention_view import AttentionView
from widgets.decision_boundary import DecisionBoundary
from widgets.feature_maps import FeatureMaps
from widgets.gradient_flow import GradientFlow
from widgets.label_fit import (
    CategoryAxis,
    FittedAxis,
    FittedTitle,
    short_names,
    thin_to_fit,
    tick_font,
    unique_suffixes,
)
from widgets.loss_curve import LossCurve
from widgets.network_graph import NetworkGraph
from widgets.step_inspector import StepInspector
from widgets.weight_heatmap import WeightHeatmap

VIEWS = (ActivationView, AttentionView, DecisionBoundary, FeatureMaps, GradientFlow, LossCurve, NetworkGraph,
         StepInspector, WeightHeatmap)

TRANSFORMER = (
    "embed", "blocks.0.norm1", "blocks.0.attn.out_proj", "blocks.0.norm2", "blocks.0.ff.0", "blocks.0.ff.2",
    "blocks.1.norm1", "blocks.1.attn.out_proj", "blocks.1.norm2", "blocks.1.ff.0", "blocks.1.ff.2", "norm", "head",
)


def test_unique_suffixes_keep_what_tells_names_apart():
    assert unique_suffixes(("input", "layers.0.linear", "layers.1.linear", "head")) == (
        "input", "0.linear", "1.linear", "head")
    short = unique_suffixes(TRANSFORMER)
    assert short[:6] == ("embed", "0.norm1", "0.attn.out_proj", "0.norm2", "0.ff.0", "0.ff.2")
    assert len(set(short)) == len(short)
    # A bare index says nothing: it keeps the part it indexes.
    assert unique_suffixes(("features.0", "classifier.1")) == ("features.0", "classifier.1")
    # A name that is the tail of another stays whole; the other keeps a longer tail.
    assert unique_suffixes(("attn", "blocks.0.attn")) == ("attn", "0.attn")


def test_short_names_are_short_and_distinct():
    names = short_names(TRANSFORMER)
    assert names[0] == "embed" and names[-1] == "head"
    assert len(set(names)) == len(names)
    assert all(len(name) <= 12 for name in names)
    assert names[4] == "0.ff.0" and names[9] == "1.ff.0"  # not "ff.0" twice
    assert names[2] == "0…out_proj"  # whole parts rather than a cut word
    assert short_names(("encoder.fc1", "norm")) == ("encoder.fc1", "norm")


def test_thin_to_fit_keeps_every_kth_label_that_does_not_overlap():
    assert thin_to_fit([10, 30, 50, 70], [10] * 4) == [0, 1, 2, 3]
    assert thin_to_fit([10, 30, 50, 70], [30] * 4) == [0, 2]
    assert thin_to_fit([10, 30, 50, 70], [30] * 4, length=60) == [0]


def label_extents(axis: pg.AxisItem) -> list[tuple[float, float]]:
    """(start, end) in pixels along a horizontal axis of every label it draws."""
    metrics = QtGui.QFontMetrics(tick_font(axis))
    low, high = axis.range
    scale = axis.size().width() / (high - low)
    spans = []
    for position, text in axis._tickLevels[0]:
        centre = (position - low) * scale
        width = metrics.horizontalAdvance(text)
        spans.append((centre - width / 2, centre + width / 2))
    return spans


def assert_no_overlap(spans: list[tuple[float, float]], length: float) -> None:
    spans = sorted(spans)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start > end, spans
    assert spans[0][0] >= 0 and spans[-1][1] <= length


@pytest.fixture
def bar_plot(qtbot):
    widget = pg.PlotWidget(axisItems={"bottom": CategoryAxis("bottom")})
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_category_axis_shows_every_preferred_label_when_there_is_room(bar_plot, qtbot):
    bar_plot.resize(900, 200)
    qtbot.wait(20)
    axis = bar_plot.getPlotItem().getAxis("bottom")
    bar_plot.getPlotItem().setXRange(-0.6, len(TRANSFORMER) - 0.4, padding=0)
    axis.set_categories(range(len(TRANSFORMER)), short_names(TRANSFORMER), TRANSFORMER)
    qtbot.wait(20)
    assert axis.shown_labels() == list(short_names(TRANSFORMER))
    assert_no_overlap(label_extents(axis), axis.size().width())


def test_category_axis_shortens_and_thins_labels_when_narrow(bar_plot, qtbot):
    bar_plot.resize(220, 200)
    bar_plot.getPlotItem().setXRange(-0.6, len(TRANSFORMER) - 0.4, padding=0)
    axis = bar_plot.getPlotItem().getAxis("bottom")
    axis.set_categories(range(len(TRANSFORMER)), TRANSFORMER, TRANSFORMER)
    qtbot.wait(20)
    shown = axis.shown_labels()
    assert 0 < len(shown) < len(TRANSFORMER)
    assert "blocks.0.attn.out_proj" not in shown  # full names would never fit
    assert_no_overlap(label_extents(axis), axis.size().width())
    # Room again: every label comes back (the axis refits on resize).
    bar_plot.resize(1400, 200)
    qtbot.wait(20)
    assert len(axis.shown_labels()) == len(TRANSFORMER)


def test_fitted_axis_labels_never_collide(qtbot):
    widget = pg.PlotWidget(axisItems={"bottom": FittedAxis("bottom"), "left": FittedAxis("left")})
    qtbot.addWidget(widget)
    for width, height in ((140, 90), (400, 300), (900, 600)):
        widget.resize(width, height)
        widget.show()
        qtbot.waitExposed(widget)
        widget.getPlotItem().setXRange(0, 412_000, padding=0)
        widget.getPlotItem().setYRange(-4, 4, padding=0)
        qtbot.wait(20)
        bottom = widget.getPlotItem().getAxis("bottom")
        length = bottom.size().width()
        levels = bottom.tickValues(0, 412_000, length)
        spacing, values = levels[0]
        strings = bottom.tickStrings(values, 1.0, spacing)
        metrics = QtGui.QFontMetrics(tick_font(bottom))
        pixels = [v / 412_000 * length for v in values]
        for (a, text_a), (b, text_b) in zip(zip(pixels, strings), zip(pixels[1:], strings[1:])):
            assert b - a >= (metrics.horizontalAdvance(text_a) + metrics.horizontalAdvance(text_b)) / 2
        left = widget.getPlotItem().getAxis("left")
        spacing, values = left.tickValues(-4, 4, left.size().height())[0]
        assert spacing / 8 * left.size().height() >= metrics.height() * 0.8
        assert bottom.style["maxTextLevel"] == 0  # only the fitted level carries text


def test_fitted_axis_log_mode_labels_decades(qtbot):
    axis = FittedAxis("left")
    axis.setLogMode(False, True)
    # Twelve decades in 60 px: only every few decades can carry a label.
    majors = axis.tickValues(-10.0, 2.0, 60.0)[0][1]
    assert all(float(v).is_integer() for v in majors)
    assert 1 < len(majors) <= 4
    assert len(axis.tickValues(-10.0, 2.0, 600.0)[0][1]) == 13  # room for every decade
    # Less than a decade: 1-2-5 steps.
    values = axis.tickValues(math.log10(0.3), math.log10(0.9), 200.0)[0][1]
    assert [round(10 ** v, 6) for v in values] == [0.5]


def test_fitted_axis_counts_cells_at_their_centres():
    axis = FittedAxis("bottom", cells=True)
    levels = axis.tickValues(0.0, 8.0, 400.0)
    spacing, values = levels[0]
    assert values[:3] == [0.5, 1.5, 2.5]
    assert axis.tickStrings(values[:3], 1.0, spacing) == ["0", "1", "2"]
    narrow = axis.tickValues(0.0, 64.0, 150.0)[0]
    assert narrow[0] >= 10 and all(v % 1 == 0.5 for v in narrow[1])


def test_fitted_title_never_widens_its_plot(qtbot):
    canvas = pg.GraphicsLayoutWidget()
    qtbot.addWidget(canvas)
    plot = canvas.addPlot()
    title = FittedTitle(plot)
    long = "a very long title that would never fit in a narrow dock at all, not even close"
    title.set(long, "shorter title", "short")
    canvas.resize(160, 200)
    canvas.show()
    qtbot.waitExposed(canvas)
    qtbot.wait(20)
    assert title.text in ("shorter title", "short")
    assert title.full_text == long
    assert plot.titleLabel.minimumWidth() == 0
    assert canvas.ci.effectiveSizeHint(pg.QtCore.Qt.SizeHint.MinimumSize).width() <= 160
    canvas.resize(900, 200)
    qtbot.wait(20)
    assert title.text == long


def test_every_view_keeps_its_dock_title(qtbot):
    # An attribute named "title" (say, a plot's fitted title) would shadow the dock title the app reads.
    for cls in VIEWS:
        view = cls()
        qtbot.addWidget(view)
        assert isinstance(view.title, str) and view.title == cls.title


def test_an_axis_title_longer_than_its_axis_is_cut_to_fit(qtbot):
    widget = pg.PlotWidget(axisItems={"bottom": FittedAxis("bottom"), "left": FittedAxis("left")})
    qtbot.addWidget(widget)
    title = "input channel × kernel position"
    widget.getPlotItem().setLabel("bottom", title)
    widget.getPlotItem().setLabel("left", title)
    for width, height in ((160, 120), (900, 600)):
        widget.resize(width, height)
        widget.show()
        qtbot.waitExposed(widget)
        qtbot.wait(20)
        for axis in (widget.getPlotItem().getAxis("bottom"), widget.getPlotItem().getAxis("left")):
            shown = axis.label.toPlainText().strip()
            assert axis.label.boundingRect().width() <= axis.label_room()
            if shown != title:  # cut: a start of the title, marked, and whole in the tooltip
                assert shown.endswith("…") and title.startswith(shown[:-1]) and len(shown) > 3
                assert axis.label.toolTip() == title
        cut = {side: widget.getPlotItem().getAxis(side).label.toPlainText().strip() != title
               for side in ("bottom", "left")}
        assert cut == ({"bottom": True, "left": True} if width == 160 else {"bottom": False, "left": False})


def test_an_axis_title_with_no_room_for_a_few_letters_stays_whole(qtbot):
    widget = pg.PlotWidget(axisItems={"left": FittedAxis("left")})
    qtbot.addWidget(widget)
    widget.getPlotItem().setLabel("left", "accuracy")
    widget.resize(300, 40)
    widget.show()
    qtbot.waitExposed(widget)
    qtbot.wait(20)
    axis = widget.getPlotItem().getAxis("left")
    assert axis.label_room() < 30  # (room for "a…" at most)
    assert axis.label.toPlainText().strip() == "accuracy"
