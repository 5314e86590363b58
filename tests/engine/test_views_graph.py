"""The network view draws only the links a model has: its data flow is traced, not assumed a chain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.batches import TensorBatches
from engine.run import Run
from engine.snapshot import Hyper, NetworkView
from engine.trainer import Trainer, TrainerConfig
from engine.views import INPUT, network_view, trace_data_flow


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(2, 16)
        self.act = nn.Tanh()
        self.head_a = nn.Linear(16, 3)
        self.head_b = nn.Linear(16, 1)

    def forward(self, x):
        h = self.act(self.trunk(x))
        return torch.cat([self.head_a(h), self.head_b(h)], dim=1)


class WideTwoHeads(TwoHeads):
    """head_a as wide as the trunk: head_b's (1, 16) weights would fit a link from head_a."""

    def __init__(self) -> None:
        super().__init__()
        self.head_a = nn.Linear(16, 16)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = h + F.relu(self.fc2(h))  # a skip past fc2
        return self.fc3(h)


class OutOfOrder(nn.Module):
    """Defined last first; an in-place activation between them."""

    def __init__(self) -> None:
        super().__init__()
        self.last = nn.Linear(8, 4)
        self.first = nn.Linear(2, 8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.last(self.act(self.first(x)))


class FunctionalMLP(nn.Module):
    """Activations applied in forward, not as modules: no module's output is the next one's input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc3(torch.sigmoid(self.fc2(F.relu(self.fc1(x)))))


class Tokens(nn.Module):
    """Token ids into an Embedding, a functional activation, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.head(F.gelu(self.embed(tokens)).mean(dim=1))


class TrainsOnly(nn.Module):
    """A forward that can't run in eval mode: the flow can't be traced."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        if not self.training:
            raise RuntimeError("eval mode is not supported")
        return self.fc2(torch.tanh(self.fc1(x)))


def plain_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))


#: The links each model really has, (source, layer), written out by hand from its forward.
TRUE_LINKS = {
    TwoHeads: {("input", "trunk"), ("trunk", "head_a"), ("trunk", "head_b")},
    WideTwoHeads: {("input", "trunk"), ("trunk", "head_a"), ("trunk", "head_b")},
    Residual: {("input", "fc1"), ("fc1", "fc2"), ("fc2", "fc3"), ("fc1", "fc3")},
    OutOfOrder: {("input", "first"), ("first", "last")},
    FunctionalMLP: {("input", "fc1"), ("fc1", "fc2"), ("fc2", "fc3")},
}


def captured_view(model: nn.Module) -> tuple[NetworkView, dict[str, np.ndarray], Run]:
    """One captured step of ``model`` on 2-D data, its network view, and every Linear's weights
    (and, as "<name>.bias", biases) as the step's forward used them, before its update: the view
    shows those."""
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = torch.randint(0, 4, (64,))
    trainer = Trainer(model, F.cross_entropy, TensorBatches(x, y), hyper=Hyper(lr=0.05, batch_size=16),
                      config=TrainerConfig(val_every=0))
    weights: dict[str, np.ndarray] = {}

    def keep(name: str):
        def hook(module, _args):  # (the step's forward runs before its update)
            weights[name] = module.weight.detach().numpy().copy()
            weights[name + ".bias"] = module.bias.detach().numpy().copy()
        return hook

    handles = [m.register_forward_pre_hook(keep(name)) for name, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    try:
        capture = trainer.step(capture=True, tensors=True).capture.get()
    finally:
        for handle in handles:
            handle.remove()
    run = Run(name="test", trainer=trainer)
    view = network_view(run, capture)
    return view, weights, run


def drawn_links(view: NetworkView) -> dict[tuple[str, str], np.ndarray | None]:
    """(left column, right column) -> the weights drawn between them, for every joined pair."""
    names = view.column_names
    return {(names[i], names[i + 1]): view.weights[i] for i in range(len(names) - 1) if view.connected[i]}


@pytest.mark.parametrize("kind", list(TRUE_LINKS), ids=lambda kind: kind.__name__)
def test_every_drawn_link_exists_and_shows_its_own_weights(kind):
    view, weights, run = captured_view(kind())
    try:
        links = drawn_links(view)
        assert set(links) <= TRUE_LINKS[kind], f"drawn but not in the model: {set(links) - TRUE_LINKS[kind]}"
        assert len(view.connected) == len(view.column_names) - 1 == len(view.weights)
        for (source, layer), drawn in links.items():
            assert drawn is not None, (source, layer)
            np.testing.assert_array_equal(drawn, weights[layer])
        # A pair not joined draws no weights at all.
        for i, joined in enumerate(view.connected):
            if not joined:
                assert view.weights[i] is None
        # Every link that exists and is not drawn is named by the note.
        for source, layer in TRUE_LINKS[kind] - set(links):
            assert f"{source} → {layer}" in view.note
        if set(links) == TRUE_LINKS[kind]:
            assert view.note == ""
    finally:
        run.trainer.close()


def test_two_heads_are_not_drawn_as_a_chain():
    for kind in (TwoHeads, WideTwoHeads):
        view, weights, run = captured_view(kind())
        try:
            assert view.column_names == ("input", "trunk", "head_a", "head_b")
            assert view.connected == (True, True, False)
            np.testing.assert_array_equal(view.weights[0], weights["trunk"])
            np.testing.assert_array_equal(view.weights[1], weights["head_a"])
            assert view.weights[2] is None  # head_b's weights (1, 16) connect to the trunk, not to head_a
            assert view.note == "head_b is fed by trunk, not head_a: trunk → head_b is not drawn"
        finally:
            run.trainer.close()


def test_a_plain_mlp_is_drawn_as_before():
    model = plain_mlp()
    view, weights, run = captured_view(model)
    try:
        assert view.column_names == ("input", "0", "2", "4")
        assert view.column_sizes == (2, 8, 8, 4)
        assert view.connected == (True, True, True) and view.note == ""
        for i, name in enumerate(("0", "2", "4")):
            np.testing.assert_array_equal(view.weights[i], weights[name])
        # Units show what the next layer receives: the activation after each Linear.
        example = run.trainer.last_batch[0][0].numpy()
        np.testing.assert_array_equal(view.activations[0], example)
        hidden = np.maximum(weights["0"] @ example + weights["0.bias"], 0.0)
        np.testing.assert_allclose(view.activations[1], hidden, rtol=1e-5, atol=1e-6)
    finally:
        run.trainer.close()


def test_the_flow_is_traced_once_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 4))
    view, _, run = captured_view(model)
    try:
        assert view.connected == (True, True) and view.note == ""
        flow = run.data_flow
        assert flow is not None and flow.feeders == {"0": frozenset({INPUT}), "4": frozenset({"0"})}
        network_view(run, run.trainer.step(capture=True, tensors=True).capture.get())
        assert run.data_flow is flow  # traced once per run

        run.data_flow = None  # traced again now, on a model just stepped:
        capture = run.trainer.step(capture=True, tensors=True).capture.get()
        model[2].eval()  # (a mixed set of training flags comes back as it was)
        flags = [m.training for m in model.modules()]
        state = {key: value.clone() for key, value in model.state_dict().items()}
        grads = [p.grad.clone() for p in model.parameters()]
        network_view(run, capture)
        assert run.data_flow is not None and run.data_flow.feeders == flow.feeders
        assert [m.training for m in model.modules()] == flags
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key  # no batch-norm statistic moved
        for before, parameter in zip(grads, model.parameters()):
            assert torch.equal(before, parameter.grad)
    finally:
        run.trainer.close()


def test_an_untraceable_flow_draws_no_links_and_says_why():
    view, _, run = captured_view(TrainsOnly())
    try:
        assert view.column_names == ("input", "fc1", "fc2")
        assert view.connected == (False, False) and view.weights == (None, None)
        assert view.note.startswith("The data flow could not be traced (RuntimeError: eval mode is not supported)")
    finally:
        run.trainer.close()


def test_trace_data_flow_sees_through_functional_ops_and_finds_token_inputs():
    flow = trace_data_flow(Tokens(), torch.randint(0, 10, (3, 5)), ["embed", "head"])
    assert flow.feeders == {"embed": frozenset({INPUT}), "head": frozenset({"embed"})}
    flow = trace_data_flow(Residual(), torch.randn(3, 2), ["fc1", "fc2", "fc3"])
    assert flow.feeders == {"fc1": frozenset({INPUT}), "fc2": frozenset({"fc1"}), "fc3": frozenset({"fc1", "fc2"})}


def test_the_decision_boundary_gives_each_module_its_own_mode_back():
    """A batch norm the user keeps in eval mode stays so after the grid's forward (model.train()
    would have put it in training mode until the next step)."""
    from engine.views import boundary_view

    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    _, _, run = captured_view(model)
    try:
        model[1].eval()
        flags = [m.training for m in model.modules()]
        x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
        run.boundary_data = (x, (x[:, 0] > 0).astype(np.int64))
        assert boundary_view(run, 1) is not None
        assert [m.training for m in model.modules()] == flags
    finally:
        run.trainer.close()


def test_an_embedding_column_has_a_unit_per_embedding_dimension():
    """Its weight is tokens × dimensions: the column's units are the dimensions, which the next
    layer reads (so the head's weights join it)."""
    torch.manual_seed(0)
    model = Tokens()
    tokens = torch.randint(0, 10, (32, 5))
    trainer = Trainer(model, F.cross_entropy, TensorBatches(tokens, torch.randint(0, 3, (32,))),
                      hyper=Hyper(optimizer="sgd", lr=0.1, batch_size=16), config=TrainerConfig(val_every=0))
    head = model.head.weight.detach().numpy().copy()  # (the view shows the weights the step used)
    try:
        view = network_view(Run(name="t", trainer=trainer), trainer.step(capture=True, tensors=True).capture.get())
        assert view.column_names == ("input", "embed", "head")
        assert view.column_sizes == (5, 4, 3)
        assert view.connected == (True, True)
        np.testing.assert_array_equal(view.weights[1], head)
    finally:
        trainer.close()


class SharedBlock(nn.Module):
    """One Linear applied twice in a row: its weights are shared by both passes."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(2, 8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.head(torch.relu(self.block(torch.relu(self.block(h)))))


def test_a_layer_applied_twice_is_named_and_its_column_shows_its_first_pass():
    view, weights, run = captured_view(SharedBlock())
    try:
        assert view.column_names == ("input", "inp", "block", "head") and view.connected == (True, True, True)
        assert view.note == "block runs again on its own output (shared weights): its column shows its first pass"
        example = torch.from_numpy(run.trainer.last_batch[0][0].numpy()).double()
        w = {name: torch.from_numpy(value).double() for name, value in weights.items()}
        hidden = torch.relu(example @ w["inp"].T + w["inp.bias"])
        first = hidden @ w["block"].T + w["block.bias"]
        np.testing.assert_allclose(view.activations[2], first.numpy(), rtol=1e-5, atol=1e-6)
    finally:
        run.trainer.close()


class TimeFirstLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5)  # batch_first=False: fed (T, N, F) as the loader collates it
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


def test_the_input_column_of_a_time_first_batch_is_the_chosen_example():
    """A loader's (T, N, F) batch with (N,) targets: the input column is example k's T × F values,
    not time step k across the batch."""
    from engine.batches import LoaderBatches

    torch.manual_seed(0)
    x, y = torch.randn(6, 4, 3), torch.randint(0, 2, (4,))
    trainer = Trainer(TimeFirstLSTM(), F.cross_entropy, LoaderBatches([(x, y)]),
                      hyper=Hyper(optimizer="sgd", lr=0.1), config=TrainerConfig(val_every=0))
    trainer.probe.focus_example = 2
    try:
        view = network_view(Run(name="t", trainer=trainer), trainer.step(capture=True, tensors=True).capture.get())
        assert view.column_names[0] == "input" and view.column_sizes[0] == 6 * 3
        np.testing.assert_array_equal(view.activations[0], x[:, 2].reshape(-1).numpy())
    finally:
        trainer.close()
