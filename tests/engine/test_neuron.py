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


def test_a_linear_along_a_sequence_is_written_out_at_its_first_position() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x = torch.randn(2, 5, 4)  # (batch, positions, features)
    y = torch.randint(0, 3, (2, 5))

    def loss_fn(out, target):
        return torch.nn.functional.cross_entropy(out.reshape(-1, 3), target.reshape(-1))

    trace = trace_unit(model, loss_fn, x, y, "0", unit=4, example=1)
    assert trace.position == 0 and trace.inputs.shape == (4,) == trace.weights.shape
    np.testing.assert_allclose(trace.inputs, x[1, 0].double().numpy(), rtol=1e-6)
    z = model[0](x)
    z.retain_grad()
    loss_fn(model[2](model[1](z)), y).backward()
    unit = float(z.detach()[1, 0, 4])
    np.testing.assert_allclose(trace.z, unit, rtol=1e-5)
    np.testing.assert_allclose(trace.output, max(unit, 0.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(trace.delta, float(z.grad[1, 0, 4]), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(trace.weight_grads, (z.grad[1, 0, 4] * x[1, 0]).double().numpy(), rtol=1e-5, atol=1e-9)
