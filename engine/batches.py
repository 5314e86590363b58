"""Where training batches come from: tensors held on the device, or any iterable of (x, y)."""
from __future__ import annotations

from typing import Iterable, Iterator, Protocol

import torch

__all__ = ["BatchSource", "TensorBatches", "LoaderBatches"]


class BatchSource(Protocol):
    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reseed(self, seed: int) -> None: ...

    def to(self, device: torch.device) -> None: ...


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors: a fresh permutation each epoch.

    The data moves to the device once; each epoch's permutation is drawn from the source's own
    generator (so two trainers never share a random stream) and moved once per epoch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0, shuffle: bool = True) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} examples but {len(y)} targets")
        if len(x) == 0:
            raise ValueError("the training set is empty")
        self.x, self.y = x, y
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(seed)
        self._perm: torch.Tensor | None = None
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.x)

    def reseed(self, seed: int) -> None:
        self._generator.manual_seed(seed)
        self._perm = None
        self._cursor = 0

    def to(self, device: torch.device) -> None:
        self.x, self.y = self.x.to(device), self.y.to(device)
        self._perm = None if self._perm is None else self._perm.to(device)

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.x)
        size = max(1, min(batch_size, n))
        if self._perm is None or self._cursor + size > n:
            order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
            if self.x.is_cuda:  # pinned + non-blocking: a new epoch never stalls the GPU queue
                order = order.pin_memory()
            self._perm = order.to(self.x.device, non_blocking=True)
            self._cursor = 0
        index = self._perm[self._cursor:self._cursor + size]
        self._cursor += size
        return self.x[index], self.y[index]


class LoaderBatches:
    """Batches from a user's iterable (e.g. a DataLoader), restarted when exhausted.

    The loader decides the batch size; ``batch_size`` passed to ``next`` is ignored. The batches
    of the first pass are checked for NaN and Inf on their way in (on the host, before they move
    to the device), so bad data is reported as such rather than as a diverging network; later
    passes, usually the same data, aren't, so a big batch costs the check once.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._iterator: Iterator | None = None
        self._device: torch.device | None = None
        self._batches = 0  # taken so far, for naming a bad one
        self._checked = False  # a whole pass has been checked

    def reseed(self, seed: int) -> None:
        self._iterator = None

    def to(self, device: torch.device) -> None:
        self._device = device

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
                break
            except StopIteration:
                self._iterator = None
                self._checked = self._checked or self._batches > 0
        else:
            raise ValueError("the data loader yields no batches (a generator can be read only once: "
                             "return a list of batches or a DataLoader)")
        self._batches += 1
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            what = f"a {type(batch).__name__} of {len(batch)} items" if isinstance(batch, (tuple, list)) \
                else f"a {type(batch).__name__}"
            raise ValueError(f"batch {self._batches} of the data loader is {what}; expected (x, y)")
        x, y = batch
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise ValueError(f"batch {self._batches} of the data loader holds {type(x).__name__} and "
                             f"{type(y).__name__}; expected two tensors (x, y)")
        if not self._checked:
            for name, tensor in (("x", x), ("y", y)):
                _check_finite(tensor, f"batch {self._batches} of the data loader: its {name}")
        if self._device is not None:
            x, y = x.to(self._device), y.to(self._device)
        return x, y


def _check_finite(tensor: object, what: str) -> None:
    """A one-line ValueError if a floating host tensor holds NaN or Inf."""
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.is_cuda:
        bad = tensor.numel() - int(torch.isfinite(tensor).sum())
        if bad:
            raise ValueError(f"{what} holds {bad} NaN or Inf values of {tensor.numel()}")
