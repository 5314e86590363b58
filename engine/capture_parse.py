"""Reading a captured step back: the flat host copy of the probe's pieces -> per-layer figures.

The probe queues a captured step's measurements as pieces of one flat array and describes them
in a *layout*, one entry per piece: ``(kind, owner, key, shape, meta)``. A model's captured steps
have the same layout step after step, so the work of reading one (where each figure lies in the
copy, where it goes in the frame, what it is divided by) is done once, in a ``ParsePlan``, and
parsing a capture is then a handful of gathers from the copy.

Piece kinds:

- ``act``: one call of a layer: 8 statistics (mean, var, min, max, NaN count, Inf count, dead
  units, saturated count) then the histogram counts; ``meta`` is (the output's shape, values
  its histogram sampled, or None for all, and whether its NaN and Inf were counted: if not,
  their places hold anything and the counts are what its min and max tell, ``nonfinite_bounds``).
- ``gout``: the squared norm of the gradient w.r.t. one call's output (``owner`` a layer), or of
  several (``owner`` a list of layers, one per call); a call returning several tensors has one per
  tensor a gradient reached. The figure is the square root of a layer's sum over them all.
- ``pstats``: (layers, 5) of norm, mean, variance, NaN and Inf counts of their weights
  (``key`` 'weight') or gradients ('grad'); ``owner`` is the list of layers.
- ``prows``: the same figures of a group of layers' weights or gradients as
  ``engine.device_stats.Segments.row_piece`` gives them (a big model's); ``meta`` is its
  ``RowLayout``, which makes them on the host.
- ``effective``: (layers, 5) like ``pstats`` 'weight', of the tensors the layers' forward used in
  place of their parameters (a parametrized layer's computed weight, ``engine.probe``): these
  replace the 'weight' figures of their parameters, whichever piece comes first.
- ``nograd``: empty; its layers have no gradient at all this step.
- ``update``: (layers, 2) of the sums of squares of the update and of the weights before it.
- ``tensor``: a display tensor (``key`` names it) of ``shape``.

The loss and accuracy of the steps since the last capture follow the last piece, (k, 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.snapshot import STAT_INDEX, STAT_NAMES, StatsFrame, TensorViews
from engine.stats import unit_count

__all__ = ["ACT_FIELDS", "PARAM_FIELDS", "Capture", "LayerTable", "ParsePlan", "nonfinite_bounds", "parse_capture"]

ACT_FIELDS = 8  # mean, var, min, max, nan, inf, dead, saturated; then the histogram
PARAM_FIELDS = 5  # norm, mean, var, nan, inf  (numel is known on the host)

_COL = STAT_INDEX
_WIDTH = len(STAT_NAMES)
_PARAM_COLUMNS = {
    "weight": [_COL[c] for c in ("weight_norm", "weight_mean", "weight_std", "nan_weights", "inf_weights")],
    "grad": [_COL[c] for c in ("grad_norm", "grad_mean", "grad_std", "nan_grads", "inf_grads")],
}
_GRAD_FIGURES = [_COL[c] for c in ("grad_norm", "grad_mean", "grad_std")]
_GRAD_COUNTS = [_COL[c] for c in ("nan_grads", "inf_grads")]
# Activation fields stored as they are: mean, min, max, NaN and Inf counts.
_ACT_COPIED = list(zip((0, 2, 3, 4, 5), (_COL[c] for c in ("act_mean", "act_min", "act_max", "nan_acts", "inf_acts"))))


@dataclass(frozen=True, slots=True)
class Capture:
    """A captured step, on the host."""

    frame: StatsFrame
    tensors: TensorViews | None
    unit_values: dict[str, np.ndarray]  # layer -> the focus example's output, for small layers
    unit_grads: dict[str, np.ndarray]
    scalars: np.ndarray  # (k, 2) loss and accuracy (NaN if none) of the steps since the last capture
    graph_weights: dict[str, np.ndarray] = field(default_factory=dict)  # small Linear layers


@dataclass(frozen=True)
class LayerTable:
    """What parsing a capture needs to know of the layers, fixed while their order is."""

    order_version: int
    layers: list[Any]  # the probe's layers: .index, .relu_like, .saturating
    names: tuple[str, ...]
    hist_ranges: np.ndarray  # (n, 2) float32, shared by every frame: read-only
    hist_edges: np.ndarray
    bins: int


# Non-finite figures are data here (counted and shown), not warnings.
_quiet = np.errstate(invalid="ignore", divide="ignore", over="ignore")


def _index(values: list[int]) -> np.ndarray:
    return np.array(values, np.intp)


class ParsePlan:
    """Where each figure of one layout lies in the host copy and where it goes in the frame."""

    def __init__(self, layout: list[tuple], table: LayerTable) -> None:
        self.layout = layout
        self.table = table
        width, bins = _WIDTH, table.bins
        copy: list[tuple[int, int]] = []  # (host position, flat frame position)
        std: list[tuple[int, int]] = []  # a variance there, its square root here
        scaled: list[tuple[int, int, float]] = []  # a count there, divided by the third, here
        update: list[tuple[int, int]] = []  # (host position of the pair, frame position)
        gout: list[tuple[int, int]] = []  # (host position, layer)
        effective: list[tuple[int, int]] = []  # as copy and std, but applied last: they replace the others
        effective_std: list[tuple[int, int]] = []
        blank: list[int] = []  # no gradient: NaN figures...
        zero: list[int] = []  # ...and zero NaN/Inf counts
        calls: dict[int, list[tuple[int, tuple[int, int, int]]]] = {}  # layer -> (position, counts)
        uncounted: set[int] = set()  # positions of act pieces whose NaN and Inf weren't counted
        self.tensors: list[tuple[int, int, tuple[int, ...], int, str]] = []
        self.row_pieces: list[tuple[slice, Any, np.ndarray]] = []  # (host part, RowLayout, frame positions)
        offset = 0
        for kind, owner, key, shape, meta in layout:
            size = math.prod(shape)
            if kind == "act":
                out_shape, sampled, counted = meta
                numel = math.prod(out_shape)
                if not counted:
                    uncounted.add(offset)
                calls.setdefault(owner.index, []).append(
                    (offset, (numel, numel if sampled is None else sampled, unit_count(out_shape))))
            elif kind == "gout":  # one call's, or (CPU) a list of calls' in backward order
                owners = owner if isinstance(owner, list) else [owner]
                gout += [(offset + row, layer.index) for row, layer in enumerate(owners)]
            elif kind == "pstats":
                norm, mean, spread, nans, infs = _PARAM_COLUMNS[key]
                for row, layer in enumerate(owner):
                    at, base = offset + row * PARAM_FIELDS, layer.index * width
                    copy += [(at, base + norm), (at + 1, base + mean), (at + 3, base + nans), (at + 4, base + infs)]
                    std.append((at + 2, base + spread))
            elif kind == "effective":
                norm, mean, spread, nans, infs = _PARAM_COLUMNS[key]
                for row, layer in enumerate(owner):
                    at, base = offset + row * PARAM_FIELDS, layer.index * width
                    effective += [(at, base + norm), (at + 1, base + mean), (at + 3, base + nans),
                                  (at + 4, base + infs)]
                    effective_std.append((at + 2, base + spread))
            elif kind == "prows":
                base = np.array([layer.index * width for layer in owner])[:, None]
                self.row_pieces.append((slice(offset, offset + size), meta, base + _PARAM_COLUMNS[key]))
            elif kind == "nograd":
                for layer in owner:
                    blank += [layer.index * width + c for c in _GRAD_FIGURES]
                    zero += [layer.index * width + c for c in _GRAD_COUNTS]
            elif kind == "update":
                update += [(offset + 2 * row, layer.index * width + _COL["update_ratio"])
                           for row, layer in enumerate(owner)]
            elif kind == "tensor":
                self.tensors.append((offset, size, tuple(shape), owner.index, key))
            else:
                raise ValueError(f"unknown piece kind {kind!r}")
            offset += size
        self.size = offset  # the scalars follow
        self.act_layers = _index(sorted(calls))  # layers whose outputs were measured
        hist: list[tuple[int, int, int]] = []  # (layer, host position, values sampled)
        bounds: list[tuple[int, int]] = []  # (host position, frame position) of uncounted single calls
        self.uncounted = uncounted
        self.repeated: list[tuple[Any, list[int], list[tuple[int, int, int]]]] = []
        for index, made in calls.items():
            layer = table.layers[index]
            if len(made) > 1:  # combined by _fill_repeated_calls
                self.repeated.append((layer, [at for at, _ in made], [meta for _, meta in made]))
                continue
            (at, (numel, sampled, units)), = made
            base = index * width
            copy += [(at + slot, base + column) for slot, column in _ACT_COPIED]
            std.append((at + 1, base + _COL["act_std"]))
            if layer.relu_like:
                scaled.append((at + 6, base + _COL["dead_fraction"], units))
            if layer.saturating:
                scaled.append((at + 7, base + _COL["saturated_fraction"], numel))
            hist.append((index, at + ACT_FIELDS, sampled))
            if at in uncounted:
                bounds.append((at, base))
        self.copy_src, self.copy_dst = (_index(list(c)) for c in zip(*copy)) if copy else (_index([]),) * 2
        self.std_src, self.std_dst = (_index(list(c)) for c in zip(*std)) if std else (_index([]),) * 2
        self.effective = None if not effective else \
            tuple(_index(list(c)) for c in (*zip(*effective), *zip(*effective_std)))
        self.scaled_src = _index([s for s, _, _ in scaled])
        self.scaled_dst = _index([d for _, d, _ in scaled])
        self.scaled_by = np.array([float(by) for _, _, by in scaled])
        self.bounds_src, self.bounds_dst = (_index(list(c)) for c in zip(*bounds)) if bounds else (_index([]),) * 2
        self.update_src = _index([s for s, _ in update])
        self.update_dst = _index([d for _, d in update])
        self.gout_src = _index([s for s, _ in gout])
        self.gout_layer = _index([layer for _, layer in gout])
        gout_rows = sorted({layer for _, layer in gout})
        self.gout_rows = _index(gout_rows)
        self.gout_dst = self.gout_rows * width + _COL["grad_output_norm"]
        self.blank, self.zero = _index(blank), _index(zero)
        self.hist_rows = _index([index for index, _, _ in hist])
        self.hist_src = _index([at for _, at, _ in hist])[:, None] + np.arange(bins)
        self.hist_sampled = np.array([[float(sampled)] for _, _, sampled in hist]).reshape(-1, 1)

    def matches(self, layout: list[tuple], table: LayerTable) -> bool:
        return table is self.table and layout == self.layout

    @_quiet
    def figures(self, host: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(layers, stats) figures and (layers, bins) histogram fractions of one host copy."""
        count = len(self.table.layers)
        values = np.empty(count * _WIDTH)
        values.fill(np.nan)
        values[self.copy_dst] = host[self.copy_src]
        values[self.std_dst] = np.sqrt(np.maximum(host[self.std_src], 0.0))
        values[self.scaled_dst] = host[self.scaled_src] / self.scaled_by
        if self.bounds_src.size:
            nans, infs = nonfinite_bounds(host[self.bounds_src + 2], host[self.bounds_src + 3])
            values[self.bounds_dst + _COL["nan_acts"]] = nans
            values[self.bounds_dst + _COL["inf_acts"]] = infs
        for part, rows, positions in self.row_pieces:
            figures = rows.figures(host[part])
            figures[:, 2] = np.sqrt(np.maximum(figures[:, 2], 0.0))  # (NaN stays NaN)
            values[positions] = figures
        if self.effective is not None:  # (after the parameters' figures, which they replace)
            src, dst, std_src, std_dst = self.effective
            values[dst] = host[src]
            values[std_dst] = np.sqrt(np.maximum(host[std_src], 0.0))
        if self.update_src.size:
            delta, base = np.sqrt(host[self.update_src]), np.sqrt(host[self.update_src + 1])
            ratio = delta / base
            ratio[~(base > 0)] = np.nan
            values[self.update_dst] = ratio
        if self.gout_src.size:  # a layer called twice gets the norm over both calls
            sums = np.bincount(self.gout_layer, weights=host[self.gout_src], minlength=count)
            values[self.gout_dst] = np.sqrt(sums[self.gout_rows])
        values[self.blank] = np.nan
        values[self.zero] = 0.0
        values = values.reshape(count, _WIDTH)
        hist = np.zeros((count, self.table.bins), np.float32)
        hist[self.hist_rows] = host[self.hist_src] / self.hist_sampled
        for layer, positions, metas in self.repeated:
            pieces = [np.array(host[at:at + ACT_FIELDS + self.table.bins], np.float64) for at in positions]
            for at, piece in zip(positions, pieces):
                if at in self.uncounted:
                    piece[4:6] = nonfinite_bounds(piece[2], piece[3])
            _fill_repeated_calls(values, hist, layer, pieces, metas)
        return values, hist


def nonfinite_bounds(low: np.ndarray | float, high: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """What an output's min and max (NaN if it holds one) tell of its NaN and Inf counts, where
    they weren't counted: (0, 0) when both are finite, exact; else at least 1 NaN, or (no NaN,
    exactly) at least one Inf for each infinite end: -Inf at the min, +Inf at the max."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return np.isnan(high).astype(np.float64), (low == -np.inf) + (high == np.inf).astype(np.float64)


def parse_capture(host: np.ndarray, plan: ParsePlan, step: int, focus: str | None, example: int,
                  tensors_wanted: bool) -> Capture:
    """Turn the flat host copy back into per-layer statistics and views (numpy only)."""
    table = plan.table
    names = table.names
    values, hist = plan.figures(host)
    scalars = np.asarray(host[plan.size:], np.float64).reshape(-1, 2)
    tensors = {(index, key): np.asarray(host[at:at + size], np.float32).reshape(shape)
               for at, size, shape, index, key in plan.tensors}
    # Histograms of different layers share bin *count*; each row's edges come from its range.
    frame = StatsFrame(step=step, loss=float(scalars[-1, 0]) if len(scalars) else float("nan"),
                       layer_names=names, values=values, histograms=hist, hist_edges=table.hist_edges,
                       hist_ranges=table.hist_ranges)
    views = None
    if tensors_wanted:
        focus_index = names.index(focus) if focus in names else None
        get = lambda key: tensors.get((focus_index, key))  # noqa: E731
        by_key = {key: (names[i], v) for (i, key), v in tensors.items()}
        feature_layer, feature_maps = by_key.get("feature_maps", (None, None))
        attention_layer, attention = by_key.get("attention", (None, None))
        ids = by_key.get("tokens", (None, None))[1]  # (the example's input token ids, when its maps are over them)
        views = TensorViews(
            step=step, layer=focus or "", example=example, weight=get("weight"),
            weight_grad=get("weight_grad"), weight_update=get("weight_update"),
            activation=get("activation"), output_grad=get("output_grad"),
            feature_maps=feature_maps, kernels=by_key.get("kernels", (None, None))[1],
            attention=attention, feature_layer=feature_layer, attention_layer=attention_layer,
            tokens=None if ids is None else tuple(str(int(t)) for t in ids),
        )
    by_kind: dict[str, dict[str, np.ndarray]] = {"unit_value": {}, "unit_grad": {}, "graph_weight": {}}
    for (index, key), value in tensors.items():
        if key in by_kind:
            by_kind[key][names[index]] = value
    return Capture(frame=frame, tensors=views, unit_values=by_kind["unit_value"], unit_grads=by_kind["unit_grad"],
                   scalars=scalars, graph_weights=by_kind["graph_weight"])


def _fill_repeated_calls(values: np.ndarray, hist: np.ndarray, layer: Any, pieces: list[np.ndarray],
                         metas: list[tuple[int, int, int]]) -> None:
    """A layer called several times in one forward: combine the calls (Chan's formula)."""
    index = layer.index
    meta = np.asarray(metas, np.float64).reshape(-1, 3)
    counts, sampled, units = meta[:, 0], meta[:, 1], meta[:, 2]
    stats = np.stack([p[:ACT_FIELDS] for p in pieces])
    total = counts.sum()
    mean = float((counts * stats[:, 0]).sum() / total)
    var = float((counts * (stats[:, 1] + (stats[:, 0] - mean) ** 2)).sum() / total)
    row = values[index]
    row[_COL["act_mean"]] = mean
    row[_COL["act_std"]] = np.sqrt(max(var, 0.0))
    row[_COL["act_min"]] = stats[:, 2].min()
    row[_COL["act_max"]] = stats[:, 3].max()
    row[_COL["nan_acts"]] = stats[:, 4].sum()
    row[_COL["inf_acts"]] = stats[:, 5].sum()
    if layer.relu_like:
        row[_COL["dead_fraction"]] = stats[:, 6].sum() / units.sum()
    if layer.saturating:
        row[_COL["saturated_fraction"]] = stats[:, 7].sum() / total
    hist[index] = (sum(p[ACT_FIELDS:] for p in pieces) / sampled.sum()).astype(np.float32)
