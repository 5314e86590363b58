"""The gradient w.r.t. the output of a module that returns several tensors (LSTM's (out, (h, c))):
the norm of all their gradients together, on both statistics paths and in phase-by-phase steps."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from engine.batches import TensorBatches
from engine.snapshot import Hyper
from engine.trainer import Trainer, TrainerConfig
from tests.engine.test_probe import PATHS, one_captured_step
from tests.engine.test_trainer import phases_of_a_step

STATISTICS_PATHS = ["numpy", "torch"]  # the host's numpy and the device path's PyTorch (run on the CPU)


class FinalState(nn.Module):
    """An LSTM read through its final hidden state: its sequence output gets no gradient."""

    def __init__(self, use_sequence: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)
        self.use_sequence = use_sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.lstm(x)
        last = h[-1] + out[:, 0] if self.use_sequence else h[-1]  # (the first step's too: both get one)
        return self.fc(last)


class _SideAndMain(torch.autograd.Function):
    """Two outputs of one autograd node, as cuDNN's LSTM makes them: a gradient hook on the unused
    one is called with None when the node runs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, weight)
        return x.sum(-1, keepdim=True), x @ weight.T

    @staticmethod
    def backward(ctx, side_grad: torch.Tensor | None, main_grad: torch.Tensor | None):
        x, weight = ctx.saved_tensors
        x_grad, weight_grad = torch.zeros_like(x), torch.zeros_like(weight)
        if side_grad is not None:
            x_grad = x_grad + side_grad.expand_as(x)
        if main_grad is not None:
            x_grad, weight_grad = x_grad + main_grad @ weight, weight_grad + main_grad.T @ x
        return x_grad, weight_grad


class SideAndMain(nn.Module):
    """Returns (a side output, the output used downstream): made apart, or by one node."""

    def __init__(self, one_node: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4) * 0.5)
        self.gate = nn.Parameter(torch.randn(4, 1))
        self.one_node = one_node

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.one_node:
            return _SideAndMain.apply(x, self.weight)  # (its side output requires grad: the weight does)
        return x @ self.gate, x @ self.weight.T


class UsesSecond(nn.Module):
    def __init__(self, one_node: bool = False, use_side: bool = False) -> None:
        super().__init__()
        self.pair = SideAndMain(one_node)
        self.head = nn.Linear(6, 2)
        self.use_side = use_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side, main = self.pair(x)
        return self.head(torch.tanh(main) * (torch.sigmoid(side) if self.use_side else 1.0))


# name -> (model, input, the measured layer whose output is a tuple)
CASES = {
    "lstm_final_state": (lambda: FinalState(), lambda: torch.randn(5, 7, 3), "lstm"),
    "lstm_final_state_and_sequence": (lambda: FinalState(use_sequence=True), lambda: torch.randn(5, 7, 3), "lstm"),
    "tuple_second_used": (lambda: UsesSecond(), lambda: torch.randn(9, 4), "pair"),
    "tuple_both_used": (lambda: UsesSecond(use_side=True), lambda: torch.randn(9, 4), "pair"),
    "tuple_of_one_node_second_used": (lambda: UsesSecond(one_node=True), lambda: torch.randn(9, 4), "pair"),
}


def keep_outputs(module: nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    """Every tensor the module returns, kept with its gradient retained (the truth's side)."""
    kept: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: tuple, output: object) -> None:
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.retain_grad()
                kept.append(tensor)
    return kept, module.register_forward_hook(hook)


def joint_norm(tensors: list[torch.Tensor]) -> float:
    """The norm of all their gradients taken together; one that got none counts as zeros."""
    return float(sum(t.grad.double().square().sum() for t in tensors if t.grad is not None) ** 0.5)


def grad_output_norm(frame, layer: str) -> float:
    return float(frame.stat("grad_output_norm")[frame.layer_names.index(layer)])


@pytest.mark.parametrize("path", STATISTICS_PATHS)
@pytest.mark.parametrize("name", list(CASES))
def test_the_output_gradient_is_that_of_every_output_together(name: str, path: str) -> None:
    make_model, make_x, layer = CASES[name]
    torch.manual_seed(0)
    model, x = make_model(), make_x()
    kept, handle = keep_outputs(dict(model.named_modules())[layer])
    try:
        _, capture = one_captured_step(model, x, PATHS[path], focus=layer)
    finally:
        handle.remove()
    expected = joint_norm(kept)
    assert expected > 0
    np.testing.assert_allclose(grad_output_norm(capture.frame, layer), expected, rtol=1e-5)
    # The views stay with the first output, as the activation does: its gradient if it got one.
    first = kept[0]
    views = capture.tensors
    if first.grad is None:
        assert views.output_grad is None
    else:
        np.testing.assert_allclose(views.output_grad.reshape(-1), first.grad[0].reshape(-1).numpy(), rtol=1e-6)


def phased_trainer(model: nn.Module, x: torch.Tensor, path: str) -> Trainer:
    """A trainer whose one batch is its whole data set, in order (so a copy of the model can
    recompute the step)."""
    y = torch.arange(len(x)) % 2
    return Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y, shuffle=False),
                   hyper=Hyper(optimizer="sgd", lr=0.1, batch_size=len(x)),
                   config=TrainerConfig(val_every=0, probe=PATHS[path]))


@pytest.mark.parametrize("path", STATISTICS_PATHS)
@pytest.mark.parametrize("name", list(CASES))
def test_a_phase_by_phase_step_has_the_backward_phase_of_a_module_returning_several_tensors(
        name: str, path: str) -> None:
    make_model, make_x, layer = CASES[name]
    torch.manual_seed(0)
    model, x = make_model(), make_x()
    twin = copy.deepcopy(model)  # the truth: the same step, by autograd alone
    kept, handle = keep_outputs(dict(twin.named_modules())[layer])
    nn.functional.cross_entropy(twin(x), torch.arange(len(x)) % 2).backward()
    handle.remove()

    trainer = phased_trainer(model, x, path)
    phases = phases_of_a_step(trainer)
    backward = [p.module for p in phases if p.kind == "backward"]
    assert layer in backward, backward
    assert backward.index("head" if "tuple" in name else "fc") < backward.index(layer)  # in autograd's order
    assert backward.count(layer) == 1  # once, when the last of its outputs' gradients has come
    shown = next(p for p in phases if p.kind == "backward" and p.module == layer).tensors
    # Every output's gradient that came, by its place in the output (h is LSTM's [1][0]).
    arrived = {("grad_output" if i == 0 else f"grad_output{place}"): t.grad
               for i, (place, t) in enumerate(zip(["[0]", "[1][0]", "[1][1]"] if "lstm" in name else ["[0]", "[1]"],
                                                  kept)) if t.grad is not None}
    assert {key for key in shown if key.startswith("grad_output")} == set(arrived), set(shown)
    for key, grad in arrived.items():
        # (An LSTM's h and c are (layers, N, hidden) whatever its batch_first: example 0 is [:, 0].)
        example = grad.select(1 if "lstm" in name and key != "grad_output" else 0, 0) if grad.dim() > 1 else grad
        np.testing.assert_allclose(shown[key].reshape(-1), example.reshape(-1).numpy(), rtol=1e-5, atol=1e-8)
    # The step's capture (made by the same hooks, recording) has the same figure.
    capture = trainer.last_result.capture.get()
    np.testing.assert_allclose(grad_output_norm(capture.frame, layer), joint_norm(kept), rtol=1e-5)
    trainer.close()


class Halves(nn.Module):
    """No parameters, not an activation: not measured, but walked through in phase steps."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.chunk(2, dim=-1)  # (one node makes both halves)


class SecondHalf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.halves = Halves()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.halves(self.inp(x))[1])


@pytest.mark.parametrize("path", STATISTICS_PATHS)
def test_a_walked_through_module_returning_several_tensors_has_its_backward_phase(path: str) -> None:
    torch.manual_seed(0)
    model, x = SecondHalf(), torch.randn(6, 4)
    trainer = phased_trainer(model, x, path)
    phases = phases_of_a_step(trainer)
    trainer.close()
    assert [p.module for p in phases if p.kind == "backward"] == ["head", "halves", "inp"]
    halves = next(p for p in phases if p.kind == "backward" and p.module == "halves")
    assert set(halves.tensors) == {"grad_output[1]"}  # the first half got no gradient
    head = next(p for p in phases if p.kind == "backward" and p.module == "head").tensors
    expected = head["grad_output"] @ head["weight"]  # (the weight as the step's backward found it)
    np.testing.assert_allclose(halves.tensors["grad_output[1]"].reshape(-1), expected.reshape(-1), rtol=1e-5, atol=1e-8)
