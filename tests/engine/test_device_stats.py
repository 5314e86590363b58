"""The device path's batched reductions against numpy (and against the host path's reducer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.device_stats as device_stats
from engine.device_stats import (
    DeviceActivationReducer,
    PendingDeviceActivation,
    RowLayout,
    Segments,
    sampled_count,
    unit_maxima,
)
from engine.host_stats import ActivationReducer, PendingActivation
from engine.stats import HIST_SAMPLE


def _parts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(n, generator=g) * s + m for n, s, m in ((5, 1.0, 0.0), (1000, 0.001, 30.0), (37, 2.0, -1.0),
                                                                  (1, 1.0, 4.0), (64, 1.0, 0.0))]
    parts[2][4] = float("nan")
    parts[4][7] = float("inf")
    return parts


SUMMING = ["index_add", "segment_reduce", "pieces", "rows"]


def _summing(how: str, monkeypatch: pytest.MonkeyPatch, piece: int = 7) -> None:
    """Sum with index_add_, with segment_reduce over whole segments, in pieces of ``piece``
    values, or (segments made ``by_rows``) by rows of ``piece`` values and what is left, every
    row looked at in detail."""
    monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 1 << 20 if how == "index_add" else 0)
    if how == "pieces":
        monkeypatch.setattr(device_stats, "SEGMENT_PIECE", piece)
    if how == "rows":
        monkeypatch.setattr(device_stats, "ROWS_FROM", 0)
        monkeypatch.setattr(device_stats, "SEGMENT_ROW", piece)
        monkeypatch.setattr(device_stats, "ROW_DETAIL", 1)


def _segments(sizes: list[int], how: str) -> Segments:
    segments = Segments(sizes, "cpu", by_rows=True)
    assert segments.by_rows == (how == "rows" and sum(sizes) > 0)
    return segments


def _row_figures(segments: Segments, flat: torch.Tensor, kind: str = "") -> tuple[np.ndarray, RowLayout]:
    """The figures the host makes from a piece by rows, and the layout that read it."""
    piece, layout = segments.row_piece(flat, kind)
    assert piece.numel() == layout.size
    return layout.figures(piece.numpy()), layout


def _figures(segments: Segments, flat: torch.Tensor) -> torch.Tensor:
    """``figures``, or by rows (made on the host from the device's piece) when so taken: then
    the same whether some rows are looked at in detail or every row is counted."""
    if not segments.by_rows:
        return segments.figures(flat)[0]
    some, layout = _row_figures(segments, flat)
    assert not layout.every_row
    layout.counting.every_row = True
    every, layout = _row_figures(segments, flat)
    assert layout.every_row
    # (A row's sum is its float32 mean times its length, or what the device summed.)
    np.testing.assert_allclose(some[:, :3], every[:, :3], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(some[:, 3:], every[:, 3:])
    return torch.from_numpy(some)


@pytest.mark.parametrize("how", SUMMING)
def test_segment_figures_against_numpy(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _summing(how, monkeypatch)
    parts = _parts()
    segments = _segments([p.numel() for p in parts], how)
    assert (segments.ids is not None) == (how == "index_add")
    assert (segments._pieces is not None) == (how == "pieces")
    flat = torch.cat(parts)
    extra = (flat > 0.5)
    sums = segments.figures(flat, [extra])[1]
    rows = _figures(segments, flat)
    for row, part, total in zip(rows.numpy(), parts, sums[:, 0].numpy()):
        a = part.double().numpy()
        assert total == np.count_nonzero(a > 0.5)
        assert row[3] == np.isnan(a).sum() and row[4] == np.isinf(a).sum()
        if not np.isfinite(a).all():
            assert np.isnan(row[2])  # no variance of a segment with NaN or Inf
            assert np.isnan(row[1]) == bool(np.isnan(a).any())
            continue
        # The second segment's mean is 30 000 times its spread: still exact (shifted sums). By
        # rows, its variance carries the rounding of the rows' float32 means (6e-8 of the mean,
        # some 2e-3 of the spread here), about 2e-3 / sqrt(n) of it: ~1e-4 with these 1,000
        # values (a million values with a mean 30,000 spreads off zero: 6e-7 on this CPU).
        exact = how != "rows" or abs(a.mean()) < 100 * a.std()
        np.testing.assert_allclose(row[:2], [np.linalg.norm(a), a.mean()], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(row[2], a.var(), rtol=1e-6 if exact else 1e-4, atol=1e-12)
    pair = segments.sums([flat * 2, torch.ones_like(flat)])
    np.testing.assert_allclose(pair[:, 1].numpy(), [p.numel() for p in parts])
    np.testing.assert_allclose(pair[:2, 0].numpy(), [float(p.double().sum()) * 2 for p in parts[:2]], rtol=1e-6)


@pytest.mark.parametrize("how", SUMMING)
def test_a_tiny_segment_after_a_huge_one_keeps_its_figures(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vanishing gradients next to big weights, or a zero-initialised layer after a trained one:
    each segment is summed on its own, so nothing of the first leaks into the second."""
    _summing(how, monkeypatch)
    g = torch.Generator().manual_seed(5)
    huge, tiny = torch.randn(5000, generator=g) * 1e4, torch.randn(300, generator=g) * 1e-7
    rows = _figures(_segments([5000, 300], how), torch.cat([huge, tiny]))
    a = tiny.double().numpy()
    np.testing.assert_allclose(rows[1, :3].numpy(), [np.linalg.norm(a), a.mean(), a.var()], rtol=1e-6)


@pytest.mark.parametrize("how", SUMMING)
def test_a_segment_starting_with_inf_or_nan_has_numpys_mean(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments are shifted by their first value; one that isn't finite shifts by 0 instead, so
    the mean is still the values' mean (inf, -inf or NaN, as numpy's) and the counts are right."""
    _summing(how, monkeypatch, piece=3)
    inf, nan = float("inf"), float("nan")
    parts = [[inf, 1.0, 2.0, 5.0], [-inf, 3.0], [nan, 1.0, 2.0], [inf, -inf, 0.0], [inf, inf], [2.0, 4.0, 9.0]]
    rows = _figures(_segments([len(p) for p in parts], how), torch.tensor(sum(parts, [])))
    rows = rows.numpy()
    for row, part in zip(rows, parts):
        a = np.array(part)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(row[1], a.mean())
        assert row[3] == np.isnan(a).sum() and row[4] == np.isinf(a).sum()
    np.testing.assert_allclose(rows[-1, :3], [np.linalg.norm([2, 4, 9]), 5.0, np.var([2, 4, 9])], rtol=1e-12)


def test_long_segments_are_summed_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of SEGMENT_PIECE values, each summed on its own: values in float64 (a float32 sum
    of 65 536 values would be off by ~1e-5), counts in float32 (exact up to 2^24)."""
    monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
    g = torch.Generator().manual_seed(11)
    flat = torch.randn(5 * device_stats.SEGMENT_PIECE + 123, generator=g) * 3.0 + 1.0
    flat[::1001] = float("nan")
    segments = Segments([flat.numel() - 1000, 1000], "cpu")
    assert segments._pieces is not None
    rows, extra = segments.figures(flat.nan_to_num(), [flat.isnan()])
    a = flat.nan_to_num().double().numpy()[:-1000]
    np.testing.assert_allclose(rows[0, :3].numpy(), [np.linalg.norm(a), a.mean(), a.var()], rtol=1e-10)
    assert extra[0, 0] == np.isnan(flat.numpy()[:-1000]).sum() and rows[0, 3] == 0


def test_rows_and_what_is_left_hold_every_value_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """By rows (SEGMENT_ROW values), segments starting anywhere in a row: some shorter than a row,
    some across several, empty ones; each value is in one whole row of its segment or left."""
    monkeypatch.setattr(device_stats, "ROWS_FROM", 0)
    monkeypatch.setattr(device_stats, "ROW_DETAIL", 1)
    row = device_stats.SEGMENT_ROW
    sizes = [row + 3, 0, 1, row - 4, 2 * row, 3 * row + 5, row, 7, 0, 5 * row - 2]  # (the 5th: rows only)
    g = torch.Generator().manual_seed(17)
    parts = [torch.randn(n, generator=g) * (i + 1) + (i - 4) for i, n in enumerate(sizes)]
    parts[5][2 * row + 1] = float("nan")  # in a whole row
    parts[5][-1] = float("inf")  # left over
    parts[6][row // 2] = float("-inf")
    parts[9][row + 7] = float("inf")  # in a whole row: the norm and mean are Inf
    flat = torch.cat(parts)
    segments = Segments(sizes, "cpu", by_rows=True)
    assert segments.by_rows and segments._rows.left_sizes.sum() < flat.numel() // 2
    rows = _figures(segments, flat)
    squares = segments.square_sums(flat)[:, 0].numpy()
    for i, (figures, part) in enumerate(zip(rows.numpy(), parts)):
        a = part.double().numpy()
        assert figures[3] == np.isnan(a).sum() and figures[4] == np.isinf(a).sum()
        with np.errstate(invalid="ignore"):
            expected = [np.linalg.norm(a), a.mean(), a.var(), (a * a).sum()] if a.size else [np.nan] * 3 + [0.0]
        np.testing.assert_allclose([*figures[:3], squares[i]], expected, rtol=1e-6, equal_nan=True)


def test_rows_not_finite_are_looked_at_and_many_make_every_row_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only rows whose variance isn't finite get their sums and counts, up to ``detail`` of them.
    More (a diverged group): that capture's counts fall short, every segment holding such a row
    still counts one, and the next pieces count every row, until few such rows are left."""
    monkeypatch.setattr(device_stats, "ROWS_FROM", 0)
    monkeypatch.setattr(device_stats, "SEGMENT_ROW", 4)
    monkeypatch.setattr(device_stats, "ROW_DETAIL", 8)
    sizes = [64, 3, 128, 64]  # 16, 0, 32 and 16 whole rows: 8 looked at (64 / 8), at least 3
    segments = Segments(sizes, "cpu", by_rows=True)
    assert segments._rows.detail == 8
    g = torch.Generator().manual_seed(5)
    clean = torch.randn(sum(sizes), generator=g)
    offsets = np.cumsum([0] + sizes)

    def check(flat: torch.Tensor, every_row: bool, exact: bool) -> np.ndarray:
        figures, layout = _row_figures(segments, flat, "grad")
        assert layout.every_row == every_row
        parts = [flat[a:b].double().numpy() for a, b in zip(offsets[:-1], offsets[1:])]
        nans, infs = (np.array([f(p).sum() for p in parts]) for f in (np.isnan, np.isinf))
        if exact:
            np.testing.assert_array_equal(figures[:, 3:], np.stack([nans, infs], 1))
            with np.errstate(invalid="ignore"):
                means = [p.mean() for p in parts]
            np.testing.assert_allclose(figures[:, 1], means, rtol=1e-6, equal_nan=True)
        else:  # short, never over, and not zero where there is any
            assert (figures[:, 3] <= nans).all() and (figures[:, 4] <= infs).all()
            assert ((figures[:, 3] + figures[:, 4] > 0) == (nans + infs > 0)).all()
            assert (figures[:, 3:].sum() < nans.sum() + infs.sum())
        return figures

    check(clean, every_row=False, exact=True)
    few = clean.clone()
    few[[0, 5, 70, 71, 150, 160, 230, 258]] = torch.tensor([float("nan"), float("inf"), float("-inf"), float("nan"),
                                                          float("nan"), float("inf"), float("inf"), float("nan")])
    check(few, every_row=False, exact=True)  # 6 rows (and a value left over): all looked at
    assert not segments._rows.layouts("grad")[0].counting.every_row
    many = clean.clone()
    many[1::9] = float("nan")  # in every row
    many[200:260:7] = float("inf")
    check(many, every_row=False, exact=False)
    check(many, every_row=True, exact=True)
    check(many, every_row=True, exact=True)  # (while many rows aren't finite)
    _row_figures(segments, clean, "weight")  # the weights count on their own
    assert not segments._rows.layouts("weight")[0].counting.every_row
    check(few, every_row=True, exact=True)  # 6 rows: over half of 8, still every row
    check(clean, every_row=True, exact=True)
    check(few, every_row=False, exact=True)


@pytest.mark.parametrize("how", SUMMING)
def test_empty_segments_get_nan_figures(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _summing(how, monkeypatch, piece=2)
    segments = _segments([0, 3, 0], how)
    assert (segments._pieces is not None) == (how == "pieces")
    rows = _figures(segments, torch.tensor([1.0, 2.0, 3.0]))
    assert np.isnan(rows[[0, 2], :3].numpy()).all() and (rows[[0, 2], 3] == 0).all()
    np.testing.assert_allclose(rows[1, :3].numpy(), [np.sqrt(14.0), 2.0, 2.0 / 3.0])
    if how != "index_add":
        low, high = segments.extremes(torch.tensor([1.0, -2.0, 3.0]), rows[:, 3])
        assert low[1] == -2.0 and high[1] == 3.0
    assert np.isnan(Segments([0], "cpu").figures(torch.zeros(0))[0].numpy()[:, :3]).all()


SHAPES = [  # (shape, hist range, saturation bounds, ReLU-like)
    ((6, 5), (-4.0, 4.0), None, True),  # a dense layer's units
    ((3, 4, 5), (-1.0, 1.0), (-1.0, 1.0), False),  # tanh over a sequence
    ((2, 3, 4, 4), (-4.0, 4.0), None, True),  # conv channels
    ((7,), (0.0, 1.0), (0.0, 1.0), False),  # sigmoid of a 1-D output
    ((4,), (-4.0, 4.0), None, True),  # 1-D ReLU: every value a unit
    ((2, 5000), (-4.0, 4.0), None, False),  # big: its histogram samples
]


def _outputs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    outs = []
    for shape, lo_hi, bounds, relu in SHAPES:
        x = rng.normal(size=shape).astype(np.float32) * 2
        if bounds is not None:
            x = np.clip(np.tanh(x) if bounds[0] < 0 else 1 / (1 + np.exp(-x)), *bounds).astype(np.float32)
        if relu:
            x = np.maximum(x, 0)
            if len(shape) == 4:
                x[:, 1] = 0  # a dead channel
            else:
                x[..., 1] = 0  # a dead feature (a zero, for 1-D)
        outs.append(x)
    outs[0][2, 3] = np.nan  # a NaN makes its unit live (max <= 0 is false), as on the host
    outs[1][0, 0, 0] = np.inf
    outs[1][1, 1, 1] = -np.inf
    outs[2][:, :, 0, 0] = 0.0  # exact zeros: on a bin edge of [-4, 4]
    outs[2][:, 2] = 0.0
    outs[2][1, 2, 3, 3] = np.nan  # makes channel 2 live, channel 1 stays dead
    return outs


@pytest.mark.parametrize("big,piece", [(False, None), (True, None), (True, 5)],
                         ids=["small_batch", "big_batch", "big_batch_in_pieces"])
def test_device_rows_equal_the_host_reducers(big: bool, piece: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches: index_add_ sums and one padded min/max; big ones: segment_reduce (whole
    segments, or in pieces), and ReLU outputs' units judged from their per-example maxima."""
    if big:
        monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
        monkeypatch.setattr(device_stats, "UNIT_MAXIMA_FROM", 0)
    if piece:
        monkeypatch.setattr(device_stats, "SEGMENT_PIECE", piece)
    bins = 16
    device = DeviceActivationReducer(0.01, bins)
    host = ActivationReducer(0.01, bins)
    for seed in (0, 1):  # the second step reuses the arrangement
        outs = _outputs(seed)
        specs = [(x, *spec[1:]) for x, spec in zip(outs, SHAPES)]
        pending = []
        for x, lo_hi, bounds, relu in specs:
            values = torch.from_numpy(x).reshape(-1).clone()
            pending.append(PendingDeviceActivation(values, x.shape, lo_hi, bounds, relu,
                                                   unit_maxima(values, x.shape, relu)))
        assert big == any(p.units is not None for p in pending)
        got = device.rows(pending).numpy()
        small = [PendingActivation(x.reshape(-1).copy(), x.shape, lo_hi, bounds, relu)
                 for x, lo_hi, bounds, relu in specs[:-1]]
        want = host.rows(small)
        big_x, big_range = specs[-1][0], specs[-1][1]
        want_big, sampled = host.row_now(torch.from_numpy(big_x), big_range, None, False)
        want = np.vstack([want, want_big])
        assert sampled == sampled_count(big_x.size) and sampled <= HIST_SAMPLE
        assert sampled_count(HIST_SAMPLE) is None
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=2e-6, atol=1e-7)  # mean, var (NaN alike)
        np.testing.assert_array_equal(got[:, 2:], want[:, 2:].astype(np.float32))  # min, max, counts, histogram
        assert got[0, 4] == 1 and got[1, 5] == 2 and got[0, 6] > 0 and got[2, 6] > 0 and got[1, 7] > 0


@pytest.mark.parametrize("big", [False, True], ids=["small_batch", "big_batch"])
def test_device_rows_need_no_python_number_from_a_tensor(big: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a number back would synchronise on CUDA: the batch never does it."""
    if big:
        monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
    reducer = DeviceActivationReducer(0.01, 8)
    pending = []
    for x, spec in zip(_outputs(0), SHAPES):
        values = torch.from_numpy(x).reshape(-1).clone()
        pending.append(PendingDeviceActivation(values, x.shape, spec[1], spec[2], spec[3],
                                               unit_maxima(values, x.shape, spec[3], 1 << 20 if big else 0)))
    assert big == any(p.units is not None for p in pending)
    reducer.rows(pending)  # the arrangement is made once, from shapes only

    def refuse(*_args: object) -> None:
        raise AssertionError("a tensor was read on the host")
    with monkeypatch.context() as guard:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
            guard.setattr(torch.Tensor, name, refuse)
        rows = reducer.rows(pending)
    assert rows.shape == (len(SHAPES), 8 + 8)


def test_histograms_of_many_outputs_keep_values_on_bin_edges_in_their_bins() -> None:
    """Counters of later outputs lie far along; a bin's position is added as an integer, so a
    value just below an edge (or on it) stays in its bin, as on the host."""
    bins, outputs = 48, 200
    rng = np.random.default_rng(4)
    edge = np.float32(8 / bins)  # [-4, 4]: bins 1/6 wide
    values = [(rng.integers(-24, 24, size=(4, 8)) * edge + rng.choice([0, -1e-6, 1e-6], size=(4, 8)))
              .astype(np.float32) for _ in range(outputs)]
    got = DeviceActivationReducer(0.01, bins).rows(
        [PendingDeviceActivation(torch.from_numpy(v).reshape(-1).clone(), v.shape, (-4.0, 4.0), None, False)
         for v in values]).numpy()
    want = ActivationReducer(0.01, bins).rows(
        [PendingActivation(v.reshape(-1).copy(), v.shape, (-4.0, 4.0), None, False) for v in values])
    np.testing.assert_array_equal(got[:, 8:], want[:, 8:])


def test_a_few_arrangements_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A last partial batch alternates with full ones: their arrangements (copied to the device
    when made) are made once each."""
    made = []
    original = DeviceActivationReducer._make_layout
    monkeypatch.setattr(DeviceActivationReducer, "_make_layout",
                        lambda self, *args: made.append(1) or original(self, *args))
    reducer = DeviceActivationReducer(0.01, 8)
    for batch in (32, 20, 32, 20, 32, 7, 20):
        reducer.rows([PendingDeviceActivation(torch.randn(batch * 5), (batch, 5), (-4.0, 4.0), None, True)])
    assert len(made) == 3
