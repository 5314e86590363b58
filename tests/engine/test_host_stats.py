"""The CPU probe's numpy statistics against direct float64 computations (the frozen-parameter and
in-place cases also through the device path's PyTorch reductions)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine import host_stats
from engine.host_stats import (
    BATCHED_MAX,
    ActivationReducer,
    ChangeMeter,
    PendingActivation,
    group_rows,
    host_array,
    sums_of_squares,
)
from engine.probe import Probe, ProbeConfig
from engine.snapshot import STAT_INDEX
from engine.stats import HIST_SAMPLE

BINS = 12
MARGIN = 0.01


@np.errstate(invalid="ignore", over="ignore")
def expected_row(x: np.ndarray, hist_range: tuple[float, float], bounds: tuple[float, float] | None,
                 relu: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var, min, max, NaN, Inf, dead, saturated) and the histogram of the strided sample."""
    a = x.astype(np.float64)
    flat = a.reshape(-1)
    finite = flat[np.isfinite(flat)]
    dead = 0.0
    if relu:
        per_unit = np.moveaxis(a, 1 if a.ndim == 4 else -1, 0).reshape(a.shape[1 if a.ndim == 4 else -1], -1)
        dead = float((per_unit <= 0).all(axis=1).sum())
    saturated = 0.0 if bounds is None else float(((flat < bounds[0] + MARGIN) | (flat > bounds[1] - MARGIN)).sum())
    stats = np.array([flat.mean(), flat.var(), flat.min(), flat.max(), np.isnan(flat).sum(),
                      np.isinf(flat).sum(), dead, saturated])
    if finite.size < flat.size:
        stats[:4] = (np.nan, np.nan, np.nan, np.nan)
    sample = flat[::-(-flat.size // HIST_SAMPLE)]
    sample = sample[~np.isnan(sample)]
    hist = np.histogram(np.clip(sample, *hist_range), bins=BINS, range=hist_range)[0]
    return stats, hist


def cases() -> list[tuple[np.ndarray, tuple[float, float], tuple[float, float] | None, bool]]:
    rng = np.random.default_rng(0)
    relu2d = np.maximum(rng.standard_normal((40, 9)), 0).astype(np.float32)
    relu2d[:, [2, 5]] = 0  # two dead units
    relu4d = np.maximum(rng.standard_normal((3, 5, 4, 4)), 0).astype(np.float32)
    relu4d[:, 1] = 0
    saturated = (1 / (1 + np.exp(-6 * rng.standard_normal((30, 7))))).astype(np.float32)
    offset = (1000 + 0.01 * rng.standard_normal((50, 20))).astype(np.float32)  # mean dwarfs spread
    seq = rng.standard_normal((4, 6, 5)).astype(np.float32) * 6  # outliers beyond the range
    return [(relu2d, (-4.0, 4.0), None, True), (relu4d, (-4.0, 4.0), None, True),
            (saturated, (0.0, 1.0), (0.0, 1.0), False), (offset, (-4.0, 4.0), None, False),
            (seq, (-4.0, 4.0), None, False)]


def test_batched_rows_match_direct_computation() -> None:
    items = [PendingActivation(x.reshape(-1).copy(), x.shape, r, b, relu) for x, r, b, relu in cases()]
    reducer = ActivationReducer(MARGIN, BINS)
    for _ in range(2):  # the second call reuses the cached per-element arrays
        rows = reducer.rows(items)
        for row, (x, r, b, relu) in zip(rows, cases()):
            stats, hist = expected_row(x, r, b, relu)
            np.testing.assert_allclose(row[:8], stats, rtol=1e-6, atol=1e-9)
            np.testing.assert_array_equal(row[8:], hist)
    rows = reducer.rows(items[:2])  # another arrangement: new per-element arrays
    np.testing.assert_allclose(rows[1, :8], expected_row(*cases()[1])[0], rtol=1e-6, atol=1e-9)


def test_batched_rows_count_nan_and_inf_and_drop_them_from_histograms() -> None:
    x = np.linspace(-2, 2, 30, dtype=np.float32).reshape(6, 5)
    x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    clean = np.ones((4, 3), np.float32)
    rows = ActivationReducer(MARGIN, BINS).rows([PendingActivation(x.reshape(-1), x.shape, (-4.0, 4.0), None, False),
                                                 PendingActivation(clean.reshape(-1), clean.shape, (-4.0, 4.0), None,
                                                                   False)])
    assert tuple(rows[0, 4:6]) == (1, 2)
    assert rows[0, 8:].sum() == 29  # Inf clamped into the edge bins, NaN dropped
    np.testing.assert_array_equal(rows[0, 8:], expected_row(x, (-4.0, 4.0), None, False)[1])
    assert tuple(rows[1, :6]) == (1, 0, 1, 1, 0, 0)


@pytest.mark.parametrize("kind", ["relu4d", "saturated", "offset", "nan"])
def test_big_output_row_matches_direct_computation(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    bounds, relu, hist_range = None, False, (-4.0, 4.0)
    if kind == "relu4d":
        x = torch.relu(torch.randn(16, 6, 12, 12, generator=g))
        x[:, 2] = 0
        relu = True
    elif kind == "saturated":  # mean far above the spread: the exact two-pass variance
        x = torch.sigmoid(4 + 0.5 * torch.randn(64, 300, generator=g))
        bounds = hist_range = (0.0, 1.0)
    elif kind == "offset":
        x = 50 + torch.randn(90, 200, generator=g)
    else:
        x = torch.randn(90, 200, generator=g)
        x[3, 4], x[5, 6] = float("nan"), float("inf")
    assert x.numel() > BATCHED_MAX
    reducer = ActivationReducer(MARGIN, BINS)
    row, sampled = reducer.row_now(x, hist_range, bounds, relu)
    stats, hist = expected_row(x.numpy(), hist_range, bounds, relu)
    np.testing.assert_allclose(row[:8], stats, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(row[8:], hist)
    assert sampled == x.reshape(-1)[::-(-x.numel() // HIST_SAMPLE)].numel() <= HIST_SAMPLE


@pytest.mark.parametrize("joined", [True, False], ids=["joined", "in-place"])
def test_group_rows_and_change_meter_against_numpy(joined: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not joined:  # every group too big to join: reduced where it lies
        monkeypatch.setattr(host_stats, "JOIN_MAX", 0)
    rng = np.random.default_rng(2)
    groups = [[], [rng.standard_normal(50).astype(np.float32), np.zeros(0, np.float32),
                   rng.standard_normal(7).astype(np.float32)],
              [], [(3 + rng.standard_normal(400)).astype(np.float32)], []]
    rows = group_rows(groups)
    for row, arrays in zip(rows, groups):
        if not arrays:
            assert np.isnan(row[:3]).all() and tuple(row[3:]) == (0, 0)
            continue
        a = np.concatenate(arrays).astype(np.float64)
        np.testing.assert_allclose(row, [np.linalg.norm(a), a.mean(), a.var(), 0, 0], rtol=1e-5, atol=1e-9)
    bad = [[np.array([2.0, 1.0], np.float32)], [np.array([1.0, np.nan, np.inf, -np.inf], np.float32)]]
    assert group_rows(bad)[:, 3:].tolist() == [[0, 0], [1, 2]]

    before = np.concatenate([a for arrays in groups for a in arrays])
    after = [[a + 0.01 * (i + 1) for i, a in enumerate(arrays)] for arrays in groups]
    change = ChangeMeter().rows(after, before)
    for row, now, then in zip(change, after, groups):
        delta = np.concatenate([n.astype(np.float64) - t for n, t in zip(now, then)]) if now else np.zeros(0)
        base = np.concatenate(then).astype(np.float64) if then else np.zeros(0)
        np.testing.assert_allclose(row, [(delta ** 2).sum(), (base ** 2).sum()], rtol=1e-4)


def test_sums_of_squares_against_numpy() -> None:
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(300).astype(np.float32), np.zeros(0, np.float32),
              (100 + rng.standard_normal(7)).astype(np.float32), np.array([np.inf, 1.0], np.float32)]
    expected = [float((a.astype(np.float64) ** 2).sum()) for a in arrays]
    np.testing.assert_allclose(sums_of_squares(arrays), expected, rtol=1e-12)


def test_host_array_is_a_view_for_float32_and_a_copy_otherwise() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    view = host_array(t)
    t[0, 0] = 7
    assert view[0] == 7 and view.shape == (6,)
    half = host_array(t.to(torch.bfloat16))
    assert half.dtype == np.float32 and half[0] == 7


@pytest.mark.parametrize("host_statistics", [True, False], ids=["numpy", "torch"])
def test_frozen_parameters_have_no_gradient_figures_and_no_nan_count(host_statistics: bool) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    probe = Probe(model, ProbeConfig(host_statistics=host_statistics))
    with probe:
        probe.begin_step(True)
        model(torch.randn(5, 3)).sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    frozen, trained = capture.frame.values[0], capture.frame.values[2]
    assert np.isnan(frozen[STAT_INDEX["grad_norm"]]) and frozen[STAT_INDEX["nan_grads"]] == 0
    assert np.isfinite(frozen[STAT_INDEX["weight_norm"]])
    np.testing.assert_allclose(trained[STAT_INDEX["grad_norm"]],
                               torch.cat([p.grad.reshape(-1) for p in model[2].parameters()]).norm().item(),
                               rtol=1e-6)


@pytest.mark.parametrize("host_statistics", [True, False], ids=["numpy", "torch"])
def test_output_changed_in_place_afterwards_is_measured_as_it_was(host_statistics: bool) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(20, 4)
    pre_relu = (x @ model[0].weight.T + model[0].bias).detach().double().numpy()
    probe = Probe(model, ProbeConfig(host_statistics=host_statistics))
    with probe:
        probe.begin_step(True)
        model(x).sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    row = capture.frame.values[capture.frame.layer_names.index("0")]
    assert pre_relu.min() < 0
    np.testing.assert_allclose(row[STAT_INDEX["act_min"]], pre_relu.min(), rtol=1e-5)
    np.testing.assert_allclose(row[STAT_INDEX["act_mean"]], pre_relu.mean(), rtol=1e-5)


def _captured_sgd_steps(model: nn.Module, x: torch.Tensor, config: ProbeConfig, lr: float, steps: int):
    """Captured SGD steps; yields (capture, weights before, weights after) per step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    probe = Probe(model, config)
    with probe:
        for step in range(steps):
            probe.begin_step(True)
            optimizer.zero_grad()
            model(x).square().mean().backward()
            probe.after_backward()
            before = [p.detach().clone() for p in model.parameters()]
            probe.before_update()
            optimizer.step()
            probe.after_update()
            capture = probe.finish(step, torch.zeros(1, 2, dtype=x.dtype)).get()
            yield capture, before, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("host_statistics", [True, False], ids=["numpy", "torch"])
def test_float64_model_keeps_its_precision(host_statistics: bool) -> None:
    """A float64 model's gradients and tiny updates (lr 1e-9) are measured in float64."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    for capture, before, after in _captured_sgd_steps(model, x, ProbeConfig(host_statistics=host_statistics),
                                                      lr=1e-9, steps=2):
        row = capture.frame.values[capture.frame.layer_names.index("0")]
        w0, w1 = before[0].numpy(), after[0].numpy()
        b0, b1 = before[1].numpy(), after[1].numpy()
        expected = np.sqrt(((w1 - w0) ** 2).sum() + ((b1 - b0) ** 2).sum()) / np.sqrt((w0 ** 2).sum() + (b0 ** 2).sum())
        np.testing.assert_allclose(row[STAT_INDEX["update_ratio"]], expected, rtol=1e-6)
        grad = np.concatenate([p.grad.numpy().reshape(-1) for p in model[0].parameters()])
        np.testing.assert_allclose(row[STAT_INDEX["grad_norm"]], np.linalg.norm(grad), rtol=1e-6)


@pytest.mark.parametrize("host_statistics", [True, False], ids=["numpy", "torch"])
def test_non_contiguous_parameters_are_read_afresh_every_capture(host_statistics: bool) -> None:
    """A channels-last conv's weight is no flat view of itself: copies of it can't be kept."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model[0].to(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    x = torch.randn(8, 3, 6, 6)
    for capture, before, after in _captured_sgd_steps(model, x, ProbeConfig(host_statistics=host_statistics),
                                                      lr=0.5, steps=4):
        row = capture.frame.values[capture.frame.layer_names.index("0")]
        weights = torch.cat([p.reshape(-1) for p in before[:2]]).double().numpy()
        np.testing.assert_allclose(row[STAT_INDEX["weight_norm"]], np.linalg.norm(weights), rtol=1e-6)
