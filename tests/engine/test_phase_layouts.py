"""The chosen example of modules whose tensors aren't batch first (an LSTM, a MultiheadAttention, a
Transformer layer with ``batch_first=False``): every phase of a phase-by-phase step, and every
per-example view, against the same model's forward and backward run independently on a copy, the
example taken along the dimension that really holds the batch."""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from engine.batches import TensorBatches
from engine.probe import Probe, ProbeConfig, input_batch_dim, known_batch_dim
from engine.snapshot import Hyper, PhaseInfo
from engine.trainer import Trainer

PATHS = {"numpy": ProbeConfig(), "torch": ProbeConfig(host_statistics=False)}


class HiddenLSTM(nn.Module):
    """A time-first LSTM read through its last layer's final h, as many classifiers are."""

    def __init__(self, features: int = 3, hidden: int = 5, layers: int = 2, classes: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers)  # batch_first=False
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, T, F)
        _, (h, _) = self.lstm(x.transpose(0, 1))
        return self.head(h[-1])


class SequenceLSTM(nn.Module):
    """A time-first LSTM whose every output goes through a Linear, still (T, N, ...)."""

    def __init__(self, features: int = 3, hidden: int = 4, classes: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(0, 1))
        return self.head(out).mean(0)  # (T, N, C) -> (N, C)


class SequenceAttention(nn.Module):
    def __init__(self, width: int = 8, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # batch_first=False
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.transpose(0, 1)
        out, _ = self.attn(q, q, q)
        return self.head(out.mean(0))


class SequenceEncoder(nn.Module):
    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(width, 2, dim_feedforward=12, dropout=0.0)  # batch_first=False
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x.transpose(0, 1)).mean(0))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> dict[str, tuple]:
    """Every named module's (first input, output) of a forward and backward of a copy of ``model``
    on (x, y), with the outputs' gradients kept (``.grad``)."""
    twin = copy.deepcopy(model)
    seen: dict[str, tuple] = {}

    def keep(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple, output: Any) -> None:
            for tensor in _tensors(output):
                if tensor.requires_grad:
                    tensor.retain_grad()
            seen.setdefault(name, (args[0], output))
        return hook

    for name, module in twin.named_modules():
        if name:
            module.register_forward_hook(keep(name))
    loss_fn(twin(x), y).backward()
    return seen


def example(tensor: torch.Tensor, dim: int, k: int) -> np.ndarray:
    return tensor.detach().select(dim, k).numpy()


def assert_shown(shown: np.ndarray, expected: np.ndarray) -> None:
    """A phase tensor (the example's, drawn as a matrix: a reshaping of it) is the expected one."""
    assert np.size(shown) == np.size(expected), (np.shape(shown), np.shape(expected))
    np.testing.assert_allclose(np.asarray(shown).reshape(-1), expected.reshape(-1), rtol=1e-5, atol=1e-6)


def phased_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, focus: int,
                loss_fn: Callable = nn.functional.cross_entropy) -> tuple[dict, dict]:
    """One phase-by-phase step of ``model`` on a batch of ``batch`` showing example ``focus``: the
    phases by (kind, module), and the reference run on that very batch."""
    trainer = Trainer(model, loss_fn, TensorBatches(x, y), hyper=Hyper(batch_size=batch, optimizer="sgd", lr=0.1))
    trainer.step()  # (an ordinary step first, so the phases run on a model already measured once)
    trainer.probe.focus_example = focus
    before = copy.deepcopy(trainer.model)
    phases: list[PhaseInfo] = [trainer.next_phase()]
    while phases[-1].kind != "update":
        phases.append(trainer.next_phase())
    xb, yb = trainer.last_batch
    assert all(p.example == focus and p.batch_size == batch for p in phases)
    return {(p.kind, p.module): p for p in phases}, reference(before, xb, yb, loss_fn)


def test_the_input_batch_dimension_is_the_one_the_targets_name() -> None:
    tokens = torch.zeros(7, 4, dtype=torch.long)  # (T, N) or (N, T)
    assert input_batch_dim(tokens, torch.zeros(7)) == 0  # (as a DataLoader stacks)
    assert input_batch_dim(tokens, torch.zeros(4)) == 1
    assert input_batch_dim(torch.zeros(7, 4, 3), torch.zeros(4, 2)) == 1
    assert input_batch_dim(tokens, torch.zeros(28)) == 0  # a target per token, flattened: shapes can't tell
    assert input_batch_dim(torch.zeros(4, 4, 3), torch.zeros(4)) == 0  # (ambiguous)
    assert input_batch_dim(torch.zeros(5, 3, 3), torch.zeros(3)) == 0  # (two dimensions match)
    assert input_batch_dim(torch.zeros(64, 10), torch.zeros(10)) == 0  # (2-D floats: a length mismatch)


def test_known_batch_dims_follow_the_type_and_batch_first() -> None:
    time_first, batch_first = nn.LSTM(3, 4), nn.GRU(3, 4, batch_first=True)
    assert known_batch_dim(time_first, "input", 3) == known_batch_dim(time_first, "output", 3) == 1
    assert known_batch_dim(batch_first, "output", 3) == 0
    assert known_batch_dim(time_first, "output[1][0]", 3) == known_batch_dim(batch_first, "output[1]", 3) == 1
    attention = nn.MultiheadAttention(8, 2)
    assert known_batch_dim(attention, "output", 3) == 1 and known_batch_dim(attention, "output[1]", 4) == 0
    assert known_batch_dim(nn.TransformerEncoderLayer(8, 2), "output", 3) == 1
    assert known_batch_dim(nn.TransformerEncoderLayer(8, 2, batch_first=True), "input", 3) == 0
    assert known_batch_dim(nn.Linear(3, 4), "output", 3) is None  # (not the type's to say)
    assert known_batch_dim(time_first, "output", 2) is None  # an unbatched sequence


def test_a_time_first_lstm_read_through_h_shows_the_chosen_example() -> None:
    """LSTM(batch_first=False): its input and output are (T, N, F) and (T, N, H), its h is
    (layers, N, H); each phase shows example k of them, not time step k or layer k."""
    torch.manual_seed(0)
    x = torch.randn(40, 4, 3)
    y = (x.sum((1, 2)) > 0).long()
    by, ref = phased_step(HiddenLSTM(), x, y, batch=6, focus=2)
    inp, (out, (h, c)) = ref["lstm"]
    forward = by["forward", "lstm"]
    assert_shown(forward.tensors["input"], example(inp, 1, 2))
    assert_shown(forward.tensors["output"], example(out, 1, 2))
    assert forward.axes["output"] == ("time steps", "features") and forward.axes["input"] == ("time steps", "features")
    backward = by["backward", "lstm"]
    assert_shown(backward.tensors["grad_output[1][0]"], example(h.grad, 1, 2))  # both layers' h of example 2
    assert backward.tensors["grad_output[1][0]"].shape == (2, 5)
    assert backward.axes["grad_output[1][0]"] == ("layers", "hidden units")
    head_in, head_out = ref["head"]
    assert_shown(by["forward", "head"].tensors["input"], example(head_in, 0, 2))  # h[-1] is (N, H)
    assert_shown(by["backward", "head"].tensors["grad_output"], example(head_out.grad, 0, 2))


def test_a_linear_over_a_time_first_sequence_takes_the_batch_from_the_lstm_even_when_t_equals_n() -> None:
    """A Linear applied to the LSTM's (T, N, H) output makes (T, N, C); with T == N only the module
    that made its input can tell which dimension is the batch."""
    torch.manual_seed(1)
    x = torch.randn(30, 5, 3)  # T = 5 = N
    y = (x[:, :, 0].mean(1) > 0).long()
    by, ref = phased_step(SequenceLSTM(), x, y, batch=5, focus=3)
    inp, (out, _) = ref["lstm"]
    assert_shown(by["forward", "lstm"].tensors["output"], example(out, 1, 3))
    assert_shown(by["backward", "lstm"].tensors["grad_output"], example(out.grad, 1, 3))
    head_in, head_out = ref["head"]
    forward = by["forward", "head"]
    assert_shown(forward.tensors["input"], example(head_in, 1, 3))
    assert_shown(forward.tensors["output"], example(head_out, 1, 3))
    assert forward.axes["output"] == ("time steps", "features")
    assert_shown(by["backward", "head"].tensors["grad_output"], example(head_out.grad, 1, 3))


def test_a_time_first_attention_shows_the_chosen_example() -> None:
    torch.manual_seed(2)
    x = torch.randn(30, 7, 8)
    y = torch.randint(0, 3, (30,))
    by, ref = phased_step(SequenceAttention(), x, y, batch=4, focus=1)
    query, (out, _) = ref["attn"]
    forward = by["forward", "attn"]
    assert_shown(forward.tensors["input"], example(query, 1, 1))
    assert_shown(forward.tensors["output"], example(out, 1, 1))
    assert forward.axes["output"] == ("positions", "features")
    assert_shown(by["backward", "attn"].tensors["grad_output"], example(out.grad, 1, 1))


def test_a_time_first_encoder_layer_and_the_modules_inside_it_show_the_chosen_example() -> None:
    """Inside TransformerEncoderLayer(batch_first=False) its Linear and LayerNorm see (T, N, E)
    too; with T == N the layer they are part of says where the batch is."""
    torch.manual_seed(3)
    x = torch.randn(30, 4, 8)  # T = 4 = N
    y = torch.randint(0, 3, (30,))
    by, ref = phased_step(SequenceEncoder(), x, y, batch=4, focus=2)
    for name in ("encoder.self_attn", "encoder.linear1", "encoder.linear2", "encoder.norm1",
                 "encoder.norm2"):
        inp, output = ref[name]
        out = output[0] if isinstance(output, tuple) else output
        assert_shown(by["forward", name].tensors["input"], example(inp, 1, 2))
        assert_shown(by["forward", name].tensors["output"], example(out, 1, 2))
        assert_shown(by["backward", name].tensors["grad_output"], example(out.grad, 1, 2))
    assert by["forward", "encoder.linear1"].axes["output"] == ("positions", "features")


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_views_of_a_time_first_lstm_show_the_chosen_example(path: str) -> None:
    """One example's activation, dL/d(output) and unit values (the network graph's) of the layers
    of a time-first LSTM model, on an ordinary captured step with views."""
    torch.manual_seed(4)
    model = SequenceLSTM()
    x = torch.randn(6, 5, 3)  # N = 6, T = 5
    y = torch.randint(0, 2, (6,))
    ref = reference(model, x, y, nn.functional.cross_entropy)
    captures = {}
    probe = Probe(model, PATHS[path])
    probe.focus_example = 4
    with probe:
        for focus in ("lstm", "head"):
            probe.focus_layer = focus
            probe.begin_step(True, tensors=True)
            nn.functional.cross_entropy(model(x), y).backward()
            probe.after_backward()
            captures[focus] = probe.finish(1, torch.zeros(1, 2)).get()
            model.zero_grad()
    _, (out, _) = ref["lstm"]
    views = captures["lstm"].tensors
    assert_shown(views.activation, example(out, 1, 4))
    assert_shown(views.output_grad, example(out.grad, 1, 4))
    _, head_out = ref["head"]
    views = captures["head"].tensors
    assert_shown(views.activation, example(head_out, 1, 4))
    assert_shown(views.output_grad, example(head_out.grad, 1, 4))
    assert_shown(captures["head"].unit_values["head"], example(head_out, 1, 4))
    assert_shown(captures["head"].unit_grads["head"], example(head_out.grad, 1, 4))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_views_of_a_linear_over_a_time_first_sequence_take_the_lstms_batch_dimension_when_t_equals_n(
        path: str) -> None:
    """As on a phase-by-phase step, on an ordinary step with views: with T == N only the LSTM that
    made the Linear's input tells which of its dimensions is the batch."""
    torch.manual_seed(6)
    model = SequenceLSTM()
    x = torch.randn(5, 5, 3)  # N = 5 = T
    y = torch.randint(0, 2, (5,))
    ref = reference(model, x, y, nn.functional.cross_entropy)
    probe = Probe(model, PATHS[path])
    probe.focus_layer, probe.focus_example = "head", 3
    with probe:
        probe.begin_step(True, tensors=True)
        nn.functional.cross_entropy(model(x), y).backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    _, head_out = ref["head"]
    assert_shown(capture.tensors.activation, example(head_out, 1, 3))
    assert_shown(capture.tensors.output_grad, example(head_out.grad, 1, 3))
    assert_shown(capture.unit_values["head"], example(head_out, 1, 3))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_views_of_a_time_first_attention_show_the_chosen_example(path: str) -> None:
    """Its output, dL/d(output) and attention maps (heads × queries × keys) for example k."""
    torch.manual_seed(5)
    model = SequenceAttention()
    x = torch.randn(5, 6, 8)
    y = torch.randint(0, 3, (5,))
    ref = reference(model, x, y, nn.functional.cross_entropy)
    probe = Probe(model, PATHS[path])
    probe.focus_layer, probe.focus_example = "attn", 3
    with probe:
        probe.begin_step(True, tensors=True)
        nn.functional.cross_entropy(model(x), y).backward()
        probe.after_backward()
        views = probe.finish(1, torch.zeros(1, 2)).get().tensors
    query, (out, _) = ref["attn"]
    assert_shown(views.activation, example(out, 1, 3))
    assert_shown(views.output_grad, example(out.grad, 1, 3))
    q = query.detach()
    _, maps = model.attn(q, q, q, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(views.attention, maps[3].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_views_left_to_a_step_graph_take_the_example_along_the_batch_dimension() -> None:
    """On the device path a small model's views are computed by a replayed step graph: they take
    the example along the time-first LSTM's batch dimension (1) as the eager run does."""
    from engine.step_graph import StepGraphs, record_by_rerunning

    for graphed in (False, True):
        torch.manual_seed(6)
        model = SequenceLSTM()
        probe = Probe(model, ProbeConfig(host_statistics=False, step_graphs=graphed))
        probe.graphs = StepGraphs(record_by_rerunning)
        probe.focus_layer = "head"
        with probe:
            for step in range(8):
                torch.manual_seed(100 + step)
                x, y = torch.randn(6, 5, 3), torch.randint(0, 2, (6,))
                probe.focus_example = (0, 0, 0, 4, 4, 4, 1, 1)[step]
                truth = reference(model, x, y, nn.functional.cross_entropy)["head"][1]
                probe.begin_step(True, tensors=True)
                model.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                probe.after_backward()
                capture = probe.finish(step, torch.zeros(1, 2)).get()
                assert_shown(capture.tensors.activation, example(truth, 1, probe.focus_example))
                assert_shown(capture.tensors.output_grad, example(truth.grad, 1, probe.focus_example))
                assert_shown(capture.unit_values["head"], example(truth, 1, probe.focus_example))
        if graphed:
            assert probe.graphs.recorded >= 2 and probe.graphs.replayed >= 3 and probe.graphs.off_because is None


class TokensLSTM(nn.Module):
    """Time-first token batches (T, N), as ``pad_sequence`` collates them, into a time-first LSTM
    classified from the last layer's h."""

    def __init__(self, vocab: int = 11, width: int = 4, hidden: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embed(tokens))
        return self.head(h[-1])


def time_first_loader(n: int, steps: int, batches: int = 3) -> list:
    """Batches of ``n`` token sequences of ``steps`` collated time first: x (T, N), y (N,)."""
    torch.manual_seed(7)
    loader = []
    for _ in range(batches):
        x = torch.randint(0, 11, (steps, n))
        loader.append((x, x[-1] % 3))
    return loader


@pytest.mark.parametrize("n, steps", [(4, 6), (5, 8)])
def test_a_time_first_input_batch_shows_the_chosen_example(n: int, steps: int) -> None:
    """The targets tell where the input holds its examples: (N,) targets against (T, N) tokens.
    Every phase, from the Embedding on, shows example k of the N, not time step k. (With T == N,
    or per-token targets flattened to (T·N,), shapes can't tell a (T, N) batch from an (N, T)
    one: that stays dimension 0, as a DataLoader stacks.)"""
    from engine.batches import LoaderBatches

    model = TokensLSTM()
    trainer = Trainer(model, nn.functional.cross_entropy, LoaderBatches(time_first_loader(n, steps)),
                      hyper=Hyper(optimizer="sgd", lr=0.1))
    trainer.step()
    trainer.probe.focus_example = 3
    before = copy.deepcopy(trainer.model)
    phases: list[PhaseInfo] = [trainer.next_phase()]
    while phases[-1].kind != "update":
        phases.append(trainer.next_phase())
    by = {(p.kind, p.module): p for p in phases}
    assert all(p.batch_size == n and p.example == 3 for p in phases)
    xb, yb = trainer.last_batch
    ref = reference(before, xb, yb, nn.functional.cross_entropy)
    _, embedded = ref["embed"]
    forward = by["forward", "embed"]
    assert_shown(forward.tensors["output"], example(embedded, 1, 3))  # (its input, token ids, isn't drawn)
    assert forward.axes["output"][0] == "time steps"
    assert_shown(by["backward", "embed"].tensors["grad_output"], example(embedded.grad, 1, 3))
    _, (out, _) = ref["lstm"]
    assert_shown(by["forward", "lstm"].tensors["output"], example(out, 1, 3))


def test_the_neuron_view_of_a_linear_on_a_time_first_input_takes_the_chosen_example() -> None:
    """A Linear fed the (T, N, F) input itself, T == N: only the batch's layout tells its dimension."""
    from engine.neuron import trace_unit

    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    x = torch.randn(5, 5, 3)  # T = N = 5, time first
    y = torch.randn(5, 4)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((out.mean(0) - target) ** 2).mean()

    trace = trace_unit(model, loss_fn, x, y, "0", unit=2, example=3, batch_dim=1)
    np.testing.assert_allclose(trace.inputs, x[0, 3].numpy(), rtol=1e-6)  # its first position, example 3
    z = (x[0, 3] @ model[0].weight[2] + model[0].bias[2]).detach()
    assert trace.z == pytest.approx(float(z), rel=1e-5) and trace.batch_size == 5
