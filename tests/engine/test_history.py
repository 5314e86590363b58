"""History: bounded memory, exact bucket statistics, persistence and thread safety."""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest

from engine.history import History
from engine.snapshot import STAT_NAMES, SeriesData


def rss_bytes() -> int:
    """Resident set size of this process now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def point_rows(steps: np.ndarray, centres: np.ndarray, first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ranges behind consecutive points that tile ``steps`` from ``first_row`` on.

    A point's centre is (first step + last step) / 2, so its last row follows from its first;
    the next point starts on the row after. Asserts the centres really do tile the rows.
    """
    firsts = np.empty(centres.shape[0], dtype=np.int64)
    lasts = np.empty_like(firsts)
    row = first_row
    for i, centre in enumerate(centres):
        target = 2 * centre - steps[row]
        last = int(np.searchsorted(steps, target))
        assert last < steps.shape[0] and steps[last] == target, f"point {i} does not end on a step"
        firsts[i], lasts[i] = row, last
        row = last + 1
    return firsts, lasts


def reference_stats(values: np.ndarray, firsts: np.ndarray, lasts: np.ndarray):
    """min/mean/max ignoring NaN over rows firsts[i]..lasts[i], computed with plain numpy."""
    lo = np.array([np.nan if np.isnan(v).all() else np.nanmin(v) for v in _slices(values, firsts, lasts)])
    hi = np.array([np.nan if np.isnan(v).all() else np.nanmax(v) for v in _slices(values, firsts, lasts)])
    mean = np.array(
        [np.nan if np.isnan(v).all() else np.nanmean(v.astype(np.float64)) for v in _slices(values, firsts, lasts)]
    )
    return lo, mean, hi


def _slices(values, firsts, lasts):
    return [values[a : b + 1] for a, b in zip(firsts, lasts)]


def reference_stats_fast(values: np.ndarray, firsts: np.ndarray):
    """Vectorised version of reference_stats for long runs (ranges tile values from firsts[0])."""
    values = values[firsts[0] :]
    starts = firsts - firsts[0]
    missing = np.isnan(values)
    counts = np.add.reduceat((~missing).astype(np.int64), starts)
    sums = np.add.reduceat(np.where(missing, 0.0, values.astype(np.float64)), starts)
    mean = np.full(counts.shape, np.nan)
    np.divide(sums, counts, out=mean, where=counts > 0)
    return np.fmin.reduceat(values, starts), mean, np.fmax.reduceat(values, starts)


def assert_matches(series: SeriesData, steps: np.ndarray, values: np.ndarray, first_row: int = 0) -> None:
    firsts, lasts = point_rows(steps, series.steps, first_row)
    with np.errstate(invalid="ignore"):  # inf - inf in the reference is NaN, as it should be
        lo, mean, hi = reference_stats(values, firsts, lasts)
    np.testing.assert_array_equal(series.lo, lo)
    np.testing.assert_array_equal(series.hi, hi)
    np.testing.assert_allclose(series.values, mean, rtol=2e-6, atol=1e-7)


@pytest.fixture
def small_run():
    """1000 steps with gaps, two columns, NaN scattered and a long all-NaN stretch."""
    rng = np.random.default_rng(7)
    steps = np.cumsum(rng.integers(1, 6, size=1000))
    values = rng.normal(size=(1000, 2)).astype(np.float32)
    values[::7, 1] = np.nan
    values[100:300, 1] = np.nan
    history = History(["a", "b"], raw_window=8, factor=4, tier_capacity=8)
    for step, row in zip(steps, values):
        history.append(int(step), row)
    return history, steps, values


# ------------------------------------------------------------------------------------- (a) scale


def test_million_steps_stay_bounded_and_exact():
    columns = ["loss"] + [f"{stat}/layers.{i}" for i in range(100) for stat in STAT_NAMES]
    n_steps, chunk = 1_000_000, 4096
    rng = np.random.default_rng(0)
    block = rng.normal(1.0, 0.5, size=(chunk, len(columns))).astype(np.float32)
    # A statistic that never applies (dead units of layers that are not ReLUs): NaN throughout.
    block[:, 1 + STAT_NAMES.index("dead_fraction") :: len(STAT_NAMES)] = np.nan
    all_steps = np.arange(n_steps, dtype=np.int64)
    loss = (2.0 + np.exp(-all_steps / 2e5) + 0.3 * np.sin(all_steps / 5000.0)).astype(np.float32)
    loss += rng.normal(0, 0.05, n_steps).astype(np.float32)
    loss[::1009] = np.nan

    history = History(columns)
    rss_before = rss_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for start in range(0, n_steps, chunk):
            k = min(chunk, n_steps - start)
            block[:k, 0] = loss[start : start + k]
            history.append_many(all_steps[start : start + k], block[:k])
        rss_growth = rss_bytes() - rss_before
        series = history.series("loss")
        dead = history.series(f"dead_fraction/layers.{3}")
        layer = history.series(f"grad_norm/layers.{42}")

    assert len(history) == n_steps and history.latest_step == n_steps - 1
    assert history.nbytes() < 256 * 2**20, history.nbytes()
    assert rss_growth < 256 * 2**20, rss_growth
    assert 100 < len(series.steps) <= 2000
    # The newest point is the newest step, untouched.
    assert series.steps[-1] == n_steps - 1
    assert series.values[-1] == loss[-1] and series.lo[-1] == series.hi[-1] == loss[-1]
    assert history.last("loss") == loss[-1]

    firsts, lasts = point_rows(all_steps, series.steps, 0)
    assert lasts[-1] == n_steps - 1
    lo, mean, hi = reference_stats_fast(loss, firsts)
    np.testing.assert_array_equal(series.lo, lo)
    np.testing.assert_array_equal(series.hi, hi)
    np.testing.assert_allclose(series.values, mean, rtol=1e-6)

    col = 1 + 42 * len(STAT_NAMES) + STAT_NAMES.index("grad_norm")
    layer_values = block[all_steps % chunk, col]  # the block repeats every chunk steps
    firsts, _ = point_rows(all_steps, layer.steps, 0)
    lo, mean, hi = reference_stats_fast(layer_values, firsts)
    np.testing.assert_array_equal(layer.lo, lo)
    np.testing.assert_array_equal(layer.hi, hi)
    np.testing.assert_allclose(layer.values, mean, rtol=1e-6)

    assert np.isnan(dead.values).all() and np.isnan(dead.lo).all() and np.isnan(dead.hi).all()


# ------------------------------------------------------------------------------------- (b) exact


def test_every_bucket_matches_numpy(small_run):
    history, steps, values = small_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN buckets must not warn
        for col, name in enumerate(history.columns):
            series = history.series(name, max_points=None)
            assert_matches(series, steps, values[:, col])
            # Full resolution for at least the newest raw_window steps.
            np.testing.assert_array_equal(series.steps[-8:], steps[-8:])
            np.testing.assert_array_equal(series.values[-8:], values[-8:, col])
    assert np.isnan(history.series("b", max_points=None).values).any()  # the all-NaN stretch


def test_buckets_are_powers_of_factor_and_memory_is_logarithmic(small_run):
    history, steps, _ = small_run
    series = history.series("a", max_points=None)
    firsts, lasts = point_rows(steps, series.steps, 0)
    widths = lasts - firsts + 1
    assert set(np.unique(widths)) <= {1, 4, 16, 64, 256, 1024}
    assert np.all(np.diff(widths) <= 0), "older points must never be finer than newer ones"
    assert len(series.steps) < 120  # 1000 steps in a handful of small tiers


def test_append_many_equals_append(small_run):
    history, steps, values = small_run
    batched = History(["a", "b"], raw_window=8, factor=4, tier_capacity=8)
    for part in np.array_split(np.arange(1000), [3, 50, 51, 700]):
        batched.append_many(steps[part], values[part])
    mine, theirs = history.to_arrays(), batched.to_arrays()
    assert mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)


@pytest.mark.parametrize("max_points", [1, 2, 3, 10, 37])
def test_max_points_respected_and_exact(small_run, max_points):
    history, steps, values = small_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for col, name in enumerate(history.columns):
            series = history.series(name, max_points=max_points)
            assert 1 <= len(series.steps) <= max_points
            assert series.steps[-1] == steps[-1]  # newest point kept as it is
            np.testing.assert_array_equal(series.values[-1], values[-1, col])
            first_row = 999 if max_points == 1 else 0
            assert_matches(series, steps, values[:, col], first_row)


def test_series_window(small_run):
    history, steps, values = small_run
    full = history.series("a", max_points=None)
    firsts, lasts = point_rows(steps, full.steps, 0)
    for start, stop in [(None, 400.0), (1000.0, 2000.0), (steps[-5], None), (steps[-30], steps[-3])]:
        part = history.series("a", max_points=None, start=start, stop=stop)
        keep = np.ones(full.steps.shape, dtype=bool)
        if start is not None:
            keep &= steps[lasts] >= start
        if stop is not None:
            keep &= steps[firsts] <= stop
        np.testing.assert_array_equal(part.steps, full.steps[keep])
        np.testing.assert_array_equal(part.values, full.values[keep])
        # Decimating the window keeps its own newest point and stays exact.
        small = history.series("a", max_points=5, start=start, stop=stop)
        assert len(small.steps) <= 5 and small.steps[-1] == part.steps[-1]
        assert_matches(small, steps, values[:, 0], int(firsts[keep][0]))
    window = history.series("a", max_points=None, start=steps[-6], stop=steps[-2])
    np.testing.assert_array_equal(window.values, values[-6:-1, 0])  # raw: exact values


def test_matrix_shares_one_step_axis(small_run):
    history, steps, values = small_run
    for max_points in (5, 512):
        axis, grid = history.matrix(["b", "a"], max_points=max_points)
        assert grid.shape == (2, axis.shape[0]) and axis.shape[0] <= max_points
        firsts, lasts = point_rows(steps, axis, 0)
        _, mean_b, _ = reference_stats(values[:, 1], firsts, lasts)
        _, mean_a, _ = reference_stats(values[:, 0], firsts, lasts)
        np.testing.assert_allclose(grid[0], mean_b, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(grid[1], mean_a, rtol=2e-6, atol=1e-7)
    with pytest.raises(KeyError, match="nope"):
        history.matrix(["a", "nope"])


def test_inf_values_do_not_warn():
    history = History(["x"], raw_window=4, factor=2, tier_capacity=4)
    values = np.array([np.inf, -np.inf, 1.0, np.nan, 1e39, 2.0] * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, value in enumerate(values):
            history.append(step, np.array([value]))
        series = history.series("x", max_points=None)
        history.series("x", max_points=3)
    with np.errstate(over="ignore"):
        stored = values.astype(np.float32)  # 1e39 overflows float32 to inf, as History stores it
    assert_matches(series, np.arange(values.size), stored)


def test_monotonic_steps_shapes_and_unknown_columns():
    history = History(["loss", "acc"])
    assert len(history) == 0 and history.latest_step is None and np.isnan(history.last("loss"))
    empty = history.series("loss")
    assert empty.steps.shape == empty.values.shape == (0,)
    history.append(5, np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="increase"):
        history.append(5, np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="increase"):
        history.append_many(np.array([6, 8, 7]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="increase"):
        history.append_many(np.array([4, 9]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        history.append(6, np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        history.append_many(np.array([6, 7]), np.zeros((2, 3)))
    with pytest.raises(KeyError, match="'los'"):
        history.series("los")
    with pytest.raises(KeyError, match="'x'"):
        history.last("x")
    with pytest.raises(ValueError, match="duplicate"):
        History(["a", "a"])
    history.append_many(np.array([6, 9]), np.array([[2.0, np.nan], [3.0, 0.25]]))
    assert len(history) == 3 and history.latest_step == 9
    assert history.last("loss") == 3.0 and history.last("acc") == 0.25
    series = history.series("acc")
    np.testing.assert_array_equal(series.steps, [5.0, 6.0, 9.0])
    np.testing.assert_array_equal(series.values, [0.5, np.nan, 0.25])


# ------------------------------------------------------------------------------------- (c) persistence


def test_round_trip_is_exact(small_run):
    history, steps, values = small_run
    arrays = history.to_arrays()
    rebuilt = History.from_arrays(arrays)
    assert rebuilt.columns == history.columns
    assert len(rebuilt) == len(history) and rebuilt.latest_step == history.latest_step
    for name in history.columns:
        for max_points in (None, 20):
            a, b = history.series(name, max_points), rebuilt.series(name, max_points)
            for field in ("steps", "values", "lo", "hi"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # Both go on identically: the rebuild is the same structure, not just the same picture.
    more_steps = steps[-1] + np.arange(1, 301)
    more = np.random.default_rng(1).normal(size=(300, 2)).astype(np.float32)
    history.append_many(more_steps, more)
    rebuilt.append_many(more_steps, more)
    for key, value in history.to_arrays().items():
        np.testing.assert_array_equal(rebuilt.to_arrays()[key], value, err_msg=key)
    assert_matches(rebuilt.series("b", None), np.concatenate([steps, more_steps]),
                   np.concatenate([values, more])[:, 1])  # fmt: skip


def test_round_trip_of_empty_history():
    rebuilt = History.from_arrays(History(["x", "y"], raw_window=16).to_arrays())
    assert rebuilt.columns == ("x", "y") and len(rebuilt) == 0 and rebuilt.latest_step is None
    rebuilt.append(0, np.array([1.0, 2.0]))
    assert rebuilt.last("y") == 2.0


def test_from_arrays_rejects_inconsistent_arrays(small_run):
    history, _, _ = small_run
    good = history.to_arrays()
    with pytest.raises(ValueError, match="raw_values"):
        History.from_arrays({k: v for k, v in good.items() if k != "raw_values"})
    bad = dict(good, tier0_mean=good["tier0_mean"][:-1])
    with pytest.raises(ValueError, match="tier 0"):
        History.from_arrays(bad)
    bad = dict(good, raw_steps=good["raw_steps"][::-1].copy())
    with pytest.raises(ValueError, match="increasing"):
        History.from_arrays(bad)
    params = good["params"].copy()
    params[4] += 1
    with pytest.raises(ValueError, match="steps"):
        History.from_arrays(dict(good, params=params))
    for position, value in ((1, 1 << 40), (2, 1), (3, 1 << 40)):  # window, factor, tier capacity
        params = good["params"].copy()
        params[position] = value  # would reserve terabytes, or fold by nothing
        with pytest.raises(ValueError, match="sizes out of range"):
            History.from_arrays(dict(good, params=params))


# ------------------------------------------------------------------------------------- (d) threads


def test_reader_and_writer_threads():
    columns = ["loss"] + [f"grad_norm/l{i}" for i in range(30)]
    history = History(columns, raw_window=64, factor=4, tier_capacity=32)
    n_steps = 20_000
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]
    reads_while_writing = [0]

    def write() -> None:
        try:
            rng = np.random.default_rng(3)
            step = 0
            while step < n_steps:
                if step % 1000 < 500:
                    history.append(step, rng.normal(size=len(columns)))
                    step += 1
                else:
                    k = 50
                    history.append_many(np.arange(step, step + k), rng.normal(size=(k, len(columns))))
                    step += k
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set() or reads[0] < 5:
                before = len(history)
                series = history.series("loss", max_points=200)
                n = len(series.steps)
                assert series.values.shape == series.lo.shape == series.hi.shape == (n,)
                assert n <= 200 and np.all(np.diff(series.steps) > 0)
                finite = ~np.isnan(series.values)
                assert np.all(series.lo[finite] <= series.values[finite] + 1e-6)
                assert np.all(series.values[finite] <= series.hi[finite] + 1e-6)
                axis, grid = history.matrix(columns[1:], max_points=64)
                assert grid.shape == (30, axis.shape[0])
                assert len(history) >= before
                reads[0] += 1
                reads_while_writing[0] += not done.is_set()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, name="writer"), threading.Thread(target=read, name="reader")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert reads[0] >= 5 and reads_while_writing[0] >= 2, (reads, reads_while_writing)
    assert len(history) == n_steps and history.latest_step == n_steps - 1


def test_matrix_evenly_spaced_past_the_first_tier():
    """Past 17,408 steps the oldest buckets are 256 steps wide, wider than a 256-column heatmap's
    bins: the plain axis then has gaps, which a heatmap drawn at equal widths misplaces by
    thousands of steps. ``evenly`` puts the columns at equal steps, each with the values of the
    steps it stands on."""
    history = History(["a", "b"])
    short = np.arange(1, 101)
    history.append_many(short, np.stack([short, -2.0 * short], axis=1))
    plain_steps, plain = history.matrix(["a", "b"], max_points=256)
    axis, grid = history.matrix(["a", "b"], max_points=256, evenly=True)
    np.testing.assert_array_equal(axis, plain_steps)  # one column per step: nothing to move
    np.testing.assert_array_equal(grid, plain)

    steps = np.arange(101, 30_001)
    history.append_many(steps, np.stack([steps, -2.0 * steps], axis=1))
    plain_steps, _ = history.matrix(["a", "b"], max_points=256)
    gaps = np.diff(plain_steps)
    assert gaps.max() > 2 * gaps.min()
    axis, grid = history.matrix(["a", "b"], max_points=256, evenly=True)
    assert axis.shape == (256,) and grid.shape == (2, 256)
    np.testing.assert_allclose(np.diff(axis), (axis[-1] - axis[0]) / 255)
    assert axis[0] == plain_steps[0] and axis[-1] == 30_000
    # Column a is the mean step of the bucket it stands in: within half a 256-step bucket.
    assert np.abs(grid[0] - axis).max() <= 128
    np.testing.assert_allclose(grid[1], -2.0 * grid[0])
