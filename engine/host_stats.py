"""The probe's statistics for CPU tensors, computed with numpy over zero-copy views.

On a CPU there is no transfer to save, and a small model's capture is dominated by the fixed cost
of each call: a PyTorch op costs several microseconds of dispatch, a numpy call about one. So on
the CPU the probe reduces with numpy, and it reduces the small activations of a step *together*:
each hook keeps a copy of its output (a copy, since a later in-place op may change the output),
and one batch of segment-wise numpy calls turns them all into rows at the end of the step.

The definitions are those of ``engine.stats`` (the device path), documented in ``engine.probe``;
means and variances here accumulate in float64.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BATCHED_MAX", "host_array", "PendingActivation", "activation_rows", "segment_rows", "change_rows",
           "sumsq"]

#: Outputs with at most this many values are reduced in the end-of-step batch (histogrammed in
#: full: it equals ``engine.stats.HIST_SAMPLE``); bigger ones are reduced at once by the device
#: path, whose per-call cost no longer matters and whose kernels use every core.
BATCHED_MAX = 8192

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


@_quiet
def activation_rows(pending: list[PendingActivation], margin: float, bins: int) -> np.ndarray:
    """Rows of (mean, var, min, max, NaN count, Inf count, dead units, saturated count, histogram
    counts...) for each pending (non-empty) output, one segment-wise numpy call per statistic
    for all of them."""
    count = len(pending)
    sizes = np.fromiter((p.values.size for p in pending), np.int64, count)
    flat = np.concatenate([p.values for p in pending])
    starts = _segments(sizes)
    rows = np.zeros((count, 8 + bins))
    mean = np.add.reduceat(flat, starts, dtype=np.float64) / sizes
    centred = flat - np.repeat(mean.astype(flat.dtype), sizes)  # two passes: exact for any offset
    rows[:, 0] = mean
    rows[:, 1] = np.add.reduceat(centred * centred, starts, dtype=np.float64) / sizes
    rows[:, 2] = np.minimum.reduceat(flat, starts)
    rows[:, 3] = np.maximum.reduceat(flat, starts)
    finite = bool(np.isfinite(rows[:, :2]).all())  # a finite mean and variance prove all finite
    if not finite:
        rows[:, 4] = np.add.reduceat(np.isnan(flat), starts)
        rows[:, 5] = np.add.reduceat(np.isinf(flat), starts)
    for index, item in enumerate(pending):
        if item.relu_like:
            rows[index, 6] = _dead_units(item.values, item.shape)
        if item.saturation_bounds is not None:
            lo, hi = item.saturation_bounds
            values = item.values
            rows[index, 7] = np.count_nonzero(values < lo + margin) + np.count_nonzero(values > hi - margin)
    # Histogram: each value's bin position within its own range, shifted by its segment's
    # offset into one run of count * bins counters. Outliers (and +-Inf) clamp into the edge
    # bins; NaN is dropped, as torch.histc drops it.
    lo = np.fromiter((p.hist_range[0] for p in pending), np.float64, count)
    hi = np.fromiter((p.hist_range[1] for p in pending), np.float64, count)
    scale = bins / (hi - lo)
    position = flat * np.repeat(scale.astype(np.float32), sizes)
    position -= np.repeat((lo * scale).astype(np.float32), sizes)
    np.clip(position, 0.0, bins - 0.5, out=position)
    position += np.repeat(np.arange(0, count * bins, bins, dtype=np.float32), sizes)
    if not finite:
        position = position[~np.isnan(position)]
    rows[:, 8:] = np.bincount(position.astype(np.intp), minlength=count * bins).reshape(count, bins)
    return rows


@_quiet
def sumsq(tensor: torch.Tensor) -> float:
    """The squared L2 norm of a CPU tensor."""
    values = host_array(tensor)
    return float(np.dot(values, values))


@_quiet
def segment_rows(flat: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(L, 5) per consecutive segment of ``flat``: L2 norm, mean, population variance, NaN and
    Inf counts; sums accumulate in float64. An empty segment gets NaN figures."""
    rows = np.full((len(sizes), 5), np.nan)
    rows[:, 3:] = 0.0
    filled = sizes > 0
    if not filled.any():
        return rows
    starts = _segments(sizes)[filled]
    counts = sizes[filled]
    sums = np.add.reduceat(flat, starts, dtype=np.float64)
    squares = np.add.reduceat(flat * flat, starts, dtype=np.float64)
    mean = sums / counts
    out = rows[filled]
    out[:, 0] = np.sqrt(squares)
    out[:, 1] = mean
    out[:, 2] = squares / counts - mean * mean
    if not (np.isfinite(sums).all() and np.isfinite(squares).all()):  # finite sums prove all finite
        out[:, 3] = np.add.reduceat(np.isnan(flat), starts)
        out[:, 4] = np.add.reduceat(np.isinf(flat), starts)
    rows[filled] = out
    return rows


@_quiet
def change_rows(after: np.ndarray, before: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(L, 2) per consecutive segment: the sum of squares of (after - before), and of before."""
    rows = np.zeros((len(sizes), 2))
    filled = sizes > 0
    if filled.any():
        starts = _segments(sizes)[filled]
        delta = after - before
        rows[filled, 0] = np.add.reduceat(delta * delta, starts, dtype=np.float64)
        rows[filled, 1] = np.add.reduceat(before * before, starts, dtype=np.float64)
    return rows
