"""NetworkGraph: units, edges, collapsed blocks, colours, selection and readout."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from engine.snapshot import Hyper, Metrics, NetworkView, Snapshot, ViewData
from widgets.network_graph import COLLAPSE_ABOVE, EDGE_LEVELS, NetworkGraph, column_label_layout

SMALL = (2, 16, 16, 2)
NAMES = ("input", "layers.0.linear", "layers.1.linear", "layers.2.linear")


def network(sizes=SMALL, names=NAMES, seed=0, collapsed_values=False, **overrides) -> NetworkView:
    rng = np.random.default_rng(seed)
    big = [size > COLLAPSE_ABOVE and not collapsed_values for size in sizes]
    parts = dict(
        step=1,
        column_names=tuple(names),
        column_sizes=tuple(sizes),
        activations=tuple(None if b else rng.normal(size=s) for s, b in zip(sizes, big)),
        gradients=tuple(None if b else rng.normal(size=s) * 1e-3 for s, b in zip(sizes, big)),
        weights=tuple(rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])),
    )
    parts.update(overrides)
    return NetworkView(**parts)


def view_data(net: NetworkView | None, layer: str | None = None, unit: int | None = None) -> ViewData:
    snapshot = Snapshot(run_id=1, step=1, state="running", scenario="test", device="cpu", layers=(),
                        metrics=Metrics(train_loss=1.0), hyper=Hyper(), network=net)
    return ViewData(snapshot=snapshot, selected_layer=layer, selected_unit=unit)


@pytest.fixture
def graph(shown) -> NetworkGraph:
    widget = shown(NetworkGraph(), 800, 450)
    return widget


def spot_colour(graph: NetworkGraph, spot: int) -> QtGui.QColor:
    return graph.units.data["brush"][spot].color()


def edge_count(graph: NetworkGraph) -> int:
    return sum(len(item.getData()[0]) for item in graph.edge_items if item.getData()[0] is not None) // 2


def test_one_spot_per_unit_and_one_item_per_edge_bucket(graph):
    graph.render(view_data(network()))
    assert len(graph.units.getData()[0]) == sum(SMALL)
    assert len(graph.edge_items) == 2 * EDGE_LEVELS
    assert edge_count(graph) == 2 * 16 + 16 * 16 + 16 * 2
    assert graph.bands.path().isEmpty()
    assert [label.toPlainText() for label in graph.column_labels[:4]] == list(NAMES)


def test_units_follow_activation_values(graph):
    net = network()
    graph.render(view_data(net))
    values = net.activations[1]
    start = 2  # spots of layers.0.linear follow the 2 input spots
    high = spot_colour(graph, start + int(np.argmax(values)))
    low = spot_colour(graph, start + int(np.argmin(values)))
    assert high.red() > high.blue() + 50  # positive -> red
    assert low.blue() > low.red() + 50  # negative -> blue


def test_strong_weights_land_in_the_strongest_bucket(graph):
    weights = [np.full((16, 2), 0.01), np.full((16, 16), 0.01), np.full((2, 16), 0.01)]
    weights[1][3, 5] = -2.0  # one strong negative edge: unit 5 of layers.0 -> unit 3 of layers.1
    weights[1][4, 6] = 1.0
    graph.render(view_data(network(weights=tuple(weights))))
    strongest_negative = graph.edge_items[EDGE_LEVELS - 1]
    x, y = strongest_negative.getData()
    assert len(x) == 2
    start = graph.unit_position("layers.0.linear", 5)
    end = graph.unit_position("layers.1.linear", 3)
    assert (x[0], y[0]) == pytest.approx(start)
    assert (x[1], y[1]) == pytest.approx(end)
    # Half the largest magnitude falls in the middle of the positive side.
    assert len(graph.edge_items[EDGE_LEVELS + EDGE_LEVELS // 2].getData()[0]) == 2
    assert edge_count(graph) == 320
    # Wide pens only while the graph is small enough to stroke them quickly.
    assert strongest_negative.opts["pen"].widthF() > graph.edge_items[0].opts["pen"].widthF()


def test_wide_columns_collapse_to_labelled_blocks(graph):
    sizes = (784, 128, 10)
    names = ("input", "layers.0.linear", "layers.1.linear")
    graph.render(view_data(network(sizes, names)))
    assert len(graph.units.getData()[0]) == 10
    labels = [label.toPlainText() for label in graph.block_labels if label.isVisible()]
    assert labels == ["input\n784 units", "layers.0.linear\n128 units"]
    assert edge_count(graph) == 0
    assert not graph.bands.path().isEmpty()
    assert not graph.block_outline.path().isEmpty()
    # Exactly at the limit a column still shows units.
    graph.render(view_data(network((COLLAPSE_ABOVE, 3), ("input", "out"))))
    assert len(graph.units.getData()[0]) == COLLAPSE_ABOVE + 3
    assert not any(label.isVisible() for label in graph.block_labels)
    assert edge_count(graph) == COLLAPSE_ABOVE * 3


def test_collapsed_column_with_values_shows_a_strip(graph):
    sizes = (784, 128, 10)
    net = network(sizes, ("input", "hidden", "out"), collapsed_values=True)
    graph.render(view_data(net))
    strip = graph.block_images[1]
    assert strip.isVisible()
    assert strip.image.shape == (128, 1)
    x, y = graph.unit_position("hidden", 7)
    assert graph.hover_at(x, y) == f"hidden unit 7: a = {net.activations[1][7]:.3g}"


def test_mode_toggle_colours_by_gradient(graph):
    net = network()
    gradients = list(net.gradients)
    gradients[1] = -np.asarray(net.activations[1]) * 1e-3  # opposite sign to the activations
    net = network(gradients=tuple(gradients))
    graph.render(view_data(net))
    spot = 2 + int(np.argmax(net.activations[1]))
    assert spot_colour(graph, spot).red() > spot_colour(graph, spot).blue()
    graph.set_mode("gradient")
    assert graph.mode_combo.currentText() == "Gradient"
    assert spot_colour(graph, spot).blue() > spot_colour(graph, spot).red()
    x, y = graph.unit_position("layers.0.linear", 0)
    assert graph.hover_at(x, y) == f"layers.0.linear unit 0: g = {gradients[1][0]:.3g}"
    graph.mode_combo.setCurrentIndex(0)  # the combo drives the mode too
    assert graph.mode() == "activation"
    assert spot_colour(graph, spot).red() > spot_colour(graph, spot).blue()
    with pytest.raises(ValueError):
        graph.set_mode("weights")


def test_click_handler_selects_unit(graph, qtbot):
    graph.render(view_data(network()))
    x, y = graph.unit_position("layers.1.linear", 9)
    emitted = []
    graph.layer_selected.connect(lambda name: emitted.append(("layer", name)))
    graph.unit_selected.connect(lambda name, index: emitted.append(("unit", name, index)))
    with qtbot.waitSignals([graph.layer_selected, graph.unit_selected], order="strict"):
        graph.click_at(x + 0.02, y)
    assert emitted == [("layer", "layers.1.linear"), ("unit", "layers.1.linear", 9)]
    assert graph.selected_layer == "layers.1.linear" and graph.selected_unit == 9
    ring_x, ring_y = graph.ring.getData()
    assert (ring_x[0], ring_y[0]) == pytest.approx((x, y))
    assert graph.column_labels[2].color.name() != graph.column_labels[1].color.name()
    with qtbot.assertNotEmitted(graph.unit_selected):
        assert graph.click_at(1.5, 0.0) is None  # between columns


def test_mouse_click_on_a_spot_selects_it(graph, qtbot):
    graph.render(view_data(network()))
    qtbot.wait(10)
    x, y = graph.unit_position("layers.0.linear", 4)
    scene_pos = graph.view_box.mapViewToScene(QtCore.QPointF(x, y))
    pixel = graph.plot_widget.mapFromScene(scene_pos)
    with qtbot.waitSignal(graph.unit_selected) as blocker:
        qtbot.mouseClick(graph.plot_widget.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pixel)
    assert blocker.args == ["layers.0.linear", 4]


def test_readout_for_a_known_unit(graph):
    activations = list(network().activations)
    activations[1] = np.linspace(-1, 1, 16)
    activations[1][3] = 0.42
    graph.render(view_data(network(activations=tuple(activations))))
    x, y = graph.unit_position("layers.0.linear", 3)
    assert graph.hover_at(x, y + 0.2 * graph._geometry.spacing) == "layers.0.linear unit 3: a = 0.42"
    assert graph.readout_text() == "layers.0.linear unit 3: a = 0.42"
    assert graph.hover_at(0.5, 0.0) == ""


def test_selection_from_the_app_does_not_emit(graph, qtbot):
    graph.render(view_data(network()))
    with qtbot.assertNotEmitted(graph.unit_selected):
        graph.set_selection("layers.0.linear", 2)
    assert len(graph.ring.getData()[0]) == 1
    graph.set_selection(None)
    assert len(graph.ring.getData()[0]) == 0


def test_missing_parts_and_new_runs_never_raise(graph):
    graph.render(view_data(None))
    assert graph.hint == "No network to show yet"
    net = network(activations=(None, np.full(16, np.nan), None, None), weights=(None, None, None))
    graph.render(view_data(net))
    assert graph.hint == ""
    grey = spot_colour(graph, 0)
    assert grey.red() == grey.green() == grey.blue() or abs(grey.red() - grey.blue()) < 20
    assert edge_count(graph) == 0
    assert not graph.bands.path().isEmpty()
    x, y = graph.unit_position("layers.0.linear", 0)
    assert graph.hover_at(x, y) == "layers.0.linear unit 0: a = nan"
    # A new run with other layers (and a wrong-shaped weight) replaces the old layout.
    other = network((3, 5), ("x", "y"), weights=(np.zeros((4, 4)),))
    graph.render(view_data(other))
    assert len(graph.units.getData()[0]) == 8
    assert [label.toPlainText() for label in graph.column_labels if label.isVisible()] == ["x", "y"]
    graph.set_selection("layers.1.linear", 9)  # a stale selection from the old run
    assert len(graph.ring.getData()[0]) == 0


def test_grab_is_not_flat(graph):
    graph.render(view_data(network()))
    graph.set_selection("layers.0.linear", 1)
    image = graph.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint32, image.width() * image.height())
    assert np.unique(pixels).size > 50


TRANSFORMER_COLUMNS = ("input", "embed", "blocks.0.attn", "blocks.0.ff.0", "blocks.0.ff.2", "blocks.1.attn",
                       "blocks.1.ff.0", "blocks.1.ff.2", "head")


def drawn_label_rects(graph: NetworkGraph) -> list[QtCore.QRectF]:
    """Scene rectangles of the column labels' text on screen (without the text item's margin)."""
    rects = []
    for label in graph.column_labels:
        if label.isVisible() and label.toPlainText():
            margin = label.textItem.document().documentMargin()
            rects.append(label.mapRectToScene(label.boundingRect()).adjusted(margin, margin, -margin, -margin))
    return rects


def test_column_labels_never_overlap_and_stay_in_view(graph, qtbot):
    sizes = (8, 8, 64, 256, 64, 64, 256, 64, 8)
    for width in (200, 320, 560, 1100):
        graph.resize(width, 420)
        qtbot.wait(20)
        graph.render(view_data(network(sizes, TRANSFORMER_COLUMNS, collapsed_values=True)))
        qtbot.wait(20)  # text items follow a new view range when they are next painted
        rects = drawn_label_rects(graph)
        assert rects, width
        for i, a in enumerate(rects):
            for b in rects[i + 1:]:
                assert not a.intersects(b), (width, [label.toPlainText() for label in graph.column_labels])
        view = graph.view_box.sceneBoundingRect()
        for rect in rects:
            assert view.left() - 1 <= rect.left() and rect.right() <= view.right() + 1
            assert rect.bottom() <= view.bottom() + 1  # the range leaves room for them
    # Wide enough: every column named in full.
    assert [label.toPlainText() for label in graph.column_labels[:9]] == list(TRANSFORMER_COLUMNS)


def test_narrow_graph_abbreviates_labels_and_hover_names_the_layer(graph, qtbot):
    graph.resize(260, 420)
    qtbot.wait(20)
    graph.render(view_data(network()))
    qtbot.wait(20)
    texts = [label.toPlainText() for label in graph.column_labels[:4]]
    assert texts == ["input", "0.linear", "1.linear", "2.linear"]
    label = graph.column_labels[2]
    centre = graph.view_box.mapSceneToView(label.mapRectToScene(label.boundingRect()).center())
    assert graph.hover_at(centre.x(), centre.y()) == "layers.1.linear: 16 units"
    with qtbot.waitSignal(graph.layer_selected) as blocker:
        graph.click_at(centre.x(), centre.y())  # clicking a label selects its layer
    assert blocker.args == ["layers.1.linear"]


def test_block_captions_shrink_to_their_column(graph, qtbot):
    sizes = (784, 128, 10)
    names = ("input", "layers.0.linear", "layers.1.linear")
    wide = network((784, 128, 128, 128, 128, 10), ("input", *(f"layers.{i}.linear" for i in range(4)), "head"))
    graph.resize(200, 400)
    qtbot.wait(20)
    graph.render(view_data(wide))
    captions = [label.toPlainText() for label in graph.block_labels if label.isVisible()]
    assert captions == ["784", "128", "128", "128", "128"]  # the column labels below name them
    graph.render(view_data(network(sizes, names)))
    graph.resize(800, 400)
    qtbot.wait(20)
    captions = [label.toPlainText() for label in graph.block_labels if label.isVisible()]
    assert captions == ["input\n784 units", "layers.0.linear\n128 units"]


def test_column_label_layout_ladder():
    names = ("input", "layers.0.linear", "layers.1.linear", "head")
    width = lambda text: 7 * len(text)  # noqa: E731 - a fixed-pitch font for the test
    assert column_label_layout(names, 200, width) == (names, 1, (True,) * 4)
    texts, lines, shown = column_label_layout(names, 70, width)
    assert texts == ("input", "0.linear", "1.linear", "head") and lines == 1 and all(shown)
    texts, lines, shown = column_label_layout(names, 40, width)
    assert lines == 2 and all(shown)
    texts, lines, shown = column_label_layout(names * 3, 8, width, lambda text, room: text[: max(3, int(room // 7))])
    assert not all(shown) and shown[0]


def test_flagged_layers_are_tinted_and_an_activation_finding_marks_its_block(graph) -> None:
    from engine.diagnostics import Diagnosis
    from widgets.findings import SEVERITY_RGB

    findings = (
        Diagnosis(code="dead_units", severity="error", layers=("layers.1.act",), step=5, message="m",
                  evidence={}, fixes=()),
        Diagnosis(code="vanishing_gradients", severity="warning", layers=("layers.0.linear",), step=2,
                  message="m", evidence={}, fixes=()),
    )
    net = network()
    snapshot = Snapshot(run_id=1, step=1, state="running", scenario="test", device="cpu", layers=(),
                        metrics=Metrics(train_loss=1.0), hyper=Hyper(), network=net, diagnoses=findings)
    graph.render(ViewData(snapshot=snapshot))
    assert graph.flagged_columns == {"layers.1.linear": ("error", ("dead_units",)),
                                     "layers.0.linear": ("warning", ("vanishing_gradients",))}
    error_box = graph.flag_bands["error"].path().boundingRect()
    warning_box = graph.flag_bands["warning"].path().boundingRect()
    assert error_box.center().x() == pytest.approx(2.0) and warning_box.center().x() == pytest.approx(1.0)
    assert graph.column_labels[2].color.getRgb()[:3] == SEVERITY_RGB["error"]
    assert graph.column_labels[3].color.getRgb()[:3] != SEVERITY_RGB["error"]
    x, y = graph.unit_position("layers.1.linear", 0)
    assert "⚠ dead units" in graph.describe_point(x, graph._label_top - 1e-3)
    graph.render(view_data(net))  # no findings: nothing tinted
    assert graph.flag_bands["error"].path().isEmpty() and not graph.flagged_columns


def test_a_deep_wide_stack_draws_its_strongest_edges_within_the_budget(graph):
    from widgets.network_graph import EDGE_BUDGET

    sizes = (2,) + (64,) * 12 + (2,)
    names = ("input",) + tuple(f"layers.{i}.linear" for i in range(13))
    net = network(sizes, names, seed=3)
    graph.render(view_data(net))
    total = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    assert total > EDGE_BUDGET and EDGE_BUDGET * 0.9 <= edge_count(graph) <= EDGE_BUDGET
    # Between two wide columns, what is drawn is the strongest share of the weights.
    weights = np.abs(net.weights[5])
    quota = EDGE_BUDGET * weights.size // total
    threshold = np.sort(weights.ravel())[-quota]
    start, end = graph.unit_position(names[5], 0), graph.unit_position(names[6], 0)
    drawn = 0
    for item in graph.edge_items:
        x, y = item.getData()
        if x is None:
            continue
        segments = np.stack([x[0::2], y[0::2], x[1::2], y[1::2]], axis=1)
        drawn += int(((segments[:, 0] == start[0]) & (segments[:, 2] == end[0])).sum())
    assert drawn == int((weights >= threshold).sum())


def test_a_zero_weight_draws_no_edge_not_a_faint_positive_one(graph):
    """An all-zero initialisation connects nothing: its matrices draw no edges at all (the
    faintest red edge would say "a small positive weight")."""
    zeros = tuple(np.zeros((o, i)) for i, o in zip(SMALL[:-1], SMALL[1:]))
    graph.render(view_data(network(weights=zeros)))
    assert edge_count(graph) == 0
    some = list(network().weights)
    some[1] = some[1].copy()
    some[1][:, :8] = 0.0  # half of the middle matrix is zero
    graph.render(view_data(network(weights=tuple(some), seed=1)))
    assert edge_count(graph) == 2 * 16 + 16 * 8 + 16 * 2


def drawn_segments(graph: NetworkGraph) -> dict[tuple[float, float], list[tuple[float, float, int]]]:
    """(x of the left column, x of the right one) -> (y0, y1, bucket) of every edge drawn."""
    found: dict[tuple[float, float], list[tuple[float, float, int]]] = {}
    for bucket, item in enumerate(graph.edge_items):
        x, y = item.getData()
        if x is None:
            continue
        for x0, y0, x1, y1 in zip(x[0::2], y[0::2], x[1::2], y[1::2]):
            found.setdefault((float(x0), float(x1)), []).append((float(y0), float(y1), bucket))
    return found


def test_columns_that_do_not_feed_each_other_are_not_joined(graph):
    """A second head fed by the trunk (not by the first head) is drawn beside it, unjoined: no edge,
    no band, and the note says which link is not drawn."""
    sizes = (2, 16, 16, 1)
    names = ("input", "trunk", "head_a", "head_b")
    rng = np.random.default_rng(4)
    # head_b's own weights are (1, 16): they would fit a link from head_a, which does not exist.
    weights = (rng.normal(size=(16, 2)), rng.normal(size=(16, 16)), rng.normal(size=(1, 16)))
    note = "head_b is fed by trunk, not head_a: trunk → head_b is not drawn"
    net = network(sizes, names, weights=weights, connected=(True, True, False), note=note)
    graph.render(view_data(net))
    segments = drawn_segments(graph)
    assert set(segments) == {(0.0, 1.0), (1.0, 2.0)}  # nothing between head_a and head_b
    assert edge_count(graph) == 16 * 2 + 16 * 16
    assert graph.bands.path().isEmpty()
    # The edges drawn are the joined pairs' own weights: each unit-to-unit edge once, its sign right.
    for pair in (0, 1):
        drawn = sorted((round(y0, 9), round(y1, 9), bucket >= EDGE_LEVELS)
                       for y0, y1, bucket in segments[(float(pair), pair + 1.0)])
        expected = sorted((round(graph.unit_position(names[pair], i)[1], 9),
                           round(graph.unit_position(names[pair + 1], j)[1], 9), bool(weights[pair][j, i] > 0))
                          for j in range(sizes[pair + 1]) for i in range(sizes[pair]))
        assert drawn == expected
    assert graph.note.isVisible() and graph.note.text() == note and graph.note.toolTip() == note
    # A run whose columns all feed the next one shows no note.
    graph.render(view_data(network(connected=(True, True, True))))
    assert not graph.note.isVisible() and edge_count(graph) == 2 * 16 + 16 * 16 + 16 * 2


def test_an_unjoined_wide_column_gets_no_band(graph):
    sizes = (2, 100, 3)
    names = ("input", "trunk", "head")
    net = network(sizes, names, weights=(None, None), connected=(True, False), note="head is fed by input")
    graph.render(view_data(net))
    box = graph.bands.path().boundingRect()
    assert not box.isEmpty() and box.left() >= 0.0 and box.right() <= 1.0  # input → trunk only
    assert edge_count(graph) == 0
    graph.render(view_data(None))
    assert not graph.note.isVisible()  # the hint shows no note of an earlier network


def test_mid_phase_step_the_note_says_whose_values_the_units_show(graph):
    """Walking a step phase by phase, the units still show the last measured step's values (this
    step is measured as it ends): the note says so, before any note of the network's own; with no
    values yet (a run's first step) it says nothing of them."""
    import dataclasses

    from engine.snapshot import PhaseInfo

    phase = PhaseInfo(index=1, total=9, kind="forward", module="layers.1.linear")
    net = network(step=7, note="1 skip link is not drawn")
    data = view_data(net)
    graph.render(dataclasses.replace(data, snapshot=dataclasses.replace(data.snapshot, state="stepping",
                                                                         step=7, phase=phase)))
    assert graph.note.text() == "Units: step 7's values (this step's come when it ends). 1 skip link is not drawn"
    graph.render(data)  # the step ended
    assert graph.note.text() == "1 skip link is not drawn"
    bare = network(activations=(None,) * 4, gradients=(None,) * 4)
    graph.render(dataclasses.replace(view_data(bare), snapshot=dataclasses.replace(
        view_data(bare).snapshot, state="stepping", phase=phase)))
    assert graph.note.isHidden() and graph.phase_columns == ("layers.1.linear",)
