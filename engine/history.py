"""Bounded-memory history of scalar columns (loss, per-layer statistics) over a whole run.

The most recent ``raw_window`` steps are kept at full resolution in a ring buffer. Older steps
are folded into tiers of min/mean/max buckets: a tier-k bucket covers ``factor ** (k + 1)``
consecutive appended steps, and when a tier is full its oldest buckets are merged ``factor`` at
a time into the next tier. Memory therefore grows with the logarithm of the run length, while the
shape of every curve (its mean, and the envelope of its extremes) survives exactly.

Every array is preallocated float32 (steps x columns), so one append is a row copy into a ring,
and the reductions that fold old steps away run vectorised on blocks of rows.
"""
from __future__ import annotations

import logging
import operator
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from engine.snapshot import SeriesData

__all__ = ["History"]

logger = logging.getLogger(__name__)

# Version of the to_arrays() layout, checked by from_arrays().
_ARRAYS_VERSION = 1
# Reductions meet inf - inf and float32 overflow on diverged runs; those give NaN / inf, which is
# the honest answer, so the warnings would only be noise.
_QUIET = dict(invalid="ignore", over="ignore", divide="ignore")
# Arrays of one tier in to_arrays(), with the dtype kinds from_arrays() accepts for each.
_TIER_KINDS = {"first": "iu", "last": "iu", "lo": "f", "mean": "f", "hi": "f", "count": "iu"}


@dataclass(slots=True)
class _Raw:
    """Ring buffer of full-resolution rows."""

    steps: np.ndarray  # (cap,) int64
    values: np.ndarray  # (cap, n_columns) float32
    chunk: int  # rows folded into tier 0 at a time (a multiple of factor)
    start: int = 0  # index of the oldest row; always a multiple of chunk
    size: int = 0


@dataclass(slots=True)
class _Tier:
    """Ring buffer of buckets, each covering ``width`` consecutive appended rows."""

    width: int
    first: np.ndarray  # (cap,) int64, step of the bucket's first row
    last: np.ndarray  # (cap,) int64, step of its last row
    lo: np.ndarray  # (cap, n_columns) float32, min ignoring NaN
    mean: np.ndarray  # (cap, n_columns) float32, mean ignoring NaN
    hi: np.ndarray  # (cap, n_columns) float32, max ignoring NaN
    count: np.ndarray  # (cap, n_columns) int, non-NaN rows behind each mean
    chunk: int  # buckets merged into the next tier at a time (a multiple of factor)
    start: int = 0  # index of the oldest bucket; always a multiple of chunk
    size: int = 0


@dataclass(slots=True)
class _Points:
    """Points of k columns, oldest -> newest, before any further decimation.

    Rows are points and columns are columns, as in the stores, so gathering and reducing run
    over contiguous rows.
    """

    first: np.ndarray  # (n,) int64, step of the first row behind each point
    last: np.ndarray  # (n,) int64, step of the last
    mean: np.ndarray  # (n, k) float64
    count: np.ndarray  # (n, k) int64, non-NaN rows behind each mean
    lo: np.ndarray | None  # (n, k) float64, None when the caller needs no bounds
    hi: np.ndarray | None

    @property
    def centres(self) -> np.ndarray:
        return (self.first + self.last) / 2.0

    def take(self, index: np.ndarray | slice) -> _Points:
        return _Points(
            self.first[index], self.last[index], self.mean[index], self.count[index],
            None if self.lo is None else self.lo[index],
            None if self.hi is None else self.hi[index],
        )  # fmt: skip


def _ring_slices(start: int, size: int, cap: int) -> list[slice]:
    """The one or two contiguous slices that hold a ring's entries, oldest first."""
    end = start + size
    if end <= cap:
        return [slice(start, end)]
    return [slice(start, cap), slice(0, end - cap)]


def _ordered(array: np.ndarray, slices: list[slice]) -> np.ndarray:
    """A copy of a ring's entries, oldest first."""
    return np.concatenate([array[s] for s in slices] or [array[:0]], axis=0)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _count_dtype(width: int) -> type:
    # int32 halves the count arrays; only buckets of over 2**31 rows need more.
    return np.int32 if width < 2**31 else np.int64


def _safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count, NaN where count is 0, without a warning."""
    out = np.full(total.shape, np.nan, dtype=np.float64)
    np.divide(total, count, out=out, where=count > 0)
    return out


class History:
    """Thread-safe (one lock): the training thread appends, the GUI thread reads.

    Args:
        columns: names of the scalar columns, e.g. ``"loss"``, ``"grad_norm/layers.0"``.
        raw_window: the newest steps always kept at full resolution.
        factor: how many buckets of one tier make a bucket of the next (>= 2).
        tier_capacity: buckets each tier holds before its oldest ones move up a tier.
    """

    def __init__(
        self,
        columns: Sequence[str],
        raw_window: int = 1024,
        factor: int = 16,
        tier_capacity: int = 1024,
    ) -> None:
        columns = tuple(str(c) for c in columns)
        if len(set(columns)) != len(columns):
            dupes = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"duplicate column names: {dupes}")
        if factor < 2:
            raise ValueError(f"factor must be >= 2, got {factor}")
        if raw_window < 1:
            raise ValueError(f"raw_window must be >= 1, got {raw_window}")
        if tier_capacity < factor:
            raise ValueError(f"tier_capacity ({tier_capacity}) must be >= factor ({factor})")
        self.columns: tuple[str, ...] = columns
        self._index = {name: i for i, name in enumerate(columns)}
        self._raw_window = int(raw_window)
        self._factor = int(factor)
        self._tier_capacity = int(tier_capacity)
        # Folding a quarter of the window at a time keeps the Python overhead per row small
        # while the ring stays only a little larger than the window.
        raw_chunk = factor * max(1, raw_window // (4 * factor))
        raw_cap = _round_up(raw_window, raw_chunk) + raw_chunk
        self._raw = _Raw(
            steps=np.zeros(raw_cap, dtype=np.int64),
            values=np.empty((raw_cap, len(columns)), dtype=np.float32),
            chunk=raw_chunk,
        )
        self._tier_chunk = factor * max(1, tier_capacity // (4 * factor))
        self._tier_cap = _round_up(tier_capacity, self._tier_chunk)
        self._tiers: list[_Tier] = []
        self._n_rows = 0
        self._latest: int | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------- writing

    def append(self, step: int, row: np.ndarray) -> None:
        """Record one step; ``row`` has one value per column, NaN where a value is missing.

        Raises:
            ValueError: the row has the wrong length or ``step`` does not increase.
        """
        step = operator.index(step)
        row = np.asarray(row)
        if row.shape != (len(self.columns),):
            raise ValueError(f"row has shape {row.shape}, expected ({len(self.columns)},)")
        with self._lock:
            if self._latest is not None and step <= self._latest:
                raise ValueError(f"steps must increase: got {step} after {self._latest}")
            raw = self._raw
            cap = raw.steps.shape[0]
            if raw.size == cap:
                self._fold_raw()
            pos = raw.start + raw.size
            if pos >= cap:
                pos -= cap
            with np.errstate(**_QUIET):  # a float64 beyond float32's range is stored as inf
                raw.values[pos] = row
            raw.steps[pos] = step
            raw.size += 1
            self._n_rows += 1
            self._latest = step

    def append_many(self, steps: np.ndarray, rows: np.ndarray) -> None:
        """Record ``k`` steps at once: ``steps`` (k,) increasing, ``rows`` (k, n_columns)."""
        steps = np.asarray(steps)
        rows = np.asarray(rows)
        k = steps.shape[0] if steps.ndim == 1 else -1
        if steps.ndim != 1 or rows.shape != (k, len(self.columns)):
            raise ValueError(
                f"expected steps (k,) and rows (k, {len(self.columns)}), "
                f"got {steps.shape} and {rows.shape}"
            )
        if k == 0:
            return
        if not np.issubdtype(steps.dtype, np.integer):
            raise ValueError(f"steps must be integers, got dtype {steps.dtype}")
        steps = steps.astype(np.int64, copy=False)
        if k > 1 and not bool(np.all(steps[1:] > steps[:-1])):
            raise ValueError("steps must increase strictly within append_many")
        with self._lock:
            if self._latest is not None and steps[0] <= self._latest:
                raise ValueError(f"steps must increase: got {int(steps[0])} after {self._latest}")
            raw = self._raw
            cap = raw.steps.shape[0]
            done = 0
            with np.errstate(**_QUIET):
                while done < k:
                    if raw.size == cap:
                        self._fold_raw()
                    pos = (raw.start + raw.size) % cap
                    # Free space is contiguous up to the array's end or the oldest row.
                    room = min(cap - raw.size, cap - pos, k - done)
                    raw.values[pos : pos + room] = rows[done : done + room]
                    raw.steps[pos : pos + room] = steps[done : done + room]
                    raw.size += room
                    done += room
            self._n_rows += k
            self._latest = int(steps[-1])

    def _fold_raw(self) -> None:
        """Reduce the oldest chunk of raw rows into tier-0 buckets (lock held)."""
        raw, f = self._raw, self._factor
        sl = slice(raw.start, raw.start + raw.chunk)  # contiguous: start is chunk-aligned
        n_buckets = raw.chunk // f
        block = raw.values[sl].reshape(n_buckets, f, -1)
        steps = raw.steps[sl]
        with np.errstate(**_QUIET):
            lo = np.fmin.reduce(block, axis=1)  # fmin/fmax skip NaN unless all are NaN
            hi = np.fmax.reduce(block, axis=1)
            missing = np.isnan(block)
            if missing.any():
                count = f - np.count_nonzero(missing, axis=1)
                total = np.where(missing, np.float32(0), block).sum(axis=1, dtype=np.float64)
            else:
                count = np.full(lo.shape, f, dtype=np.int64)
                total = block.sum(axis=1, dtype=np.float64)
            mean = _safe_mean(total, count)
        raw.start = (raw.start + raw.chunk) % raw.steps.shape[0]
        raw.size -= raw.chunk
        self._push(0, steps[::f], steps[f - 1 :: f], lo, mean, hi, count)

    def _new_tier(self) -> _Tier:
        level = len(self._tiers)
        width = self._factor ** (level + 1)
        cap, n_cols = self._tier_cap, len(self.columns)
        logger.debug("history: opening tier %d (buckets of %d steps)", level, width)
        # np.empty: pages are only touched (and counted in RSS) as buckets arrive.
        return _Tier(
            width=width,
            first=np.zeros(cap, dtype=np.int64),
            last=np.zeros(cap, dtype=np.int64),
            lo=np.empty((cap, n_cols), dtype=np.float32),
            mean=np.empty((cap, n_cols), dtype=np.float32),
            hi=np.empty((cap, n_cols), dtype=np.float32),
            count=np.empty((cap, n_cols), dtype=_count_dtype(width)),
            chunk=self._tier_chunk,
        )

    def _push(
        self,
        level: int,
        first: np.ndarray,
        last: np.ndarray,
        lo: np.ndarray,
        mean: np.ndarray,
        hi: np.ndarray,
        count: np.ndarray,
    ) -> None:
        """Append buckets to tier ``level``, folding its oldest into the next when full."""
        if level == len(self._tiers):
            self._tiers.append(self._new_tier())
        tier = self._tiers[level]
        cap = tier.first.shape[0]
        n, done = first.shape[0], 0
        with np.errstate(**_QUIET):
            while done < n:
                if tier.size == cap:
                    self._fold_tier(level)
                pos = (tier.start + tier.size) % cap
                room = min(cap - tier.size, cap - pos, n - done)
                src, dst = slice(done, done + room), slice(pos, pos + room)
                tier.first[dst] = first[src]
                tier.last[dst] = last[src]
                tier.lo[dst] = lo[src]
                tier.mean[dst] = mean[src]
                tier.hi[dst] = hi[src]
                tier.count[dst] = count[src]
                tier.size += room
                done += room

    def _fold_tier(self, level: int) -> None:
        """Merge the oldest chunk of a tier's buckets, ``factor`` at a time, into the next."""
        tier, f = self._tiers[level], self._factor
        sl = slice(tier.start, tier.start + tier.chunk)
        n_buckets = tier.chunk // f
        n_cols = len(self.columns)
        count = tier.count[sl].reshape(n_buckets, f, n_cols)
        mean = tier.mean[sl].reshape(n_buckets, f, n_cols)
        with np.errstate(**_QUIET):
            lo = np.fmin.reduce(tier.lo[sl].reshape(n_buckets, f, n_cols), axis=1)
            hi = np.fmax.reduce(tier.hi[sl].reshape(n_buckets, f, n_cols), axis=1)
            # Count-weighted, so a merged mean is the mean of every non-NaN row beneath it.
            weighted = np.where(count > 0, mean.astype(np.float64), 0.0) * count
            total_count = count.sum(axis=1, dtype=np.int64)
            merged = _safe_mean(weighted.sum(axis=1), total_count)
        first = tier.first[sl][::f].copy()
        last = tier.last[sl][f - 1 :: f].copy()
        tier.start = (tier.start + tier.chunk) % tier.first.shape[0]
        tier.size -= tier.chunk
        self._push(level + 1, first, last, lo, merged, hi, total_count)

    # ----------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        """Number of steps appended over the run."""
        return self._n_rows

    @property
    def latest_step(self) -> int | None:
        """Step of the newest row, None before the first append."""
        return self._latest

    def _column(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            shown = ", ".join(repr(c) for c in self.columns[:5])
            more = f", ... ({len(self.columns)} in all)" if len(self.columns) > 5 else ""
            raise KeyError(f"History has no column {name!r} (columns: {shown}{more})") from None

    def last(self, name: str) -> float:
        """Newest value of a column (NaN if missing there or nothing was appended yet)."""
        col = self._column(name)
        with self._lock:
            raw = self._raw
            if raw.size == 0:
                return float("nan")
            pos = (raw.start + raw.size - 1) % raw.steps.shape[0]
            return float(raw.values[pos, col])

    def nbytes(self) -> int:
        """Bytes held by this history's arrays (allocated, whether touched yet or not)."""
        with self._lock:
            total = self._raw.steps.nbytes + self._raw.values.nbytes
            for t in self._tiers:
                total += sum(a.nbytes for a in (t.first, t.last, t.lo, t.mean, t.hi, t.count))
            return total

    def _gather(self, cols: np.ndarray, bounds: bool) -> _Points:
        """Copy the points of ``cols`` oldest -> newest across tiers and the raw ring."""
        firsts, lasts, means, counts, los, his = [], [], [], [], [], []
        with self._lock:
            for tier in reversed(self._tiers):  # the highest tier holds the oldest steps
                for sl in _ring_slices(tier.start, tier.size, tier.first.shape[0]):
                    firsts.append(tier.first[sl])
                    lasts.append(tier.last[sl])
                    means.append(np.take(tier.mean[sl], cols, axis=1))
                    counts.append(np.take(tier.count[sl], cols, axis=1))
                    if bounds:
                        los.append(np.take(tier.lo[sl], cols, axis=1))
                        his.append(np.take(tier.hi[sl], cols, axis=1))
            raw = self._raw
            for sl in _ring_slices(raw.start, raw.size, raw.steps.shape[0]):
                values = np.take(raw.values[sl], cols, axis=1)
                firsts.append(raw.steps[sl])
                lasts.append(raw.steps[sl])
                means.append(values)
                counts.append(~np.isnan(values))
                if bounds:
                    los.append(values)
                    his.append(values)
            # Concatenating copies, so nothing below reads the stores after the lock is gone.
            k = cols.shape[0]
            first = np.concatenate(firsts or [np.empty(0, np.int64)])
            last = np.concatenate(lasts or [np.empty(0, np.int64)])

        def join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts, axis=0, dtype=dtype) if parts else np.empty((0, k), dtype)

        return _Points(
            first=first,
            last=last,
            mean=join(means, np.float64),
            count=join(counts, np.int64),
            lo=join(los, np.float64) if bounds else None,
            hi=join(his, np.float64) if bounds else None,
        )

    @staticmethod
    def _window(points: _Points, start: float | None, stop: float | None) -> _Points:
        """Keep the points whose step range meets [start, stop]."""
        if start is None and stop is None:
            return points
        keep = np.ones(points.first.shape[0], dtype=bool)
        if start is not None:
            keep &= points.last >= start
        if stop is not None:
            keep &= points.first <= stop
        return points.take(keep)

    @staticmethod
    def _decimate(points: _Points, max_points: int) -> _Points:
        """At most ``max_points`` points: equal step-width bins of min/mean/max, newest kept."""
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        n = points.first.shape[0]
        if n <= max_points:
            return points
        if max_points == 1:
            return points.take(slice(n - 1, n))
        # The newest point stays as it is, so a curve always ends on the current value.
        body = n - 1
        bins = max_points - 1
        centres = points.centres[:body]
        span = centres[-1] - centres[0]  # > 0: centres strictly increase
        which = np.floor((centres - centres[0]) * (bins / span)).astype(np.int64)
        np.minimum(which, bins - 1, out=which)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(which)) + 1))
        ends = np.append(starts[1:] - 1, body - 1)
        newest = slice(body, n)
        count = points.count[:body]
        with np.errstate(**_QUIET):
            merged_count = np.add.reduceat(count, starts, axis=0)
            weighted = np.where(count > 0, points.mean[:body], 0.0) * count
            mean = _safe_mean(np.add.reduceat(weighted, starts, axis=0), merged_count)
            lo = hi = None
            if points.lo is not None and points.hi is not None:
                lo = np.fmin.reduceat(points.lo[:body], starts, axis=0)
                hi = np.fmax.reduceat(points.hi[:body], starts, axis=0)
                lo = np.concatenate((lo, points.lo[newest]))
                hi = np.concatenate((hi, points.hi[newest]))
        return _Points(
            first=np.append(points.first[starts], points.first[-1]),
            last=np.append(points.last[ends], points.last[-1]),
            mean=np.concatenate((mean, points.mean[newest])),
            count=np.concatenate((merged_count, points.count[newest])),
            lo=lo,
            hi=hi,
        )

    def series(
        self,
        name: str,
        max_points: int | None = 2000,
        start: float | None = None,
        stop: float | None = None,
    ) -> SeriesData:
        """One column over the run (or over steps ``start``..``stop``), oldest first.

        Each point is a bucket: its centre step, mean value, and min/max as lo/hi (equal to the
        value for full-resolution points). Beyond ``max_points`` the points are merged further
        into equal step-width bins, keeping the newest point as it is.
        """
        col = self._column(name)
        points = self._window(self._gather(np.array([col]), bounds=True), start, stop)
        if max_points is not None:
            points = self._decimate(points, max_points)
        assert points.lo is not None and points.hi is not None
        return SeriesData(
            steps=points.centres,
            values=points.mean[:, 0],
            lo=points.lo[:, 0],
            hi=points.hi[:, 0],
        )

    def matrix(
        self, names: Sequence[str], max_points: int = 512, evenly: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Means of several columns on one step axis, for a columns x steps heatmap.

        With ``evenly``, the steps are evenly spaced, as an image's columns are: each column takes
        the point whose steps cover it (between two points, the nearer). Without it, a run whose
        oldest buckets are wider than the decimation's bins leaves those bins empty, and a heatmap
        drawn at equal widths puts its columns thousands of steps from their own.

        Returns:
            steps (n,) float64 bucket centres (or the even grid), and values (len(names), n) float64.
        """
        cols = np.array([self._column(name) for name in names], dtype=np.intp)
        points = self._decimate(self._gather(cols, bounds=False), max_points)
        if evenly:
            return self._evenly(points, max_points)
        return points.centres, np.ascontiguousarray(points.mean.T)

    @staticmethod
    def _evenly(points: _Points, max_points: int) -> tuple[np.ndarray, np.ndarray]:
        """``points`` resampled onto at most ``max_points`` evenly spaced steps (see ``matrix``)."""
        n = points.first.shape[0]
        centres = points.centres
        if n < 2:
            return centres, np.ascontiguousarray(points.mean.T)
        # One column per step when the run is that short (full-resolution points stay as they are).
        columns = int(min(max_points, points.last[-1] - points.first[0] + 1))
        grid = np.linspace(centres[0], centres[-1], max(columns, 2))
        after = np.minimum(np.searchsorted(points.last, grid, side="left"), n - 1)  # first point ending at or after
        before = np.maximum(after - 1, 0)
        covered = points.first[after] <= grid
        nearer_before = grid - points.last[before] < points.first[after] - grid
        index = np.where(covered | ~nearer_before, after, before)
        return grid, np.ascontiguousarray(points.mean[index].T)

    # ----------------------------------------------------------------------------- persistence

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays from which :meth:`from_arrays` rebuilds this history exactly."""
        with self._lock:
            raw = self._raw
            raw_sl = _ring_slices(raw.start, raw.size, raw.steps.shape[0])
            out: dict[str, np.ndarray] = {
                "params": np.array(
                    [_ARRAYS_VERSION, self._raw_window, self._factor, self._tier_capacity,
                     self._n_rows, len(self._tiers)],
                    dtype=np.int64,
                ),  # fmt: skip
                "columns": np.array(self.columns, dtype=np.str_).reshape(len(self.columns)),
                "raw_steps": _ordered(raw.steps, raw_sl),
                "raw_values": _ordered(raw.values, raw_sl),
            }
            for level, tier in enumerate(self._tiers):
                sls = _ring_slices(tier.start, tier.size, tier.first.shape[0])
                for key in _TIER_KINDS:
                    out[f"tier{level}_{key}"] = _ordered(getattr(tier, key), sls)
            return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> History:
        """Rebuild a history from :meth:`to_arrays` output.

        Raises:
            ValueError: an array is missing or inconsistent with the others.
        """

        def get(key: str, kinds: str) -> np.ndarray:
            if key not in arrays:
                raise ValueError(f"history array {key!r} is missing")
            value = np.asarray(arrays[key])
            if value.dtype.kind not in kinds:
                raise ValueError(f"history array {key!r} has dtype {value.dtype}")
            return value

        params = get("params", "iu")
        if params.shape != (6,):
            raise ValueError(f"history params must be 6 integers, got shape {params.shape}")
        version, raw_window, factor, tier_capacity, n_rows, n_tiers = (int(v) for v in params)
        if version != _ARRAYS_VERSION:
            raise ValueError(f"history layout {version} is not {_ARRAYS_VERSION}")
        if not 0 <= n_tiers <= 64:  # 16**64 steps would be a long run
            raise ValueError(f"history has {n_tiers} tiers")
        # Sizes a history is built with, not ones that would reserve gigabytes before any check.
        if not (1 <= raw_window <= 1 << 22 and 2 <= factor <= 1 << 10 and factor <= tier_capacity <= 1 << 22):
            raise ValueError(f"history sizes out of range (window {raw_window}, factor {factor}, "
                             f"tier capacity {tier_capacity})")
        columns = get("columns", "U")
        if columns.ndim != 1:
            raise ValueError("history columns must be a 1-D array of strings")
        raw_steps, raw_values = get("raw_steps", "iu"), get("raw_values", "f")
        tiers = [
            {key: get(f"tier{level}_{key}", kind) for key, kind in _TIER_KINDS.items()}
            for level in range(n_tiers)
        ]
        history = cls([str(c) for c in columns], raw_window, factor, tier_capacity)
        n_cols = len(history.columns)

        raw = history._raw
        size = raw_steps.shape[0] if raw_steps.ndim == 1 else -1
        if size < 0 or raw_values.shape != (size, n_cols) or size > raw.steps.shape[0]:
            raise ValueError(f"history raw arrays have shapes {raw_steps.shape}, {raw_values.shape}")
        raw.steps[:size] = raw_steps
        raw.values[:size] = raw_values
        raw.size = size
        rows = size
        bucket_steps = []
        for level, parts in enumerate(tiers):
            tier = history._new_tier()
            n = parts["first"].shape[0] if parts["first"].ndim == 1 else -1
            if n < 0 or n > tier.first.shape[0] or parts["last"].shape != (n,) or any(
                parts[k].shape != (n, n_cols) for k in ("lo", "mean", "hi", "count")
            ):
                raise ValueError(f"history tier {level} arrays have inconsistent shapes")
            if n and (parts["count"].min() < 0 or parts["count"].max() > tier.width):
                raise ValueError(f"history tier {level} has counts outside 0..{tier.width}")
            for key, value in parts.items():
                getattr(tier, key)[:n] = value
            tier.size = n
            history._tiers.append(tier)
            rows += n * tier.width
            bucket_steps.append(np.stack([parts["first"], parts["last"]], axis=1).ravel())
        if rows != n_rows or (n_rows > 0) != (size > 0):
            raise ValueError(f"history arrays hold {rows} steps but say {n_rows}")
        steps = np.concatenate(bucket_steps[::-1] + [raw_steps]).astype(np.int64)
        if steps.size > 1 and not bool(np.all(steps[1:] > steps[:-1])):
            raise ValueError("history steps are not in increasing order")
        history._n_rows = n_rows
        history._latest = int(raw_steps[-1]) if size else None
        return history
