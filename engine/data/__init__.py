"""Data sets: built-in toy problems and the user's own files, split into train and validation.

``make_dataset(DataSpec(...))`` is the one entry point. Everything is drawn from numpy generators
seeded by ``DataSpec.seed``, so the same spec gives bit-identical tensors on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from engine.data import images, sequences, two_d
from engine.data.user_data import DataError, LoadedData, load_folder, load_npz

__all__ = [
    "DATASETS",
    "USER_FORMATS",
    "DataError",
    "DataSpec",
    "Dataset",
    "make_dataset",
]

DATASETS: tuple[str, ...] = (
    *two_d.TWO_D_SETS,
    "regression",
    "shapes",
    *sequences.TOKEN_TASKS,
    "long_range",
)
USER_FORMATS: tuple[str, ...] = ("folder", "npz")

Task = Literal["classification", "regression", "tokens"]


@dataclass(frozen=True, slots=True)
class DataSpec:
    """What data set to build. Fields a set does not use are ignored by it.

    Attributes:
        name: one of ``DATASETS`` or ``USER_FORMATS``.
        n: examples before the split (built-in sets; user files use all they hold).
        noise: Gaussian jitter of 2-D points, regression targets and shape pixels.
        seed: seeds both the generator and the split.
        val_fraction: share of examples held out for validation, in [0, 1).
        classes: number of blobs.
        seq_len: sequence length of copy / reverse / sort.
        vocab: token vocabulary of the sequence tasks.
        long_range_len: sequence length of long_range.
        path: folder or ``.npz`` file for the user formats.
        image_size: side length user images are resized to.
    """

    name: str
    n: int = 1000
    noise: float = 0.1
    seed: int = 0
    val_fraction: float = 0.2
    classes: int = 3
    seq_len: int = 8
    vocab: int = 8
    # 30 steps: an LSTM(32) learns it within ~800 Adam steps (lr 2e-3, clip 1) while a tanh
    # RNN(32) stays at chance for 1500 (10 seeds each); at 20-25 the RNN sometimes gets there.
    long_range_len: int = 30
    path: str | None = None
    image_size: int = 28

    def __post_init__(self) -> None:
        if self.name not in DATASETS and self.name not in USER_FORMATS:
            known = ", ".join(DATASETS + USER_FORMATS)
            raise DataError(f"unknown data set {self.name!r}; expected one of {known}")
        if self.n < 2:
            raise DataError(f"data set {self.name!r}: n must be at least 2, got {self.n}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.noise < 0.0:
            raise DataError(f"noise must be non-negative, got {self.noise}")
        if self.classes < 2:
            raise DataError(f"blobs need at least 2 classes, got {self.classes}")
        if self.seq_len < 1 or self.long_range_len < 2:
            raise DataError("sequence lengths must be >= 1 (long_range_len >= 2)")
        if self.vocab < 2:
            raise DataError(f"vocab must be at least 2, got {self.vocab}")
        if self.image_size < 4:
            raise DataError(f"image_size must be at least 4, got {self.image_size}")


@dataclass(frozen=True, slots=True)
class Dataset:
    """Train and validation tensors with what a model builder and the views need to know.

    ``input_shape`` is the shape of one example; ``n_outputs`` is the number of classes, the
    regression output width, or the vocabulary size for per-token tasks.
    """

    name: str
    task: Task
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    input_shape: tuple[int, ...]
    n_outputs: int
    vocab_size: int | None = None
    class_names: tuple[str, ...] = ()
    token_names: tuple[str, ...] | None = None


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    # Independent streams for drawing and splitting, so changing how a set is drawn never
    # changes which indices land in validation for the same size.
    draw, split = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(draw), np.random.default_rng(split)


def _builtin(spec: DataSpec, rng: np.random.Generator) -> LoadedData:
    name = spec.name
    if name == "blobs":
        x, y = two_d.blobs(rng, spec.n, spec.noise, spec.classes)
        return LoadedData(x, y, "classification", spec.classes,
                          class_names=tuple(f"blob {i}" for i in range(spec.classes)))
    if name in two_d.TWO_D_SETS:
        x, y = getattr(two_d, name)(rng, spec.n, spec.noise)
        return LoadedData(x, y, "classification", 2, class_names=("class 0", "class 1"))
    if name == "regression":
        x, y = two_d.regression(rng, spec.n, spec.noise)
        return LoadedData(x, y, "regression", 1)
    if name == "shapes":
        x, y = images.shapes(rng, spec.n, spec.noise)
        return LoadedData(x, y, "classification", len(images.SHAPE_CLASSES),
                          class_names=images.SHAPE_CLASSES)
    token_names = tuple(str(i) for i in range(spec.vocab))
    if name in sequences.TOKEN_TASKS:
        x, y = sequences.token_task(rng, name, spec.n, spec.seq_len, spec.vocab)
        return LoadedData(x, y, "tokens", spec.vocab, vocab_size=spec.vocab,
                          token_names=token_names)
    if name == "long_range":
        x, y, pairs = sequences.long_range(rng, spec.n, spec.long_range_len, spec.vocab)
        return LoadedData(x, y, "classification", 2, class_names=("low first", "high first"),
                          vocab_size=spec.vocab, token_names=token_names, groups=pairs)
    raise DataError(f"unknown data set {name!r}")


def _tensor(array: np.ndarray) -> torch.Tensor:
    dtype = torch.int64 if np.issubdtype(array.dtype, np.integer) else torch.float32
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _split_order(rng: np.random.Generator, n: int, groups: np.ndarray | None) -> np.ndarray:
    """A random order of the examples; the first n_val go to validation.

    With groups, whole groups are shuffled and kept contiguous, so a group straddles the split
    only where the validation size cuts one (at most one group).
    """
    if groups is None:
        return rng.permutation(n)
    _, group_index = np.unique(groups, return_inverse=True)
    rank = rng.permutation(group_index.max() + 1)[group_index.reshape(-1)]
    return np.argsort(rank, kind="stable")


def make_dataset(spec: DataSpec) -> Dataset:
    """Build the data set ``spec`` names and split it into train and validation.

    Raises:
        DataError: the spec or the user's files cannot make a data set.
    """
    draw_rng, split_rng = _rngs(spec.seed)
    if spec.name == "folder" or spec.name == "npz":
        if not spec.path:
            raise DataError(f"data set {spec.name!r} needs a path")
        if spec.name == "folder":
            data = load_folder(spec.path, spec.image_size)
        else:
            data = load_npz(spec.path)
    else:
        data = _builtin(spec, draw_rng)

    n = len(data.x)
    n_val = int(round(n * spec.val_fraction))
    if spec.val_fraction > 0.0:
        # At least one example on each side, so both losses are defined.
        n_val = min(max(n_val, 1), n - 1)
    order = _split_order(split_rng, n, data.groups)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise DataError(f"data set {spec.name!r} has too few examples ({n}) to train on")
    x, y = _tensor(data.x), _tensor(data.y)
    train_t, val_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return Dataset(
        name=spec.name,
        task=data.task,
        x_train=x[train_t],
        y_train=y[train_t],
        x_val=x[val_t],
        y_val=y[val_t],
        input_shape=tuple(data.x.shape[1:]),
        n_outputs=data.n_outputs,
        vocab_size=data.vocab_size,
        class_names=data.class_names,
        token_names=data.token_names,
    )
