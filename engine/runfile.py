"""Run files: a run's configuration, scalar history and latest display tensors on disk.

A run file is a zip archive holding ``manifest.json`` (format version, configuration, and the
list of arrays) and one ``.npy`` member per array. Nothing is pickled: arrays are read with
``allow_pickle=False``, so opening a run file someone sent you cannot run code. The zip's CRC of
every member catches corrupt bytes; a file is written to a temporary sibling, fsynced and then
renamed over the target, so a crash or a failed save never leaves a half-written run file.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

import numpy as np

from engine import __version__
from engine.atomic_file import atomic_writer
from engine.history import History

__all__ = ["FORMAT_VERSION", "RUN_SUFFIX", "RunFile", "RunFileError", "load_run", "save_run"]

logger = logging.getLogger(__name__)

#: Version of the layout written by :func:`save_run`; :func:`load_run` reads up to this one.
FORMAT_VERSION = 1
#: Suffix the app offers for run files.
RUN_SUFFIX = ".glassbox"

_MANIFEST = "manifest.json"
_FORMAT_NAME = "glassbox-run"
_HISTORY_PREFIX = "history/"
_TENSOR_PREFIX = "tensors/"


_KIND_NAMES = {dict: "an object", list: "a list", int: "an integer"}


class RunFileError(ValueError):
    """A run file that cannot be read or written: one line naming the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class RunFile:
    """Everything a run file holds."""

    config: dict  # JSON-able configuration of the run (scenario, model/data spec, hyper...)
    history: History
    tensors: dict[str, np.ndarray]  # latest display tensors, e.g. "weight/layers.0.linear"
    meta: dict  # format_version, glassbox_version, created (ISO 8601), step


# ----------------------------------------------------------------------------------------- saving


def _write_member(archive: zipfile.ZipFile, member: str, array: np.ndarray) -> None:
    """Write one array as an .npy member (a function of its own so tests can make it fail)."""
    with archive.open(member, "w", force_zip64=True) as stream:
        np.lib.format.write_array(stream, array, allow_pickle=False)


def _as_saveable(name: str, value: Any, path: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.hasobject or array.dtype.kind not in "biufcUSMm":
        raise RunFileError(f"{path}: cannot save tensor {name!r} of dtype {array.dtype}")
    return array


def save_run(
    path: str | os.PathLike,
    *,
    config: Mapping,
    history: History,
    tensors: Mapping[str, np.ndarray],
    step: int,
) -> None:
    """Write a run file atomically: the old file at ``path`` survives any failure intact.

    Raises:
        RunFileError: ``config`` is not JSON-able or a tensor cannot be stored as a plain array.
        OSError: the folder cannot be written.
    """
    path = os.fspath(path)
    try:
        config_json = json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError) as exc:
        raise RunFileError(f"{path}: configuration is not JSON-able: {exc}") from None
    arrays: dict[str, tuple[str, np.ndarray]] = {}  # manifest key -> (member, array)
    for key, array in history.to_arrays().items():
        arrays[_HISTORY_PREFIX + key] = (f"{_HISTORY_PREFIX}{key}.npy", array)
    tensor_names = []
    for i, (name, value) in enumerate(tensors.items()):
        # Tensor names hold dots and slashes; members get plain numbered names instead.
        arrays[_TENSOR_PREFIX + str(name)] = (f"{_TENSOR_PREFIX}{i:04d}.npy", _as_saveable(name, value, path))
        tensor_names.append(str(name))
    manifest = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "glassbox_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "step": int(step),
        "config": config_json,
        "tensors": tensor_names,
        "arrays": {
            key: {"member": member, "dtype": array.dtype.str, "shape": list(array.shape)}
            for key, (member, array) in arrays.items()
        },
    }

    with atomic_writer(path) as raw:
        # Stored, not deflated: float arrays barely compress and saving stays disk-bound.
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(_MANIFEST, json.dumps(manifest, indent=1))
            for member, array in arrays.values():
                _write_member(zf, member, array)
    logger.info("saved run at step %d to %s", step, path)


# ----------------------------------------------------------------------------------------- loading

_ZIP_MAGIC = b"PK\x03\x04"


def _read_array(archive: zipfile.ZipFile, key: str, spec: Any, path: str) -> np.ndarray:
    if not isinstance(spec, dict) or not isinstance(spec.get("member"), str):
        raise RunFileError(f"{path}: manifest entry for array {key!r} is invalid")
    member = spec["member"]
    try:
        data = archive.read(member)  # checks the member's CRC
    except KeyError:
        raise RunFileError(f"{path}: array {key!r} is missing (no member {member})") from None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # (numpy's advice to allow pickles is not for a file from elsewhere)
            raise RunFileError(f"{path}: array {key!r} is not a plain array (damaged, or not from Glassbox)") \
                from None
        raise RunFileError(f"{path}: array {key!r} is unreadable: {_one_line(exc)}") from None
    if list(array.shape) != spec.get("shape") or array.dtype.str != spec.get("dtype"):
        raise RunFileError(
            f"{path}: array {key!r} is {array.dtype.str} {list(array.shape)}, "
            f"manifest says {spec.get('dtype')} {spec.get('shape')}"
        )
    return array


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_manifest(archive: zipfile.ZipFile, path: str) -> dict:
    try:
        raw = archive.read(_MANIFEST)
    except KeyError:
        raise RunFileError(f"{path}: not a Glassbox run file (no {_MANIFEST})") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{path}: {_MANIFEST} is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        raise RunFileError(f"{path}: not a Glassbox run file ({_MANIFEST} has no Glassbox format)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunFileError(f"{path}: {_MANIFEST} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise RunFileError(
            f"{path}: made by a newer Glassbox: format {version}, this one reads up to {FORMAT_VERSION}"
        )
    checks: dict[str, type] = {
        "config": dict,
        "arrays": dict,
        "tensors": list,
        "step": int,
    }
    for field, kind in checks.items():
        value = manifest.get(field)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RunFileError(f"{path}: {_MANIFEST} field {field!r} is missing or not {_KIND_NAMES[kind]}")
    return manifest


def load_run(path: str | os.PathLike) -> RunFile:
    """Read a run file written by :func:`save_run`.

    Raises:
        RunFileError: the file is missing, not a run file, truncated, corrupt, or too new.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
            with zipfile.ZipFile(f) as archive:
                return _load(archive, path)
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RunFileError(f"{path}: is a folder, not a run file") from None
    except PermissionError:
        raise RunFileError(f"{path}: permission denied") from None
    except RunFileError:
        raise
    except zipfile.BadZipFile as exc:
        if not head:
            raise RunFileError(f"{path}: file is empty") from None
        if not _ZIP_MAGIC.startswith(head):
            raise RunFileError(f"{path}: not a Glassbox run file") from None
        if any(sign in str(exc) for sign in ("CRC", "magic", "differ")):
            raise RunFileError(f"{path}: corrupt run file ({_one_line(exc)})") from None
        raise RunFileError(f"{path}: truncated or damaged run file ({_one_line(exc)})") from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # (a seek to where no byte is: a damaged directory of the zip)
            raise RunFileError(f"{path}: corrupt run file ({_one_line(exc)})") from None
        raise RunFileError(f"{path}: cannot read run file: {_one_line(exc)}") from None
    except Exception as exc:
        # Damaged zip structures surface as assorted exceptions from zipfile and numpy
        # (struct.error, NotImplementedError for a mangled compression method, ...).
        logger.debug("run file %s failed to load", path, exc_info=True)
        raise RunFileError(f"{path}: corrupt run file ({type(exc).__name__}: {_one_line(exc)})") from None


def _load(archive: zipfile.ZipFile, path: str) -> RunFile:
    manifest = _read_manifest(archive, path)
    specs: dict = manifest["arrays"]
    history_arrays = {
        key[len(_HISTORY_PREFIX) :]: _read_array(archive, key, spec, path)
        for key, spec in specs.items()
        if key.startswith(_HISTORY_PREFIX)
    }
    if not history_arrays:
        raise RunFileError(f"{path}: run file holds no history")
    try:
        history = History.from_arrays(history_arrays)
    except ValueError as exc:
        raise RunFileError(f"{path}: history is inconsistent: {_one_line(exc)}") from None
    tensors = {}
    for name in manifest["tensors"]:
        key = _TENSOR_PREFIX + str(name)
        if key not in specs:
            raise RunFileError(f"{path}: array {key!r} is missing from {_MANIFEST}")
        tensors[str(name)] = _read_array(archive, key, specs[key], path)
    meta = {
        "format_version": manifest["format_version"],
        "glassbox_version": str(manifest.get("glassbox_version", "unknown")),
        "created": str(manifest.get("created", "")),
        "step": manifest["step"],
    }
    return RunFile(config=manifest["config"], history=history, tensors=tensors, meta=meta)
