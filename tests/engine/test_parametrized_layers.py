"""Layers under torch.nn.utils.parametrizations (weight_norm, spectral_norm) and subclasses of
torch's layers: the probe's figures against autograd and numpy, the Network view's columns, the
Neuron view's written-out unit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from engine.batches import TensorBatches
from engine.neuron import check_gradient, trace_unit
from engine.probe import Probe
from engine.report import main
from engine.run import Run
from engine.snapshot import STAT_INDEX, Hyper
from engine.trainer import Trainer, TrainerConfig
from engine.views import network_view
from tests.engine.test_probe import PATHS, _big_model_limits  # noqa: F401  (the paths' limits: an autouse fixture)

NORMS = {"weight_norm": weight_norm, "spectral_norm": spectral_norm}


class MaskedLinear(nn.Linear):
    """A pruning-style Linear: a fixed mask over the weight, applied in a forward of its own."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.register_buffer("mask", (torch.rand(o, i) > 0.3).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class RenamedLinear(nn.Linear):
    """A subclass that keeps nn.Linear's forward."""


def normed_model(norm: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(NORMS[norm](nn.Linear(5, 6)), nn.Tanh(), nn.Linear(6, 3))


def numpy_weight(module: nn.Module) -> np.ndarray:
    """The weight a parametrized Linear's forward computes, made in numpy from its parameters (and
    spectral_norm's power-iteration vectors as they are): g·v/‖v‖ per output row, or W/(uᵀWv)."""
    computing = module.parametrizations.weight
    if hasattr(computing, "original0"):
        g, v = (p.detach().double().numpy() for p in (computing.original0, computing.original1))
        return g * v / np.linalg.norm(v, axis=1, keepdims=True)
    w = computing.original.detach().double().numpy()
    u, v = (t.double().numpy() for t in (computing[0]._u, computing[0]._v))
    return w / (u @ w @ v)


def keep_computed_weights(module: nn.Module) -> tuple[list[torch.Tensor], object]:
    """The weights a parametrized module's forward computes (their gradients retained), as a
    list filled by a hook on its ParametrizationList; and the hook's handle."""
    used: list[torch.Tensor] = []

    def hook(_module, _args, weight):
        if weight.requires_grad:  # (the probe's own computations run without autograd)
            weight.retain_grad()
            used.append(weight)

    return used, module.parametrizations.weight.register_forward_hook(hook)


def flat(*tensors: torch.Tensor) -> np.ndarray:
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in tensors])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("norm", list(NORMS))
def test_a_parametrized_linear_is_one_layer_measured_against_autograd(norm: str, path: str) -> None:
    model = normed_model(norm)
    twin = normed_model(norm)  # the same step without the probe: the probe must move nothing
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    layer = model[0]
    used, handle = keep_computed_weights(layer)
    probe = Probe(model, PATHS[path])
    probe.focus_layer = "0"
    params = list(layer.parametrizations.weight.parameters()) + [layer.bias]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        with probe:
            probe.begin_step(True, tensors=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            probe.after_backward()
            weight_before = numpy_weight(layer)
            bias_before, head_before = flat(layer.bias), flat(*model[2].parameters())
            theta = flat(*params)
            grads = flat(*(p.grad for p in params))
            probe.before_update()
            optimizer.step()
            probe.after_update()
            capture = probe.finish(1, torch.zeros(1, 2)).get()
    finally:
        handle.remove()
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    F.cross_entropy(twin(x), y).backward()
    twin_optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name

    # One layer: no ParametrizationList row; its parameters are its own and its originals.
    info = probe.layers[0]
    assert [i.name for i in probe.layers] == ["0", "1", "2"]
    assert info.type_name == "ParametrizedLinear" and info.kind == "Linear" and info.weight_shape == (6, 5)
    assert info.params == sum(p.numel() for p in params) == (6 + 30 + 6 if norm == "weight_norm" else 30 + 6)
    row = capture.frame.values[0]
    # Weight figures: of the weight the forward computed (numpy from g, v or W, u, v) and the bias.
    (computed,) = used
    np.testing.assert_allclose(computed.detach().double().numpy(), weight_before, rtol=1e-5, atol=1e-7)
    weights = np.concatenate([weight_before.reshape(-1), bias_before])
    np.testing.assert_allclose(row[STAT_INDEX["weight_norm"]], np.linalg.norm(weights), rtol=1e-5)
    np.testing.assert_allclose(row[STAT_INDEX["weight_mean"]], weights.mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(row[STAT_INDEX["weight_std"]], weights.std(), rtol=1e-5)
    # Gradient figures: of all its parameters' gradients (autograd's).
    np.testing.assert_allclose(row[STAT_INDEX["grad_norm"]], np.linalg.norm(grads), rtol=1e-5)
    np.testing.assert_allclose(row[STAT_INDEX["grad_mean"]], grads.mean(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(row[STAT_INDEX["grad_std"]], grads.std(), rtol=1e-5)
    np.testing.assert_allclose(row[STAT_INDEX["update_ratio"]],
                               np.linalg.norm(flat(*params) - theta) / np.linalg.norm(theta), rtol=1e-4)
    assert row[STAT_INDEX["nan_weights"]] == 0 == row[STAT_INDEX["nan_grads"]]
    # The plain Linear after it keeps the figures of its own parameters.
    np.testing.assert_allclose(capture.frame.values[2, STAT_INDEX["weight_norm"]], np.linalg.norm(head_before),
                               rtol=1e-5)
    # Views: the computed weight, its gradient dL/dW, its change over the update.
    views = capture.tensors
    np.testing.assert_allclose(views.weight, weight_before, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(capture.graph_weights["0"], weight_before, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(views.weight_grad, computed.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(views.weight_update, numpy_weight(layer) - weight_before, rtol=1e-4, atol=1e-7)
    assert np.abs(views.weight_update).max() > 0


@pytest.mark.parametrize("norm", list(NORMS))
def test_a_parametrized_layers_parts_are_no_phases_and_its_originals_come_with_its_backward(norm: str) -> None:
    model = normed_model(norm)
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    trainer = Trainer(model, F.cross_entropy, TensorBatches(x, y), config=TrainerConfig(val_every=0))
    trainer.probe.focus_layer = "0"
    computing = model[0].parametrizations.weight
    originals = [(f"parametrizations.weight.{n}", p.detach().clone()) for n, p in computing.named_parameters()]
    try:
        phases = []
        while not phases or phases[-1].kind != "update":
            phases.append(trainer.next_phase())
    finally:
        trainer.close()
    # The update: layer "0" is one owner, its originals and bias changed as the optimizer moved them.
    update = phases[-1]
    assert [name for name, *_ in update.changes] == ["0", "2"] and update.module == "0"
    for name, before in originals:
        after = dict((f"parametrizations.weight.{n}", p) for n, p in computing.named_parameters())[name]
        np.testing.assert_allclose(update.tensors[f"\u0394{name}"].reshape(-1),
                                   (after.detach() - before).reshape(-1).numpy(), rtol=1e-5, atol=1e-7)
    assert "\u0394bias" in update.tensors
    assert [(p.kind, p.module) for p in phases if p.kind in ("forward", "backward")] == [
        ("forward", "0"), ("forward", "1"), ("forward", "2"), ("backward", "2"), ("backward", "1"),
        ("backward", "0")]
    backward = next(p for p in phases if p.kind == "backward" and p.module == "0")
    computing = model[0].parametrizations.weight
    for name, p in [*((f"parametrizations.weight.{n}", p) for n, p in computing.named_parameters()),
                    ("bias", model[0].bias)]:
        np.testing.assert_allclose(backward.tensors[f"grad:{name}"].reshape(-1), p.grad.reshape(-1).numpy(),
                                   rtol=1e-6)


def test_the_report_lists_a_parametrized_layer_once_with_all_its_parameters(tmp_path: Path) -> None:
    model_file = tmp_path / "normed.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\nfrom torch.nn.utils.parametrizations import weight_norm, spectral_norm\n"
        "def build():\n"
        "    x = torch.randn(64, 5)\n"
        "    model = nn.Sequential(weight_norm(nn.Linear(5, 6)), nn.ReLU(), spectral_norm(nn.Linear(6, 3)))\n"
        "    return model, (x, x[:, :3]), nn.functional.mse_loss\n")
    out = tmp_path / "report.json"
    assert main(["--model", f"{model_file}:build", "--steps", "3", "--device", "cpu", "--json", str(out)]) == 0
    layers = {layer["name"]: layer for layer in json.loads(out.read_text())["layers"]}
    assert list(layers) == ["0", "1", "2"]
    assert layers["0"]["params"] == 6 + 30 + 6 and layers["2"]["params"] == 18 + 3
    assert layers["0"]["type"] == "ParametrizedLinear" and all(g > 0 for g in layers["0"]["grad_norm"])


def captured_network(model: nn.Module) -> tuple:
    """One captured step on 2-D data; the network view and each Linear's weight as its forward used it."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 2), torch.randint(0, 4, (64,))
    trainer = Trainer(model, F.cross_entropy, TensorBatches(x, y), hyper=Hyper(lr=0.05, batch_size=16),
                      config=TrainerConfig(val_every=0))
    kept = {name: keep_computed_weights(m) for name, m in model.named_modules() if hasattr(m, "parametrizations")}
    plain = {name: m.weight.detach().clone() for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name not in kept}
    try:
        capture = trainer.step(capture=True, tensors=True).capture.get()
        view = network_view(Run(name="test", trainer=trainer), capture)
    finally:
        for _, handle in kept.values():
            handle.remove()
        trainer.close()
    weights = {name: used[0].detach().numpy() for name, (used, _) in kept.items()}
    return view, {**weights, **{name: w.numpy() for name, w in plain.items()}}


def test_subclasses_and_parametrized_layers_are_network_columns() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(2, 8), nn.ReLU(), weight_norm(nn.Linear(8, 8)), nn.Tanh(),
                          spectral_norm(nn.Linear(8, 8)), nn.ReLU(), RenamedLinear(8, 4))
    view, weights = captured_network(model)
    assert view.column_names == ("input", "0", "2", "4", "6")
    assert view.column_sizes == (2, 8, 8, 8, 4)
    assert view.connected == (True,) * 4 and view.note == ""
    for i, name in enumerate(("0", "2", "4", "6")):
        np.testing.assert_allclose(view.weights[i], weights[name], rtol=1e-6, atol=1e-8)


def test_a_linear_subclass_computing_something_else_is_not_written_out() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(3, 6), nn.ReLU(inplace=True), RenamedLinear(6, 4), nn.ReLU(inplace=True),
                          nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="differs from F.linear"):
        trace_unit(model, F.cross_entropy, x, y, "0", unit=1)
    # A subclass keeping Linear's forward is written out (an in-place ReLU after it changes nothing).
    trace = trace_unit(model, F.cross_entropy, x, y, "2", unit=3, example=5)
    hidden = model[1](model[0](x)).detach()
    z = hidden[5] @ model[2].weight[3].detach() + model[2].bias[3].detach()
    np.testing.assert_allclose(trace.z, float(z), rtol=1e-5)
    np.testing.assert_allclose(trace.z, trace.weights @ trace.inputs + trace.bias, rtol=1e-5)


@pytest.mark.parametrize("norm", list(NORMS))
def test_a_parametrized_linear_is_written_out_with_its_computed_weight(norm: str) -> None:
    model = normed_model(norm)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    state = {name: t.clone() for name, t in model.state_dict().items()}
    trace = trace_unit(model, F.cross_entropy, x, y, "0", unit=4, example=2)
    # The weight its forward computes (spectral_norm's sigma from its vectors as they are).
    weight = numpy_weight(model[0])
    assert trace.computed_weight
    np.testing.assert_allclose(trace.weights, weight[4], rtol=1e-5)
    z = weight[4] @ x[2].double().numpy() + float(model[0].bias.detach()[4])
    np.testing.assert_allclose(trace.z, z, rtol=1e-5)
    np.testing.assert_allclose(trace.z, trace.weights @ trace.inputs + trace.bias, rtol=1e-5)
    # Its whole batch's gradient is dL/dW of the computed weight, which the check measures too.
    used, handle = keep_computed_weights(model[0])
    for m in model[0].parametrizations.modules():  # (spectral_norm's vectors as they are)
        m.training = False
    F.cross_entropy(model(x), y).backward()
    handle.remove()
    np.testing.assert_allclose(trace.batch_weight_grads, used[0].grad[4].double().numpy(), rtol=1e-4, atol=1e-9)
    assert "update moves the parameters w is computed from" in trace.batch_text()
    check = check_gradient(model, F.cross_entropy, x, y, "0.weight", (4, 1))
    assert check.relative_error < 1e-4 and abs(check.autograd) > 1e-6
    np.testing.assert_allclose(check.autograd, trace.batch_weight_grads[1], rtol=1e-4)
    # The model is as it was (the copy's changes stay in the copy): its weight still computes.
    model.zero_grad(set_to_none=True)
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
    assert model[0].weight.shape == (6, 5)
