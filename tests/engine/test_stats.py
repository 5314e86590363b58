"""The probe's cheap reductions against numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.capture_parse import nonfinite_bounds
from engine.stats import (
    HIST_SAMPLE,
    dead_units,
    histogram,
    moments,
    nonfinite_counts,
    unit_count,
    unit_dims,
    unit_extremes,
)


def test_moments_exact_when_mean_dwarfs_spread() -> None:
    g = torch.Generator().manual_seed(0)
    x = 1000.0 + 0.01 * torch.randn(100_000, generator=g)
    mean, var = moments(x)
    ref = x.double().numpy()
    np.testing.assert_allclose(mean.item(), ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(var.item()), ref.std(), rtol=1e-3)


nan, inf = float("nan"), float("inf")


@pytest.mark.parametrize("values", [[1.0, -2.0, 3.0], [1.0, nan, 3.0, inf], [inf, 2.0, inf], [-inf, 0.0, inf, inf],
                                    [nan, nan], [-inf, -inf], [inf], [-inf], [nan]])
def test_nonfinite_bounds_from_min_and_max(values: list[float]) -> None:
    """What the device's min and max tell the host of uncounted NaN and Inf: exact (0, 0) when
    finite, never over, and never 0 where there is any."""
    low, high = torch.aminmax(torch.tensor(values))
    nan_count, inf_count = nonfinite_bounds(low.item(), high.item())
    a = np.array(values)
    exact = np.isnan(a).sum(), np.isinf(a).sum()
    assert nan_count <= exact[0] and inf_count <= exact[1]
    assert (nan_count + inf_count > 0) == (sum(exact) > 0)
    if not exact[0]:  # (no NaN: both ends known; one infinite end or two)
        assert inf_count == len({v for v in values if np.isinf(v)})


def test_nonfinite_counts() -> None:
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), float("nan"), 2.0])
    mean, _ = moments(x)
    nan, inf = nonfinite_counts(x, mean)
    assert (nan.item(), inf.item()) == (2, 2)
    clean = torch.ones(10)
    assert [t.item() for t in nonfinite_counts(clean, moments(clean)[0])] == [0, 0]


@pytest.mark.parametrize("shape", [(7,), (16, 10), (4, 7, 10), (8, 6, 5, 5), (3, 4, 5)])
@pytest.mark.parametrize("poison", ["none", "nan", "inf"])
def test_unit_extremes_against_numpy(shape: tuple[int, ...], poison: str) -> None:
    """One pass's min, max and units' maxima: numpy's, with NaN propagated as amax does."""
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g)
    if poison != "none":
        x.view(-1)[5] = float(poison)
    x = x.transpose(0, 1) if len(shape) == 3 and shape[0] == 3 else x  # (one not contiguous)
    low, high, units = unit_extremes(x)
    a = x.numpy()
    np.testing.assert_array_equal([low.item(), high.item()], [a.min(), a.max()])
    axes = tuple(unit_dims(x)) if x.dim() > 1 else ()
    np.testing.assert_array_equal(units.numpy(), a.max(axis=axes) if axes else a)
    assert dead_units(x).item() == (units <= 0).sum().item()


def test_dead_units_per_layout() -> None:
    g = torch.Generator().manual_seed(1)
    for shape in [(16, 10), (4, 7, 10), (8, 6, 5, 5)]:
        x = torch.relu(torch.randn(*shape, generator=g))
        units = 10 if len(shape) < 4 else 6
        kill = [1, 3] if len(shape) < 4 else [0, 4]
        if len(shape) == 4:
            x[:, kill] = 0
        else:
            x[..., kill] = 0
        a = x.numpy()
        per_unit = np.moveaxis(a, 1 if a.ndim == 4 else -1, 0).reshape(units, -1)
        assert unit_count(x.shape) == units
        assert dead_units(x).item() == (per_unit <= 0).all(axis=1).sum() == 2


def test_histogram_of_big_tensor_uses_strided_sample() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3 * HIST_SAMPLE + 5, generator=g) * 3
    x[7] = float("nan")
    counts, sampled = histogram(x, -4.0, 4.0, 20)
    stride = -(-x.numel() // HIST_SAMPLE)
    sample = x[::stride].numpy()
    assert sampled == sample.size <= HIST_SAMPLE
    finite = sample[np.isfinite(sample)]
    ref = np.histogram(np.clip(finite, -4, 4), bins=20, range=(-4, 4))[0]
    np.testing.assert_array_equal(counts.numpy(), ref)
