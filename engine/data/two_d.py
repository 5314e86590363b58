"""Small 2-D classification sets and a 1-D regression curve, drawn with numpy.

Every generator takes a ``numpy.random.Generator`` and returns ``(x, y)`` as numpy arrays; the
package's ``make_dataset`` turns them into tensors and splits them. Points live roughly in
[-1.5, 1.5]^2 so one plotting extent suits every set, and ``noise`` is the standard deviation of
Gaussian jitter in those units (spirals and blobs scale it, see there).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "TWO_D_SETS",
    "balanced_labels",
    "xor",
    "circles",
    "moons",
    "spirals",
    "blobs",
    "regression",
]

TWO_D_SETS: tuple[str, ...] = ("xor", "circles", "moons", "spirals", "blobs")

# Spiral geometry: 1.75 turns per arm (as in the TensorFlow Playground) is hard for a linear
# model or a tiny MLP yet learnable by a 32-64 unit MLP in a few thousand Adam steps.
_SPIRAL_TURNS = 1.75
_SPIRAL_R0, _SPIRAL_R1 = 0.1, 1.45


def balanced_labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """Labels 0..classes-1 with counts differing by at most one, in random order."""
    labels = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(labels)
    return labels


def _jitter(rng: np.random.Generator, points: np.ndarray, noise: float) -> np.ndarray:
    return points + noise * rng.standard_normal(points.shape)


def xor(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Uniform square, label 1 in the quadrants where x0 * x1 < 0.

    Points keep a small margin from the axes so that, without noise, the classes are separable.
    """
    y = balanced_labels(rng, n, 2)
    margin = 0.1
    magnitude = margin + rng.uniform(0.0, 1.5 - margin, size=(n, 2))
    sign0 = rng.choice(np.array([-1.0, 1.0]), size=n)
    # Same signs for class 0 (quadrants I, III), opposite for class 1 (II, IV).
    sign1 = np.where(y == 0, sign0, -sign0)
    x = magnitude * np.stack([sign0, sign1], axis=1)
    return _jitter(rng, x, noise), y


def circles(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 on a ring of radius 1.2, class 1 on a ring of radius 0.6 inside it."""
    y = balanced_labels(rng, n, 2)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    radius = np.where(y == 0, 1.2, 0.6)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _jitter(rng, x, noise), y


def moons(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (as scikit-learn draws them), centred on the origin."""
    y = balanced_labels(rng, n, 2)
    t = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where((y == 0)[:, None], upper, lower) - np.array([0.5, 0.25])
    return _jitter(rng, x, noise), y


def spirals(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals, the second the first turned by half a revolution.

    Neighbouring arms are only 0.39 apart, so the jitter is ``noise / 2``: at the default noise
    the classes stay separable (a boundary ~4 sigma away) and an MLP can reach ~100 %.
    """
    y = balanced_labels(rng, n, 2)
    t = rng.uniform(0.0, 1.0, size=n)
    radius = _SPIRAL_R0 + (_SPIRAL_R1 - _SPIRAL_R0) * t
    angle = 2.0 * np.pi * _SPIRAL_TURNS * t + np.pi * y
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _jitter(rng, x, 0.5 * noise), y


def blobs(
    rng: np.random.Generator, n: int, noise: float, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters with centres evenly spaced on the unit circle.

    The cluster standard deviation is ``3 * noise``: the default noise of 0.1 gives clusters
    that touch but separate, 0.5 makes them overlap heavily.
    """
    y = balanced_labels(rng, n, classes)
    angle = 2.0 * np.pi * np.arange(classes) / classes + np.pi / 2.0
    centres = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _jitter(rng, centres[y], 3.0 * noise), y


def regression(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(3x) + noise, x uniform on [-1.5, 1.5]; both shaped (n, 1)."""
    x = rng.uniform(-1.5, 1.5, size=(n, 1))
    y = np.sin(3.0 * x) + noise * rng.standard_normal((n, 1))
    return x, y
