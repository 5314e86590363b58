"""The user's own data: a folder of images sorted into class sub-folders, or an ``.npz`` file.

Loaders return plain numpy arrays in a ``LoadedData``; every problem a user can cause raises a
``DataError`` whose one-line message names the file or key at fault, so the app can show it as is.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["DataError", "LoadedData", "IMAGE_SUFFIXES", "load_folder", "load_npz"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_X_KEYS = ("x", "X", "images")
_Y_KEYS = ("y", "Y", "labels")


class DataError(ValueError):
    """A data set cannot be built; the message names the problem and the file or key."""


@dataclass(frozen=True, slots=True)
class LoadedData:
    """Arrays read from the user's files, before the train/val split."""

    x: np.ndarray
    y: np.ndarray
    task: Literal["classification", "regression", "tokens"]
    n_outputs: int
    class_names: tuple[str, ...] = ()
    vocab_size: int | None = None
    token_names: tuple[str, ...] | None = None
    groups: np.ndarray | None = None  # examples sharing a group id stay on one side of the split


def _visible(entry: Path) -> bool:
    # Hidden entries (.DS_Store, .ipynb_checkpoints) are never classes or examples.
    return not entry.name.startswith(".")


def _read_image(file: Path, image_size: int) -> np.ndarray:
    try:
        with Image.open(file) as image:
            image.load()
            rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {file}: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


def load_folder(path: str | Path, image_size: int = 28) -> LoadedData:
    """Read ``path/<class>/<image>`` files, resized to ``image_size`` squared, scaled to [0, 1].

    Images become (N, 1, H, W) when every image is gray (R == G == B), else (N, 3, H, W). Class
    indices follow the sorted sub-folder names; files that are not images are ignored.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (pick a folder with one sub-folder per class)")
    entries = [entry for entry in root.iterdir() if _visible(entry)]
    if not entries:
        raise DataError(f"data folder is empty: {root}")
    class_dirs = sorted((entry for entry in entries if entry.is_dir()), key=lambda d: d.name)
    if not class_dirs:
        raise DataError(f"no class sub-folders in {root} (expected one folder of images per class)")

    images: list[np.ndarray] = []
    labels: list[int] = []
    class_names: list[str] = []
    for class_dir in class_dirs:
        files = sorted(
            f for f in class_dir.iterdir()
            if _visible(f) and f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            log.warning("skipping class folder %s: it holds no images", class_dir)
            continue
        for file in files:
            images.append(_read_image(file, image_size))
            labels.append(len(class_names))
        class_names.append(class_dir.name)
    if not images:
        raise DataError(f"no images found in the class sub-folders of {root}")
    if len(class_names) < 2:
        raise DataError(f"only one class folder with images in {root}: {class_names[0]!r}")

    stack = np.stack(images)  # (N, H, W, 3) uint8
    gray = bool(np.all(stack[..., 0] == stack[..., 1]) and np.all(stack[..., 1] == stack[..., 2]))
    x = (stack[..., :1] if gray else stack).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    log.info("loaded %d images in %d classes from %s", len(x), len(class_names), root)
    return LoadedData(
        x=np.ascontiguousarray(x),
        y=np.asarray(labels, dtype=np.int64),
        task="classification",
        n_outputs=len(class_names),
        class_names=tuple(class_names),
    )


def _pick(
    arrays: dict[str, np.ndarray], keys: tuple[str, ...], role: str, path: Path
) -> tuple[str, np.ndarray]:
    for key in keys:
        if key in arrays:
            return key, arrays[key]
    wanted = ", ".join(repr(k) for k in keys)
    found = ", ".join(repr(k) for k in arrays) or "none"
    raise DataError(f"{path}: no {role} array; expected key {wanted}, found keys: {found}")


def _check_finite(key: str, array: np.ndarray, path: Path) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    if n_nan or n_inf:
        raise DataError(f"{path}: array {key!r} holds {n_nan} NaN and {n_inf} Inf values")


def _image_layout(x: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); channels-last (N, H, W, C) -> (N, C, H, W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    return x


def load_npz(path: str | Path) -> LoadedData:
    """Read arrays 'x'/'y' (or 'X'/'Y', 'images'/'labels') from an ``.npz`` file.

    Integer y, one label per example, is a classification target (labels are renumbered 0..K-1
    in sorted order, the originals kept as class names); float y is a regression target with one
    output per column. Integer 2-D x holds tokens (vocab = max + 1) and, with integer y of the
    same shape, makes a per-token task. uint8 images are scaled to [0, 1].
    """
    file = Path(path)
    if not file.exists():
        raise DataError(f"data file not found: {file}")
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {file} as .npz: {exc}") from exc
    x_key, x = _pick(arrays, _X_KEYS, "input", file)
    y_key, y = _pick(arrays, _Y_KEYS, "target", file)
    for key, array in ((x_key, x), (y_key, y)):
        if array.ndim == 0 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise DataError(
                f"{file}: array {key!r} must be a numeric array, got {array.dtype} {array.shape}"
            )
    if len(x) != len(y):
        raise DataError(f"{file}: {x_key!r} has {len(x)} examples but {y_key!r} has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{file}: {x_key!r} holds no examples")
    _check_finite(x_key, x, file)
    _check_finite(y_key, y, file)

    vocab_size: int | None = None
    token_names: tuple[str, ...] | None = None
    x_is_tokens = x.ndim == 2 and np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8
    if x_is_tokens:
        if x.min() < 0:
            raise DataError(f"{file}: token array {x_key!r} holds negative ids")
        vocab_size = int(x.max()) + 1
        token_names = tuple(str(i) for i in range(vocab_size))
        x = x.astype(np.int64)
    else:
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        x = _image_layout(x).astype(np.float32) / np.float32(scale)

    if y.dtype == bool:
        y = y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if y.ndim > 2:
            raise DataError(f"{file}: float {y_key!r} must be (N,) or (N, outputs), got {y.shape}")
        y = y.reshape(len(y), -1).astype(np.float32)
        return LoadedData(x=x, y=y, task="regression", n_outputs=y.shape[1],
                          vocab_size=vocab_size, token_names=token_names)
    if x_is_tokens and y.shape == x.shape:
        if y.min() < 0:
            raise DataError(f"{file}: token targets {y_key!r} hold negative ids")
        n_out = max(vocab_size or 0, int(y.max()) + 1)
        return LoadedData(x=x, y=y.astype(np.int64), task="tokens", n_outputs=n_out,
                          vocab_size=vocab_size, token_names=token_names)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{file}: integer {y_key!r} must hold one label per example, got shape {y.shape}"
        )
    values, labels = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise DataError(f"{file}: {y_key!r} holds a single class ({values[0]}); need at least two")
    return LoadedData(
        x=x,
        y=labels.astype(np.int64).reshape(-1),
        task="classification",
        n_outputs=len(values),
        class_names=tuple(str(v) for v in values),
        vocab_size=vocab_size,
        token_names=token_names,
    )
