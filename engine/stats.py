"""Device-side reductions the probe runs on every captured tensor, written to be cheap.

Each returns tensors on the tensor's device, never Python numbers, so the training thread never
synchronises. On the CPU the probe uses ``engine.host_stats`` instead, which computes the same
statistics with numpy.
"""
from __future__ import annotations

import math

import torch

__all__ = ["HIST_SAMPLE", "hist_stride", "moments", "nonfinite_counts", "dead_units", "unit_dims",
           "unit_count", "unit_extremes", "histogram"]

#: Histograms are taken over at most this many evenly strided elements of a tensor; a display
#: of a distribution needs no more, and it keeps big conv outputs cheap.
HIST_SAMPLE = 8192


def moments(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance (Welford's method: exact even when the mean dwarfs the spread)."""
    variance, mean = torch.var_mean(flat, correction=0)  # one fused kernel
    return mean, variance


def nonfinite_counts(flat: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many NaN and how many ±Inf values."""
    return torch.isnan(flat).sum(dtype=torch.float32), torch.isinf(flat).sum(dtype=torch.float32)


def unit_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Dimensions reduced over to judge each unit: all but the feature (or channel) axis."""
    if x.dim() == 2:
        return (0,)
    if x.dim() == 3:
        return (0, 1)  # (batch, positions, features)
    return tuple(d for d in range(x.dim()) if d != 1)  # (batch, channels, ...spatial)


def unit_count(shape: tuple[int, ...] | torch.Size) -> int:
    """Units of an output of this shape, as ``dead_units`` counts them."""
    if len(shape) <= 1:
        return max(1, math.prod(shape))
    return shape[-1] if len(shape) in (2, 3) else shape[1]


def dead_units(x: torch.Tensor) -> torch.Tensor:
    """Units whose output is <= 0 for every example (and position) of the batch."""
    if x.dim() <= 1:
        return (x <= 0).sum(dtype=torch.float32)
    return (x.amax(dim=unit_dims(x)) <= 0).sum(dtype=torch.float32)


def unit_extremes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The min and max of ``x`` (NaN if it holds one) and each unit's max (as ``dead_units``
    takes units), from one pass over it: a ReLU-like output's extremes and dead units, where
    ``aminmax`` and ``dead_units`` read it twice."""
    if x.dim() <= 1:
        low, high = torch.aminmax(x.reshape(-1))
        return low, high, x.reshape(-1)
    if x.dim() in (2, 3):  # (..., features): a min and max per feature
        lows, units = torch.aminmax(x.reshape(-1, x.shape[-1]), dim=0)
    else:  # (batch, channels, ...spatial): per example and channel, then per channel
        lows, highs = torch.aminmax(x.reshape(x.shape[0], x.shape[1], -1), dim=2)
        units = highs.amax(dim=0)
    return lows.amin(), units.amax(), units


def hist_stride(count: int) -> int:
    """The stride of the evenly strided sample (at most ``HIST_SAMPLE`` values) a histogram of
    ``count`` values takes."""
    return max(1, -(-count // HIST_SAMPLE))


def histogram(flat: torch.Tensor, lo: float, hi: float, bins: int) -> tuple[torch.Tensor, int]:
    """Counts in ``bins`` equal bins over [lo, hi] (outliers clamped into the edge bins, NaN
    dropped) of an evenly strided sample, and the sample's size."""
    sample = flat[::hist_stride(flat.numel())]
    clean = torch.nan_to_num(sample.clamp(lo, hi), nan=lo - 1.0)
    return torch.histc(clean, bins=bins, min=lo, max=hi), sample.numel()
