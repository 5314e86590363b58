"""Statistics of many segments at once, on the device: a fixed handful of operations for all of a
captured step's parameters, or all of its outputs (up to a size), instead of a dozen per layer.

On a GPU, a small model's step is bound by what each operation costs to dispatch and launch
(several microseconds each), not by the kernels; what the probe adds to such a step is the number
of operations it adds. Here the segments lie back to back in one flat tensor, and the tensors
that say which segment (or unit, or histogram counter) each value belongs to are made once per
arrangement and kept on the device.

Nothing here synchronises with the host: no Python number is read from a device tensor, and no
operation whose output size depends on the data (``bincount``, boolean masks) is used. Sums are
accumulated in float64 (counts over long segments in float32 pieces, where they are exact).
Variances are taken from values shifted by their segment's first value, so E[d^2] - E[d]^2
doesn't cancel when the mean dwarfs the spread. A big model's parameters can instead be taken by
rows, a few figures a row made on the device and joined on the host (``ROWS_FROM``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np
import torch

from engine.stats import hist_stride, unit_count, unit_dims

__all__ = ["ATOMIC_SUMS_MAX", "SEGMENT_PIECE", "SEGMENT_ROW", "ROWS_FROM", "ROW_FIELDS", "DETAIL_FIELDS", "ROW_DETAIL",
           "DEVICE_BATCH_BUDGET", "DEVICE_BATCHED_MAX", "DEVICE_PARAM_GROUP", "Segments", "RowLayout", "RowCounting",
           "PendingDeviceActivation", "DeviceActivationReducer", "sampled_count", "unit_maxima"]

#: Segments holding up to this many values in all are summed with one ``index_add_`` through a
#: per-value segment index; bigger ones (big models' parameters, big batches of outputs) with
#: ``segment_reduce`` over their offsets, one column at a time (on CUDA a 1-D one is CUB's
#: segmented reduction, a block per segment, so long segments go in pieces; a 2-D one would be a
#: thread per segment): no atomics contending for a few addresses, no index as big as the values.
#: Both sum each segment on its own, in float64 (a prefix sum over all of them would lose a
#: segment whose sum is tiny beside the running total before it: a zero-initialised layer's
#: weights, the vanishing gradients of the first layers).
ATOMIC_SUMS_MAX = 1 << 16

#: ...where a segment longer than this is reduced in pieces of this many values first, then the
#: pieces per segment: one block streaming a whole 4M-value weight matrix, column after column,
#: would leave the rest of the GPU idle.
SEGMENT_PIECE = 1 << 16

#: Segments made ``by_rows`` (the parameters') holding at least this many values in all can be
#: taken by rows (``Segments.row_piece``): the flat tensor is seen as rows of ``SEGMENT_ROW``
#: values, and every row lying inside one segment gets its mean and variance (one ``var_mean``)
#: on the device; the few rows whose variance isn't finite also get their sums and NaN and Inf
#: counts (``ROW_DETAIL``), and the host joins them per segment, with the few values of no whole
#: row (``RowLayout``). That reads each float32 value about once and a half (some 6 bytes) in
#: about 15 operations, where ``figures`` moves about 150 bytes in shifted float64 columns over
#: some 40: on a big model, whose GPU step is bound by the memory it moves, the parameters'
#: statistics were most of a capture's traffic.
ROWS_FROM = 1 << 20
SEGMENT_ROW = 1 << 12

#: Outputs are copied in their hooks and reduced together at the end of the step while their
#: copies hold at most this many values in all (8 MiB of float32; summing them takes a few
#: float32 columns and one float64 column at a time); later ones are reduced in their hooks.
#: No address takes many atomic adds: a batch of more than ``ATOMIC_SUMS_MAX`` values is summed
#: with ``segment_reduce``, a histogram takes at most ``HIST_SAMPLE`` values of an output, and a
#: big ReLU-like output's units are judged from their maxima (``unit_maxima``). What a big batch's
#: arrangement keeps between steps is per output, or per value histogrammed (an index of at most
#: ``HIST_SAMPLE`` values an output, when some output samples).
DEVICE_BATCH_BUDGET = 1 << 21
#: ...and while each has at most this many values. A big batch's segmented reductions give each
#: output one thread block on CUDA, which streams this much (512 KiB a float64 column) in a few
#: microseconds; a bigger output is reduced in its hook by kernels that use the whole GPU.
DEVICE_BATCHED_MAX = 1 << 16


#: The device path reduces the parameters' statistics a group of layers at a time, a group
#: holding at most this many values (a bigger layer is a group of its own; most models are one
#: group). The gradients' copy and the summed columns then take a few times this much GPU memory
#: at most, whatever the model's size; the weights' copy, kept for the update ratio, is whole.
DEVICE_PARAM_GROUP = 1 << 26


def sampled_count(count: int) -> int | None:
    """Values the histogram of a batched output of ``count`` values takes, or None for all."""
    stride = hist_stride(count)
    return None if stride == 1 else -(-count // stride)


def _index(values: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """An index tensor on the device (int64: the type indexing and index_add_ take as they are;
    an int32 one costs a conversion or a slower kernel)."""
    return torch.from_numpy(np.asarray(values, np.int64)).to(device)


#: A (total,) column to sum, or a function making one.
Column = Union[torch.Tensor, Callable[[], torch.Tensor]]


class Segments:
    """Consecutive segments of a flat tensor on ``device``, by their sizes."""

    def __init__(self, sizes: Sequence[int], device: torch.device | str, atomic: bool | None = None,
                 by_rows: bool = False) -> None:
        self.sizes = tuple(int(n) for n in sizes)
        self.count = len(self.sizes)
        self.total = sum(self.sizes)
        offsets = [0] + list(itertools.accumulate(self.sizes))
        self.device = torch.device(device)
        self.lengths = torch.tensor(self.sizes, dtype=torch.float64, device=device)
        # An empty segment's "first value" is any value; its sums are 0 and its figures NaN.
        self.starts = torch.tensor([min(o, max(self.total - 1, 0)) for o in offsets[:-1]], device=device)
        self.ids: torch.Tensor | None = None
        self._offsets = torch.tensor(offsets, device=device)
        self._pieces: torch.Tensor | None = None
        if atomic or (atomic is None and self.total <= ATOMIC_SUMS_MAX):
            self.ids = _index(np.repeat(np.arange(self.count), self.sizes), device)
        else:
            self._counts = torch.tensor(self.sizes, device=device)
            if max(self.sizes, default=0) > SEGMENT_PIECE:
                # Pieces of at most SEGMENT_PIECE values, none across two segments (an empty
                # segment has none: its second-stage reduction is that of an empty segment).
                per_segment = [-(-n // SEGMENT_PIECE) for n in self.sizes]
                starts = np.concatenate([np.arange(o, o + n, SEGMENT_PIECE, dtype=np.int64)
                                         for o, n in zip(offsets[:-1], self.sizes)] + [np.array([self.total])])
                self._pieces = _index(starts, device)
                self._piece_offsets = _index(np.concatenate([[0], np.cumsum(per_segment)]), device)
        self._rows = _RowPlan.make(self.sizes, self.device) if by_rows and self.total >= ROWS_FROM else None

    def spread(self, per_segment: torch.Tensor) -> torch.Tensor:
        """Each value's segment's entry of a (count,) tensor, as a (total,) tensor."""
        if self.ids is not None:
            return per_segment[self.ids]
        return torch.repeat_interleave(per_segment, self._counts, output_size=self.total)

    def sums(self, columns: Sequence[Column]) -> torch.Tensor:
        """(count, k) float64 sums over each segment of each of k (total,) columns (any dtype).
        A column may be given as a function making it: a big one is then made only when it is
        summed, so at most one such lives at a time (a big model's weights are 100s of MB)."""
        made = lambda column: column() if callable(column) else column  # noqa: E731
        if self.ids is not None:
            stacked = torch.stack([made(column) for column in columns], dim=1).to(torch.float64)
            out = torch.zeros((self.count, len(columns)), dtype=torch.float64, device=self.device)
            return out.index_add_(0, self.ids, stacked)
        return torch.stack([self._segment_sums(made(column)) for column in columns], dim=1)

    def _segment_sums(self, values: torch.Tensor) -> torch.Tensor:
        if values.dtype == torch.bool and self._pieces is not None:
            # Counts over long segments: a piece's count is exact in float32 (SEGMENT_PIECE < 2^24),
            # half the traffic of float64; the pieces' counts are added in float64.
            return self._reduce(values.to(torch.float32), "sum", widen=True)
        return self._reduce(values.to(torch.float64), "sum")

    def _reduce(self, values: torch.Tensor, how: str, widen: bool = False) -> torch.Tensor:
        """Each segment's reduction (a long one's by pieces first); ``widen``: the pieces' results
        are reduced in float64."""
        # (``unsafe`` skips the checks of the offsets, which would read them on the host.)
        if self._pieces is None:
            return torch.segment_reduce(values, how, offsets=self._offsets, axis=0, unsafe=True)
        pieces = torch.segment_reduce(values, how, offsets=self._pieces, axis=0, unsafe=True)
        if widen:
            pieces = pieces.double()
        return torch.segment_reduce(pieces, how, offsets=self._piece_offsets, axis=0, unsafe=True)

    def extremes(self, flat: torch.Tensor, nans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each (non-empty) segment's min and max; NaN where ``nans`` counts a NaN in it."""
        low, high = (self._reduce(flat, how) for how in ("min", "max"))
        poisoned = nans > 0
        return torch.where(poisoned, float("nan"), low), torch.where(poisoned, float("nan"), high)

    def figures(self, flat: torch.Tensor, extra: Sequence[torch.Tensor] = (),
                norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per segment: (count, 5) float64 of L2 norm (NaN unless ``norm``), mean, population
        variance, NaN and Inf counts, and (count, len(extra)) sums of the extra per-value columns."""
        if self.total == 0:
            nan = torch.full((self.count, 5), float("nan"), dtype=torch.float64, device=self.device)
            return nan, torch.zeros((self.count, len(extra)), dtype=torch.float64, device=self.device)
        # Small ones in float64 throughout; big ones in their own precision, summed in float64
        # (shifted, a float32 square loses nothing that matters to the variance). Each segment
        # is shifted by its first value (0 if that isn't finite), and its sum is the shifted
        # values' sum plus the shifts: one column fewer to cast and sum than summing both.
        x = flat.double() if self.ids is not None else flat
        shift = torch.nan_to_num(x[self.starts], nan=0.0, posinf=0.0, neginf=0.0)
        shifted = x - self.spread(shift)
        columns: list[Column] = [shifted, lambda: shifted * shifted, lambda: torch.isnan(flat),
                                 lambda: torch.isinf(flat), *extra]
        if norm:
            columns.append(lambda: x * x)
        sums = self.sums(columns)
        offset = sums[:, 0] / self.lengths
        mean = shift.double() + offset
        variance = sums[:, 1] / self.lengths - offset * offset
        length = sums[:, -1].sqrt() if norm else torch.full_like(mean, float("nan"))
        if 0 in self.sizes:  # an empty segment has no norm either (as on the host)
            length = torch.where(self.lengths > 0, length, float("nan"))
        rows = torch.stack([length, mean, variance, sums[:, 2], sums[:, 3]], dim=1)
        return rows, sums[:, 4:4 + len(extra)]

    @property
    def by_rows(self) -> bool:
        """Whether these segments are taken by rows (``row_piece``, not ``figures``)."""
        return self._rows is not None

    def row_piece(self, flat: torch.Tensor, kind: str = "") -> tuple[torch.Tensor, RowLayout]:
        """What the host needs to make ``figures(flat)`` of segments taken by rows (see
        ``RowLayout`` and ``ROWS_FROM``): a few numbers per row and the values of no whole row,
        and the layout that reads them. ``kind`` names what ``flat`` holds (the weights, the
        gradients): each kind decides on its own whether every row is counted."""
        assert self._rows is not None
        return self._rows.piece(flat, kind)

    def square_sums(self, *flats: torch.Tensor) -> torch.Tensor:
        """(count, len(flats)) float64 sums of each segment's squared values, for each flat tensor."""
        if self._rows is not None:
            return self._rows.square_sums(flats)
        return self.sums([lambda flat=flat: flat * flat for flat in flats])


class RowCounting:
    """Whether every row of a group's weights (or gradients) gets its NaN and Inf counts and its
    sum, or only the rows whose variance isn't finite, up to ``ROW_DETAIL`` of them (see there).
    The host sets it, reading a capture (``RowLayout.figures``); the device path reads it when it
    makes the next piece. Only a bool is shared, and the training thread does both."""

    def __init__(self) -> None:
        self.every_row = False


@dataclass(frozen=True, eq=False)  # (a layout's meta: compared by identity, made once per arrangement)
class RowLayout:
    """How a ``Segments.row_piece`` makes each segment's figures, on the host (see ``ROWS_FROM``).

    The piece holds, per whole row, its mean and variance (Welford's, exact however the mean
    dwarfs the spread). Then, if ``every_row``, each row's sum and NaN and Inf counts; else those
    of ``detail`` rows (their positions first), which include every row whose variance isn't
    finite while they are that few: a row with finite variance holds no NaN or Inf, and its sum
    is its mean times its length. Last, what is left of each segment, as it is. A segment's
    figures join its parts by Chan's formula: n = sum n_i, M2 = sum M2_i + sum n_i (m_i - mean)^2,
    in float64.

    Rows not finite and not looked at (more than ``detail`` of them: a diverged group) leave
    their segments' counts short and their means NaN in that one capture (a segment with such a
    row still has one looked at: at least one NaN or Inf is counted in it), and ``counting`` is
    set to count every row from the next piece on (until at most half of ``detail`` rows are
    left)."""

    width: int
    row_segment: np.ndarray  # per row in the piece: its segment
    left_sizes: np.ndarray  # per segment: its values left (int64)
    detail: int  # rows looked at in detail while not every row is
    every_row: bool
    counting: RowCounting

    @property
    def size(self) -> int:
        rows = len(self.row_segment)
        per_row = rows * ROW_FIELDS if self.every_row else rows * 2 + self.detail * DETAIL_FIELDS
        return per_row + int(self.left_sizes.sum())

    def _rows(self, piece: np.ndarray) -> tuple[np.ndarray, int]:
        """(rows, 5) of sum, mean, variance, NaN and Inf count per row, and where the rest starts."""
        count = len(self.row_segment)
        if self.every_row:
            rows = np.asarray(piece[:count * ROW_FIELDS], np.float64).reshape(-1, ROW_FIELDS)
            if (~np.isfinite(rows[:, 2])).sum() <= self.detail // 2:
                self.counting.every_row = False
            return rows, count * ROW_FIELDS
        end = count * 2 + self.detail * DETAIL_FIELDS
        moments = np.asarray(piece[:count * 2], np.float64).reshape(-1, 2)
        detail = np.asarray(piece[count * 2:end], np.float64).reshape(-1, DETAIL_FIELDS)
        rows = np.zeros((count, ROW_FIELDS))
        rows[:, 1:3] = moments
        rows[:, 0] = moments[:, 0] * self.width
        unresolved = ~np.isfinite(moments[:, 1])
        picked = detail[:, 0].astype(np.int64)
        flagged = unresolved[picked]
        rows[picked[flagged], 0] = detail[flagged, 1]
        rows[picked[flagged], 3:] = detail[flagged, 2:]
        unresolved[picked] = False
        if unresolved.any():
            self.counting.every_row = True
        return rows, end

    def figures(self, piece: np.ndarray) -> np.ndarray:
        """(segments, 5) float64: L2 norm, mean, population variance, NaN and Inf counts. Reading
        a piece may switch ``counting`` for the pieces made after it (see the class)."""
        count, width = len(self.left_sizes), float(self.width)
        with np.errstate(invalid="ignore", over="ignore"):
            rows, end = self._rows(piece)
        left = np.asarray(piece[end:], np.float64)
        segment, left_segment = self.row_segment, np.repeat(np.arange(count), self.left_sizes)
        total = lambda owner, values: np.bincount(owner, weights=values, minlength=count)  # noqa: E731
        n_left = self.left_sizes.astype(np.float64)
        n = total(segment, np.full(len(rows), width)) + n_left
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            left_sum = total(left_segment, left)
            left_mean = np.where(n_left > 0, left_sum / n_left, 0.0)
            row_mean, row_var = rows[:, 1], rows[:, 2]
            # The centre of the deviations is the mean of Welford's means (NaN with an Inf, as the variance).
            centre = (total(segment, row_mean * width) + left_sum) / n
            deviation = left - left_mean[left_segment]
            m2 = (total(segment, width * (row_var + (row_mean - centre[segment]) ** 2))
                  + total(left_segment, deviation * deviation) + n_left * (left_mean - centre) ** 2)
            squares = total(segment, width * (row_var + row_mean * row_mean)) + total(left_segment, left * left)
            nans = total(segment, rows[:, 3]) + total(left_segment, np.isnan(left))
            infs = total(segment, rows[:, 4]) + total(left_segment, np.isinf(left))
            norm = np.where((infs > 0) & (nans == 0), np.inf, np.sqrt(squares))  # (a row with an Inf has NaN variance)
            mean = (total(segment, rows[:, 0]) + left_sum) / n  # (a row's sum is numpy's with an Inf)
            figures = np.stack([norm, mean, m2 / n, nans, infs], axis=1)
        figures[n == 0, :3] = np.nan
        return figures


#: Per row of a ``Segments.row_piece`` counting every row: sum, mean, variance, NaN and Inf count.
ROW_FIELDS = 5
#: Per row looked at in detail: its position among the piece's rows, sum, NaN and Inf count.
DETAIL_FIELDS = 4

#: While no more than one row in this many has a variance that isn't finite (a NaN or an Inf in
#: it), only that many rows get their sums and NaN and Inf counts: about a byte a value in all,
#: where counting every row reads each value three more times and makes two byte masks (some 16
#: bytes a float32 value, most of what a capture moved for a big model's parameters).
ROW_DETAIL = 64


class _RowPlan:
    """Where a flat tensor of segments has whole rows of ``SEGMENT_ROW`` values inside one segment
    (on the device), and the ``RowLayout`` that reads what they give."""

    def __init__(self, grid: int, rows: np.ndarray, row_segment: np.ndarray, left: np.ndarray,
                 left_sizes: list[int], device: torch.device) -> None:
        self.grid = grid  # rows of the flat tensor's grid: flat[:grid * SEGMENT_ROW].view(grid, -1)
        self.rows = _index(rows, device)  # the grid's rows inside a segment
        self.left = _index(left, device)  # the values in no such row, by segment
        self.left_segments = Segments(left_sizes, device)
        self.width = SEGMENT_ROW
        self.row_segment = row_segment
        self.left_sizes = np.asarray(left_sizes, np.int64)
        per_segment = np.bincount(row_segment, minlength=len(left_sizes))
        # Enough to look at a row of every segment with rows, if it has one not finite.
        self.detail = min(len(rows), max(int((per_segment > 0).sum()), -(-len(rows) // ROW_DETAIL)))
        starts = np.concatenate([[0], np.cumsum(per_segment)])
        self.row_offsets = _index(starts, device)
        self.segment_first = _index(starts[row_segment], device)  # per row: its segment's first row
        self._layouts: dict[str, tuple[RowLayout, RowLayout]] = {}  # by kind: looking at some rows, at every row

    @classmethod
    def make(cls, sizes: tuple[int, ...], device: torch.device) -> "_RowPlan | None":
        """The plan, or None when rows would hold too little of the values to pay."""
        width = SEGMENT_ROW
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        first = -(-offsets[:-1] // width)  # each segment's first whole row...
        end = np.maximum(offsets[1:] // width, first)  # ...and the row after its last
        if 2 * int((end - first).sum()) * width < offsets[-1]:
            return None
        rows = [np.arange(a, b) for a, b in zip(first, end)]
        left = [np.concatenate([np.arange(o, min(a * width, o + n)), np.arange(max(b * width, a * width), o + n)])
                for o, n, a, b in zip(offsets[:-1], sizes, first, end)]
        row_segment = np.repeat(np.arange(len(sizes)), end - first)
        return cls(int(offsets[-1] // width), np.concatenate(rows), row_segment, np.concatenate(left).astype(np.int64),
                   [len(part) for part in left], device)

    def _grid(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[:self.grid * self.width].view(self.grid, self.width)

    def layouts(self, kind: str) -> tuple[RowLayout, RowLayout]:
        """The layouts of ``kind``'s pieces (weights', gradients'...: each counts on its own)."""
        if kind not in self._layouts:
            counting = RowCounting()
            self._layouts[kind] = tuple(RowLayout(self.width, self.row_segment, self.left_sizes, self.detail, every,
                                                  counting) for every in (False, True))
        return self._layouts[kind]

    def piece(self, flat: torch.Tensor, kind: str) -> tuple[torch.Tensor, RowLayout]:
        """As ``Segments.row_piece``."""
        some, every = self.layouts(kind)
        grid = self._grid(flat)
        var, mean = torch.var_mean(grid, dim=1, correction=0)
        if every.counting.every_row:
            per_row = torch.stack([grid.sum(1), mean, var, grid.isnan().sum(1, dtype=grid.dtype),
                                   grid.isinf().sum(1, dtype=grid.dtype)], dim=1)[self.rows]
            return torch.cat([per_row.view(-1), flat[self.left].float()]), every
        moments = torch.stack([mean, var], dim=1)[self.rows]
        picked = torch.topk(self._priority(moments[:, 1]), self.detail, sorted=False).indices
        looked = grid[self.rows[picked]]
        detail = torch.stack([picked.to(grid.dtype), looked.sum(1), looked.isnan().sum(1, dtype=grid.dtype),
                              looked.isinf().sum(1, dtype=grid.dtype)], dim=1)
        return torch.cat([moments.view(-1), detail.view(-1), flat[self.left].float()]), some

    def _priority(self, variance: torch.Tensor) -> torch.Tensor:
        """Which rows to look at (the ``detail`` highest): 2 for each segment's first row whose
        variance isn't finite, 1 for its others, 0 for finite ones. A few kilobytes whatever the
        model, in float32: exact while a group has under 2^24 rows (it has at most 2^14)."""
        bad = torch.isfinite(variance).logical_not().float()
        seen = bad.cumsum(0)  # rows not finite up to each, in the whole piece...
        rank = seen - seen[self.segment_first] + bad[self.segment_first]  # ...and in its segment
        return bad + bad * (rank == 1)

    def square_sums(self, flats: Sequence[torch.Tensor]) -> torch.Tensor:
        """As ``Segments.square_sums``: each row's norm (one pass, no squares made), squared."""
        norms = torch.stack([torch.linalg.vector_norm(self._grid(flat), dim=1) for flat in flats], dim=1)
        rows = torch.segment_reduce(norms[self.rows].double().square(), "sum", offsets=self.row_offsets, axis=0,
                                    unsafe=True)
        return rows + self.left_segments.square_sums(*[flat[self.left] for flat in flats])


class PendingDeviceActivation(NamedTuple):
    """One hooked output's copy, waiting for the end-of-step batch."""

    values: torch.Tensor  # contiguous float copy of the output (any shape)
    shape: tuple[int, ...]
    hist_range: tuple[float, float]
    saturation_bounds: tuple[float, float] | None
    relu_like: bool
    units: torch.Tensor | None = None  # its ``unit_maxima``, if it has them


#: A ReLU-like output of 2 or more dimensions with more values than this (or in a batch past
#: ``ATOMIC_SUMS_MAX`` values) is judged from its units' maxima, taken in its hook, rather than
#: value by value at the end of the step (a counter, and an index kept, per value).
UNIT_MAXIMA_FROM = 1 << 13


def unit_maxima(values: torch.Tensor, shape: tuple[int, ...], relu_like: bool,
                batched: int = 0) -> torch.Tensor | None:
    """Each unit's maximum (as ``engine.stats.dead_units`` takes units: the last axis of a 2-D or
    3-D output, axis 1 of a bigger one) of a big ReLU-like output, or of one that takes the
    step's batch (``batched`` values with it) past ``ATOMIC_SUMS_MAX``; a unit is dead when it
    is <= 0 (NaN keeps it live). None for other outputs."""
    if not relu_like or len(shape) < 2 or (values.numel() <= UNIT_MAXIMA_FROM and batched <= ATOMIC_SUMS_MAX):
        return None
    x = values.view(shape)
    return x.amax(dim=unit_dims(x))


def _unit_of_each_value(shape: tuple[int, ...]) -> np.ndarray:
    """Which unit (as ``engine.stats.dead_units`` counts them) each value of an output belongs to."""
    index = np.arange(int(np.prod(shape)))
    if len(shape) <= 1:
        return index
    if len(shape) in (2, 3):
        return index % shape[-1]
    return (index // int(np.prod(shape[2:]))) % shape[1]


class _Layout(NamedTuple):
    """What one arrangement of pending outputs needs on the device (the same step after step)."""

    segments: Segments
    gather: torch.Tensor | None  # (count, longest): each segment's values, padded with its first value (small ones)
    hist_take: torch.Tensor | None  # the values histogrammed, if not all; the hist_* are theirs
    # Per value histogrammed in a small batch; per output in a big one (then spread at each step
    # over hist_counts values each rather than kept, 16 bytes a value).
    hist_scale: torch.Tensor  # bins / (hi - lo)
    hist_shift: torch.Tensor  # -lo * scale
    hist_base: torch.Tensor  # the output's first counter (int64, bins + 1 per output)
    hist_counts: torch.Tensor | None  # values each output histograms (big batches)
    ones: torch.Tensor  # 1.0 per value histogrammed (one value, expanded), what a counter gains
    # Lower bound + margin (-inf if none) and upper bound - margin, per value of a small batch,
    # per output of a big one (spread at each step rather than kept, 8 bytes a value).
    saturation_low: torch.Tensor | None
    saturation_high: torch.Tensor | None
    unit_values_are_flat: bool  # every output ReLU-like, none with unit maxima: flat is what units judge
    units: torch.Tensor | None  # per value judged (ReLU-like outputs' values or unit maxima): its unit
    unit_count: int
    unit_segment: torch.Tensor | None  # per unit: its segment


class DeviceActivationReducer:
    """Rows of (mean, var, min, max, NaN count, Inf count, dead units, saturated count, histogram
    counts...) for a step's outputs, all at once, like ``engine.host_stats.ActivationReducer`` on
    the host. Outputs of more than ``HIST_SAMPLE`` values are histogrammed over the same
    evenly strided sample as ``engine.stats.histogram`` takes (``sampled`` tells its size)."""

    #: Arrangements kept: a last partial batch, or steps with and without some output, alternate
    #: between a few (and making one copies its tensors to the device).
    KEPT = 4

    def __init__(self, margin: float, bins: int) -> None:
        self.margin = margin
        self.bins = bins
        self._layouts: dict[tuple, _Layout] = {}  # newest last

    def arrange(self, pending: list[PendingDeviceActivation], device: torch.device) -> _Layout:
        """What reducing outputs of this arrangement takes, made once and kept while it recurs."""
        key = (device,) + tuple((p.shape, p.hist_range, p.saturation_bounds, p.relu_like, p.units is None)
                                for p in pending)
        layout = self._layouts.pop(key, None)
        if layout is None:
            layout = self._make_layout(pending, device)
            while len(self._layouts) >= self.KEPT:
                self._layouts.pop(next(iter(self._layouts)))
        self._layouts[key] = layout
        return layout

    def _make_layout(self, pending: list[PendingDeviceActivation], device: torch.device) -> _Layout:
        sizes = np.array([p.values.numel() for p in pending], np.int64)
        segments = Segments(sizes.tolist(), device)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        longest = int(sizes.max())
        gather = None  # small batches of like sizes: one gather, one reduction; else segment_reduce
        if segments.ids is not None and len(sizes) * longest <= 2 * int(sizes.sum()) + (1 << 12):
            columns = np.arange(longest)
            gather = starts[:, None] + np.where(columns[None, :] < sizes[:, None], columns[None, :], 0)
        lo = np.array([p.hist_range[0] for p in pending], np.float64)
        hi = np.array([p.hist_range[1] for p in pending], np.float64)
        scale = self.bins / (hi - lo)
        per_value = lambda values, dtype=np.float32: torch.from_numpy(  # noqa: E731
            np.repeat(np.asarray(values), sizes).astype(dtype)).to(device)
        take = None
        sampled = np.array([-(-int(n) // hist_stride(int(n))) for n in sizes], np.int64)
        if (sampled < sizes).any():
            take = _index(np.concatenate(
                [start + np.arange(0, n, hist_stride(int(n))) for start, n in zip(starts, sizes)]), device)
        hist_counts = None
        if segments.ids is not None:
            per_sampled = lambda values, dtype=np.float32: torch.from_numpy(  # noqa: E731
                np.repeat(np.asarray(values), sampled).astype(dtype)).to(device)
        else:
            hist_counts = torch.from_numpy(sampled).to(device)
            per_sampled = lambda values, dtype=np.float32: torch.from_numpy(  # noqa: E731
                np.asarray(values).astype(dtype)).to(device)
        low = high = None
        if any(p.saturation_bounds is not None for p in pending):
            bounds = [p.saturation_bounds or (-np.inf, np.inf) for p in pending]
            low, high = ([b[0] + self.margin for b in bounds], [b[1] - self.margin for b in bounds])
            if segments.ids is not None:
                low, high = per_value(low), per_value(high)
            else:
                low, high = (torch.tensor(bound, dtype=torch.float32, device=device) for bound in (low, high))
        units = unit_segment = None
        count = 0
        if any(p.relu_like for p in pending):
            owners, pieces = [], []
            for index, p in enumerate(pending):
                if p.relu_like:
                    judged = p.shape if p.units is None else tuple(p.units.shape)  # (units,): one value each
                    pieces.append(count + _unit_of_each_value(judged))
                    owners += [index] * unit_count(p.shape)
                    count += unit_count(p.shape)
            units = _index(np.concatenate(pieces), device)
            unit_segment = _index(np.array(owners), device)
        flat_units = all(p.relu_like and p.units is None for p in pending)
        base = per_sampled(np.arange(len(pending)) * (self.bins + 1), np.int64)
        ones = torch.ones(1, device=device).expand(int(sampled.sum()))
        return _Layout(segments, None if gather is None else _index(gather, device), take, per_sampled(scale),
                       per_sampled(-lo * scale), base, hist_counts, ones, low, high, flat_units, units, count,
                       unit_segment)

    def rows(self, pending: list[PendingDeviceActivation], layout: _Layout | None = None) -> torch.Tensor:
        """(outputs, 8 + bins) float32 rows, on the outputs' device; ``layout`` is their
        ``arrange``-ment, if it is at hand."""
        flat = torch.cat([p.values.reshape(-1) for p in pending])
        layout = self.arrange(pending, flat.device) if layout is None else layout
        count, bins = len(pending), self.bins
        extra = []
        if layout.saturation_low is not None:
            floor, ceiling = layout.saturation_low, layout.saturation_high
            if layout.segments.ids is None:  # kept per output
                floor, ceiling = layout.segments.spread(floor), layout.segments.spread(ceiling)
            extra.append((flat < floor) | (flat > ceiling))
        figures, sums = layout.segments.figures(flat, extra, norm=False)
        if layout.gather is not None:
            low, high = torch.aminmax(flat[layout.gather], dim=1)  # a padding repeats a value of its own segment
        else:
            low, high = layout.segments.extremes(flat, figures[:, 3])
        zeros = torch.zeros(count, dtype=torch.float64, device=flat.device)
        saturated = sums[:, 0] if extra else zeros
        dead = zeros
        if layout.units is not None:
            # A unit is dead when none of its values is > 0 or NaN (as max <= 0 judges it).
            values = flat if layout.unit_values_are_flat else torch.cat(
                [(p.values if p.units is None else p.units).reshape(-1) for p in pending if p.relu_like])
            live = torch.zeros(layout.unit_count, device=flat.device)
            live.index_add_(0, layout.units, (~(values <= 0)).float())
            dead = torch.zeros_like(zeros).index_add_(0, layout.unit_segment, (live == 0).double())
        # Histogram: each value's bin within its own range, clamped into the edge bins (+-Inf
        # too), NaN to a spare counter after them; then moved to its segment's run of counters
        # (as integers: a float sum would round positions near a bin edge across it).
        shown = flat if layout.hist_take is None else flat[layout.hist_take]
        scale, shift, base = layout.hist_scale, layout.hist_shift, layout.hist_base
        if layout.hist_counts is not None:
            scale, shift, base = (torch.repeat_interleave(t, layout.hist_counts, output_size=layout.ones.numel())
                                  for t in (scale, shift, base))
        position = shown * scale
        position += shift
        position.clamp_(0.0, bins - 0.5)
        index = torch.nan_to_num(position, nan=float(bins)).long()
        index += base
        hist = torch.zeros(count * (bins + 1), device=flat.device).index_add_(0, index, layout.ones)
        stats = torch.stack([figures[:, 1], figures[:, 2], low, high, figures[:, 3], figures[:, 4], dead, saturated],
                            dim=1)
        return torch.cat([stats.float(), hist.view(count, bins + 1)[:, :bins]], dim=1)
