"""The probe's statistics for CPU tensors, computed with numpy over zero-copy views.

On a CPU there is no transfer to save, and a small model's capture is dominated by the fixed cost
of each call: a PyTorch op costs several microseconds of dispatch, a numpy call about one. So on
the CPU the probe reduces with numpy, and it reduces the small activations of a step *together*:
each hook keeps a copy of its output (a copy, since a later in-place op may change the output),
and one batch of segment-wise numpy calls turns them all into rows at the end of the step. Big
outputs, where the passes over memory cost more than the calls, are reduced at once with as few
passes as possible; parameters and gradients are reduced where they lie, without copies.

The definitions are those of ``engine.stats`` (the device path), documented in ``engine.probe``;
sums accumulate in float64.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from engine.stats import HIST_SAMPLE, dead_units, hist_stride

__all__ = ["BATCHED_MAX", "JOIN_MAX", "host_array", "PendingActivation", "ActivationReducer", "group_rows",
           "ChangeMeter", "sumsq", "sums_of_squares"]

#: Outputs with at most this many values are reduced in the end-of-step batch (histogrammed in
#: full); bigger ones are reduced at once, with PyTorch's kernels, which use every core.
BATCHED_MAX = HIST_SAMPLE

#: An output's variance is taken in one pass (E[x^2] - mean^2) when it is at least this
#: fraction of the squared mean; the rounding then stays below ~1e-5 of it. Else it takes a
#: second, centred pass.
ONE_PASS_MEAN_RATIO = 0.25

_NATIVE = (torch.float32, torch.float64)

# Overflow and NaN are data here, reported as counts, not warnings. (np.errstate is local to
# the thread and context, unlike warnings.catch_warnings.)
_quiet = np.errstate(over="ignore", invalid="ignore", divide="ignore")


def host_array(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (a float32 copy for other dtypes), flattened."""
    t = tensor.detach()
    if t.dtype not in _NATIVE:
        t = t.float()
    return t.numpy().reshape(-1)


class PendingActivation(NamedTuple):
    """One hooked output waiting for the end-of-step batch (a tuple: built in every hook)."""

    values: np.ndarray  # flat copy of the output
    shape: tuple[int, ...]
    hist_range: tuple[float, float]
    saturation_bounds: tuple[float, float] | None  # for sigmoid/tanh-like layers
    relu_like: bool


def _dead_units(values: np.ndarray, shape: tuple[int, ...]) -> float:
    """Units <= 0 for every example (and position); unit axes as in ``engine.stats.dead_units``."""
    if len(shape) <= 1:
        return float(np.count_nonzero(values <= 0))
    x = values.reshape(shape)
    if len(shape) == 2:
        axes: tuple[int, ...] = (0,)
    elif len(shape) == 3:
        axes = (0, 1)
    else:
        axes = tuple(d for d in range(len(shape)) if d != 1)
    return float(np.count_nonzero(x.max(axis=axes) <= 0))


def _segments(sizes: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(sizes), np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return starts


class _Layout(NamedTuple):
    """Per-element arrays for one arrangement of pending outputs (the same step after step)."""

    sizes: np.ndarray
    starts: np.ndarray
    hist_scale: np.ndarray  # per element: bins / (hi - lo)
    hist_shift: np.ndarray  # per element: -lo * scale
    hist_base: np.ndarray  # per element: the segment's first counter
    saturation_low: np.ndarray | None  # per element: lower bound + margin (-inf if none)
    saturation_high: np.ndarray | None


class ActivationReducer:
    """Turns a step's pending outputs into rows of (mean, var, min, max, NaN count, Inf count,
    dead units, saturated count, histogram counts...), one segment-wise numpy call per statistic
    for all of them. The per-element arrays of the last arrangement are kept for the next step."""

    def __init__(self, margin: float, bins: int) -> None:
        self.margin = margin
        self.bins = bins
        self._key: tuple | None = None
        self._layout: _Layout | None = None
        self._scratch: torch.Tensor | None = None
        self._positions = np.empty(HIST_SAMPLE, np.float32)

    def _arrange(self, pending: list[PendingActivation]) -> _Layout:
        key = tuple((p.values.size, p.hist_range, p.saturation_bounds) for p in pending)
        if key == self._key and self._layout is not None:
            return self._layout
        sizes = np.array([p.values.size for p in pending], np.int64)
        lo = np.array([p.hist_range[0] for p in pending], np.float64)
        hi = np.array([p.hist_range[1] for p in pending], np.float64)
        scale = self.bins / (hi - lo)
        low = high = None
        if any(p.saturation_bounds is not None for p in pending):
            bounds = [p.saturation_bounds or (-np.inf, np.inf) for p in pending]
            low = np.repeat(np.array([b[0] for b in bounds]) + self.margin, sizes).astype(np.float32)
            high = np.repeat(np.array([b[1] for b in bounds]) - self.margin, sizes).astype(np.float32)
        base = np.arange(0, len(pending) * self.bins, self.bins, dtype=np.intp)
        self._layout = _Layout(sizes, _segments(sizes), np.repeat(scale.astype(np.float32), sizes),
                               np.repeat((-lo * scale).astype(np.float32), sizes), np.repeat(base, sizes), low, high)
        self._key = key
        return self._layout

    @_quiet
    def rows(self, pending: list[PendingActivation]) -> np.ndarray:
        count, bins = len(pending), self.bins
        layout = self._arrange(pending)
        sizes, starts = layout.sizes, layout.starts
        flat = np.concatenate([p.values for p in pending])
        rows = np.zeros((count, 8 + bins))
        mean = np.add.reduceat(flat, starts, dtype=np.float64) / sizes
        rows[:, 0] = mean
        rows[:, 1] = np.add.reduceat(flat * flat, starts, dtype=np.float64) / sizes - mean * mean
        # As for big outputs: where the mean dwarfs the spread (or a value isn't finite), the
        # centred second pass, segment by segment.
        for index in np.flatnonzero(~(rows[:, 1] > ONE_PASS_MEAN_RATIO * mean * mean)):
            segment = flat[starts[index]:starts[index] + sizes[index]]
            centred = segment - segment.dtype.type(mean[index])
            rows[index, 1] = np.add.reduce(centred * centred, dtype=np.float64) / sizes[index]
        # Finite values whose float32 squares overflowed (|x| > ~1.8e19): again in float64.
        for index in np.flatnonzero(np.isinf(rows[:, 1]) & np.isfinite(mean)):
            segment = flat[starts[index]:starts[index] + sizes[index]]
            rows[index, 1] = _centred_sumsq(segment, mean[index]) / sizes[index]
        rows[:, 2] = np.minimum.reduceat(flat, starts)
        rows[:, 3] = np.maximum.reduceat(flat, starts)
        finite = math.isfinite(np.add.reduce(rows[:, :2], axis=None))  # finite means and variances prove all finite
        if not finite:
            rows[:, 4] = np.add.reduceat(np.isnan(flat), starts)
            rows[:, 5] = np.add.reduceat(np.isinf(flat), starts)
        for index, item in enumerate(pending):
            if item.relu_like:
                rows[index, 6] = _dead_units(item.values, item.shape)
        if layout.saturation_low is not None:
            rows[:, 7] = np.add.reduceat((flat < layout.saturation_low) | (flat > layout.saturation_high), starts)
        # Histogram: each value's bin position within its own range, clamped into the edge bins
        # (+-Inf too), then shifted to its segment's run of counters; NaN is dropped, as
        # torch.histc drops it.
        position = flat * layout.hist_scale
        position += layout.hist_shift
        np.maximum(position, 0.0, out=position)  # (np.clip costs more in calls than these two)
        np.minimum(position, bins - 0.5, out=position)
        base = layout.hist_base
        if not finite:
            kept = ~np.isnan(position)
            position, base = position[kept], base[kept]
        index = position.astype(np.intp)
        index += base
        rows[:, 8:] = np.bincount(index, minlength=count * bins).reshape(count, bins)
        return rows


    @_quiet
    def row_now(self, output: torch.Tensor, hist_range: tuple[float, float],
                saturation_bounds: tuple[float, float] | None, relu_like: bool) -> tuple[np.ndarray, int]:
        """The same row for one big CPU output, reduced at once with PyTorch's multi-threaded
        kernels (no copy kept), and the number of values its histogram sampled."""
        bins = self.bins
        x = output.detach()
        if x.dtype not in _NATIVE:
            x = x.float()
        flat = x.reshape(-1)
        count = flat.numel()
        row = np.zeros(8 + bins)
        mean = flat.sum().item() / count
        # E[x^2] - mean^2 reads the output once more and writes nothing; it loses digits only
        # when the mean dwarfs the spread, and then the centred second pass runs, in a buffer
        # kept between steps (a fresh one of this size costs more in page faults than the sums).
        variance = torch.dot(flat, flat).item() / count - mean * mean
        if not variance > ONE_PASS_MEAN_RATIO * mean * mean:  # also when not finite
            if self._scratch is None or self._scratch.numel() < count or self._scratch.dtype != flat.dtype:
                self._scratch = torch.empty(count, dtype=flat.dtype)
            centred = torch.sub(flat, mean, out=self._scratch[:count])
            variance = torch.dot(centred, centred).item() / count
        if math.isinf(variance) and math.isfinite(mean):  # float32 squares overflowed
            variance = _centred_sumsq(host_array(flat), mean) / count
        low, high = torch.aminmax(flat)
        row[:4] = (mean, variance, low.item(), high.item())
        if not (math.isfinite(mean) and math.isfinite(variance)):
            row[4] = torch.isnan(flat).sum().item()
            row[5] = torch.isinf(flat).sum().item()
        if relu_like:
            # Spatial axes first: a contiguous reduction, then a small one over the batch.
            row[6] = dead_units(x.flatten(2).amax(2) if x.dim() > 3 else x).item()
        values = host_array(flat)
        if saturation_bounds is not None:
            row[7] = np.count_nonzero(values < saturation_bounds[0] + self.margin) \
                + np.count_nonzero(values > saturation_bounds[1] - self.margin)
        sample = values[::hist_stride(count)]
        lo, hi = hist_range
        scale = bins / (hi - lo)
        position = np.multiply(sample, scale, out=self._positions[:sample.size], dtype=np.float32)
        position -= lo * scale
        np.clip(position, 0.0, bins - 0.5, out=position)
        if not (math.isfinite(mean) and math.isfinite(variance)):
            position = position[~np.isnan(position)]
        row[8:] = np.bincount(position.astype(np.intp), minlength=bins)
        return row, sample.size


#: Values per float64 chunk where float32 squares overflow (rare: |x| > ~1.8e19).
_CHUNK = 1 << 16


def _centred_sumsq(values: np.ndarray, centre: float = 0.0) -> float:
    """The sum of squares of ``values - centre`` in float64, a chunk at a time (no full copy)."""
    total = 0.0
    for at in range(0, values.size, _CHUNK):
        part = values[at:at + _CHUNK].astype(np.float64) - centre
        total += float(np.dot(part, part))
    return total


def _sumsq(values: np.ndarray) -> float:
    """BLAS's dot of a flat array with itself; in float64 when float32 squares overflow."""
    total = float(np.dot(values, values))
    if math.isinf(total) and values.dtype != np.float64 and np.isfinite(values).all():
        total = _centred_sumsq(values)
    return total


@_quiet
def sumsq(tensor: torch.Tensor) -> float:
    """The squared L2 norm of a CPU tensor."""
    return _sumsq(host_array(tensor))


#: Parameter groups with at most this many values in all are joined into one float64 array and
#: reduced segment-wise, a few numpy calls for every layer at once; bigger ones are reduced where
#: they lie, without copies (a join would cost more in memory traffic than the calls it saves).
JOIN_MAX = 1 << 16


class _Segments(NamedTuple):
    """Consecutive segments of a joined array, by their sizes."""

    sizes: np.ndarray  # float64, for dividing
    starts: np.ndarray  # of the non-empty segments
    nonempty: np.ndarray | None  # None when every segment has values
    total: int


@functools.lru_cache(maxsize=32)
def _segments_of(sizes: tuple[int, ...]) -> _Segments:
    counts = np.array(sizes, np.int64)
    nonempty = counts > 0
    return _Segments(counts.astype(np.float64), _segments(counts)[nonempty], None if nonempty.all() else nonempty,
                     int(counts.sum()))


def _group_sizes(groups: list[list[np.ndarray]]) -> _Segments:
    return _segments_of(tuple(sum(a.size for a in arrays) for arrays in groups))


def _segment_sums(values: np.ndarray, segments: _Segments) -> np.ndarray:
    """Float64 sums of the segments of ``values`` (0 for an empty segment)."""
    if segments.nonempty is None:
        return np.add.reduceat(values, segments.starts, dtype=np.float64)
    sums = np.zeros(len(segments.sizes))
    if values.size:
        sums[segments.nonempty] = np.add.reduceat(values, segments.starts, dtype=np.float64)
    return sums


def _joined(groups: list[list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([a for arrays in groups for a in arrays] or [np.zeros(0)], dtype=np.float64)


@_quiet
def sums_of_squares(arrays: list[np.ndarray]) -> np.ndarray:
    """The sum of squares of each flat array, in float64, for many small arrays at once."""
    flat = np.concatenate(arrays, dtype=np.float64)
    return _segment_sums(flat * flat, _segments_of(tuple(a.size for a in arrays)))


@_quiet
def group_rows(groups: list[list[np.ndarray]]) -> np.ndarray:
    """(L, 5) per group of flat arrays: L2 norm, mean, population variance, NaN and Inf counts.

    Small groups (``JOIN_MAX``) are joined and summed in float64; bigger ones are reduced where
    they lie (numpy's pairwise sum and BLAS's dot, no copies), combined in float64. An empty
    group gets NaN figures.
    """
    segments = _group_sizes(groups)
    rows = np.zeros((len(groups), 5))
    if segments.total <= JOIN_MAX:
        flat = _joined(groups)
        total = _segment_sums(flat, segments)
        squares = _segment_sums(flat * flat, segments)
        if not math.isfinite(np.add.reduce(total) + np.add.reduce(squares)):  # finite sums prove all finite
            rows[:, 3] = _segment_sums(np.isnan(flat), segments)
            rows[:, 4] = _segment_sums(np.isinf(flat), segments)
    else:
        total = np.array([sum(float(a.sum()) for a in arrays) for arrays in groups])
        squares = np.array([sum(_sumsq(a) for a in arrays) for arrays in groups])
        for row, arrays, t, q in zip(rows, groups, total, squares):
            if not (math.isfinite(t) and math.isfinite(q)):
                row[3] = sum(np.count_nonzero(np.isnan(a)) for a in arrays)
                row[4] = sum(np.count_nonzero(np.isinf(a)) for a in arrays)
    mean = total / np.maximum(segments.sizes, 1.0)
    rows[:, 0] = np.sqrt(squares)
    rows[:, 1] = mean
    rows[:, 2] = squares / np.maximum(segments.sizes, 1.0) - mean * mean
    if segments.nonempty is not None:
        rows[~segments.nonempty, :3] = np.nan
    return rows


class ChangeMeter:
    """Sums of squares of parameter changes, with a scratch buffer kept between steps."""

    def __init__(self) -> None:
        self._scratch = np.zeros(0, np.float32)

    @_quiet
    def rows(self, groups: list[list[np.ndarray]], before: np.ndarray) -> np.ndarray:
        """(L, 2) per group: the sum of squares of (after - before), and of before. ``before``
        holds the groups' arrays back to back, as they were."""
        if before.size <= JOIN_MAX:
            segments = _group_sizes(groups)
            earlier = before.astype(np.float64)
            delta = _joined(groups) - earlier
            rows = np.empty((len(groups), 2))
            rows[:, 0] = _segment_sums(delta * delta, segments)
            rows[:, 1] = _segment_sums(earlier * earlier, segments)
            return rows
        rows = np.zeros((len(groups), 2))
        largest = max((a.size for arrays in groups for a in arrays), default=0)
        if self._scratch.size < largest or self._scratch.dtype != before.dtype:
            self._scratch = np.empty(largest, before.dtype)
        offset = 0
        for row, arrays in zip(rows, groups):
            for after in arrays:
                earlier = before[offset:offset + after.size]
                offset += after.size
                delta = np.subtract(after, earlier, out=self._scratch[:after.size])
                row[0] += _sumsq(delta)
                row[1] += _sumsq(earlier)
        return rows
