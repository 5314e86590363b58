"""Models: shapes, parameter counts, module names, init statistics and hand-worked examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engine.data import Dataset, DataSpec, make_dataset
from engine.models import (
    ACTIVATIONS,
    INITS,
    MODEL_KINDS,
    ModelSpec,
    build_cnn,
    build_mlp,
    build_model,
    build_transformer,
    init_weights,
)


def _data(name: str, **kwargs: object) -> Dataset:
    return make_dataset(DataSpec(name, n=40, **kwargs))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ACTIVATION_TYPES = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
}


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        ("mlp", "spirals", (5, 2)),
        ("mlp", "regression", (5, 1)),
        ("mlp", "shapes", (5, 5)),
        ("cnn", "shapes", (5, 5)),
        ("transformer", "reverse", (5, 8, 8)),
        ("transformer", "long_range", (5, 2)),
        ("transformer", "moons", (5, 2)),
        ("rnn", "long_range", (5, 2)),
        ("lstm", "copy", (5, 8, 8)),
        ("gru", "sort", (5, 8, 8)),
        ("gru", "regression", (5, 1)),
    ],
)
def test_output_shapes(kind: str, data: str, expected: tuple[int, ...]) -> None:
    assert set(MODEL_KINDS) == {"mlp", "cnn", "transformer", "rnn", "lstm", "gru"}
    d = _data(data)
    norm = "batch" if kind in ("mlp", "cnn") else "none"
    model = build_model(ModelSpec(kind, norm=norm, dropout=0.1), d)
    out = model(d.x_train[:5])
    assert out.shape == expected and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_incompatible_data_and_bad_specs_raise() -> None:
    with pytest.raises(ValueError, match="cannot read token sequences"):
        build_model(ModelSpec("mlp"), _data("reverse"))
    with pytest.raises(ValueError, match=r"needs image inputs \(C, H, W\)"):
        build_model(ModelSpec("cnn"), _data("moons"))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        ModelSpec("transformer", width=16, heads=3)
    with pytest.raises(ValueError, match="activation='swish'"):
        ModelSpec("mlp", activation="swish")
    with pytest.raises(ValueError, match="init='orthogonal'"):
        ModelSpec("mlp", init="orthogonal")


def test_cnn_skips_pooling_once_maps_are_tiny_and_handles_even_kernels() -> None:
    d = _data("shapes")
    deep = build_model(ModelSpec("cnn", channels=(4,) * 6, width=8), d)
    names = dict(deep.named_modules())
    # 28 -> 14 -> 7 -> 3 -> 1, then no more pooling.
    assert [f"features.{i}.pool" in names for i in range(6)] == [True] * 4 + [False] * 2
    assert deep.hidden.in_features == 4 and deep(d.x_train[:2]).shape == (2, 5)
    even = build_cnn((1, 28, 28), 3, ModelSpec("cnn", kernel_size=2, channels=(2,)))
    assert even.hidden.in_features == 2 * 14 * 14
    assert even(torch.zeros(1, 1, 28, 28)).shape == (1, 3)


# --------------------------------------------------------------------------- parameter counts


def test_mlp_parameter_counts() -> None:
    assert _params(build_mlp(3, 2, ModelSpec("mlp", depth=1, width=4))) == 26
    for depth, width, n_in, n_out in [(0, 5, 2, 3), (3, 7, 4, 2), (2, 16, 784, 10)]:
        sizes = [n_in] + [width] * depth + [n_out]
        expected = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        model = build_mlp(n_in, n_out, ModelSpec("mlp", depth=depth, width=width))
        assert _params(model) == expected
    # Without biases only the matrices remain; layer norm adds a scale and shift per unit.
    assert _params(build_mlp(3, 2, ModelSpec("mlp", depth=1, width=4, bias=False))) == 12 + 8
    assert _params(build_mlp(3, 2, ModelSpec("mlp", depth=1, width=4, norm="layer"))) == 26 + 8


def test_cnn_parameter_count() -> None:
    spec = ModelSpec("cnn", channels=(8, 16), kernel_size=3, width=16, norm="batch")
    convs = (1 * 9 + 1) * 8 + (8 * 9 + 1) * 16
    norms = 2 * 8 + 2 * 16
    hidden = 16 * 7 * 7 * 16 + 16
    head = 16 * 5 + 5
    assert _params(build_model(spec, _data("shapes"))) == convs + norms + hidden + head


def test_transformer_parameter_count() -> None:
    d_model, vocab, blocks = 32, 8, 2
    per_block = (
        3 * d_model * d_model + 3 * d_model  # in_proj q, k, v
        + d_model * d_model + d_model  # out_proj
        + 2 * 2 * d_model  # two layer norms
        + d_model * 4 * d_model + 4 * d_model + 4 * d_model * d_model + d_model  # feed-forward
    )
    expected = vocab * d_model + blocks * per_block + 2 * d_model + d_model * vocab + vocab
    model = build_model(ModelSpec("transformer", depth=blocks, width=d_model), _data("reverse"))
    assert _params(model) == expected
    assert _params(model.pos) == 0


@pytest.mark.parametrize(("kind", "gates"), [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_recurrent_parameter_counts(kind: str, gates: int) -> None:
    hidden, vocab, layers = 12, 8, 2
    cells = sum(gates * (hidden * n_in + hidden * hidden + 2 * hidden) for n_in in (hidden, hidden))
    expected = vocab * hidden + cells + hidden * 2 + 2
    model = build_model(ModelSpec(kind, depth=layers, width=hidden), _data("long_range"))
    assert _params(model) == expected


# --------------------------------------------------------------------------- module names


def _names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules() if name}


def test_mlp_module_names() -> None:
    plain = build_mlp(2, 3, ModelSpec("mlp", depth=2, width=4))
    assert _names(plain) == {
        "flatten", "layers", "layers.0", "layers.0.linear", "layers.0.act",
        "layers.1", "layers.1.linear", "layers.1.act", "head",
    }
    full = build_mlp(2, 3, ModelSpec("mlp", depth=1, width=4, norm="batch", dropout=0.2))
    assert {"layers.0.norm", "layers.0.dropout"} <= _names(full)
    assert isinstance(full.layers[0].norm, nn.BatchNorm1d)


def test_cnn_transformer_and_recurrent_module_names() -> None:
    cnn = build_model(ModelSpec("cnn", channels=(4, 4), norm="layer"), _data("shapes"))
    for i in range(2):
        assert {f"features.{i}.{part}" for part in ("conv", "norm", "act", "pool")} <= _names(cnn)
    assert {"flatten", "hidden", "hidden_act", "head"} <= _names(cnn)
    assert isinstance(cnn.features[0].norm, nn.GroupNorm) and cnn.features[0].norm.num_groups == 1

    pre = build_model(ModelSpec("transformer", depth=2, width=16, dropout=0.1), _data("reverse"))
    for i in range(2):
        parts = ("attn", "norm1", "norm2", "ff", "dropout1", "dropout2")
        assert {f"blocks.{i}.{part}" for part in parts} <= _names(pre)
        attn = pre.blocks[i].attn
        assert isinstance(attn, nn.MultiheadAttention) and attn.batch_first
    assert {"embed", "pos", "norm", "head"} <= _names(pre) and isinstance(pre.embed, nn.Embedding)
    post = build_model(ModelSpec("transformer", width=16, norm_first=False), _data("reverse"))
    assert "norm" not in _names(post)

    lstm = build_model(ModelSpec("lstm", width=8), _data("long_range"))
    assert _names(lstm) == {"embed", "rnn", "head"} and isinstance(lstm.rnn, nn.LSTM)
    rnn = build_model(ModelSpec("rnn", width=8), _data("long_range"))
    assert rnn.rnn.nonlinearity == "tanh" and rnn.rnn.batch_first


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(
    ("kind", "data", "count"),
    [("mlp", "moons", 2), ("cnn", "shapes", 3), ("transformer", "reverse", 2)],
)
def test_every_activation_is_its_own_module_called_once(
    kind: str, data: str, count: int, activation: str
) -> None:
    d = _data(data)
    spec = ModelSpec(kind, activation=activation, depth=2, width=16, channels=(4, 4))
    model = build_model(spec, d)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES[activation])]
    assert len(acts) == count and len({id(m) for m in acts}) == count
    calls: list[int] = []
    handles = [m.register_forward_hook(lambda mod, i, o: calls.append(id(mod))) for m in acts]
    try:
        model(d.x_train[:2])
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(calls) == sorted(id(m) for m in acts)
    if activation == "leaky_relu":
        assert acts[0].negative_slope == 0.01


def test_attention_is_called_self_attention_without_weights() -> None:
    d = _data("reverse")
    model = build_model(ModelSpec("transformer", depth=2, width=16), d)
    seen: list[tuple[bool, object]] = []

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args[0] is args[1] is args[2], kwargs.get("need_weights")))

    handles = [b.attn.register_forward_pre_hook(pre_hook, with_kwargs=True) for b in model.blocks]
    try:
        model(d.x_train[:3])
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [(True, False), (True, False)]


# --------------------------------------------------------------------------- forward maths


def test_pre_norm_block_matches_numpy_attention() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("transformer", depth=1, width=8, heads=2, activation="gelu")
    model = build_transformer((5,), 4, spec, vocab_size=6)
    block = model.blocks[0]
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        got = block(x).numpy().astype(np.float64)
    p = {k: v.detach().numpy().astype(np.float64) for k, v in block.state_dict().items()}
    xn = x.numpy().astype(np.float64)

    def layer_norm(h: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * w + b

    h = layer_norm(xn, p["norm1.weight"], p["norm1.bias"])
    qkv = h @ p["attn.in_proj_weight"].T + p["attn.in_proj_bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = []
    for i in range(2):
        sl = slice(4 * i, 4 * i + 4)
        scores = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / 2.0
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        heads.append(weights / weights.sum(-1, keepdims=True) @ v[..., sl])
    attended = np.concatenate(heads, -1) @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
    x1 = xn + attended
    h2 = layer_norm(x1, p["norm2.weight"], p["norm2.bias"]) @ p["ff.0.weight"].T + p["ff.0.bias"]
    h2 = 0.5 * h2 * (1 + np.vectorize(math.erf)(h2 / math.sqrt(2)))
    expected = x1 + h2 @ p["ff.2.weight"].T + p["ff.2.bias"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_sequence_heads_pool_or_read_the_last_step() -> None:
    d = _data("long_range")
    x = d.x_train[:4]
    transformer = build_model(ModelSpec("transformer", width=16), d)
    captured: dict[str, torch.Tensor] = {}
    handle = transformer.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    with torch.no_grad():
        out = transformer(x)
    handle.remove()
    torch.testing.assert_close(out, transformer.head(captured["h"].mean(1)))

    lstm = build_model(ModelSpec("lstm", width=8), d)
    handle = lstm.rnn.register_forward_hook(lambda m, i, o: captured.__setitem__("seq", o[0]))
    with torch.no_grad():
        out = lstm(x)
    handle.remove()
    torch.testing.assert_close(out, lstm.head(captured["seq"][:, -1]))


def test_residual_adds_the_block_input() -> None:
    torch.manual_seed(1)
    model = build_mlp(3, 2, ModelSpec("mlp", depth=2, width=3, residual=True, activation="tanh"))
    x = torch.randn(4, 3)
    (w0, b0), (w1, b1) = (
        (block.linear.weight.detach().numpy(), block.linear.bias.detach().numpy())
        for block in model.layers
    )
    xn = x.numpy()
    h1 = xn + np.tanh(xn @ w0.T + b0)
    h2 = h1 + np.tanh(h1 @ w1.T + b1)
    with torch.no_grad():
        np.testing.assert_allclose(model.layers[1](model.layers[0](x)).numpy(), h2, atol=1e-6)
    # 2 -> 3 cannot add its input: the residual is silently off there only.
    mixed = build_mlp(2, 1, ModelSpec("mlp", depth=2, width=3, residual=True))
    assert [block.residual for block in mixed.layers] == [False, True]
    z = torch.randn(5, 2)
    first = mixed.layers[0].linear
    with torch.no_grad():
        expected = np.maximum(z.numpy() @ first.weight.numpy().T + first.bias.numpy(), 0)
        np.testing.assert_allclose(mixed.layers[0](z).numpy(), expected, atol=1e-6)


def test_worked_example_forward() -> None:
    model = build_mlp(2, 1, ModelSpec("mlp", depth=1, width=2, activation="relu"))
    with torch.no_grad():
        model.layers[0].linear.weight.copy_(torch.tensor([[0.1, 0.3], [-0.2, 0.4]]))
        model.layers[0].linear.bias.copy_(torch.tensor([0.0, 0.1]))
        hidden = model.layers[0](torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(hidden, torch.tensor([[0.7, 0.7]]))


def test_worked_example_backward_matches_chain_rule() -> None:
    model = build_mlp(1, 1, ModelSpec("mlp", depth=1, width=1, activation="identity", bias=False))
    assert _params(model) == 2
    w1, w2, x, y = 0.5, 1.5, 2.0, 3.0
    with torch.no_grad():
        model.layers[0].linear.weight.fill_(w1)
        model.head.weight.fill_(w2)
    y_hat = model(torch.tensor([[x]]))
    loss = 0.5 * (y_hat - y).pow(2).sum()
    loss.backward()
    # By hand: y_hat = w2 * w1 * x = 1.5, dL/dy_hat = y_hat - y = -1.5.
    dl_dyhat = w2 * w1 * x - y
    assert y_hat.item() == pytest.approx(1.5) and loss.item() == pytest.approx(1.125)
    grad_w1 = model.layers[0].linear.weight.grad.item()
    grad_w2 = model.head.weight.grad.item()
    assert grad_w1 == pytest.approx(dl_dyhat * w2 * x) == pytest.approx(-4.5)
    assert grad_w2 == pytest.approx(dl_dyhat * w1 * x) == pytest.approx(-1.5)


# --------------------------------------------------------------------------- initialisation


def test_he_xavier_and_normal_statistics() -> None:
    torch.manual_seed(0)
    he = build_mlp(1000, 10, ModelSpec("mlp", depth=1, width=800, init="he", init_scale=0.5))
    w = he.layers[0].linear.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1000) * 0.5, rel=0.02)
    assert abs(w.mean().item()) < 1e-3 and (he.layers[0].linear.bias == 0).all()

    spec = ModelSpec("mlp", depth=1, width=400, init="xavier", activation="tanh")
    xavier = build_mlp(600, 10, spec)
    expected = 5 / 3 * math.sqrt(2 / (600 + 400))
    assert xavier.layers[0].linear.weight.std().item() == pytest.approx(expected, rel=0.02)

    spec = ModelSpec("mlp", depth=1, width=500, init="normal", init_std=0.05, init_scale=2.0)
    normal = build_mlp(500, 10, spec)
    assert normal.layers[0].linear.weight.std().item() == pytest.approx(0.1, rel=0.02)

    spec = ModelSpec("cnn", channels=(256,), kernel_size=5, init="he", activation="leaky_relu")
    conv = build_cnn((16, 8, 8), 2, spec).features[0].conv
    gain = math.sqrt(2 / (1 + 0.01**2))  # fan-in of a conv: in_channels * k * k
    assert conv.weight.std().item() == pytest.approx(gain / math.sqrt(16 * 25), rel=0.02)


def test_recurrent_and_attention_init() -> None:
    torch.manual_seed(0)
    lstm = build_model(ModelSpec("lstm", depth=1, width=256, init="xavier"), _data("long_range"))
    gate_std = 5 / 3 * math.sqrt(2 / (256 + 256))  # each gate's block is its own 256 x 256 map
    for gate in lstm.rnn.weight_hh_l0.detach().chunk(4):
        assert gate.std().item() == pytest.approx(gate_std, rel=0.05)
    # Biases are zeroed, except that the forget gate (second block) starts open at +1.
    input_gate, forget_gate, cell_gate, output_gate = lstm.rnn.bias_ih_l0.detach().chunk(4)
    assert (forget_gate == 1).all() and (lstm.rnn.bias_hh_l0 == 0).all()
    assert all((b == 0).all() for b in (input_gate, cell_gate, output_gate))
    torch.manual_seed(0)
    default = build_model(ModelSpec("lstm", depth=2, width=16), _data("long_range"))
    for layer in range(2):
        forget = default.rnn.get_parameter(f"bias_ih_l{layer}").detach().chunk(4)[1]
        assert forget.min() >= 1 - 0.25 and forget.max() <= 1 + 0.25  # 1 + U(-1/4, 1/4)
    spec = ModelSpec("transformer", width=64, init="normal", init_std=0.02)
    tf = build_model(spec, _data("reverse"))
    attn = tf.blocks[0].attn
    assert attn.in_proj_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert (attn.in_proj_bias == 0).all() and (attn.out_proj.bias == 0).all()
    # Embeddings keep PyTorch's N(0, 1) whatever the scheme.
    assert tf.embed.weight.std().item() == pytest.approx(1.0, rel=0.2)


@pytest.mark.parametrize("scheme", ["zeros", "constant"])
def test_fill_inits_and_norm_layers(scheme: str) -> None:
    spec = ModelSpec("cnn", init=scheme, init_constant=0.2, init_scale=3.0, norm="batch")
    model = build_model(spec, _data("shapes"))
    value = 0.0 if scheme == "zeros" else 0.6
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert (module.weight == value).all() and (module.bias == 0).all()
        if isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and (module.bias == 0).all()


def test_default_init_scale_and_reinit_determinism() -> None:
    d = _data("moons")
    torch.manual_seed(5)
    base = build_model(ModelSpec("mlp", width=32, norm="layer"), d)
    torch.manual_seed(5)
    scaled = build_model(ModelSpec("mlp", width=32, norm="layer", init_scale=2.0), d)
    torch.testing.assert_close(scaled.layers[1].linear.weight, 2 * base.layers[1].linear.weight)
    # Biases are not weights: the scale leaves them alone.
    torch.testing.assert_close(scaled.layers[1].linear.bias, base.layers[1].linear.bias)
    bound = 1 / math.sqrt(32)
    assert base.layers[1].linear.weight.abs().max().item() <= bound

    specs = (ModelSpec("mlp", width=32, norm="layer"), ModelSpec("mlp", init="he", norm="layer"))
    for spec in specs:
        with torch.no_grad():
            for p in base.parameters():
                p.add_(1.0)  # as if trained
        torch.manual_seed(9)
        init_weights(base, spec)
        first = [p.clone() for p in base.parameters()]
        torch.manual_seed(9)
        init_weights(base, spec)
        assert all(torch.equal(a, b) for a, b in zip(first, base.parameters()))
        assert (base.layers[0].norm.weight == 1).all() and (base.layers[0].norm.bias == 0).all()


def test_every_init_on_every_kind_gives_finite_outputs() -> None:
    datasets = {
        "mlp": "moons", "cnn": "shapes", "transformer": "reverse",
        "rnn": "long_range", "lstm": "copy", "gru": "sort",
    }
    for kind, data in datasets.items():
        d = _data(data)
        for scheme in INITS:
            spec = ModelSpec(kind, init=scheme, channels=(4,), width=8, heads=2)
            out = build_model(spec, d)(d.x_train[:2])
            assert torch.isfinite(out).all(), (kind, scheme)


def test_a_cnn_rebuilt_with_another_depth_gets_that_many_conv_stacks() -> None:
    from torch import nn

    from engine.scenarios import build_run

    def convs(depth: int | None) -> list[int]:
        run = build_run("shapes-cnn", device="cpu", model=None if depth is None else {"depth": depth})
        return [m.out_channels for m in run.trainer.model.modules() if isinstance(m, nn.Conv2d)]

    assert convs(None) == [8, 16]  # the scenario's own channels
    assert convs(3) == [8, 16, 32]  # the panel's depth (it was ignored)
    assert convs(1) == [8]
