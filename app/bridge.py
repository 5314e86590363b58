"""The one bridge between the training thread and the GUI thread.

The worker calls ``_on_publish`` on its own thread; that only stores the newest snapshot (and
queues errors) under a lock. A QTimer on the GUI thread, at display rate, picks up the newest
snapshot, builds one :class:`ViewData` and emits it. A fast training loop therefore never
queues a signal per step, and the GUI never waits for training.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import numpy as np
from PySide6 import QtCore

from engine.history import History
from engine.run import Run
from engine.snapshot import ErrorEvent, SeriesData, Snapshot, StatsFrame, ViewData
from engine.worker import Command, Focus, Replace, Worker

__all__ = ["Bridge"]

log = logging.getLogger(__name__)

#: Scalar series re-read from the history at most this often (they change slowly on screen).
SERIES_INTERVAL_S = 0.25
#: Snapshots kept for the timeline (and captured frames for histograms over time).
KEPT_SNAPSHOTS = 400
KEPT_FRAMES = 256
RUN_SERIES = ("loss", "val_loss", "train_acc", "val_acc")
LAYER_SERIES = ("grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std")


class Bridge(QtCore.QObject):
    """Owns the worker; turns its snapshots into display-rate frames for the views.

    Signals:
        frame_ready(ViewData): at most ``fps`` times a second, only when something changed.
        error(ErrorEvent): each error the worker published, in order.
        run_started(int): a new run (scenario, model or reinitialisation) began; its id.
    """

    frame_ready = QtCore.Signal(object)
    error = QtCore.Signal(object)
    run_started = QtCore.Signal(int)

    def __init__(self, fps: float = 30.0, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._errors: list[ErrorEvent] = []
        self.worker = Worker(self._on_publish)
        self._timer = QtCore.QTimer(self)
        self._timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self._timer.setInterval(max(1, int(1000 / fps)))
        self._timer.timeout.connect(self.tick)
        self._shown: Snapshot | None = None
        self._snapshots: collections.deque[Snapshot] = collections.deque(maxlen=KEPT_SNAPSHOTS)
        self._frames: collections.deque[StatsFrame] = collections.deque(maxlen=KEPT_FRAMES)
        self._series: dict[str, SeriesData] = {}
        self._series_time = 0.0
        self._series_step: int | None = None
        self._run_id = -1
        self._scrub_step: int | None = None
        self._pinned: tuple[Snapshot, tuple] | None = None  # the scrubbed-to snapshot and its frames
        self.selected_layer: str | None = None
        self.selected_unit: int | None = None
        self.frames_emitted = 0
        self._dirty = False

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, factory: Callable[[], Run]) -> None:
        self.worker.start(factory)
        self._timer.start()

    def stop(self, timeout: float = 2.0) -> bool:
        self._timer.stop()
        return self.worker.stop(timeout)

    def send(self, command: Command) -> None:
        self.worker.send(command)

    def replace_run(self, factory: Callable[[], Run]) -> None:
        self.worker.send(Replace(factory))

    # --- worker thread -------------------------------------------------------------------
    def _on_publish(self, item: Snapshot | ErrorEvent) -> None:
        """Runs on the training thread: store and return, never wait."""
        with self._lock:
            if isinstance(item, ErrorEvent):
                self._errors.append(item)
            else:
                self._latest = item

    # --- GUI thread ----------------------------------------------------------------------
    @property
    def history(self) -> History | None:
        return self.worker.current_history()

    @property
    def snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(self._snapshots)

    @property
    def latest(self) -> Snapshot | None:
        return self._shown

    def select(self, layer: str | None, unit: int | None = None, example: int | None = None) -> None:
        """Selection made anywhere: the engine focuses its tensors there; views redraw."""
        self.selected_layer = layer
        self.selected_unit = unit
        self.send(Focus(layer, 0 if example is None else example))
        self._dirty = True

    def scrub_to(self, step: int | None) -> None:
        """Show a recorded step (None: follow training live). The step's snapshot is held while it
        is shown, even after newer ones push it out of those kept."""
        self._scrub_step = step
        self._pinned = None
        if step is not None and self._snapshots:
            earlier = [s for s in self._snapshots if s.step <= step]
            chosen = earlier[-1] if earlier else self._snapshots[0]
            self._pinned = (chosen, tuple(f for f in self._frames if f.step <= chosen.step))
        # Drawn by the next tick of the display timer: a dragged timeline moves many times
        # between two frames, and only where it stops is worth drawing.
        self._dirty = True

    @property
    def live(self) -> bool:
        return self._scrub_step is None

    def tick(self) -> None:
        with self._lock:
            latest, errors = self._latest, self._errors
            self._errors = []
        for event in errors:
            self.error.emit(event)
        if latest is None:
            return
        new = latest is not self._shown
        if new:
            if latest.run_id != self._run_id:
                self._run_id = latest.run_id
                self._snapshots.clear()
                self._frames.clear()
                self._series = {}
                self._series_time = 0.0
                self._series_step = None
                self._scrub_step = None
                self._pinned = None
                self.run_started.emit(latest.run_id)
            self._shown = latest
            self._keep(latest)
        now = time.perf_counter()
        # Scrubbed back, the views show one recorded step: live snapshots are kept (the timeline
        # needs them) but draw nothing, and the run-long series wait until the views go live.
        parked = self._scrub_step is not None
        if not parked and now - self._series_time >= SERIES_INTERVAL_S:
            history = self.history
            recorded = history.latest_step if history is not None else None
            if recorded != self._series_step:
                self._series = self._read_series(latest)
                self._series_step = recorded
                self._series_time = now
                self._dirty = True
        if not ((new and not parked) or self._dirty):
            return
        self._dirty = False
        self.frame_ready.emit(self.view_data())
        self.frames_emitted += 1

    def _keep(self, snapshot: Snapshot) -> None:
        if not self._snapshots or self._snapshots[-1].step != snapshot.step or snapshot.phase is not None:
            self._snapshots.append(snapshot)
        else:
            self._snapshots[-1] = snapshot
        if snapshot.stats is not None and (not self._frames or self._frames[-1].step != snapshot.stats.step):
            self._frames.append(snapshot.stats)

    @property
    def frames(self) -> tuple[StatsFrame, ...]:
        """The recent captured statistics of the live run, oldest first (for histograms over time)."""
        return tuple(self._frames)

    def view_data(self) -> ViewData:
        """The frame the views should draw now: live, or the scrubbed-to step."""
        assert self._shown is not None
        snapshot = self._shown
        frames = tuple(self._frames)
        viewed = None
        if self._scrub_step is not None and self._pinned is not None:
            snapshot, frames = self._pinned
            viewed = snapshot.step
        return ViewData(snapshot=snapshot, frames=frames, series=self._series,
                        selected_layer=self.selected_layer, selected_unit=self.selected_unit, viewed_step=viewed)

    def _read_series(self, snapshot: Snapshot) -> dict[str, SeriesData]:
        history = self.history
        if history is None:
            return {}
        series: dict[str, SeriesData] = {}
        for name in RUN_SERIES:
            if name in history.columns:
                data = history.series(name, max_points=2000)
                keep = np.isfinite(data.values)  # validation runs every N steps: drop the gaps
                series[name] = SeriesData(data.steps[keep], data.values[keep],
                                          None if data.lo is None else data.lo[keep],
                                          None if data.hi is None else data.hi[keep])
        for stat in LAYER_SERIES:
            names = [f"{stat}/{layer.name}" for layer in snapshot.layers if f"{stat}/{layer.name}" in history.columns]
            if not names:
                continue
            # Evenly spaced: the gradient heatmap draws its columns at equal widths.
            steps, matrix = history.matrix(names, max_points=256, evenly=True)
            for row, name in enumerate(names):
                series[name] = SeriesData(steps=steps, values=matrix[row])
        return series
