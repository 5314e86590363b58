"""Shrinking tensors to display size on their own device, before anything is copied to the host."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MAX_SIDE", "as_matrix", "shrink_2d", "shrink_maps", "to_numpy"]

#: Largest side of any image that leaves the device.
MAX_SIDE = 512


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A 2-D view of any weight tensor: rows are output units (or the only axis)."""
    if weight.dim() == 0:
        return weight.reshape(1, 1)
    if weight.dim() == 1:
        return weight.reshape(1, -1)
    return weight.reshape(weight.shape[0], -1)


def shrink_2d(matrix: torch.Tensor, max_side: int = MAX_SIDE) -> torch.Tensor:
    """Average-pool a 2-D tensor so neither side exceeds ``max_side``; small ones pass through."""
    rows, cols = matrix.shape
    if rows <= max_side and cols <= max_side:
        return matrix
    target = (min(rows, max_side), min(cols, max_side))
    pooled = F.adaptive_avg_pool2d(matrix.float()[None, None], target)
    return pooled[0, 0]


def shrink_maps(maps: torch.Tensor, max_count: int = 256, max_side: int = 64) -> torch.Tensor:
    """Limit a stack of maps (n, h, w) to ``max_count`` maps of at most ``max_side`` per side."""
    maps = maps[:max_count]
    n, h, w = maps.shape
    if h > max_side or w > max_side:
        maps = F.adaptive_avg_pool2d(maps.float()[None], (min(h, max_side), min(w, max_side)))[0]
    return maps


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Detach, move to the host as float32 numpy (the one copy a display tensor makes)."""
    return tensor.detach().to("cpu", torch.float32).numpy()
