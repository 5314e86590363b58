"""The neuron inspector's numbers against autograd and numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models import ModelSpec, build_mlp
from engine.neuron import check_gradient, trace_unit


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mlp(3, 2, ModelSpec(kind="mlp", depth=2, width=5, activation="tanh"))


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("parameter,index", [("layers.0.linear.weight", (2, 1)), ("layers.1.linear.weight", (0, 4)),
                                              ("head.bias", (1,)), ("layers.1.linear.bias", (3,))])
def test_finite_difference_agrees_with_autograd_in_float64(parameter: str, index: tuple) -> None:
    x, y = data()
    check = check_gradient(mlp(), torch.nn.functional.cross_entropy, x, y, parameter, index)
    assert abs(check.autograd) > 1e-6
    assert check.relative_error < 1e-4


def test_trace_writes_out_the_unit_with_live_numbers() -> None:
    model = mlp()
    x, y = data(1)
    trace = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "layers.1.linear", unit=2)
    np.testing.assert_allclose(trace.z, trace.weights @ trace.inputs + trace.bias, rtol=1e-5)
    np.testing.assert_allclose(trace.output, np.tanh(trace.z), rtol=1e-5)
    assert trace.activation == "Tanh"
    # with one example, dL/dw of the unit's row is exactly delta * a
    reference = model
    reference.zero_grad()
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    np.testing.assert_allclose(trace.weight_grads, reference.layers[1].linear.weight.grad[2].double().numpy(),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(trace.bias_grad, float(reference.layers[1].linear.bias.grad[2]), rtol=1e-5)
    assert "z = Σ wᵢaᵢ + b" in trace.forward_text() and "δ = ∂L/∂z" in trace.backward_text()


def test_trace_leaves_the_model_untouched() -> None:
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data()
    trace_unit(model, torch.nn.functional.cross_entropy, x, y, "layers.0.linear", unit=0, example=3)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="not a Linear layer"):
        trace_unit(model, torch.nn.functional.cross_entropy, x, y, "layers.0.act", unit=0)
