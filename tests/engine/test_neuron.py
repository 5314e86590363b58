"""The neuron inspector's numbers against autograd and numpy."""
from __future__ import annotations

import copy

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
    # the batch's gradient gathers every example's and every position's share
    np.testing.assert_allclose(trace.batch_weight_grads, model[0].weight.grad[4].double().numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(trace.batch_weight_grads, torch.einsum("bp,bpi->i", z.grad[..., 4], x).double().numpy(),
                               rtol=1e-5, atol=1e-9)
    assert trace.reduction == "mean" and "examples and positions added up" in trace.batch_text()


@pytest.mark.parametrize("examples", [3, 5])
def test_a_linear_over_a_time_first_sequence_is_written_out_for_the_chosen_example(examples: int) -> None:
    """A Linear applied to a time-first LSTM's (T, N, H) output: the example is taken along
    dimension 1, where the batch is (along 0 it was time step 1 of every example), also when
    T == N (5 examples of 5 steps), where only the LSTM's batch_first tells the two apart."""

    class TimeFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(4, 6)  # batch_first=False
            self.proj = torch.nn.Linear(6, 6)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            h, _ = self.rnn(x.transpose(0, 1))
            return self.head(torch.relu(self.proj(h)).mean(0))

    torch.manual_seed(0)
    model = TimeFirst()
    x, y = torch.randn(examples, 5, 4), torch.randint(0, 3, (examples,))  # examples of 5 steps
    trace = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "proj", unit=2, example=1)
    h, _ = model.rnn(x.transpose(0, 1))
    z = model.proj(h)
    z.retain_grad()
    torch.nn.functional.cross_entropy(model.head(torch.relu(z).mean(0)), y).backward()
    assert trace.position == 0
    np.testing.assert_allclose(trace.inputs, h[0, 1].double().detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(trace.z, float(z.detach()[0, 1, 2]), rtol=1e-5)
    np.testing.assert_allclose(trace.output, max(float(z.detach()[0, 1, 2]), 0.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(trace.delta, float(z.grad[0, 1, 2]), rtol=1e-5, atol=1e-10)


def test_the_examples_shares_add_up_to_the_batch_gradient_that_autograd_gives() -> None:
    """δ·a written out is one example's share; the batch's ∂L/∂w (what the check measures) is the
    shares of all examples added up, and with a mean loss a share is the example's own gradient ÷ B."""
    model = mlp()
    x, y = data(8)
    for p in model.parameters():  # stale gradients of an earlier step must not leak into the batch's
        p.grad = torch.full_like(p, 5.0)
    loss_fn = torch.nn.functional.cross_entropy
    traces = [trace_unit(model, loss_fn, x, y, "layers.1.linear", unit=2, example=k) for k in range(8)]
    assert all(torch.equal(p.grad, torch.full_like(p, 5.0)) for p in model.parameters())
    reference = mlp()
    loss_fn(reference(x), y).backward()
    batch = reference.layers[1].linear.weight.grad[2].double().numpy()
    np.testing.assert_allclose(sum(t.weight_grads for t in traces), batch, rtol=1e-4, atol=1e-8)
    for k, trace in enumerate(traces):
        assert trace.example == k and trace.batch_size == 8 and trace.reduction == "mean"
        np.testing.assert_allclose(trace.batch_weight_grads, batch, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(trace.batch_bias_grad, float(reference.layers[1].linear.bias.grad[2]),
                                   rtol=1e-5, atol=1e-8)
        alone = mlp()
        loss_fn(alone(x[k:k + 1]), y[k:k + 1]).backward()  # the example's own gradient
        np.testing.assert_allclose(trace.weight_grads * 8, alone.layers[1].linear.weight.grad[2].double().numpy(),
                                   rtol=1e-4, atol=1e-7)
    check = check_gradient(model, loss_fn, x, y, "layers.1.linear.weight", (2, 3))
    np.testing.assert_allclose(traces[0].batch_weight_grads[3], check.autograd, rtol=1e-4)
    assert traces[3].backward_text().startswith("For example 3 of the batch: δ = ∂L/∂z")
    text = traces[3].batch_text()
    assert text.startswith(f"Whole batch (mean over 8 examples): ∂L/∂wᵢ = {batch[0]:.3g}, {batch[1]:.3g}")
    assert "÷ 8" in text


@pytest.mark.parametrize("reduction,expected", [("sum", "sum"), ("weighted", None)])
def test_a_loss_that_is_not_a_mean_is_named_as_measured(reduction: str, expected: str | None) -> None:
    model = mlp()
    x, y = data(6)

    def loss_fn(out, target):
        if reduction == "sum":
            return torch.nn.functional.cross_entropy(out, target, reduction="sum")
        return torch.nn.functional.cross_entropy(out, target, weight=torch.tensor([1.0, 3.0]))

    trace = trace_unit(model, loss_fn, x, y, "layers.0.linear", unit=1, example=2)
    assert trace.reduction == expected
    reference = mlp()
    loss_fn(reference(x), y).backward()
    np.testing.assert_allclose(trace.batch_weight_grads, reference.layers[0].linear.weight.grad[1].double().numpy(),
                               rtol=1e-5, atol=1e-8)
    shares = sum(trace_unit(model, loss_fn, x, y, "layers.0.linear", 1, example=k).weight_grads for k in range(6))
    np.testing.assert_allclose(shares, trace.batch_weight_grads, rtol=1e-4, atol=1e-8)
    named = "sum over 6 examples" if expected else "6 examples"
    assert trace.batch_text().startswith(f"Whole batch ({named})")
    assert "÷" not in trace.batch_text()


class _DefinedOutOfOrder(torch.nn.Module):
    """fc2 is defined before the ReLU but applied after it; fc2's output has no activation module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 6)
        self.fc2 = torch.nn.Linear(6, 2)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


class _FunctionalActivation(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 6)
        self.tanh = torch.nn.Tanh()  # defined next, never applied to fc1's output
        self.fc2 = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_the_activation_is_the_module_that_takes_z_as_the_forward_runs() -> None:
    torch.manual_seed(0)
    x, y = data(8)
    model = _DefinedOutOfOrder()
    first = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "fc1", unit=1)
    z = model.fc1(x).detach()[0, 1]
    assert first.activation == "ReLU"
    np.testing.assert_allclose(first.z, float(z), rtol=1e-5)
    np.testing.assert_allclose(first.output, max(float(z), 0.0), rtol=1e-5, atol=1e-7)
    last = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "fc2", unit=1)
    assert last.activation is None and last.output == last.z  # (it showed fc1's ReLU output as fc2's)
    np.testing.assert_allclose(last.z, float(model(x).detach()[0, 1]), rtol=1e-5)
    assert "no activation module takes z" in last.forward_text()
    functional = trace_unit(_FunctionalActivation(), torch.nn.functional.cross_entropy, x, y, "fc1", unit=0)
    assert functional.activation is None  # not the Tanh defined next to it


def test_a_batch_norm_model_is_recomputed_as_it_trains_and_dropout_draws_alike() -> None:
    """Batch norm on the batch's statistics (the step's), not its running ones; with dropout, the
    trace and both sides of the finite difference see the same masks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2))
    with torch.no_grad():  # running statistics far from the batch's, as early in training
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(9.0)
    x, y = data(16)
    trace = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "3", unit=1)
    reference = copy.deepcopy(model).train()
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    np.testing.assert_allclose(trace.batch_weight_grads, reference[3].weight.grad[1].double().numpy(), rtol=1e-5,
                               atol=1e-8)
    assert model[1].running_mean.eq(3.0).all()  # the model itself untouched
    check = check_gradient(model, torch.nn.functional.cross_entropy, x, y, "3.weight", (1, 2))
    np.testing.assert_allclose(check.autograd, float(reference[3].weight.grad[1, 2]), rtol=1e-5)
    dropped = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)).train()
    check = check_gradient(dropped, torch.nn.functional.cross_entropy, x, y, "0.weight", (3, 1))
    assert abs(check.autograd) > 1e-6 and check.relative_error < 1e-4  # (one function: the same masks)
    traced = trace_unit(dropped, torch.nn.functional.cross_entropy, x, y, "0", unit=3)
    np.testing.assert_allclose(traced.batch_weight_grads[1], check.autograd, rtol=1e-4)


def test_a_batch_norm_the_user_keeps_in_eval_mode_is_recomputed_on_its_running_statistics() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(9.0)
    model[1].eval()  # (the rest trains)
    x, y = data(16)
    trace = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "3", unit=1)
    reference = copy.deepcopy(model)
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    np.testing.assert_allclose(trace.batch_weight_grads, reference[3].weight.grad[1].double().numpy(), rtol=1e-5,
                               atol=1e-8)
    check = check_gradient(model, torch.nn.functional.cross_entropy, x, y, "0.weight", (1, 2))
    np.testing.assert_allclose(check.autograd, float(reference[0].weight.grad[1, 2]), rtol=1e-5)
    assert check.relative_error < 1e-4


@pytest.mark.parametrize("dropout, active", [
    (torch.nn.Dropout(0.5), True), (torch.nn.AlphaDropout(0.5), True), (torch.nn.Dropout(0.0), False),
    (torch.nn.Identity(), False),
])
def test_the_trace_says_when_its_dropout_draw_is_not_the_steps(dropout: torch.nn.Module, active: bool) -> None:
    """With active dropout the trace recomputes on a seeded draw of its own: its batch gradient is
    not the one the training step's own masks gave, and the trace says so; without, it is exact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), dropout, torch.nn.ReLU(), torch.nn.Linear(8, 2)).train()
    x, y = data(16)
    trace = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "3", unit=1)
    step = copy.deepcopy(model)  # a training step's forward and backward, with its own draw
    torch.manual_seed(1234)
    torch.nn.functional.cross_entropy(step(x), y).backward()
    exact = np.allclose(trace.batch_weight_grads, step[3].weight.grad[1].double().numpy(), rtol=1e-5, atol=1e-8)
    modules_draw = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training and 0 < m.p < 1
                       for m in model.modules())
    assert trace.dropout == active == modules_draw == (not exact)
    assert bool(trace.dropout_text()) == active
    if active:
        assert "dropout draw" in trace.dropout_text() and "expectation" in trace.dropout_text()
        assert "The update" not in trace.batch_text()  # (the update used the step's own masks)
        first = trace_unit(model, torch.nn.functional.cross_entropy, x, y, "0", unit=1)
        assert first.activation is None  # a dropout module takes z: it is not z's activation
    else:
        assert trace.batch_text().endswith("The update and the check below use this one.")
    model.eval()  # evaluation mode: no dropout, nothing to say
    assert not trace_unit(model, torch.nn.functional.cross_entropy, x, y, "3", unit=1).dropout
