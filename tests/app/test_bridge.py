"""The bridge: latest-only frames at display rate, errors in order, a clean stop."""
from __future__ import annotations

import threading

import numpy as np

from app.bridge import Bridge
from engine.snapshot import ErrorEvent, Hyper, Metrics, Snapshot
from engine.worker import Pause, Play


def snapshot(step: int, run_id: int = 1) -> Snapshot:
    return Snapshot(run_id=run_id, step=step, state="running", scenario="s", device="cpu", layers=(),
                    metrics=Metrics(train_loss=1.0 / (step + 1)), hyper=Hyper())


def test_latest_only_one_frame_for_many_publishes(qtbot) -> None:
    bridge = Bridge()
    frames = []
    bridge.frame_ready.connect(frames.append)
    publisher = threading.Thread(target=lambda: [bridge._on_publish(snapshot(i)) for i in range(1, 1001)])
    publisher.start()
    publisher.join()
    bridge.tick()
    bridge.tick()  # nothing new: no second frame
    assert len(frames) == 1
    assert frames[0].snapshot.step == 1000


def test_errors_then_frame_in_order(qtbot) -> None:
    bridge = Bridge()
    first, second = ErrorEvent("first"), ErrorEvent("second")
    bridge._on_publish(first)
    bridge._on_publish(snapshot(3))
    bridge._on_publish(second)
    seen = []
    bridge.error.connect(lambda e: seen.append(e.message))
    with qtbot.waitSignals([bridge.error, bridge.error, bridge.run_started, bridge.frame_ready],
                           order="strict", timeout=1000):
        bridge.tick()
    assert seen == ["first", "second"]


def test_new_run_resets_timeline_and_scrub_shows_older_step(qtbot) -> None:
    bridge = Bridge()
    for step in (1, 2, 3):
        bridge._on_publish(snapshot(step))
        bridge.tick()
    assert [s.step for s in bridge.snapshots] == [1, 2, 3]
    bridge.scrub_to(2)
    assert bridge.view_data().snapshot.step == 2 and not bridge.live
    bridge.scrub_to(None)
    assert bridge.view_data().snapshot.step == 3
    with qtbot.waitSignal(bridge.run_started, timeout=1000) as blocker:
        bridge._on_publish(snapshot(1, run_id=2))
        bridge.tick()
    assert blocker.args == [2]
    assert [s.step for s in bridge.snapshots] == [1]


def test_a_scrubbed_step_stays_on_screen_after_newer_steps_push_it_out(qtbot) -> None:
    from app.bridge import KEPT_SNAPSHOTS

    bridge = Bridge()
    for step in (1, 2, 3):
        bridge._on_publish(snapshot(step))
        bridge.tick()
    bridge.scrub_to(2)
    for step in range(4, KEPT_SNAPSHOTS + 10):  # training goes on: step 2 leaves the kept snapshots
        bridge._on_publish(snapshot(step))
        bridge.tick()
    assert min(s.step for s in bridge.snapshots) > 2
    assert bridge.view_data().snapshot.step == 2 and not bridge.live
    bridge.scrub_to(None)
    assert bridge.view_data().snapshot.step == KEPT_SNAPSHOTS + 9


def test_scrubbed_back_live_snapshots_draw_nothing_and_a_drag_draws_once(qtbot) -> None:
    bridge = Bridge()
    frames = []
    bridge.frame_ready.connect(frames.append)
    for step in (1, 2, 3):
        bridge._on_publish(snapshot(step))
        bridge.tick()
    for step in (2, 1, 2, 1):  # a dragged timeline: several positions between two display ticks
        bridge.scrub_to(step)
    drawn = len(frames)
    bridge.tick()
    assert len(frames) == drawn + 1 and frames[-1].snapshot.step == 1 and frames[-1].viewed_step == 1
    for step in range(4, 40):  # training goes on while the views are parked on step 1
        bridge._on_publish(snapshot(step))
        bridge.tick()
    assert len(frames) == drawn + 1
    assert bridge.latest.step == 39 and bridge.snapshots[-1].step == 39  # kept for the timeline
    bridge.scrub_to(None)
    bridge.tick()
    assert frames[-1].snapshot.step == 39 and frames[-1].viewed_step is None


def test_real_worker_frames_arrive_and_stop_leaves_no_thread(qtbot, run_factory) -> None:
    bridge = Bridge(fps=60)
    bridge.start(run_factory)
    try:
        bridge.send(Play())
        qtbot.waitUntil(lambda: bridge.latest is not None and bridge.latest.step >= 30, timeout=20000)
        qtbot.waitUntil(lambda: "loss" in bridge.view_data().series, timeout=5000)
        series = bridge.view_data().series
        assert np.isfinite(series["loss"].values).any()
        assert any(name.startswith("grad_norm/") for name in series)
        bridge.send(Pause())
        qtbot.waitUntil(lambda: bridge.latest.state == "paused", timeout=5000)
        # frames are thinned at the source: far fewer frames than steps at full speed
        assert bridge.frames_emitted <= bridge.latest.step + 5
    finally:
        assert bridge.stop(timeout=2.0)
    assert not bridge.worker.alive


def test_layer_series_stand_on_evenly_spaced_steps_after_a_long_run(qtbot) -> None:
    """The gradient heatmap draws its columns at equal widths: after 30,000 steps (past the
    history's first tier) the per-layer series must still be on evenly spaced steps, each
    column's value that of the steps it is drawn at."""
    from engine.history import History
    from engine.snapshot import LayerInfo

    history = History(["loss", "grad_norm/fc"])
    steps = np.arange(1, 30_001)
    history.append_many(steps, np.stack([1.0 / steps, steps.astype(float)], axis=1))
    bridge = Bridge()
    bridge.worker.current_history = lambda: history
    layer = LayerInfo(index=0, name="fc", type_name="Linear", role="param", params=10, weight_shape=(2, 4))
    shown = Snapshot(run_id=1, step=30_000, state="running", scenario="s", device="cpu", layers=(layer,),
                     metrics=Metrics(train_loss=1.0), hyper=Hyper())
    series = bridge._read_series(shown)["grad_norm/fc"]
    gaps = np.diff(series.steps)
    np.testing.assert_allclose(gaps, gaps.mean())
    assert series.steps[-1] == 30_000
    assert np.abs(series.values - series.steps).max() <= 128
