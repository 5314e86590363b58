"""Shared 256-entry lookup tables and level helpers for every image a view draws.

Two maps only, so a colour means the same thing in every view: ``DIVERGING_LUT`` (blue, white,
red) for signed data centred on zero, ``SEQUENTIAL_LUT`` (viridis-like) for magnitudes.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "hex_colour",
    "DIVERGING_LUT",
    "SEQUENTIAL_LUT",
    "make_lut",
    "symmetric_levels",
    "finite_levels",
    "lut_colour",
]


def make_lut(anchors: list[tuple[int, int, int]]) -> np.ndarray:
    """A (256, 3) uint8 table interpolated linearly through evenly spaced RGB anchors."""
    stops = np.asarray(anchors, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(stops))
    ramp = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(ramp, positions, stops[:, c]) for c in range(3)], axis=1)
    # uint8 keeps ImageItem on its fast indexed-8 path (a float LUT falls back to makeARGB).
    return np.clip(np.round(table), 0, 255).astype(np.uint8)


# ColorBrewer RdBu, reversed so negative is blue; the pale centre makes 0 read as "nothing".
DIVERGING_LUT: np.ndarray = make_lut(
    [
        (5, 48, 97),
        (33, 102, 172),
        (67, 147, 195),
        (146, 197, 222),
        (247, 247, 247),
        (244, 165, 130),
        (214, 96, 77),
        (178, 24, 43),
        (103, 0, 31),
    ]
)

# Viridis sampled at nine points: perceptually even and readable on the dark background.
SEQUENTIAL_LUT: np.ndarray = make_lut(
    [
        (68, 1, 84),
        (72, 40, 120),
        (62, 74, 137),
        (49, 104, 142),
        (38, 130, 142),
        (31, 158, 137),
        (53, 183, 121),
        (109, 205, 89),
        (253, 231, 37),
    ]
)
for _table in (DIVERGING_LUT, SEQUENTIAL_LUT):
    _table.setflags(write=False)


def symmetric_levels(a: np.ndarray | None) -> tuple[float, float]:
    """``(-m, m)`` with m the largest finite magnitude of ``a``; ``(-1, 1)`` if there is none.

    Zero stays at the LUT's centre whatever the data, so sign is readable at a glance.
    """
    if a is None:
        return (-1.0, 1.0)
    values = np.asarray(a)
    if values.size == 0:
        return (-1.0, 1.0)
    finite = values[np.isfinite(values)] if not np.isfinite(values).all() else values
    if finite.size == 0:
        return (-1.0, 1.0)
    m = float(np.max(np.abs(finite)))
    if not np.isfinite(m) or m <= 0.0:
        return (-1.0, 1.0)
    return (-m, m)


def finite_levels(a: np.ndarray | None, default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """``(min, max)`` of the finite values of ``a``, widened when flat, ``default`` when none."""
    if a is None:
        return default
    values = np.asarray(a)
    if values.size == 0:
        return default
    mask = np.isfinite(values)
    finite = values if mask.all() else values[mask]
    if finite.size == 0:
        return default
    lo, hi = float(np.min(finite)), float(np.max(finite))
    if hi <= lo:
        # A flat image still needs a non-empty range or ImageItem divides by zero.
        pad = abs(lo) * 0.5 or 0.5
        return (lo - pad, hi + pad)
    return (lo, hi)


def lut_colour(lut: np.ndarray, fraction: float) -> tuple[int, int, int]:
    """The LUT's RGB colour at ``fraction`` in [0, 1] (for legends and bars)."""
    index = int(round(min(max(fraction, 0.0), 1.0) * (len(lut) - 1)))
    r, g, b = (int(v) for v in lut[index][:3])
    return (r, g, b)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """``(r, g, b)`` as ``"#rrggbb"`` for Qt style sheets and rich text."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)
