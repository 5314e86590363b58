"""What the window showed of a run, as a run file's JSON and plain arrays, and back.

A run file (``engine.runfile``) holds a configuration (JSON) and named arrays. This module turns
the displayable parts of a run's newest snapshot (per-layer statistics with their histograms, the
recent captured frames, the network and decision-boundary views, one layer's tensors, the
metrics and the diagnoses) into a JSON description plus arrays named under ``shown/``, so an
opened run draws as it was saved, and rebuilds them. Nothing is pickled: the description names
only the dataclasses listed in ``_TYPES``, and every array is read by name.

A description this module cannot rebuild (hand-edited, or written by a newer Glassbox) loses that
part only: ``restore`` returns what it could read and names what it could not.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping

import numpy as np

from engine.diagnostics import Diagnosis
from engine.snapshot import BoundaryView, Metrics, NetworkView, Snapshot, StatsFrame, TensorViews

log = logging.getLogger(__name__)

__all__ = ["PREFIX", "SavedFrame", "encode", "restore"]

#: Names of the arrays this module writes start with this.
PREFIX = "shown/"

_TYPES: dict[str, type] = {cls.__name__: cls for cls in (BoundaryView, Diagnosis, Metrics, NetworkView,
                                                         TensorViews)}
#: The snapshot's parts kept, and what each must read back as.
_PARTS: dict[str, type] = {"metrics": Metrics, "network": NetworkView, "boundary": BoundaryView,
                           "tensors": TensorViews, "diagnoses": tuple}


@dataclasses.dataclass(frozen=True)
class SavedFrame:
    """The displayable state read back from a run file."""

    frames: tuple[StatsFrame, ...] = ()  # oldest first; the last is the newest step's statistics
    metrics: Metrics | None = None
    network: NetworkView | None = None
    boundary: BoundaryView | None = None
    tensors: TensorViews | None = None
    diagnoses: tuple[Diagnosis, ...] = ()
    unreadable: tuple[str, ...] = ()  # parts present in the file but not rebuilt


def encode(snapshot: Snapshot, frames: tuple[StatsFrame, ...] = (),
           known: Mapping[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON description and the arrays of what ``snapshot`` shows, with ``frames`` (recent
    captured statistics, oldest first) for the views over time.

    ``known``: arrays the file holds already under other names; one of them that a view shares
    is referred to by that name, not stored twice.
    """
    arrays: dict[str, np.ndarray] = {}
    named = {id(array): name for name, array in (known or {}).items()}
    description: dict[str, Any] = {}
    for part in _PARTS:
        value = getattr(snapshot, part)
        if value is None or value == ():
            continue
        mine, names = {}, dict(named)  # (kept only if the whole part can be saved)
        try:
            description[part] = _encode(value, PREFIX + part, mine, names)
        except TypeError as exc:  # (a display extra that can't be saved mustn't cost the save)
            log.warning("left %s out of the run file: %s", part, exc)
            continue
        arrays.update(mine)
        named.update(names)
    stacked = _stack_frames(tuple(frames) or ((snapshot.stats,) if snapshot.stats is not None else ()))
    if stacked is not None:
        description["frames"] = _encode(stacked, PREFIX + "frames", arrays, named)
    return description, arrays


def restore(description: Any, arrays: Mapping[str, np.ndarray]) -> SavedFrame:
    """Rebuild what ``encode`` wrote; a part that can't be rebuilt is left out and named."""
    if not isinstance(description, dict):
        return SavedFrame(unreadable=("shown",) if description is not None else ())
    found: dict[str, Any] = {}
    unreadable = []
    for part in (*_PARTS, "frames"):
        if part not in description:
            continue
        try:
            value = _decode(description[part], arrays)
            if part == "frames":
                value = _unstack_frames(value)
            elif not isinstance(value, _PARTS[part]) or (
                    part == "diagnoses" and not all(isinstance(d, Diagnosis) for d in value)):
                raise TypeError(f"not {'a list of diagnoses' if part == 'diagnoses' else _PARTS[part].__name__}")
            found[part] = value
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            unreadable.append(f"{part} ({exc})")
    return SavedFrame(**found, unreadable=tuple(unreadable))


# --- the encoding ---------------------------------------------------------------------------
# A value is JSON as it is (numbers, strings, None), a list (tuples come back as tuples: every
# sequence in these dataclasses is one), {"array": name}, {"type": class name, "fields": {...}}
# or {"dict": {...}}. Floats that JSON can't hold (NaN, inf) are written as {"float": "nan"}.

def _encode(value: Any, name: str, arrays: dict[str, np.ndarray], named: dict[int, str]) -> Any:
    if isinstance(value, np.ndarray):
        if id(value) not in named:
            arrays[name] = value
            named[id(value)] = name
        return {"array": named[id(value)]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name), f"{name}/{f.name}", arrays, named)
                           for f in dataclasses.fields(value)}}
    if isinstance(value, (tuple, list)):
        return [_encode(item, f"{name}/{i}", arrays, named) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, f"{name}/{k}", arrays, named) for k, v in value.items()}}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else {"float": str(float(value))}
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{name}: cannot save a {type(value).__name__}")


def _decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return tuple(_decode(item, arrays) for item in value)
    if isinstance(value, dict):
        if "array" in value:
            return arrays[str(value["array"])]
        if "float" in value:
            return float(value["float"])
        if "dict" in value:
            return {str(k): _decode(v, arrays) for k, v in dict(value["dict"]).items()}
        if "type" in value:
            cls = _TYPES.get(value["type"])
            if cls is None:
                raise TypeError(f"unknown type {value['type']!r}")
            return cls(**{str(k): _decode(v, arrays) for k, v in dict(value["fields"]).items()})
        raise ValueError(f"unknown entry {sorted(value)}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"unexpected {type(value).__name__}")


def _stack_frames(frames: tuple[StatsFrame, ...]) -> dict | None:
    """The frames that share the newest one's layers and histogram shape, stacked into arrays."""
    if not frames:
        return None
    last = frames[-1]
    ranged = last.hist_ranges is not None
    kept = [f for f in frames if f.layer_names == last.layer_names and f.values.shape == last.values.shape
            and f.histograms.shape == last.histograms.shape and (f.hist_ranges is not None) == ranged]
    return {
        "steps": np.array([f.step for f in kept], np.int64),
        "losses": np.array([f.loss for f in kept], np.float64),
        "layer_names": list(last.layer_names),
        "values": np.stack([f.values for f in kept]),
        "histograms": np.stack([f.histograms for f in kept]),
        "hist_edges": last.hist_edges,
        "hist_ranges": np.stack([f.hist_ranges for f in kept]) if ranged else None,
    }


def _unstack_frames(value: Any) -> tuple[StatsFrame, ...]:
    if not isinstance(value, dict):
        raise TypeError("frames are not a table")
    steps, losses = np.asarray(value["steps"]), np.asarray(value["losses"])
    values, histograms = np.asarray(value["values"], np.float64), np.asarray(value["histograms"], np.float32)
    names = tuple(str(n) for n in value["layer_names"])
    ranges = value.get("hist_ranges")
    count = len(steps)
    if not (len(losses) == values.shape[0] == histograms.shape[0] == count) or values.ndim != 3 \
            or values.shape[1] != len(names) or histograms.shape[1] != len(names) \
            or (ranges is not None and np.shape(ranges)[:2] != (count, len(names))):
        raise ValueError("frame arrays of unequal lengths")
    edges = np.asarray(value["hist_edges"], np.float32)
    return tuple(StatsFrame(step=int(steps[i]), loss=float(losses[i]), layer_names=names, values=values[i],
                            histograms=histograms[i], hist_edges=edges,
                            hist_ranges=None if ranges is None else np.asarray(ranges[i], np.float32))
                 for i in range(count))
