"""AttentionView: one query × key map per head in one image, token tick labels, head titles."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtGui

from engine.snapshot import Hyper, LayerInfo, Metrics, Snapshot, TensorViews, ViewData
from widgets.attention_view import AttentionView
from widgets.colormaps import SEQUENTIAL_LUT

TOKENS = ("the", "a", "cat", "c", "sat", "on", "mat")


def make_data(tensors: TensorViews | None) -> ViewData:
    layers = (LayerInfo(0, "attn", "MultiheadAttention", "attention", 100, (12, 4)),)
    snapshot = Snapshot(1, 10, "running", "test", "cpu", layers, Metrics(1.0), Hyper(), tensors=tensors)
    return ViewData(snapshot)


def attention(heads: int = 4, tokens: int = len(TOKENS), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.random((heads, tokens, tokens)).astype(np.float32)
    return weights / weights.sum(axis=-1, keepdims=True)


@pytest.fixture
def view(qtbot):
    widget = AttentionView()
    qtbot.addWidget(widget)
    widget.resize(700, 600)
    return widget


def test_heads_tiled_into_one_image_with_fixed_levels(view):
    weights = attention()
    view.render(make_data(TensorViews(10, "attn", 0, attention=weights, tokens=TOKENS)))
    assert view.hint == ""
    tiles = view.tiling
    assert tiles.count == 4 and (tiles.rows, tiles.columns) == (2, 2)
    for head in range(4):
        x, y = tiles.origin(head)
        np.testing.assert_array_equal(view.image.image[y : y + 7, x : x + 7], weights[head])
    assert np.isnan(view.image.image[:, 7]).all()  # gutter between heads
    np.testing.assert_array_equal(view.image.levels, [0.0, 1.0])
    np.testing.assert_array_equal(view.image.lut, SEQUENTIAL_LUT)
    assert view.head_titles == ["head 0", "head 1", "head 2", "head 3"]


def test_tick_labels_are_the_tokens(view):
    view.render(make_data(TensorViews(10, "attn", 0, attention=attention(), tokens=TOKENS)))
    bottom = view.plot.getAxis("bottom")._tickLevels[0]
    left = view.plot.getAxis("left")._tickLevels[0]
    # one set of token labels under each column of heads, and beside each row
    assert [text for _, text in bottom] == list(TOKENS) * 2
    assert [text for _, text in left] == list(TOKENS) * 2
    assert [position for position, _ in bottom[:3]] == [0.5, 1.5, 2.5]
    x1, _ = view.tiling.origin(1)
    assert bottom[7][0] == x1 + 0.5


def test_readout_names_head_query_and_key(view):
    weights = attention()
    view.render(make_data(TensorViews(10, "attn", 0, attention=weights, tokens=TOKENS)))
    x, y = view.tiling.origin(2)
    text = view.hover_at(x + 5.5, y + 3.5)  # column = key 5, row = query 3
    assert text == f"head 2: query 'c' (3) -> key 'on' (5) = {weights[2, 3, 5]:.2f}"
    assert view.hover_at(7.5, 0.5) == ""  # gutter


def test_many_tokens_get_index_ticks_and_no_tokens_still_reads(view):
    weights = attention(heads=2, tokens=40)
    tokens = tuple(f"t{i}" for i in range(40))
    view.render(make_data(TensorViews(10, "attn", 0, attention=weights, tokens=tokens)))
    labels = [text for _, text in view.plot.getAxis("bottom")._tickLevels[0]]
    assert labels[:3] == ["0", "5", "10"]
    view.render(make_data(TensorViews(11, "attn", 0, attention=attention(heads=1, tokens=3))))
    assert view.hover_at(1.5, 2.5).startswith("head 0: query 2 -> key 1 = ")
    assert view.head_titles == ["head 0"]


def test_missing_and_nan_attention(view):
    view.render(make_data(None))
    assert view.hint.startswith("Select an attention layer")
    view.render(make_data(TensorViews(10, "fc", 0, weight=np.ones((2, 2), np.float32))))
    assert view.hint.startswith("Select an attention layer")
    weights = attention()
    weights[1] = np.nan
    view.render(make_data(TensorViews(12, "attn", 0, attention=weights, tokens=TOKENS)))
    assert view.hint == ""
    x, y = view.tiling.origin(1)
    assert view.hover_at(x + 0.5, y + 0.5).endswith("= nan")


def test_grab_is_not_flat(view, qtbot):
    view.render(make_data(TensorViews(10, "attn", 0, attention=attention(), tokens=TOKENS)))
    view.show()
    qtbot.waitExposed(view)
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(-1, 4)
    assert len(np.unique(pixels[:, :3], axis=0)) > 20


def test_title_names_the_layer_the_maps_come_from(view):
    # The focused layer is the embedding; the maps are the first attention layer's.
    tensors = TensorViews(10, "embed", 0, attention=attention(), tokens=TOKENS, attention_layer="blocks.0.attn")
    view.render(make_data(tensors))
    assert view.plot_title.full_text.startswith("blocks.0.attn: 4 heads")


def test_small_dock_thins_token_labels_and_keeps_head_titles_off_the_maps(shown, qtbot):
    view = shown(AttentionView(), 260, 230)
    tokens = tuple(f"tok{i}" for i in range(16))
    view.render(make_data(TensorViews(10, "attn", 0, attention=attention(heads=4, tokens=16), tokens=tokens)))
    qtbot.wait(30)
    bottom = view.plot.getAxis("bottom").shown_labels()
    assert 0 < len(bottom) < 2 * len(tokens)  # every token would collide
    assert bottom[: len(bottom) // 2] == bottom[len(bottom) // 2:]  # the same tokens under both columns
    titles = view.head_titles
    assert titles in ([], ["head 0", "head 1", "head 2", "head 3"])
    if titles:  # shown only when the gutter above each map holds them
        gutter = view.tiling.gutter / view.plot.getViewBox().viewPixelSize()[1]
        assert gutter >= 0.8 * QtGui.QFontMetrics(view._head_titles[0].textItem.font()).height()
