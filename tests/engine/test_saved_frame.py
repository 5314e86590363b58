"""What the window showed of a run survives a run file: encode, save, load, restore."""
from __future__ import annotations

import json

import numpy as np

from engine import saved_frame
from engine.diagnostics import Diagnosis
from engine.history import History
from engine.runfile import load_run, save_run
from engine.snapshot import STAT_NAMES, BoundaryView, Hyper, Metrics, NetworkView, Snapshot, StatsFrame, TensorViews


def _frame(step: int, rng: np.random.Generator, ranged: bool = True, names=("a", "b")) -> StatsFrame:
    return StatsFrame(step=step, loss=float(rng.random()), layer_names=names,
                      values=rng.standard_normal((len(names), len(STAT_NAMES))),
                      histograms=rng.random((len(names), 48)).astype(np.float32),
                      hist_edges=np.linspace(-4, 4, 49, dtype=np.float32),
                      hist_ranges=np.tile(np.float32([-1, 1]), (len(names), 1)) if ranged else None)


def _snapshot(rng: np.random.Generator, frame: StatsFrame) -> Snapshot:
    weight = rng.standard_normal((3, 2)).astype(np.float32)
    return Snapshot(
        run_id=1, step=frame.step, state="paused", scenario="xor-mlp", device="cpu", layers=(),
        metrics=Metrics(train_loss=0.5, train_acc=0.75, val_loss=float("nan"), val_acc=None, val_step=None),
        hyper=Hyper(), stats=frame,
        tensors=TensorViews(step=frame.step, layer="a", example=2, weight=weight, tokens=("x", "y"),
                            attention_layer="att"),
        network=NetworkView(step=frame.step, column_names=("input", "a"), column_sizes=(2, 3),
                            activations=(rng.random(2), None), gradients=(None, rng.random(3)),
                            weights=(weight,)),
        boundary=BoundaryView(step=frame.step - 4, extent=(-1.0, 1.0, -2.0, 2.0), prediction=rng.random((8, 8)),
                              n_classes=2, points=rng.random((5, 2)), labels=np.arange(5), hidden=None,
                              hidden_layer="a", hidden_units=3),
        diagnoses=(Diagnosis(code="nan_inf", severity="error", layers=("a",), step=3, message="NaN in a",
                             evidence={"nan_acts": float("inf"), "first": 3.0}, fixes=("lower the lr",),
                             last_step=7),),
    )


def _assert_same(a, b) -> None:
    """Dataclasses, tuples and arrays equal field by field (NaN equal to NaN)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b)
        for name in a.__dataclass_fields__:
            _assert_same(getattr(a, name), getattr(b, name))
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b)
    else:
        assert a == b and type(a) is type(b), (a, b)


def test_what_was_shown_comes_back_from_a_run_file(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frames = (_frame(1, rng, names=("old",)),) + tuple(_frame(step, rng) for step in (2, 4, 6))
    snapshot = _snapshot(rng, frames[-1])
    known = {"weight/a": snapshot.tensors.weight}
    description, arrays = saved_frame.encode(snapshot, frames, known=known)
    # A view's array that the file holds already under another name is referred to, not repeated.
    assert not any(array is snapshot.tensors.weight for array in arrays.values())
    path = tmp_path / "run.glassbox"
    save_run(path, config={"shown": description}, history=History(["loss"]), tensors={**known, **arrays}, step=6)
    loaded = load_run(path)
    shown = saved_frame.restore(loaded.config["shown"], loaded.tensors)
    assert shown.unreadable == ()
    for part in ("metrics", "network", "boundary", "tensors", "diagnoses"):
        _assert_same(getattr(snapshot, part), getattr(shown, part))
    # The frames sharing the newest one's layers, oldest first (the one of another layer list is left).
    _assert_same(frames[1:], shown.frames)


def test_frames_without_ranges_and_a_snapshot_without_views() -> None:
    rng = np.random.default_rng(1)
    frame = _frame(3, rng, ranged=False)
    bare = Snapshot(run_id=1, step=3, state="paused", scenario="s", device="cpu", layers=(),
                    metrics=Metrics(train_loss=1.0), hyper=Hyper(), stats=frame)
    description, arrays = saved_frame.encode(bare)  # no frames given: the snapshot's own
    shown = saved_frame.restore(json.loads(json.dumps(description)), arrays)
    _assert_same((frame,), shown.frames)
    assert shown.network is None and shown.boundary is None and shown.tensors is None and shown.diagnoses == ()


def test_a_part_that_cannot_be_rebuilt_is_left_out_and_named() -> None:
    rng = np.random.default_rng(2)
    snapshot = _snapshot(rng, _frame(5, rng))
    description, arrays = saved_frame.encode(snapshot, ())
    description = json.loads(json.dumps(description))
    description["network"]["fields"]["unknown_field"] = 1  # a newer Glassbox's field
    description["boundary"]["type"] = "os.system"  # never a type outside the list
    del arrays[next(name for name in arrays if name.startswith("shown/frames/values"))]
    shown = saved_frame.restore(description, arrays)
    assert shown.network is None and shown.boundary is None and shown.frames == ()
    assert [entry.split(" ")[0] for entry in shown.unreadable] == ["network", "boundary", "frames"]
    _assert_same(snapshot.diagnoses, shown.diagnoses)  # the rest is read
    _assert_same(snapshot.tensors, shown.tensors)
    assert saved_frame.restore(None, {}) == saved_frame.SavedFrame()
    assert saved_frame.restore("junk", {}).unreadable == ("shown",)


def test_a_part_that_cannot_be_saved_is_left_out_not_the_save() -> None:
    import dataclasses

    rng = np.random.default_rng(3)
    snapshot = _snapshot(rng, _frame(2, rng))
    odd = dataclasses.replace(snapshot.diagnoses[0], evidence={"when": object()})
    description, arrays = saved_frame.encode(dataclasses.replace(snapshot, diagnoses=(odd,)))
    assert "diagnoses" not in description and "network" in description
    shown = saved_frame.restore(json.loads(json.dumps(description)), arrays)
    _assert_same(snapshot.network, shown.network)
